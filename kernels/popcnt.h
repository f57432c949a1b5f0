/*
 * popcnt.h -- runtime-dispatched popcount kernels for segsrv._kernels.bitset.
 *
 * Portable build: nothing here needs -march flags.  Every fast path is a
 * separate function compiled with a gcc/clang `target` attribute, and one of
 * them is chosen once at import with __builtin_cpu_supports (gcc 12's
 * target_clones refuses avx512vpopcntdq, so no target_clones):
 *
 *   level 3  "avx512vpopcntdq"  target("avx512f,avx512vpopcntdq")
 *   level 2  "avx2"             target("avx2,popcnt"), Harley-Seal / Mula
 *   level 1  "popcnt"           target("popcnt"), scalar POPCNT, 4 accumulators
 *   level 0  "generic"          plain C (SWAR popcount on x86 without POPCNT,
 *                               __builtin_popcountll elsewhere)
 *
 * Plain -O3 __builtin_popcountll on x86-64 calls a libgcc helper; that is why
 * the generic x86 path uses an explicit SWAR popcount.
 *
 * All functions are `static`: each Cython module that includes this header
 * gets its own copy and its own dispatch state.
 */
#ifndef SEGSRV_POPCNT_H
#define SEGSRV_POPCNT_H

#include <stddef.h>
#include <stdint.h>

#include "sorted_ids.h"

#if (defined(__x86_64__) || defined(__i386__)) && defined(__GNUC__)
#define SEGSRV_X86 1
#include <immintrin.h>
#else
#define SEGSRV_X86 0
#endif

#define SEGSRV_PATH_GENERIC 0
#define SEGSRV_PATH_POPCNT 1
#define SEGSRV_PATH_AVX2 2
#define SEGSRV_PATH_AVX512 3

/* ------------------------------------------------------------------ */
/* generic                                                             */
/* ------------------------------------------------------------------ */

static inline uint64_t segsrv_pop64_generic(uint64_t x) {
#if SEGSRV_X86
    x = x - ((x >> 1) & 0x5555555555555555ULL);
    x = (x & 0x3333333333333333ULL) + ((x >> 2) & 0x3333333333333333ULL);
    x = (x + (x >> 4)) & 0x0F0F0F0F0F0F0F0FULL;
    return (x * 0x0101010101010101ULL) >> 56;
#else
    return (uint64_t)__builtin_popcountll(x);
#endif
}

static uint64_t segsrv_andpop_generic(const uint64_t *a, const uint64_t *b, size_t n) {
    uint64_t c0 = 0, c1 = 0, c2 = 0, c3 = 0;
    size_t i = 0;
    for (; i + 4 <= n; i += 4) {
        c0 += segsrv_pop64_generic(a[i] & b[i]);
        c1 += segsrv_pop64_generic(a[i + 1] & b[i + 1]);
        c2 += segsrv_pop64_generic(a[i + 2] & b[i + 2]);
        c3 += segsrv_pop64_generic(a[i + 3] & b[i + 3]);
    }
    for (; i < n; i++) c0 += segsrv_pop64_generic(a[i] & b[i]);
    return c0 + c1 + c2 + c3;
}

static uint64_t segsrv_pop_generic(const uint64_t *a, size_t n) {
    uint64_t c0 = 0, c1 = 0, c2 = 0, c3 = 0;
    size_t i = 0;
    for (; i + 4 <= n; i += 4) {
        c0 += segsrv_pop64_generic(a[i]);
        c1 += segsrv_pop64_generic(a[i + 1]);
        c2 += segsrv_pop64_generic(a[i + 2]);
        c3 += segsrv_pop64_generic(a[i + 3]);
    }
    for (; i < n; i++) c0 += segsrv_pop64_generic(a[i]);
    return c0 + c1 + c2 + c3;
}

static uint64_t segsrv_orreduce_generic(const uint64_t *a, size_t n) {
    uint64_t c0 = 0, c1 = 0, c2 = 0, c3 = 0, c4 = 0, c5 = 0, c6 = 0, c7 = 0;
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        c0 |= a[i];
        c1 |= a[i + 1];
        c2 |= a[i + 2];
        c3 |= a[i + 3];
        c4 |= a[i + 4];
        c5 |= a[i + 5];
        c6 |= a[i + 6];
        c7 |= a[i + 7];
    }
    for (; i < n; i++) c0 |= a[i];
    return c0 | c1 | c2 | c3 | c4 | c5 | c6 | c7;
}

#if SEGSRV_X86
/* ------------------------------------------------------------------ */
/* level 1: scalar POPCNT                                              */
/* ------------------------------------------------------------------ */

