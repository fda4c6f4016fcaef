/* The float32 similarity's two C kernels (loaded by ecomp_deap.native through ctypes; no
 * Python API):
 *
 * newton_rows_f32: the plain Newton phase of the perplexity search, fused: for each
 *   float32 row of squared distances, the Newton steps in t = log(beta) run on the row
 *   while it sits in L1 cache (one pass over it per entropy evaluation: exp, and the
 *   three sums), then the settled row's conditionals are written. The same steps as
 *   similarity._newton_phase, which stays the reference (and the path on GPUs, for
 *   float64, and without a C compiler). Rows it leaves unsettled go back to Python's
 *   bracketed search.
 * kl_from_conditionals_f32: the child's joint Q from those conditionals and KL(P || Q)
 *   against the parent's P, per matrix (similarity._kl_from_floored_q's result).
 * distances_from_gram_f32: squared distances from centred Gram matrices in place, the
 *   float32 arithmetic of similarity.distances_from_gram's three torch passes in one.
 *
 * All run on OpenMP threads when built with it (see parallel_ranges). */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#define INLINE static inline __attribute__((always_inline))

/* Eight floats; GCC's vector extensions (AVX2 registers in the AVX2 build of a kernel,
 * pairs of SSE registers in the baseline one), so that the per-entry loops are vector
 * code whatever the auto-vectoriser decides. */
typedef float v8f __attribute__((vector_size(32)));
typedef int32_t v8i __attribute__((vector_size(32)));
#define LANES 8

/* exp(x) for x <= 0, float32: Cody-Waite reduction by ln 2 and Cephes' degree-6
 * polynomial (about 1 ulp). exp(0) = 1 exactly. Arguments below -87 give exp(-87) ~
 * 1.6e-38 instead of a subnormal or 0 (negligible: every row's sum is >= 1); NaN stays
 * NaN. */
INLINE v8f exp_nonpos(v8f x) {
    const v8f lo = (v8f){0} - 87.0f;
    v8i below = x < lo; /* -1 where x < -87 (false for NaN) */
    x = (v8f)((below & (v8i)lo) | (~below & (v8i)x));
    v8i k = __builtin_convertvector(x * 1.44269504088896341f - 0.5f, v8i); /* round half away from 0 (x <= 0) */
    v8f n = __builtin_convertvector(k, v8f);
    v8f r = x - n * 0.693359375f + n * 2.12194440e-4f;
    v8f p = (v8f){0} + 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    return p * (v8f)((k + 127) << 23); /* times 2^k */
}

INLINE float lane_sum(v8f v) {
    float s = 0.0f;
    for (int i = 0; i < LANES; i++) s += v[i];
    return s;
}

/* sums over the row x (Lp entries, a multiple of LANES, 32-byte aligned) of e = exp(-beta
 * x) mask, e x and e x^2 (mask: 1 for a neighbour, 0 for the own entry and the padding) */
INLINE void sums(const float *x, const float *mask, int64_t Lp, float nb, float *z, float *s1, float *s2) {
    v8f a = {0}, b = {0}, c = {0};
    for (int64_t j = 0; j < Lp; j += LANES) {
        v8f xv = *(const v8f *)(x + j);
        v8f e = exp_nonpos(xv * nb) * *(const v8f *)(mask + j);
        v8f ex = e * xv;
        a += e;
        b += ex;
        c += ex * xv;
    }
    *z = lane_sum(a);
    *s1 = lane_sum(b);
    *s2 = lane_sum(c);
}

/* One search: rows r = 0 .. n-1 of d (row stride ld, L entries each). With period > 0,
 * row r's own entry is column r % period: not a neighbour (left out of the minimum and
 * the sums, 0 in the output). t_init: starting log(beta) per row (NaN or inf: the
 * cumulant-expansion guess), or NULL. For each row that settles (|H - target| < tol),
 * or every row at the last step when final != 0: out row r (stride L) = its
 * conditionals, n_iter = evaluations, t_out = log(beta) written (after the polish
 * step), done = 1, or 2 where the written row is not finite (a NaN or an infinity in
 * the row: such a row never settles, so only at the last step). A row left unsettled
 * after `steps` evaluations: t_out = the last evaluated log(beta), done and out row
 * untouched (the caller zeroes done). */
