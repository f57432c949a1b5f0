/*
 * cooccur.h -- cache-blocked all-pairs AND+popcount tiles for
 * segsrv._kernels.cooccur (dispatched like popcnt.h).
 *
 * A tile call adds, for every pair (i, j) of a block of rows A[0..na) x
 * B[0..nb), popcount(A[i][w0 .. w0+len) & B[j][w0 .. w0+len)) to
 * out[i * ldo + j].  Rows are given as an array of row pointers (so a tile
 * can mix rows of a memory-mapped matrix with materialised bitsets).
 *
 * Inside a tile the rows are walked in register-blocked micro-tiles of MR x MR
 * rows: each loaded word of an A row serves MR pairs and each word of a B row
 * MR pairs, so a micro-tile does MR*MR AND+popcounts per 2*MR loads.  The
 * caller picks the word block `len` (a few hundred words) so that a tile's
 * rows stay in L2 and one micro-row of A stays in L1 across the B rows.
 *
 *   level 3  "avx512vpopcntdq"  4x4 rows, 16 zmm accumulators, vpopcntq,
 *                               masked tail loads
 *   level 2  "avx2"             2x2 rows, Mula's pshufb nibble popcount into
 *                               byte counters, folded with vpsadbw every 31
 *                               vectors
 *   level 1  "popcnt"           2x2 rows, scalar POPCNT
 *   level 0  "generic"          2x2 rows, SWAR popcount (popcnt.h)
 *
 * tri != 0 means A and B are the same row list (na == nb): only micro-tiles
 * on or above the diagonal are computed; the cells below the diagonal inside
 * a diagonal micro-tile are written too (the caller mirrors the upper
 * triangle over them).  Every path computes exact integer counts, so the
 * result does not depend on the path, the blocking or the thread count.
 */
#ifndef SEGSRV_COOCCUR_H
#define SEGSRV_COOCCUR_H

#include <stddef.h>
#include <stdint.h>

#include "popcnt.h"

typedef void (*segsrv_cooc_tile_fn)(const uint64_t *const *A, size_t na,
                                    const uint64_t *const *B, size_t nb, size_t w0,
                                    size_t len, int64_t *out, size_t ldo, int tri);

/* Generic tile loop around a micro-kernel MK(a, b, len, acc) that fills
 * acc[r * MR + c] = popcount(a[r][0..len) & b[c][0..len)).  Edge micro-tiles
 * repeat the last row pointer and drop the extra cells. */
#define SEGSRV_COOC_TILE_BODY(MR, MK)                                            \
    const uint64_t *a_[MR], *b_[MR];                                             \
    uint64_t acc_[(MR) * (MR)];                                                  \
    size_t i0, j0, r_, c_;                                                       \
    for (i0 = 0; i0 < na; i0 += (MR)) {                                          \
        size_t mi = na - i0 < (MR) ? na - i0 : (MR);                             \
        for (r_ = 0; r_ < (MR); r_++) a_[r_] = A[i0 + (r_ < mi ? r_ : mi - 1)] + w0; \
        for (j0 = tri ? i0 : 0; j0 < nb; j0 += (MR)) {                           \
            size_t mj = nb - j0 < (MR) ? nb - j0 : (MR);                         \
            for (c_ = 0; c_ < (MR); c_++) b_[c_] = B[j0 + (c_ < mj ? c_ : mj - 1)] + w0; \
            MK(a_, b_, len, acc_);                                               \
            for (r_ = 0; r_ < mi; r_++) {                                        \
                int64_t *o_ = out + (i0 + r_) * ldo + j0;                        \
                for (c_ = 0; c_ < mj; c_++) o_[c_] += (int64_t)acc_[r_ * (MR) + c_]; \
            }                                                                    \
        }                                                                        \
    }

/* ------------------------------------------------------------------ */
/* generic: 2x2, SWAR popcount                                         */
/* ------------------------------------------------------------------ */

static inline void segsrv_cooc_mk_generic(const uint64_t *const *a, const uint64_t *const *b,
                                          size_t len, uint64_t *acc) {
    const uint64_t *a0 = a[0], *a1 = a[1], *b0 = b[0], *b1 = b[1];
    uint64_t c00 = 0, c01 = 0, c10 = 0, c11 = 0;
    size_t i;
    for (i = 0; i < len; i++) {
        uint64_t x0 = a0[i], x1 = a1[i], y0 = b0[i], y1 = b1[i];
        c00 += segsrv_pop64_generic(x0 & y0);
        c01 += segsrv_pop64_generic(x0 & y1);
        c10 += segsrv_pop64_generic(x1 & y0);
        c11 += segsrv_pop64_generic(x1 & y1);
    }
    acc[0] = c00; acc[1] = c01; acc[2] = c10; acc[3] = c11;
}