__attribute__((target("popcnt")))
static uint64_t segsrv_andpop_popcnt(const uint64_t *a, const uint64_t *b, size_t n) {
    uint64_t c0 = 0, c1 = 0, c2 = 0, c3 = 0;
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        _mm_prefetch((const char *)(b + i + 128), _MM_HINT_T0);
        c0 += (uint64_t)__builtin_popcountll(a[i] & b[i]);
        c1 += (uint64_t)__builtin_popcountll(a[i + 1] & b[i + 1]);
        c2 += (uint64_t)__builtin_popcountll(a[i + 2] & b[i + 2]);
        c3 += (uint64_t)__builtin_popcountll(a[i + 3] & b[i + 3]);
        c0 += (uint64_t)__builtin_popcountll(a[i + 4] & b[i + 4]);
        c1 += (uint64_t)__builtin_popcountll(a[i + 5] & b[i + 5]);
        c2 += (uint64_t)__builtin_popcountll(a[i + 6] & b[i + 6]);
        c3 += (uint64_t)__builtin_popcountll(a[i + 7] & b[i + 7]);
    }
    for (; i < n; i++) c0 += (uint64_t)__builtin_popcountll(a[i] & b[i]);
    return c0 + c1 + c2 + c3;
}

__attribute__((target("popcnt")))
static uint64_t segsrv_pop_popcnt(const uint64_t *a, size_t n) {
    uint64_t c0 = 0, c1 = 0, c2 = 0, c3 = 0;
    size_t i = 0;
    for (; i + 4 <= n; i += 4) {
        c0 += (uint64_t)__builtin_popcountll(a[i]);
        c1 += (uint64_t)__builtin_popcountll(a[i + 1]);
        c2 += (uint64_t)__builtin_popcountll(a[i + 2]);
        c3 += (uint64_t)__builtin_popcountll(a[i + 3]);
    }
    for (; i < n; i++) c0 += (uint64_t)__builtin_popcountll(a[i]);
    return c0 + c1 + c2 + c3;
}

/* ------------------------------------------------------------------ */
/* level 2: AVX2, Harley-Seal carry-save adder over 16 vectors with    */
/* Mula's pshufb nibble-lookup popcount (Mula, Kurz, Lemire 2018).     */
/* ------------------------------------------------------------------ */

__attribute__((target("avx2,popcnt")))
static inline __m256i segsrv_avx2_pop256(__m256i v) {
    const __m256i lookup = _mm256_setr_epi8(
        0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4,
        0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4);
    const __m256i low_mask = _mm256_set1_epi8(0x0f);
    __m256i lo = _mm256_and_si256(v, low_mask);
    __m256i hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), low_mask);
    __m256i cnt = _mm256_add_epi8(_mm256_shuffle_epi8(lookup, lo),
                                  _mm256_shuffle_epi8(lookup, hi));
    return _mm256_sad_epu8(cnt, _mm256_setzero_si256());
}

/* Software prefetch SEGSRV_PF_WORDS words ahead of the streamed operand: the
 * Harley-Seal loop issues ~15 uops per cache line, so the out-of-order window
 * alone keeps too few misses in flight to saturate DRAM from one thread
 * (measured on Zen 3: ~12.5 -> ~14 GB/s; the plain OR-reduce probe ~17).
 * Prefetches never fault, so running past the end of the array is harmless. */
#ifndef SEGSRV_PF_WORDS
#define SEGSRV_PF_WORDS 128
#endif
#define SEGSRV_PF_LINES4(p)                                                   \
    do {                                                                      \
        const char *q_ = (const char *)(p);                                   \
        _mm_prefetch(q_, _MM_HINT_T0);                                        \
        _mm_prefetch(q_ + 64, _MM_HINT_T0);                                   \
        _mm_prefetch(q_ + 128, _MM_HINT_T0);                                  \
        _mm_prefetch(q_ + 192, _MM_HINT_T0);                                  \
    } while (0)
#define SEGSRV_PREFETCH_512B(p)                                               \
    do {                                                                      \
        SEGSRV_PF_LINES4(p);                                                  \
        SEGSRV_PF_LINES4((const char *)(p) + 256);                            \
    } while (0)
#define SEGSRV_PF_B(v) SEGSRV_PREFETCH_512B(b + 4 * (v) + SEGSRV_PF_WORDS)
#define SEGSRV_PF_A(v) SEGSRV_PREFETCH_512B(a + 4 * (v) + SEGSRV_PF_WORDS)

#define SEGSRV_CSA(h, l, a, b, c)                                   \
    do {                                                            \
        __m256i u_ = _mm256_xor_si256((a), (b));                    \
        (h) = _mm256_or_si256(_mm256_and_si256((a), (b)),           \
                              _mm256_and_si256(u_, (c)));           \
        (l) = _mm256_xor_si256(u_, (c));                            \
    } while (0)