typedef struct {
    const float *d;
    int64_t L, ld, period;
    const float *t_init;
    double target, tol;
    int64_t steps, final;
    double max_step, polish_max, floor_var;
    float *out;
    int64_t *n_iter;
    float *t_out;
    uint8_t *done;
} search_t;

#define PAD 16 /* a multiple of LANES */
static int64_t padded(int64_t L) { return (L + PAD - 1) / PAD * PAD; }

/* rows [r0, r1) of the search s; work: 3 padded(L) floats, 64-byte aligned */
INLINE void newton_rows(const search_t *s, int64_t r0, int64_t r1, float *work) {
    /* x: the row minus its minimum, padded with zeros to whole vectors; mask: 1 for the
     * neighbours, 0 for the own entry and the padding */
    const int64_t L = s->L, Lp = padded(L);
    float *x = work, *e = work + Lp, *mask = work + 2 * Lp;
    for (int64_t j = 0; j < Lp; j++) mask[j] = j < L ? 1.0f : 0.0f;
    int64_t masked = -1; /* the own entry whose mask is 0 now */
    for (int64_t r = r0; r < r1; r++) {
        const float *row = s->d + r * s->ld;
        int64_t own = s->period > 0 ? r % s->period : -1;
        int64_t M = own >= 0 ? L - 1 : L;
        if (masked >= 0) mask[masked] = 1.0f;
        if (own >= 0) mask[own] = 0.0f;
        masked = own;
        for (int64_t j = 0; j < L; j++) x[j] = row[j];
        for (int64_t j = L; j < Lp; j++) x[j] = INFINITY; /* padding and own entry: not the minimum */
        if (own >= 0) x[own] = INFINITY;
        v8f lo = *(const v8f *)x;
        for (int64_t j = LANES; j < Lp; j += LANES) {
            v8f xv = *(const v8f *)(x + j);
            v8i less = xv < lo; /* NaN: not less */
            lo = (v8f)((less & (v8i)xv) | (~less & (v8i)lo));
        }
        float mn = lo[0];
        for (int i = 1; i < LANES; i++) mn = lo[i] < mn ? lo[i] : mn;
        for (int64_t j = 0; j < Lp; j += LANES) {
            v8f xv = *(const v8f *)(x + j) - mn;
            *(v8f *)(x + j) = xv;
        }
        for (int64_t j = L; j < Lp; j++) x[j] = 0.0f;
        if (own >= 0) x[own] = 0.0f;
        double t = s->t_init ? (double)s->t_init[r] : NAN;
        if (!isfinite(t)) { /* H(beta) ~= log M - beta^2 Var_uniform(d) / 2 */
            v8f sx = {0}, sxx = {0};
            for (int64_t j = 0; j < Lp; j += LANES) {
                v8f xv = *(const v8f *)(x + j);
                sx += xv;
                sxx += xv * xv;
            }
            double mean = lane_sum(sx) / M, var = lane_sum(sxx) / M - mean * mean;
            if (!(var >= s->floor_var)) var = s->floor_var;
            t = 0.5 * log(2.0 * (log((double)M) - s->target) / var);
        }
        s->done[r] = 0;
        for (int64_t it = 1; it <= s->steps; it++) {
            double beta = exp(t);
            float z, s1, s2;
            sums(x, mask, Lp, (float)-beta, &z, &s1, &s2);
            double zz = z; /* >= 1: the minimum's exp(0) */
            double m = s1 / zz, v = s2 / zz - m * m;
            if (v < 0.0) v = 0.0;
            double err = log(zz) + beta * m - s->target; /* H - target */
            int settled = fabs(err) < s->tol;
            int end = it == s->steps && s->final;
            double step = err / (beta * beta * v); /* dH/dt = -beta^2 Var_p[d] */
            if (settled || end) {
                /* the polish: one more step, unevaluated, where it is small */
                double tn = settled && fabs(step) <= s->polish_max ? t + step : t;
                float nb = (float)-exp(tn);
                v8f acc = {0};
                for (int64_t j = 0; j < Lp; j += LANES) {
                    v8f ev = exp_nonpos(*(const v8f *)(x + j) * nb) * *(const v8f *)(mask + j);
                    *(v8f *)(e + j) = ev;
                    acc += ev;
                }
                float zs = lane_sum(acc);
                float inv = (float)(1.0 / (double)zs);
                float *o = s->out + r * L;
                for (int64_t j = 0; j < L; j++) o[j] = e[j] * inv;
                s->n_iter[r] = it;
                s->t_out[r] = (float)tn;
                s->done[r] = isfinite(zs) ? 1 : 2; /* zs >= 1 unless NaN: the row is finite */
                break;
            }
            if (step > s->max_step) step = s->max_step; /* NaN stays NaN */
            else if (step < -s->max_step) step = -s->max_step;
            if (it == s->steps) {
                s->t_out[r] = (float)t;
                s->n_iter[r] = s->steps;
                break;
            }
            t = t + step;
        }
    }
}

