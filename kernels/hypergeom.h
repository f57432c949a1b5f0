/*
 * hypergeom.h -- log tail probabilities of the hypergeometric distribution
 * for segsrv._kernels.hypergeom.  Plain C, no dispatch.
 *
 * X ~ Hypergeometric(population N, successes K, draws n):
 *   pmf(x) = C(K, x) C(N-K, n-x) / C(N, n),  max(0, n+K-N) <= x <= min(n, K).
 *
 * log pmf at one point uses Loader's saddle-point form (as R's dhyper):
 *   log pmf(x) = ldbinom(x; K, p) + ldbinom(n-x; N-K, p) - ldbinom(n; N, p),
 *   p = n/N, with ldbinom from stirlerr() and the deviance bd0(), so the
 *   large terms cancel algebraically instead of in floating point
 *   (lgamma differences lose ~|lgamma(N)| * 1e-16, i.e. 1e-6 relative at N = 1e9).
 *
 * A tail is then pmf(start) * sum of the ratio recursion
 *   pmf(x+1)/pmf(x) = (K-x)(n-x) / ((x+1)(N-K-n+x+1))
 * walked away from the mode, where the terms decrease geometrically (the pmf is
 * log-concave, so the current ratio bounds all later ones): the walk stops
 * when the rest of the tail, bounded by t * r / (1 - r), is below 1e-17 of the
 * running sum.  A tail containing the mode is 1 - (its complement, a tail
 * not containing the mode), returned as log1p(-complement) while the
 * complement is <= 1/2; past that the tail itself is summed outward from the
 * mode (it then starts within a few points of the mode).
 */
#ifndef SEGSRV_HYPERGEOM_H
#define SEGSRV_HYPERGEOM_H

#include <float.h>
#include <math.h>
#include <stdint.h>

#define SEGSRV_LN_2PI 1.837877066409345483560659472811 /* log(2 pi) */
#define SEGSRV_HG_EPS 1e-17

/* stirlerr(n) = log(n!) - log(sqrt(2 pi n) (n/e)^n), exact table for n <= 15. */
static const double segsrv_sferr[16] = {
    0.0, /* n = 0: unused */
    0.0810614667953272582196702,
    0.0413406959554092940938221,
    0.02767792568499833914878929,
    0.02079067210376509311152277,
    0.01664469118982119216319487,
    0.01387612882307074799874573,
    0.01189670994589177009505572,
    0.010411265261972096497478567,
    0.009255462182712732917728637,
    0.008330563433362871256469318,
    0.007573675487951840794972024,
    0.006942840107209529865664152,
    0.006408994188004207068439631,
    0.005951370112758847735624416,
    0.005554733551962801371038690,
};

/* n: a non-negative integer value */
static double segsrv_stirlerr(double n) {
    const double S0 = 1.0 / 12, S1 = 1.0 / 360, S2 = 1.0 / 1260, S3 = 1.0 / 1680,
                 S4 = 1.0 / 1188;
    double nn;
    if (n <= 15.0) return segsrv_sferr[(int)n];
    nn = n * n;
    if (n > 500) return (S0 - S1 / nn) / n;
    if (n > 80) return (S0 - (S1 - S2 / nn) / nn) / n;
    if (n > 35) return (S0 - (S1 - (S2 - S3 / nn) / nn) / nn) / n;
    return (S0 - (S1 - (S2 - (S3 - S4 / nn) / nn) / nn) / nn) / n;
}

/* Deviance term bd0(x, M) = x log(x/M) + M - x, accurate when x ~ M (Loader). */
static double segsrv_bd0(double x, double np) {
    if (fabs(x - np) < 0.1 * (x + np)) {
        double v = (x - np) / (x + np);
        double s = (x - np) * v, ej, s1;
        int j;
        if (fabs(s) < DBL_MIN) return s;
        ej = 2 * x * v;
        v = v * v;
        for (j = 1; j < 1000; j++) {
            ej *= v;
            s1 = s + ej / ((j << 1) + 1);
            if (s1 == s) return s1;
            s = s1;
        }
    }
    return x * log(x / np) + np - x;
}