/* Harley-Seal body; LD(k) yields the k-th 256-bit vector of the input. */
#define SEGSRV_HS_BODY(LD, PF)                                                 \
    __m256i total = _mm256_setzero_si256();                                    \
    __m256i ones = _mm256_setzero_si256(), twos = _mm256_setzero_si256();      \
    __m256i fours = _mm256_setzero_si256(), eights = _mm256_setzero_si256();   \
    __m256i sixteens, twosA, twosB, foursA, foursB, eightsA, eightsB;          \
    size_t nv = n / 4, v = 0;                                                  \
    for (; v + 16 <= nv; v += 16) {                                            \
        PF(v);                                                                 \
        SEGSRV_CSA(twosA, ones, ones, LD(v + 0), LD(v + 1));                   \
        SEGSRV_CSA(twosB, ones, ones, LD(v + 2), LD(v + 3));                   \
        SEGSRV_CSA(foursA, twos, twos, twosA, twosB);                          \
        SEGSRV_CSA(twosA, ones, ones, LD(v + 4), LD(v + 5));                   \
        SEGSRV_CSA(twosB, ones, ones, LD(v + 6), LD(v + 7));                   \
        SEGSRV_CSA(foursB, twos, twos, twosA, twosB);                          \
        SEGSRV_CSA(eightsA, fours, fours, foursA, foursB);                     \
        SEGSRV_CSA(twosA, ones, ones, LD(v + 8), LD(v + 9));                   \
        SEGSRV_CSA(twosB, ones, ones, LD(v + 10), LD(v + 11));                 \
        SEGSRV_CSA(foursA, twos, twos, twosA, twosB);                          \
        SEGSRV_CSA(twosA, ones, ones, LD(v + 12), LD(v + 13));                 \
        SEGSRV_CSA(twosB, ones, ones, LD(v + 14), LD(v + 15));                 \
        SEGSRV_CSA(foursB, twos, twos, twosA, twosB);                          \
        SEGSRV_CSA(eightsB, fours, fours, foursA, foursB);                     \
        SEGSRV_CSA(sixteens, eights, eights, eightsA, eightsB);                \
        total = _mm256_add_epi64(total, segsrv_avx2_pop256(sixteens));         \
    }                                                                          \
    total = _mm256_slli_epi64(total, 4);                                       \
    total = _mm256_add_epi64(total,                                            \
                             _mm256_slli_epi64(segsrv_avx2_pop256(eights), 3)); \
    total = _mm256_add_epi64(total,                                            \
                             _mm256_slli_epi64(segsrv_avx2_pop256(fours), 2));  \
    total = _mm256_add_epi64(total,                                            \
                             _mm256_slli_epi64(segsrv_avx2_pop256(twos), 1));   \
    total = _mm256_add_epi64(total, segsrv_avx2_pop256(ones));                 \
    for (; v < nv; v++) total = _mm256_add_epi64(total, segsrv_avx2_pop256(LD(v))); \
    uint64_t res = (uint64_t)_mm256_extract_epi64(total, 0) +                  \
                   (uint64_t)_mm256_extract_epi64(total, 1) +                  \
                   (uint64_t)_mm256_extract_epi64(total, 2) +                  \
                   (uint64_t)_mm256_extract_epi64(total, 3);

__attribute__((target("avx2,popcnt")))
static uint64_t segsrv_andpop_avx2(const uint64_t *a, const uint64_t *b, size_t n) {
#define SEGSRV_LD_AND(k)                                                     \
    _mm256_and_si256(_mm256_loadu_si256((const __m256i *)(a + 4 * (k))),     \
                     _mm256_loadu_si256((const __m256i *)(b + 4 * (k))))
    if (n < 64) return segsrv_andpop_popcnt(a, b, n);
    SEGSRV_HS_BODY(SEGSRV_LD_AND, SEGSRV_PF_B)
    for (size_t i = nv * 4; i < n; i++) res += (uint64_t)__builtin_popcountll(a[i] & b[i]);
    return res;
#undef SEGSRV_LD_AND
}

__attribute__((target("avx2,popcnt")))
static uint64_t segsrv_pop_avx2(const uint64_t *a, size_t n) {
#define SEGSRV_LD_ONE(k) _mm256_loadu_si256((const __m256i *)(a + 4 * (k)))
    if (n < 64) return segsrv_pop_popcnt(a, n);
    SEGSRV_HS_BODY(SEGSRV_LD_ONE, SEGSRV_PF_A)
    for (size_t i = nv * 4; i < n; i++) res += (uint64_t)__builtin_popcountll(a[i]);
    return res;
#undef SEGSRV_LD_ONE
}

__attribute__((target("avx2")))
static uint64_t segsrv_orreduce_avx2(const uint64_t *a, size_t n) {
    __m256i r0 = _mm256_setzero_si256(), r1 = r0, r2 = r0, r3 = r0;
    size_t i = 0;
    for (; i + 16 <= n; i += 16) {
        r0 = _mm256_or_si256(r0, _mm256_loadu_si256((const __m256i *)(a + i)));
        r1 = _mm256_or_si256(r1, _mm256_loadu_si256((const __m256i *)(a + i + 4)));
        r2 = _mm256_or_si256(r2, _mm256_loadu_si256((const __m256i *)(a + i + 8)));
        r3 = _mm256_or_si256(r3, _mm256_loadu_si256((const __m256i *)(a + i + 12)));
    }
    r0 = _mm256_or_si256(_mm256_or_si256(r0, r1), _mm256_or_si256(r2, r3));
    uint64_t res = (uint64_t)_mm256_extract_epi64(r0, 0) | (uint64_t)_mm256_extract_epi64(r0, 1) |
                   (uint64_t)_mm256_extract_epi64(r0, 2) | (uint64_t)_mm256_extract_epi64(r0, 3);
    for (; i < n; i++) res |= a[i];
    return res;
}