/* Each kernel is compiled twice: for AVX2 with FMA where the CPU has them (chosen at
 * run time), and for the compiler's baseline. A range function does items [a, b) of a
 * job with `work` bytes of 64-byte aligned scratch. */
#if defined(__x86_64__) && defined(__GNUC__)
#define HAVE_AVX2_PATH 1
#define AVX2 __attribute__((target("avx2,fma")))
#else
#define AVX2 /* no AVX2 build: that variant is a second baseline one, never chosen */
#endif
typedef void (*range_fn)(const void *job, int64_t a, int64_t b, void *work);

/* A kernel's two range functions, body_avx2 and body_base, around its inline body */
#define RANGE_FUNCTIONS(body)                                                                              \
    AVX2 static void body##_avx2(const void *job, int64_t a, int64_t b, void *work) { body(job, a, b, work); } \
    static void body##_base(const void *job, int64_t a, int64_t b, void *work) { body(job, a, b, work); }

/* Items [0, n) of a job on `threads` threads, each a contiguous range (OpenMP where the
 * library was built with it: the runtime torch has loaded, so the kernels run on torch's
 * own worker threads); an item's result does not depend on the split. A thread whose
 * scratch cannot be allocated calls no_memory on its range instead. */
static void parallel_ranges(const void *job, int64_t n, int64_t threads, size_t work, range_fn avx2, range_fn base,
                            void (*no_memory)(const void *job, int64_t a, int64_t b)) {
    range_fn fn = base;
#ifdef HAVE_AVX2_PATH
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) fn = avx2;
#endif
    if (threads < 1) threads = 1;
#pragma omp parallel num_threads(threads) if (threads > 1)
    {
        int64_t nt = 1, id = 0;
#ifdef _OPENMP
        nt = omp_get_num_threads();
        id = omp_get_thread_num();
#endif
        int64_t a = n * id / nt, b = n * (id + 1) / nt;
        void *scratch = aligned_alloc(64, (work + 63) / 64 * 64);
        if (scratch) {
            fn(job, a, b, scratch);
            free(scratch);
        } else {
            no_memory(job, a, b);
        }
    }
}

RANGE_FUNCTIONS(newton_rows)
static void rows_left_undone(const void *s, int64_t r0, int64_t r1) {} /* the caller's fallback search takes them */