/* log of the binomial pmf C(n, x) p^x q^(n-x) (up to the n(p+q-1) term that
 * cancels in segsrv_hg_logpmf); 0 <= x <= n, 0 < p, q and p + q == 1. */
static double segsrv_ldbinom(double x, double n, double p, double q) {
    double lc, lf;
    if (x == 0) {
        if (n == 0) return 0.0;
        return p < 0.1 ? -segsrv_bd0(n, n * q) - n * p : n * log(q);
    }
    if (x == n) return q < 0.1 ? -segsrv_bd0(n, n * p) - n * q : n * log(p);
    lc = segsrv_stirlerr(n) - segsrv_stirlerr(x) - segsrv_stirlerr(n - x) -
         segsrv_bd0(x, n * p) - segsrv_bd0(n - x, n * q);
    lf = SEGSRV_LN_2PI + log(x) + log1p(-x / n);
    return lc - 0.5 * lf;
}

/* log pmf(x); requires 0 < n < N, 0 < K < N and x in the support. */
static double segsrv_hg_logpmf(double x, double K, double n, double N) {
    double q = 1.0 - n / N; /* then p = 1 - q exactly (q >= 1/2) or q = 1 - p exactly */
    double p = 1.0 - q;
    if (n / N >= 0.5) {
        p = n / N;
        q = 1.0 - p;
    }
    return segsrv_ldbinom(x, K, p, q) + segsrv_ldbinom(n - x, N - K, p, q) -
           segsrv_ldbinom(n, N, p, q);
}

/* log of sum_{x >= k} pmf(x)/pmf(k) (terms decreasing: k > mode). */
static double segsrv_hg_log_sum_up(double k, double hi, double K, double n, double N) {
    double a = K - k, b = n - k, c = k + 1, d = N - K - n + k + 1;
    double t = 1.0, s = 1.0, r;
    double x = k;
    while (x < hi) {
        r = (a * b) / (c * d);
        t *= r;
        s += t;
        x += 1;
        if (t * r <= SEGSRV_HG_EPS * s * (1.0 - r) || t == 0.0) break;
        a -= 1; b -= 1; c += 1; d += 1;
    }
    return log(s);
}

/* log of sum_{x <= k} pmf(x)/pmf(k) (terms decreasing: k < mode). */
static double segsrv_hg_log_sum_down(double k, double lo, double K, double n, double N) {
    /* pmf(x-1)/pmf(x) = x (N-K-n+x) / ((K-x+1)(n-x+1)) */
    double a = k, b = N - K - n + k, c = K - k + 1, d = n - k + 1;
    double t = 1.0, s = 1.0, r;
    double x = k;
    while (x > lo) {
        r = (a * b) / (c * d);
        t *= r;
        s += t;
        x -= 1;
        if (t * r <= SEGSRV_HG_EPS * s * (1.0 - r) || t == 0.0) break;
        a -= 1; b -= 1; c += 1; d += 1;
    }
    return log(s);
}

/* Most likely value (the largest one if two tie), clamped to [lo, hi]. */
static int64_t segsrv_hg_mode(int64_t K, int64_t n, int64_t N, int64_t lo, int64_t hi) {
    int64_t m;
#ifdef __SIZEOF_INT128__
    m = (int64_t)(((unsigned __int128)(n + 1) * (unsigned __int128)(K + 1)) /
                  (unsigned __int128)(N + 2));
#else
    m = (int64_t)floorl(((long double)(n + 1) * (long double)(K + 1)) / (long double)(N + 2));
#endif
    return m < lo ? lo : (m > hi ? hi : m);
}

/* Kullback-Leibler divergence D(t || p) of Bernoulli(t) from Bernoulli(p), 0 < p < t <= 1. */
static double segsrv_kl(double t, double p) {
    return t * log(t / p) + (t < 1.0 ? (1.0 - t) * log((1.0 - t) / (1.0 - p)) : 0.0);
}