/* ------------------------------------------------------------------ */
/* level 3: AVX-512 VPOPCNTDQ (Ice Lake+, Zen 4+)                      */
/* ------------------------------------------------------------------ */

/* The one-vs-many rows variant: software prefetch `pf` words ahead of the
 * streamed row b and, over its last `pf` words, into the start of the row that
 * comes next (`next`, NULL: none).  Short rows (1M bits = 125 KB) otherwise
 * lose the hardware prefetcher at every row start: one thread read them at
 * 0.58-0.66 of the memory probe (issue 16).  Prefetches never fault. */

__attribute__((target("avx512f,avx512vpopcntdq")))
static inline uint64_t segsrv_andpop_avx512_rows(const uint64_t *a, const uint64_t *b, size_t n,
                                                 const uint64_t *next, size_t pf) {
    __m512i s0 = _mm512_setzero_si512(), s1 = s0, s2 = s0, s3 = s0;
    size_t i = 0;
    for (; i + 32 <= n; i += 32) {
        if (pf != 0) {
            size_t j = i + pf;
            if (j < n)
                SEGSRV_PF_LINES4(b + j);
            else if (next != NULL && j - n < n)
                SEGSRV_PF_LINES4(next + (j - n));
        }
        s0 = _mm512_add_epi64(s0, _mm512_popcnt_epi64(_mm512_and_si512(
                 _mm512_loadu_si512((const void *)(a + i)), _mm512_loadu_si512((const void *)(b + i)))));
        s1 = _mm512_add_epi64(s1, _mm512_popcnt_epi64(_mm512_and_si512(
                 _mm512_loadu_si512((const void *)(a + i + 8)), _mm512_loadu_si512((const void *)(b + i + 8)))));
        s2 = _mm512_add_epi64(s2, _mm512_popcnt_epi64(_mm512_and_si512(
                 _mm512_loadu_si512((const void *)(a + i + 16)), _mm512_loadu_si512((const void *)(b + i + 16)))));
        s3 = _mm512_add_epi64(s3, _mm512_popcnt_epi64(_mm512_and_si512(
                 _mm512_loadu_si512((const void *)(a + i + 24)), _mm512_loadu_si512((const void *)(b + i + 24)))));
    }
    for (; i < n; i += 8) {
        size_t left = n - i;
        __mmask8 m = (__mmask8)(left >= 8 ? 0xFF : ((1u << left) - 1u));
        s0 = _mm512_add_epi64(s0, _mm512_popcnt_epi64(_mm512_and_si512(
                 _mm512_maskz_loadu_epi64(m, (const void *)(a + i)),
                 _mm512_maskz_loadu_epi64(m, (const void *)(b + i)))));
    }
    s0 = _mm512_add_epi64(_mm512_add_epi64(s0, s1), _mm512_add_epi64(s2, s3));
    return (uint64_t)_mm512_reduce_add_epi64(s0);
}

/* Two rows against one query in one pass: two memory streams in flight, each
 * query vector loaded once for both.  Where the hardware prefetcher ramps up
 * slowly at each short row's start (AMD Zen 4: one row at a time read 1M-bit
 * rows at 0.58-0.65 of the probe), a second stream keeps the memory busy. */
__attribute__((target("avx512f,avx512vpopcntdq")))
static inline void segsrv_andpop2_avx512(const uint64_t *a, const uint64_t *b0, const uint64_t *b1, size_t n,
                                         uint64_t *c0, uint64_t *c1) {
    __m512i s0 = _mm512_setzero_si512(), s1 = s0, t0 = s0, t1 = s0;
    size_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __m512i x0 = _mm512_loadu_si512((const void *)(a + i));
        __m512i x1 = _mm512_loadu_si512((const void *)(a + i + 8));
        s0 = _mm512_add_epi64(s0, _mm512_popcnt_epi64(_mm512_and_si512(x0, _mm512_loadu_si512((const void *)(b0 + i)))));
        t0 = _mm512_add_epi64(t0, _mm512_popcnt_epi64(_mm512_and_si512(x0, _mm512_loadu_si512((const void *)(b1 + i)))));
        s1 = _mm512_add_epi64(s1, _mm512_popcnt_epi64(_mm512_and_si512(x1, _mm512_loadu_si512((const void *)(b0 + i + 8)))));
        t1 = _mm512_add_epi64(t1, _mm512_popcnt_epi64(_mm512_and_si512(x1, _mm512_loadu_si512((const void *)(b1 + i + 8)))));
    }
    for (; i < n; i += 8) {
        size_t left = n - i;
        __mmask8 m = (__mmask8)(left >= 8 ? 0xFF : ((1u << left) - 1u));
        __m512i x = _mm512_maskz_loadu_epi64(m, (const void *)(a + i));
        s0 = _mm512_add_epi64(s0, _mm512_popcnt_epi64(_mm512_and_si512(x, _mm512_maskz_loadu_epi64(m, (const void *)(b0 + i)))));
        t0 = _mm512_add_epi64(t0, _mm512_popcnt_epi64(_mm512_and_si512(x, _mm512_maskz_loadu_epi64(m, (const void *)(b1 + i)))));
    }
    *c0 = (uint64_t)_mm512_reduce_add_epi64(_mm512_add_epi64(s0, s1));
    *c1 = (uint64_t)_mm512_reduce_add_epi64(_mm512_add_epi64(t0, t1));
}