static void segsrv_cooc_tile_generic(const uint64_t *const *A, size_t na,
                                     const uint64_t *const *B, size_t nb, size_t w0,
                                     size_t len, int64_t *out, size_t ldo, int tri) {
    SEGSRV_COOC_TILE_BODY(2, segsrv_cooc_mk_generic)
}

#if SEGSRV_X86
/* ------------------------------------------------------------------ */
/* level 1: 2x2, scalar POPCNT                                         */
/* ------------------------------------------------------------------ */

__attribute__((target("popcnt")))
static inline void segsrv_cooc_mk_popcnt(const uint64_t *const *a, const uint64_t *const *b,
                                         size_t len, uint64_t *acc) {
    const uint64_t *a0 = a[0], *a1 = a[1], *b0 = b[0], *b1 = b[1];
    uint64_t c00 = 0, c01 = 0, c10 = 0, c11 = 0;
    size_t i;
    for (i = 0; i < len; i++) {
        uint64_t x0 = a0[i], x1 = a1[i], y0 = b0[i], y1 = b1[i];
        c00 += (uint64_t)__builtin_popcountll(x0 & y0);
        c01 += (uint64_t)__builtin_popcountll(x0 & y1);
        c10 += (uint64_t)__builtin_popcountll(x1 & y0);
        c11 += (uint64_t)__builtin_popcountll(x1 & y1);
    }
    acc[0] = c00; acc[1] = c01; acc[2] = c10; acc[3] = c11;
}

__attribute__((target("popcnt")))
static void segsrv_cooc_tile_popcnt(const uint64_t *const *A, size_t na,
                                    const uint64_t *const *B, size_t nb, size_t w0,
                                    size_t len, int64_t *out, size_t ldo, int tri) {
    SEGSRV_COOC_TILE_BODY(2, segsrv_cooc_mk_popcnt)
}

/* ------------------------------------------------------------------ */
/* level 2: 2x2, AVX2 pshufb nibble popcount into byte counters        */
/* ------------------------------------------------------------------ */

__attribute__((target("avx2,popcnt")))
static inline __m256i segsrv_cooc_pop8_avx2(__m256i v, __m256i lookup, __m256i low_mask) {
    __m256i lo = _mm256_and_si256(v, low_mask);
    __m256i hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), low_mask);
    return _mm256_add_epi8(_mm256_shuffle_epi8(lookup, lo), _mm256_shuffle_epi8(lookup, hi));
}

__attribute__((target("avx2,popcnt")))
static inline uint64_t segsrv_cooc_hsum_avx2(__m256i v) {
    return (uint64_t)_mm256_extract_epi64(v, 0) + (uint64_t)_mm256_extract_epi64(v, 1) +
           (uint64_t)_mm256_extract_epi64(v, 2) + (uint64_t)_mm256_extract_epi64(v, 3);
}