/* The search (see search_t) on `threads` threads. */
void newton_rows_f32(const float *d, int64_t n, int64_t L, int64_t ld, int64_t period, const float *t_init,
                     double target, double tol, int64_t steps, int64_t final, double max_step, double polish_max,
                     double floor_var, float *out, int64_t *n_iter, float *t_out, uint8_t *done, int64_t threads) {
    search_t s = {d, L, ld, period, t_init, target, tol, steps, final, max_step, polish_max, floor_var,
                  out, n_iter, t_out, done};
    parallel_ranges(&s, n, threads, (size_t)(3 * padded(L)) * sizeof(float), newton_rows_avx2, newton_rows_base,
                    rows_left_undone);
}

/* ------------------------------------------------------------------------------------ */
/* KL(P || Q) of a child's joint Q, built from its conditionals, against the parent's P. */

typedef double v4d __attribute__((vector_size(32)));
typedef int64_t v4l __attribute__((vector_size(32)));

/* log(x) for normal x > 0, four doubles: x = m 2^k with m in [sqrt(1/2), sqrt(2)),
 * log m = 2 atanh(s), s = (m - 1) / (m + 1), |s| < 0.172, its series to s^21 (error
 * below 1e-17 relative). */
INLINE v4d log_pos(v4d x) {
    v4l bits = (v4l)x;
    v4l k = ((bits >> 52) & 0x7ff) - 1023;
    v4d m = (v4d)((bits & 0x000fffffffffffffLL) | 0x3ff0000000000000LL); /* [1, 2) */
    v4l big = m > 1.4142135623730951;                                    /* -1 where m > sqrt 2 */
    m = (v4d)(((v4l)(m * 0.5) & big) | ((v4l)m & ~big));
    k = k - big;
    v4d s = (m - 1.0) / (m + 1.0), s2 = s * s;
    v4d p = (v4d){0} + 1.0 / 21;
    p = p * s2 + 1.0 / 19;
    p = p * s2 + 1.0 / 17;
    p = p * s2 + 1.0 / 15;
    p = p * s2 + 1.0 / 13;
    p = p * s2 + 1.0 / 11;
    p = p * s2 + 1.0 / 9;
    p = p * s2 + 1.0 / 7;
    p = p * s2 + 1.0 / 5;
    p = p * s2 + 1.0 / 3;
    p = p * s2 + 1.0;
    return __builtin_convertvector(k, v4d) * 0.6931471805599453 + 2.0 * s * p;
}

typedef struct {
    const float *c;   /* (g, B, B) conditionals, matrix m at c + m B B; either orientation */
    int64_t B;
    const double *p;  /* parent P, matrix m at p + m p_stride (0: one P for all) */
    int64_t p_stride;
    const double *term; /* (g,) sum P log P */
    double eps;
    double *out;      /* (g,) */
} kl_t;

typedef double v4du __attribute__((vector_size(32), aligned(8))); /* unaligned loads */

/* matrices [m0, m1): Q = (C + C^T) / sum(C + C^T), off-diagonal floored at eps; KL =
 * term - sum_{i != j} P_ij log Q_ij = term - 2 sum_{i < j} P_ij log Q_ij (P and Q are
 * symmetric), at least 0; NaN where C has a NaN. work: 2 (B + 4) doubles. */