/* R rows (4 or 8) against one query in one pass (as segsrv_andpop2_avx512): R
 * streams in flight, each query vector loaded once for all R. */
#define SEGSRV_ANDPOP_ROWS_AVX512(NAME, R)                                                          \
__attribute__((target("avx512f,avx512vpopcntdq")))                                                 \
static inline void NAME(const uint64_t *a, const uint64_t *const *b, size_t n, uint64_t *c) {      \
    __m512i s[R], t[R];                                                                            \
    size_t i = 0;                                                                                  \
    int r;                                                                                         \
    for (r = 0; r < R; r++) s[r] = t[r] = _mm512_setzero_si512();                                  \
    for (; i + 16 <= n; i += 16) {                                                                 \
        __m512i x0 = _mm512_loadu_si512((const void *)(a + i));                                    \
        __m512i x1 = _mm512_loadu_si512((const void *)(a + i + 8));                                \
        for (r = 0; r < R; r++) {                                                                  \
            s[r] = _mm512_add_epi64(s[r], _mm512_popcnt_epi64(_mm512_and_si512(                    \
                       x0, _mm512_loadu_si512((const void *)(b[r] + i)))));                        \
            t[r] = _mm512_add_epi64(t[r], _mm512_popcnt_epi64(_mm512_and_si512(                    \
                       x1, _mm512_loadu_si512((const void *)(b[r] + i + 8)))));                    \
        }                                                                                          \
    }                                                                                              \
    for (; i < n; i += 8) {                                                                        \
        size_t left = n - i;                                                                       \
        __mmask8 m = (__mmask8)(left >= 8 ? 0xFF : ((1u << left) - 1u));                           \
        __m512i x = _mm512_maskz_loadu_epi64(m, (const void *)(a + i));                            \
        for (r = 0; r < R; r++)                                                                    \
            s[r] = _mm512_add_epi64(s[r], _mm512_popcnt_epi64(_mm512_and_si512(                    \
                       x, _mm512_maskz_loadu_epi64(m, (const void *)(b[r] + i)))));                \
    }                                                                                              \
    for (r = 0; r < R; r++)                                                                        \
        c[r] = (uint64_t)_mm512_reduce_add_epi64(_mm512_add_epi64(s[r], t[r]));                    \
}
SEGSRV_ANDPOP_ROWS_AVX512(segsrv_andpop4_avx512, 4)
SEGSRV_ANDPOP_ROWS_AVX512(segsrv_andpop8_avx512, 8)

__attribute__((target("avx512f,avx512vpopcntdq")))
static uint64_t segsrv_andpop_avx512(const uint64_t *a, const uint64_t *b, size_t n) {
    return segsrv_andpop_avx512_rows(a, b, n, NULL, 0);
}

__attribute__((target("avx512f,avx512vpopcntdq")))
static uint64_t segsrv_pop_avx512(const uint64_t *a, size_t n) {
    __m512i s0 = _mm512_setzero_si512(), s1 = s0, s2 = s0, s3 = s0;
    size_t i = 0;
    for (; i + 32 <= n; i += 32) {
        s0 = _mm512_add_epi64(s0, _mm512_popcnt_epi64(_mm512_loadu_si512((const void *)(a + i))));
        s1 = _mm512_add_epi64(s1, _mm512_popcnt_epi64(_mm512_loadu_si512((const void *)(a + i + 8))));
        s2 = _mm512_add_epi64(s2, _mm512_popcnt_epi64(_mm512_loadu_si512((const void *)(a + i + 16))));
        s3 = _mm512_add_epi64(s3, _mm512_popcnt_epi64(_mm512_loadu_si512((const void *)(a + i + 24))));
    }
    for (; i < n; i += 8) {
        size_t left = n - i;
        __mmask8 m = (__mmask8)(left >= 8 ? 0xFF : ((1u << left) - 1u));
        s0 = _mm512_add_epi64(s0, _mm512_popcnt_epi64(_mm512_maskz_loadu_epi64(m, (const void *)(a + i))));
    }
    s0 = _mm512_add_epi64(_mm512_add_epi64(s0, s1), _mm512_add_epi64(s2, s3));
    return (uint64_t)_mm512_reduce_add_epi64(s0);
}