__attribute__((target("avx2,popcnt")))
static inline void segsrv_cooc_mk_avx2(const uint64_t *const *a, const uint64_t *const *b,
                                       size_t len, uint64_t *acc) {
    const uint64_t *a0 = a[0], *a1 = a[1], *b0 = b[0], *b1 = b[1];
    const __m256i lookup = _mm256_setr_epi8(
        0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4,
        0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4);
    const __m256i low_mask = _mm256_set1_epi8(0x0f);
    const __m256i zero = _mm256_setzero_si256();
    __m256i t00 = zero, t01 = zero, t10 = zero, t11 = zero;
    size_t nv = len / 4, v = 0, i;
    while (v < nv) {
        /* a byte counter gains <= 8 per vector: fold before it can pass 255 */
        size_t end = nv - v > 31 ? v + 31 : nv;
        __m256i c00 = zero, c01 = zero, c10 = zero, c11 = zero;
        for (; v < end; v++) {
            __m256i x0 = _mm256_loadu_si256((const __m256i *)(a0 + 4 * v));
            __m256i x1 = _mm256_loadu_si256((const __m256i *)(a1 + 4 * v));
            __m256i y0 = _mm256_loadu_si256((const __m256i *)(b0 + 4 * v));
            __m256i y1 = _mm256_loadu_si256((const __m256i *)(b1 + 4 * v));
            c00 = _mm256_add_epi8(c00, segsrv_cooc_pop8_avx2(_mm256_and_si256(x0, y0), lookup, low_mask));
            c01 = _mm256_add_epi8(c01, segsrv_cooc_pop8_avx2(_mm256_and_si256(x0, y1), lookup, low_mask));
            c10 = _mm256_add_epi8(c10, segsrv_cooc_pop8_avx2(_mm256_and_si256(x1, y0), lookup, low_mask));
            c11 = _mm256_add_epi8(c11, segsrv_cooc_pop8_avx2(_mm256_and_si256(x1, y1), lookup, low_mask));
        }
        t00 = _mm256_add_epi64(t00, _mm256_sad_epu8(c00, zero));
        t01 = _mm256_add_epi64(t01, _mm256_sad_epu8(c01, zero));
        t10 = _mm256_add_epi64(t10, _mm256_sad_epu8(c10, zero));
        t11 = _mm256_add_epi64(t11, _mm256_sad_epu8(c11, zero));
    }
    acc[0] = segsrv_cooc_hsum_avx2(t00);
    acc[1] = segsrv_cooc_hsum_avx2(t01);
    acc[2] = segsrv_cooc_hsum_avx2(t10);
    acc[3] = segsrv_cooc_hsum_avx2(t11);
    for (i = nv * 4; i < len; i++) {
        acc[0] += (uint64_t)__builtin_popcountll(a0[i] & b0[i]);
        acc[1] += (uint64_t)__builtin_popcountll(a0[i] & b1[i]);
        acc[2] += (uint64_t)__builtin_popcountll(a1[i] & b0[i]);
        acc[3] += (uint64_t)__builtin_popcountll(a1[i] & b1[i]);
    }
}

__attribute__((target("avx2,popcnt")))
static void segsrv_cooc_tile_avx2(const uint64_t *const *A, size_t na,
                                  const uint64_t *const *B, size_t nb, size_t w0,
                                  size_t len, int64_t *out, size_t ldo, int tri) {
    SEGSRV_COOC_TILE_BODY(2, segsrv_cooc_mk_avx2)
}

/* ------------------------------------------------------------------ */
/* level 3: 4x4, AVX-512 VPOPCNTDQ                                     */
/* ------------------------------------------------------------------ */

#define SEGSRV_COOC_512_STEP(LD)                                                \
    do {                                                                        \
        __m512i x0 = LD(a0), x1 = LD(a1), x2 = LD(a2), x3 = LD(a3);             \
        __m512i y0 = LD(b0), y1 = LD(b1), y2 = LD(b2), y3 = LD(b3);             \
        s00 = _mm512_add_epi64(s00, _mm512_popcnt_epi64(_mm512_and_si512(x0, y0))); \
        s01 = _mm512_add_epi64(s01, _mm512_popcnt_epi64(_mm512_and_si512(x0, y1))); \
        s02 = _mm512_add_epi64(s02, _mm512_popcnt_epi64(_mm512_and_si512(x0, y2))); \
        s03 = _mm512_add_epi64(s03, _mm512_popcnt_epi64(_mm512_and_si512(x0, y3))); \
        s10 = _mm512_add_epi64(s10, _mm512_popcnt_epi64(_mm512_and_si512(x1, y0))); \
        s11 = _mm512_add_epi64(s11, _mm512_popcnt_epi64(_mm512_and_si512(x1, y1))); \
        s12 = _mm512_add_epi64(s12, _mm512_popcnt_epi64(_mm512_and_si512(x1, y2))); \
        s13 = _mm512_add_epi64(s13, _mm512_popcnt_epi64(_mm512_and_si512(x1, y3))); \
        s20 = _mm512_add_epi64(s20, _mm512_popcnt_epi64(_mm512_and_si512(x2, y0))); \
        s21 = _mm512_add_epi64(s21, _mm512_popcnt_epi64(_mm512_and_si512(x2, y1))); \
        s22 = _mm512_add_epi64(s22, _mm512_popcnt_epi64(_mm512_and_si512(x2, y2))); \
        s23 = _mm512_add_epi64(s23, _mm512_popcnt_epi64(_mm512_and_si512(x2, y3))); \
        s30 = _mm512_add_epi64(s30, _mm512_popcnt_epi64(_mm512_and_si512(x3, y0))); \
        s31 = _mm512_add_epi64(s31, _mm512_popcnt_epi64(_mm512_and_si512(x3, y1))); \
        s32 = _mm512_add_epi64(s32, _mm512_popcnt_epi64(_mm512_and_si512(x3, y2))); \
        s33 = _mm512_add_epi64(s33, _mm512_popcnt_epi64(_mm512_and_si512(x3, y3))); \
    } while (0)