INLINE void kl_matrices(const kl_t *s, int64_t m0, int64_t m1, double *work) {
    const int64_t B = s->B;
    double *q = work, *pp = work + B + 4; /* row i's Q_ij and P_ij, j > i, padded to whole vectors */
    for (int64_t m = m0; m < m1; m++) {
        const float *c = s->c + m * B * B;
        const double *p = s->p + m * s->p_stride;
        v4d sum = {0};
        int64_t i = 0;
        for (; i + 4 <= B * B; i += 4) sum += (v4d){c[i], c[i + 1], c[i + 2], c[i + 3]};
        double total = sum[0] + sum[1] + sum[2] + sum[3];
        for (; i < B * B; i++) total += c[i];
        total *= 2.0; /* the sum of C + C^T */
        if (!(total > 0.0) || !isfinite(total)) {
            s->out[m] = NAN;
            continue;
        }
        const double inv = 1.0 / total;
        const v4d eps = (v4d){0} + s->eps;
        v4d acc = {0};
        for (i = 0; i < B - 1; i++) {
            int64_t n = B - 1 - i, j;
            for (j = 0; j < n; j++) {
                q[j] = ((double)c[i * B + i + 1 + j] + (double)c[(i + 1 + j) * B + i]) * inv;
                pp[j] = p[i * B + i + 1 + j];
            }
            for (; j % 4; j++) { /* padding: Q = 1 (log 0), P = 0 */
                q[j] = 1.0;
                pp[j] = 0.0;
            }
            for (int64_t k = 0; k < j; k += 4) {
                v4d qv = *(const v4du *)(q + k);
                v4l small = qv < eps; /* the floor (false for NaN) */
                qv = (v4d)(((v4l)eps & small) | ((v4l)qv & ~small));
                acc += *(const v4du *)(pp + k) * log_pos(qv);
            }
        }
        double kl = s->term[m] - 2.0 * (acc[0] + acc[1] + acc[2] + acc[3]);
        s->out[m] = kl > 0.0 ? kl : 0.0; /* the difference can round below 0 when Q == P */
    }
}

RANGE_FUNCTIONS(kl_matrices)
static void kl_unknown(const void *s, int64_t m0, int64_t m1) { /* NaN: the caller computes these again */
    for (int64_t m = m0; m < m1; m++) ((const kl_t *)s)->out[m] = NAN;
}

/* out[m] = KL(P_m || Q_m) for g matrices (see kl_t) on `threads` threads */
void kl_from_conditionals_f32(const float *c, int64_t g, int64_t B, const double *p, int64_t p_stride,
                              const double *term, double eps, double *out, int64_t threads) {
    kl_t s = {c, B, p, p_stride, term, eps, out};
    parallel_ranges(&s, g, threads, (size_t)(2 * (B + 4)) * sizeof(double), kl_matrices_avx2, kl_matrices_base,
                    kl_unknown);
}

/* ------------------------------------------------------------------------------------ */
/* Squared distances from centred Gram matrices, in place. */

typedef struct {
    float *g;        /* (n, B, B) Gram matrices, overwritten by the distances */
    const float *sq; /* (n, B) their diagonals, read before */
    int64_t B;
} distances_t;

/* matrices [m0, m1): D_ij = max((sq_i - 2 G_ij) + sq_j, 0) (NaN stays NaN), D_ii = 0:
 * the roundings of torch.add(sq_i, G, alpha=-2), then + sq_j, clamp and the zeroed
 * diagonal (-2 G is exact, fused or not) */
INLINE void distance_matrices(const distances_t *s, int64_t m0, int64_t m1, void *work) {
    (void)work;
    const int64_t B = s->B;
    for (int64_t m = m0; m < m1; m++) {
        float *g = s->g + m * B * B;
        const float *sq = s->sq + m * B;
        for (int64_t i = 0; i < B; i++) {
            float *row = g + i * B;
            const float si = sq[i];
            for (int64_t j = 0; j < B; j++) {
                float v = si + row[j] * -2.0f;
                v = v + sq[j];
                row[j] = v < 0.0f ? 0.0f : v;
            }
            row[i] = 0.0f;
        }
    }
}

RANGE_FUNCTIONS(distance_matrices)
static void distances_without_scratch(const void *s, int64_t m0, int64_t m1) { /* it needs none */
    distance_matrices_base(s, m0, m1, NULL);
}

/* g (n, B, B) float32 Gram matrices -> their squared distances, in place, given their
 * diagonals sq (n, B), on `threads` threads */
void distances_from_gram_f32(float *g, const float *sq, int64_t n, int64_t B, int64_t threads) {
    distances_t s = {g, sq, B};
    parallel_ranges(&s, n, threads, 64, distance_matrices_avx2, distance_matrices_base,
                    distances_without_scratch);
}