__attribute__((target("avx512f")))
static uint64_t segsrv_orreduce_avx512(const uint64_t *a, size_t n) {
    __m512i r0 = _mm512_setzero_si512(), r1 = r0, r2 = r0, r3 = r0;
    size_t i = 0;
    for (; i + 32 <= n; i += 32) {
        r0 = _mm512_or_si512(r0, _mm512_loadu_si512((const void *)(a + i)));
        r1 = _mm512_or_si512(r1, _mm512_loadu_si512((const void *)(a + i + 8)));
        r2 = _mm512_or_si512(r2, _mm512_loadu_si512((const void *)(a + i + 16)));
        r3 = _mm512_or_si512(r3, _mm512_loadu_si512((const void *)(a + i + 24)));
    }
    for (; i < n; i += 8) {
        size_t left = n - i;
        __mmask8 m = (__mmask8)(left >= 8 ? 0xFF : ((1u << left) - 1u));
        r0 = _mm512_or_si512(r0, _mm512_maskz_loadu_epi64(m, (const void *)(a + i)));
    }
    r0 = _mm512_or_si512(_mm512_or_si512(r0, r1), _mm512_or_si512(r2, r3));
    return (uint64_t)_mm512_reduce_or_epi64(r0);
}

/* Sparse probe: how many of the uint32 ids have their bit set in q.  16 ids per
 * gather of 32-bit words (bit b of the bitset is bit b % 32 of 32-bit word b / 32
 * on little-endian x86): the scalar loop spent ~0.95 ns per id on the 1M demo
 * snapshot, 4x the bytes' read time (issue 16).  A block holding an id >= n_bits
 * goes to the scalar loop, which skips and reports it like segsrv_probe_count. */
__attribute__((target("avx512f")))
static size_t segsrv_probe_count_avx512(const uint64_t *q, uint64_t n_bits, const uint32_t *ids,
                                        size_t n, int *bad) {
    const int *q32 = (const int *)q;
    const __m512i one = _mm512_set1_epi32(1), low5 = _mm512_set1_epi32(31);
    /* every uint32 id is in range of a bitset of >= 2**32 bits */
    const int check = n_bits < ((uint64_t)1 << 32);
    const __m512i lim = _mm512_set1_epi32((int)(uint32_t)(check ? n_bits : 0));
    __m512i acc0 = _mm512_setzero_si512(), acc1 = acc0, acc2 = acc0, acc3 = acc0;
    size_t i = 0;
    for (; i + 64 <= n; i += 64) {
        /* a feature's ids are a short stream (~6 KB on average): the hardware prefetcher restarts at
         * each one, so fetch 1 KB ahead (prefetches never fault) */
        SEGSRV_PF_LINES4(ids + i + 256);
        __m512i v0 = _mm512_loadu_si512((const void *)(ids + i));
        __m512i v1 = _mm512_loadu_si512((const void *)(ids + i + 16));
        __m512i v2 = _mm512_loadu_si512((const void *)(ids + i + 32));
        __m512i v3 = _mm512_loadu_si512((const void *)(ids + i + 48));
        if (check && (_mm512_cmpge_epu32_mask(v0, lim) | _mm512_cmpge_epu32_mask(v1, lim) |
                      _mm512_cmpge_epu32_mask(v2, lim) | _mm512_cmpge_epu32_mask(v3, lim)))
            break;
        __m512i w0 = _mm512_i32gather_epi32(_mm512_srli_epi32(v0, 5), q32, 4);
        __m512i w1 = _mm512_i32gather_epi32(_mm512_srli_epi32(v1, 5), q32, 4);
        __m512i w2 = _mm512_i32gather_epi32(_mm512_srli_epi32(v2, 5), q32, 4);
        __m512i w3 = _mm512_i32gather_epi32(_mm512_srli_epi32(v3, 5), q32, 4);
        acc0 = _mm512_add_epi32(acc0, _mm512_and_si512(_mm512_srlv_epi32(w0, _mm512_and_si512(v0, low5)), one));
        acc1 = _mm512_add_epi32(acc1, _mm512_and_si512(_mm512_srlv_epi32(w1, _mm512_and_si512(v1, low5)), one));
        acc2 = _mm512_add_epi32(acc2, _mm512_and_si512(_mm512_srlv_epi32(w2, _mm512_and_si512(v2, low5)), one));
        acc3 = _mm512_add_epi32(acc3, _mm512_and_si512(_mm512_srlv_epi32(w3, _mm512_and_si512(v3, low5)), one));
    }
    acc0 = _mm512_add_epi32(acc0, acc2);  /* each lane still <= n / 16 */
    acc1 = _mm512_add_epi32(acc1, acc3);
    /* lanes hold at most n / 16 each: sum them as 64-bit */
    __m512i wide = _mm512_add_epi64(
        _mm512_add_epi64(_mm512_cvtepu32_epi64(_mm512_castsi512_si256(acc0)),
                         _mm512_cvtepu32_epi64(_mm512_extracti64x4_epi64(acc0, 1))),
        _mm512_add_epi64(_mm512_cvtepu32_epi64(_mm512_castsi512_si256(acc1)),
                         _mm512_cvtepu32_epi64(_mm512_extracti64x4_epi64(acc1, 1))));
    return (size_t)_mm512_reduce_add_epi64(wide) + segsrv_probe_count(q, n_bits, ids + i, n - i, bad);
}
#endif /* SEGSRV_X86 */