__attribute__((target("avx512f,avx512vpopcntdq")))
static inline void segsrv_cooc_mk_avx512(const uint64_t *const *a, const uint64_t *const *b,
                                         size_t len, uint64_t *acc) {
    const uint64_t *a0 = a[0], *a1 = a[1], *a2 = a[2], *a3 = a[3];
    const uint64_t *b0 = b[0], *b1 = b[1], *b2 = b[2], *b3 = b[3];
    __m512i s00 = _mm512_setzero_si512(), s01 = s00, s02 = s00, s03 = s00;
    __m512i s10 = s00, s11 = s00, s12 = s00, s13 = s00;
    __m512i s20 = s00, s21 = s00, s22 = s00, s23 = s00;
    __m512i s30 = s00, s31 = s00, s32 = s00, s33 = s00;
    size_t i = 0;
#define SEGSRV_LD_FULL(p) _mm512_loadu_si512((const void *)((p) + i))
    for (; i + 8 <= len; i += 8) SEGSRV_COOC_512_STEP(SEGSRV_LD_FULL);
#undef SEGSRV_LD_FULL
    if (i < len) {
        __mmask8 m = (__mmask8)((1u << (len - i)) - 1u);
#define SEGSRV_LD_MASK(p) _mm512_maskz_loadu_epi64(m, (const void *)((p) + i))
        SEGSRV_COOC_512_STEP(SEGSRV_LD_MASK);
#undef SEGSRV_LD_MASK
    }
    acc[0] = (uint64_t)_mm512_reduce_add_epi64(s00);
    acc[1] = (uint64_t)_mm512_reduce_add_epi64(s01);
    acc[2] = (uint64_t)_mm512_reduce_add_epi64(s02);
    acc[3] = (uint64_t)_mm512_reduce_add_epi64(s03);
    acc[4] = (uint64_t)_mm512_reduce_add_epi64(s10);
    acc[5] = (uint64_t)_mm512_reduce_add_epi64(s11);
    acc[6] = (uint64_t)_mm512_reduce_add_epi64(s12);
    acc[7] = (uint64_t)_mm512_reduce_add_epi64(s13);
    acc[8] = (uint64_t)_mm512_reduce_add_epi64(s20);
    acc[9] = (uint64_t)_mm512_reduce_add_epi64(s21);
    acc[10] = (uint64_t)_mm512_reduce_add_epi64(s22);
    acc[11] = (uint64_t)_mm512_reduce_add_epi64(s23);
    acc[12] = (uint64_t)_mm512_reduce_add_epi64(s30);
    acc[13] = (uint64_t)_mm512_reduce_add_epi64(s31);
    acc[14] = (uint64_t)_mm512_reduce_add_epi64(s32);
    acc[15] = (uint64_t)_mm512_reduce_add_epi64(s33);
}

__attribute__((target("avx512f,avx512vpopcntdq")))
static void segsrv_cooc_tile_avx512(const uint64_t *const *A, size_t na,
                                    const uint64_t *const *B, size_t nb, size_t w0,
                                    size_t len, int64_t *out, size_t ldo, int tri) {
    SEGSRV_COOC_TILE_BODY(4, segsrv_cooc_mk_avx512)
}
#endif /* SEGSRV_X86 */

/* Tile function of a dispatch level (levels as in popcnt.h; the caller
 * guarantees level <= segsrv_max_level()). */
static segsrv_cooc_tile_fn segsrv_cooc_tile_for(int level) {
#if SEGSRV_X86
    if (level >= SEGSRV_PATH_AVX512) return segsrv_cooc_tile_avx512;
    if (level == SEGSRV_PATH_AVX2) return segsrv_cooc_tile_avx2;
    if (level == SEGSRV_PATH_POPCNT) return segsrv_cooc_tile_popcnt;
#else
    (void)level;
#endif
    return segsrv_cooc_tile_generic;
}

/* Materialise sorted-or-not ids (all < 64 * n_words, checked by the caller)
 * as a bitset row that the caller zeroed. */
static void segsrv_cooc_set_ids(uint64_t *row, const uint32_t *ids, size_t n) {
    size_t i;
    for (i = 0; i < n; i++) row[ids[i] >> 6] |= (uint64_t)1 << (ids[i] & 63);
}

#endif /* SEGSRV_COOCCUR_H */
