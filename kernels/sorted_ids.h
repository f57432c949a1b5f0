/*
 * sorted_ids.h -- helpers over sorted, unique uint32 id arrays and bitsets.
 * Plain C; no dispatch needed (branch-free merge, galloping search, bit scans).
 */
#ifndef SEGSRV_SORTED_IDS_H
#define SEGSRV_SORTED_IDS_H

#include <stddef.h>
#include <stdint.h>

/* Branch-free merge count of |a & b|, both sorted ascending & unique. */
static size_t segsrv_merge_count(const uint32_t *a, size_t na, const uint32_t *b, size_t nb) {
    size_t i = 0, j = 0, c = 0;
    while (i < na && j < nb) {
        uint32_t x = a[i], y = b[j];
        c += (x == y);
        i += (x <= y);
        j += (y <= x);
    }
    return c;
}

/* First index p in [lo, n) with b[p] >= x (n if none); galloping from lo. */
static inline size_t segsrv_gallop(const uint32_t *b, size_t lo, size_t n, uint32_t x) {
    size_t step = 1, hi = lo;
    if (lo >= n || b[lo] >= x) return lo;
    /* invariant: b[lo] < x */
    for (;;) {
        hi = lo + step;
        if (hi >= n) { hi = n; break; }
        if (b[hi] >= x) break;
        lo = hi;
        step <<= 1;
    }
    /* b[lo] < x, and (hi == n or b[hi] >= x): binary search in (lo, hi] */
    while (hi - lo > 1) {
        size_t mid = lo + (hi - lo) / 2;
        if (b[mid] < x) lo = mid; else hi = mid;
    }
    return hi;
}

/* |small & large| by galloping through `large` for each element of `small`. */
static size_t segsrv_gallop_count(const uint32_t *s, size_t ns, const uint32_t *l, size_t nl) {
    size_t i, p = 0, c = 0;
    for (i = 0; i < ns && p < nl; i++) {
        p = segsrv_gallop(l, p, nl, s[i]);
        if (p < nl && l[p] == s[i]) { c++; p++; }
    }
    return c;
}

/* Sorted-set intersection size; merges when sizes are similar, gallops otherwise. */
static size_t segsrv_intersect_count(const uint32_t *a, size_t na, const uint32_t *b, size_t nb) {
    if (na == 0 || nb == 0) return 0;
    /* disjoint ranges: nothing to do */
    if (a[na - 1] < b[0] || b[nb - 1] < a[0]) return 0;
    if (na * 32 < nb) return segsrv_gallop_count(a, na, b, nb);
    if (nb * 32 < na) return segsrv_gallop_count(b, nb, a, na);
    return segsrv_merge_count(a, na, b, nb);
}

/* Number of ids whose bit is set in bitset q of n_bits bits; *bad = 1 if an
   id is >= n_bits (such ids are not counted). */
static size_t segsrv_probe_count(const uint64_t *q, uint64_t n_bits, const uint32_t *ids,
                                 size_t n, int *bad) {
    size_t i = 0, c0 = 0, c1 = 0, c2 = 0, c3 = 0;
    for (; i + 4 <= n; i += 4) {
        uint32_t a = ids[i], b = ids[i + 1], c = ids[i + 2], d = ids[i + 3];
        uint32_t m1 = a > b ? a : b, m2 = c > d ? c : d;
        if ((uint64_t)(m1 > m2 ? m1 : m2) >= n_bits) break; /* slow path below */
        if (i + 64 < n && (uint64_t)ids[i + 64] < n_bits) /* sparse ids: each probe is a new cache line */
            __builtin_prefetch(&q[ids[i + 64] >> 6], 0, 0);
        c0 += (q[a >> 6] >> (a & 63)) & 1;
        c1 += (q[b >> 6] >> (b & 63)) & 1;
        c2 += (q[c >> 6] >> (c & 63)) & 1;
        c3 += (q[d >> 6] >> (d & 63)) & 1;
    }
    for (; i < n; i++) {
        uint32_t a = ids[i];
        if ((uint64_t)a >= n_bits) { *bad = 1; continue; }
        c0 += (q[a >> 6] >> (a & 63)) & 1;
    }
    return c0 + c1 + c2 + c3;
}

/* Write the positions of set bits of bits[0..n_words) (masked to n_bits) to
   out; returns the count written. */
static size_t segsrv_bits_to_ids(const uint64_t *bits, size_t n_words, uint64_t n_bits,
                                 uint32_t *out) {
    size_t w, c = 0;
    for (w = 0; w < n_words; w++) {
        uint64_t x = bits[w];
        uint64_t base = (uint64_t)w << 6;
        if (base + 64 > n_bits) {
            if (base >= n_bits) break;
            x &= (~0ULL) >> (64 - (n_bits - base));
        }
        while (x) {
            out[c++] = (uint32_t)(base + (uint64_t)__builtin_ctzll(x));
            x &= x - 1;
        }
    }
    return c;
}

#endif /* SEGSRV_SORTED_IDS_H */