/* ------------------------------------------------------------------ */
/* dispatch                                                            */
/* ------------------------------------------------------------------ */

typedef uint64_t (*segsrv_andpop_fn)(const uint64_t *, const uint64_t *, size_t);
typedef uint64_t (*segsrv_pop_fn)(const uint64_t *, size_t);

static segsrv_andpop_fn segsrv_andpop_ptr = segsrv_andpop_generic;
static segsrv_pop_fn segsrv_pop_ptr = segsrv_pop_generic;
static segsrv_pop_fn segsrv_orreduce_ptr = segsrv_orreduce_generic;
static int segsrv_level = SEGSRV_PATH_GENERIC;

/* Highest path this CPU (and OS: libgcc checks XCR0) supports. */
static int segsrv_max_level(void) {
#if SEGSRV_X86
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vpopcntdq"))
        return SEGSRV_PATH_AVX512;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("popcnt"))
        return SEGSRV_PATH_AVX2;
    if (__builtin_cpu_supports("popcnt"))
        return SEGSRV_PATH_POPCNT;
#endif
    return SEGSRV_PATH_GENERIC;
}

/* Select a path; the caller guarantees level <= segsrv_max_level(). */
static void segsrv_set_level(int level) {
    segsrv_andpop_ptr = segsrv_andpop_generic;
    segsrv_pop_ptr = segsrv_pop_generic;
    segsrv_orreduce_ptr = segsrv_orreduce_generic;
    segsrv_level = SEGSRV_PATH_GENERIC;
#if SEGSRV_X86
    if (level >= SEGSRV_PATH_AVX512) {
        segsrv_andpop_ptr = segsrv_andpop_avx512;
        segsrv_pop_ptr = segsrv_pop_avx512;
        segsrv_orreduce_ptr = segsrv_orreduce_avx512;
        segsrv_level = SEGSRV_PATH_AVX512;
    } else if (level == SEGSRV_PATH_AVX2) {
        segsrv_andpop_ptr = segsrv_andpop_avx2;
        segsrv_pop_ptr = segsrv_pop_avx2;
        segsrv_orreduce_ptr = segsrv_orreduce_avx2;
        segsrv_level = SEGSRV_PATH_AVX2;
    } else if (level == SEGSRV_PATH_POPCNT) {
        segsrv_andpop_ptr = segsrv_andpop_popcnt;
        segsrv_pop_ptr = segsrv_pop_popcnt;
        segsrv_level = SEGSRV_PATH_POPCNT;
    }
#else
    (void)level;
#endif
}

static inline int segsrv_get_level(void) { return segsrv_level; }

static inline uint64_t segsrv_and_popcount(const uint64_t *a, const uint64_t *b, size_t n) {
    return segsrv_andpop_ptr(a, b, n);
}
static inline uint64_t segsrv_popcount(const uint64_t *a, size_t n) { return segsrv_pop_ptr(a, n); }
static inline uint64_t segsrv_or_reduce(const uint64_t *a, size_t n) { return segsrv_orreduce_ptr(a, n); }
/* segsrv_probe_count on the selected path */
static inline size_t segsrv_probe_count_path(const uint64_t *q, uint64_t n_bits, const uint32_t *ids, size_t n,
                                             int *bad) {
#if SEGSRV_X86
    if (segsrv_level == SEGSRV_PATH_AVX512)
        return segsrv_probe_count_avx512(q, n_bits, ids, n, bad);
#endif
    return segsrv_probe_count(q, n_bits, ids, n, bad);
}

/*
 * One query against rows[0..k) of a row-major matrix (row stride `stride`
 * words), writing out[i] = popcount(q & M[rows[i]]).  rows == NULL means
 * rows i = row_base + i.  Columns are processed in blocks of `block` words so
 * the query block stays L1/L2-resident while each matrix row streams from
 * memory once.
 */
/* Prefetch distance (words) of the AVX-512 rows path; 0 turns it off (the
 * tuning hook of bench/kernels.py, _set_dense_prefetch_words). */
#ifndef SEGSRV_ROW_PF_WORDS
#define SEGSRV_ROW_PF_WORDS 256
#endif
static size_t segsrv_row_pf_words = SEGSRV_ROW_PF_WORDS;
/* Rows read together on the AVX-512 path (1, 2, 4 or 8; the tuning hook of bench/kernels.py,
 * _set_dense_rows_in_flight). */
