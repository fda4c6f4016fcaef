/* The plain Newton phase of the perplexity search, fused: for each float32 row of
 * squared distances, the Newton steps in t = log(beta) run on the row while it sits in
 * L1 cache (one pass over it per entropy evaluation: exp, and the three sums), then the
 * settled row's conditionals are written. Same steps as similarity._newton_phase, which
 * stays the reference (and the path on GPUs, for float64, and without a C compiler).
 * Rows it leaves unsettled go back to Python's bracketed search.
 *
 * Built by ecomp_deap.native with the system C compiler; no Python API, called through
 * ctypes (which releases the GIL, so Python threads run row ranges in parallel). */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#define INLINE static inline __attribute__((always_inline))

/* Eight floats; GCC's vector extensions (AVX2 registers in the avx2 clone, pairs of SSE
 * registers otherwise), so that the per-entry loops are vector code whatever the
 * auto-vectoriser decides. */
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
 * step), done = 1. A row left unsettled after `steps` evaluations: t_out = the last
 * evaluated log(beta), done and out row untouched (the caller zeroes done). */
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
        v8f sx = {0}, sxx = {0};
        for (int64_t j = 0; j < Lp; j += LANES) {
            v8f xv = *(const v8f *)(x + j) - mn;
            *(v8f *)(x + j) = xv;
        }
        for (int64_t j = L; j < Lp; j++) x[j] = 0.0f;
        if (own >= 0) x[own] = 0.0f;
        for (int64_t j = 0; j < Lp; j += LANES) {
            v8f xv = *(const v8f *)(x + j);
            sx += xv;
            sxx += xv * xv;
        }
        double t = s->t_init ? (double)s->t_init[r] : NAN;
        if (!isfinite(t)) { /* H(beta) ~= log M - beta^2 Var_uniform(d) / 2 */
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
                s->done[r] = 1;
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

/* The same code compiled twice: for AVX2 with FMA where the CPU has them (chosen at run
 * time), and for the compiler's baseline. */
#if defined(__x86_64__) && defined(__GNUC__)
#define HAVE_AVX2_PATH 1
__attribute__((target("avx2,fma"))) static void newton_rows_avx2(const search_t *s, int64_t r0, int64_t r1, float *work) {
    newton_rows(s, r0, r1, work);
}
#endif

static void newton_rows_base(const search_t *s, int64_t r0, int64_t r1, float *work) {
    newton_rows(s, r0, r1, work);
}

/* The search on `threads` threads, each on a contiguous range of rows (OpenMP where the
 * library was built with it: the runtime torch has loaded, so the kernel runs on
 * torch's own worker threads). A row's result does not depend on the split. */
void newton_rows_f32(const float *d, int64_t n, int64_t L, int64_t ld, int64_t period, const float *t_init,
                     double target, double tol, int64_t steps, int64_t final, double max_step, double polish_max,
                     double floor_var, float *out, int64_t *n_iter, float *t_out, uint8_t *done, int64_t threads) {
    search_t s = {d, L, ld, period, t_init, target, tol, steps, final, max_step, polish_max, floor_var,
                  out, n_iter, t_out, done};
    int avx2 = 0;
#ifdef HAVE_AVX2_PATH
    avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#endif
    if (threads < 1) threads = 1;
#pragma omp parallel num_threads(threads) if (threads > 1)
    {
        int64_t nt = 1, id = 0;
#ifdef _OPENMP
        nt = omp_get_num_threads();
        id = omp_get_thread_num();
#endif
        int64_t r0 = n * id / nt, r1 = n * (id + 1) / nt;
        float *work = aligned_alloc(64, (size_t)(3 * padded(L)) * sizeof(float));
        if (work) { /* else these rows stay undone: the caller's fallback search takes them */
#ifdef HAVE_AVX2_PATH
            if (avx2)
                newton_rows_avx2(&s, r0, r1, work);
            else
#endif
                newton_rows_base(&s, r0, r1, work);
            free(work);
        }
    }
}