/* log P(X >= k); -INFINITY, without the walk, where it is bounded below `floor` (-INFINITY: never). */
static double segsrv_hg_log_upper(int64_t k, int64_t K, int64_t n, int64_t N, double floor) {
    int64_t lo = n + K - N > 0 ? n + K - N : 0;
    int64_t hi = n < K ? n : K;
    int64_t mode;
    double dK = (double)K, dn = (double)n, dN = (double)N, logc, s;
    if (k <= lo) return 0.0;
    if (k > hi) return -INFINITY;
    /* lo < k <= hi: a support of >= 2 points, so 0 < n < N and 0 < K < N */
    mode = segsrv_hg_mode(K, n, N, lo, hi);
    if (k > mode) {
        double lp, t = (double)k / dn, pk = dK / dN;
        if (floor > -INFINITY && t > pk) {
            /* Hoeffding (1963): P(X >= k) <= exp(-n D(k/n || K/N)) for k/n >= K/N, as for the binomial,
             * and the same with n and K swapped (X's law is symmetric in them); two logs each instead of
             * log pmf's ten */
            double tK = (double)k / dK, pn = dn / dN;
            if (-dn * segsrv_kl(t, pk) < floor || (tK > pn && -dK * segsrv_kl(tK, pn) < floor))
                return -INFINITY;
        }
        lp = segsrv_hg_logpmf((double)k, dK, dn, dN);
        if (lp < floor) {
            /* the terms decrease at least as fast as their first ratio r (log-concave pmf): the sum of
             * pmf(x)/pmf(k) over x >= k is at most 1 / (1 - r) */
            double r = k < hi ? ((dK - (double)k) * (dn - (double)k)) /
                                    (((double)k + 1) * (dN - dK - dn + (double)k + 1))
                              : 0.0;
            if (r < 1.0 && lp - log1p(-r) < floor) return -INFINITY;
        }
        return lp + segsrv_hg_log_sum_up((double)k, (double)hi, dK, dn, dN);
    }
    /* the tail holds the mode: complement P(X <= k-1), k-1 < mode */
    logc = segsrv_hg_logpmf((double)(k - 1), dK, dn, dN) +
           segsrv_hg_log_sum_down((double)(k - 1), (double)lo, dK, dn, dN);
    if (logc <= -0.6931471805599453) return log1p(-exp(logc));
    /* complement > 1/2: sum the tail itself from the mode, down to k and up */
    {
        double a = (double)mode, b = dN - dK - dn + (double)mode, c = dK - (double)mode + 1,
               d = dn - (double)mode + 1, t = 1.0, r;
        int64_t x;
        s = 1.0;
        for (x = mode; x > k; x--) { /* pmf(x-1)/pmf(x) */
            r = (a * b) / (c * d);
            t *= r;
            s += t;
            a -= 1; b -= 1; c += 1; d += 1;
        }
        if (mode < hi) {
            double lu = segsrv_hg_log_sum_up((double)mode + 1, (double)hi, dK, dn, dN);
            /* pmf(mode+1)/pmf(mode) */
            r = ((dK - (double)mode) * (dn - (double)mode)) /
                (((double)mode + 1) * (dN - dK - dn + (double)mode + 1));
            s += r * exp(lu);
        }
        return segsrv_hg_logpmf((double)mode, dK, dn, dN) + log(s);
    }
}

/* log P(X >= k) (upper != 0) or log P(X <= k); P(X <= k) = P(n - X >= n - k)
 * with n - X ~ Hypergeometric(N, N-K, n).  Arguments validated by the caller
 * (0 <= K <= N, 0 <= n <= N). */
static double segsrv_hg_log_tail(int64_t k, int64_t K, int64_t n, int64_t N, int upper, double floor) {
    int64_t lo, hi;
    if (upper) return segsrv_hg_log_upper(k, K, n, N, floor);
    lo = n + K - N > 0 ? n + K - N : 0;
    hi = n < K ? n : K;
    if (k >= hi) return 0.0;
    if (k < lo) return -INFINITY;
    return segsrv_hg_log_upper(n - k, N - K, n, N, floor);
}

#endif /* SEGSRV_HYPERGEOM_H */