static int segsrv_rows_in_flight = 4;

static void segsrv_and_count_rows(const uint64_t *q, const uint64_t *M, size_t stride,
                                  size_t n_words, const int64_t *rows, int64_t row_base,
                                  size_t k, int64_t *out, size_t block) {
    segsrv_andpop_fn f = segsrv_andpop_ptr;
    size_t i, w0;
    size_t pf = segsrv_row_pf_words;
    for (i = 0; i < k; i++) out[i] = 0;
    if (block == 0 || block >= n_words) block = n_words;
    for (w0 = 0; w0 < n_words; w0 += block) {
        size_t len = n_words - w0 < block ? n_words - w0 : block;
        for (i = 0; i < k; i++) {
            int64_t r = rows ? rows[i] : row_base + (int64_t)i;
            const uint64_t *row = M + (size_t)r * stride + w0;
#if SEGSRV_X86
            if (segsrv_level == SEGSRV_PATH_AVX512 && segsrv_rows_in_flight >= 4 && i + 3 < k) {
                const uint64_t *bs[8];
                uint64_t cs[8];
                size_t j, g = (segsrv_rows_in_flight == 8 && i + 7 < k) ? 8 : 4;
                bs[0] = row;
                for (j = 1; j < g; j++)
                    bs[j] = M + (size_t)(rows ? rows[i + j] : row_base + (int64_t)(i + j)) * stride + w0;
                if (g == 8)
                    segsrv_andpop8_avx512(q + w0, bs, len, cs);
                else
                    segsrv_andpop4_avx512(q + w0, bs, len, cs);
                for (j = 0; j < g; j++)
                    out[i + j] += (int64_t)cs[j];
                i += g - 1;
                continue;
            }
            if (segsrv_level == SEGSRV_PATH_AVX512 && segsrv_rows_in_flight >= 2 && i + 1 < k) {
                const uint64_t *row1 = M + (size_t)(rows ? rows[i + 1] : row_base + (int64_t)i + 1) * stride + w0;
                uint64_t c0, c1;
                segsrv_andpop2_avx512(q + w0, row, row1, len, &c0, &c1);
                out[i] += (int64_t)c0;
                out[i + 1] += (int64_t)c1;
                i++;
                continue;
            }
            if (segsrv_level == SEGSRV_PATH_AVX512 && pf > 0) {
                const uint64_t *next = NULL;
                if (i + 1 < k)
                    next = M + (size_t)(rows ? rows[i + 1] : row_base + (int64_t)i + 1) * stride + w0;
                out[i] += (int64_t)segsrv_andpop_avx512_rows(q + w0, row, len, next, pf);
                continue;
            }
#endif
            out[i] += (int64_t)f(q + w0, row, len);
        }
    }
}

/* Many queries against the same rows (a shared scan: concurrent Relates over the same features):
 * out[j * out_stride + i] = popcount(Q[j] & M[rows[i]]), Q's rows q_stride words apart.  Column blocks of
 * `block` words, and within a block the rows in groups (4 on the AVX-512 path): a group's blocks are read
 * from memory for the first query and from cache for the others, so the rows cost their bytes once for all
 * the queries. */
static void segsrv_and_count_rows_many(const uint64_t *Q, size_t q_stride, size_t n_q, const uint64_t *M,
                                       size_t stride, size_t n_words, const int64_t *rows, size_t k,
                                       int64_t *out, size_t out_stride, size_t block) {
    segsrv_andpop_fn f = segsrv_andpop_ptr;
    size_t i, j, w0;
    for (j = 0; j < n_q; j++)
        for (i = 0; i < k; i++) out[j * out_stride + i] = 0;
    if (block == 0 || block >= n_words) block = n_words;
    for (w0 = 0; w0 < n_words; w0 += block) {
        size_t len = n_words - w0 < block ? n_words - w0 : block;
        for (i = 0; i < k; i++) {
            const uint64_t *row = M + (size_t)rows[i] * stride + w0;
#if SEGSRV_X86
            if (segsrv_level == SEGSRV_PATH_AVX512 && i + 3 < k) {
                const uint64_t *bs[4];
                uint64_t cs[4];
                size_t g;
                bs[0] = row;
                for (g = 1; g < 4; g++)
                    bs[g] = M + (size_t)rows[i + g] * stride + w0;
                for (j = 0; j < n_q; j++) {
                    segsrv_andpop4_avx512(Q + j * q_stride + w0, bs, len, cs);
                    for (g = 0; g < 4; g++)
                        out[j * out_stride + i + g] += (int64_t)cs[g];
                }
                i += 3;
                continue;
            }
#endif
            for (j = 0; j < n_q; j++)
                out[j * out_stride + i] += (int64_t)f(Q + j * q_stride + w0, row, len);
        }
    }
}

#endif /* SEGSRV_POPCNT_H */
