/*
 * proxopt's native CPU kernels: the two-level softmax dual of mirror descent (THEORY.md section 5) and
 * BNN+'s sign-Swish (section 2).
 *
 * proxopt/native.py compiles this file with the system C compiler on first use and calls it through
 * ctypes; without a compiler the same maps run as torch operations (proxopt/mirror_maps.py).
 *
 * A two-level dual (theta_0, theta_1) per weight, levels (q_0, q_1), inverse temperature beta; with
 * z = beta (theta_1 - theta_0) and sigma(z) = 1 / (1 + e^-z):
 *
 *   project   w = q_0 + (q_1 - q_0) sigma(z)                         (softmax map, Ajanthan et al. [MD];
 *                                                                     also for the centered dual (-t, t))
 *   renorm    theta_j <- max(theta_j - max(theta_0, theta_1), floor)  (the primal form's dual of the kept u,
 *                                                                     log(u_j / max_k u_k) / beta)
 *   pullback  g_j = q_j g                                             (the mirror-descent step, B' = 1)
 *
 * and renorm followed by project in one pass (the primal form's write-back after a step), also for the centered
 * dual (-t, t), whose renorm is a clip of t to [floor/2, -floor/2].
 *
 * The projection and sign-Swish need one exponential of a non-positive number, computed here with range
 * reduction and a polynomial of plain additions and multiplications (the rest is additions,
 * multiplications and divisions), so the compiler vectorizes every loop and every
 * element gets the same result whether it falls in a vector body or a scalar remainder (with
 * floating-point contraction off; fused multiply-adds are written explicitly where the target has them).
 * Every result is therefore a function of its own inputs only, the property proxopt's p = F(theta)
 * invariant needs. The renormalisation is exact: it keeps theta_1 - theta_0 bit for bit.
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

#ifdef __FMA__
#define MADD(a, b, c) fmaf((a), (b), (c))
#else
#define MADD(a, b, c) ((a) * (b) + (c))
#endif

/* ln 2 split for Cody-Waite reduction: LN2_HI has 16 significant bits, so k * LN2_HI is exact for |k| < 2^8. */
#define LN2_HI 0.693145751953125f
#define LN2_LO 1.428606765330187e-06f
#define LOG2E 1.44269504088896341f

static inline float pow2i(int32_t k) {
    int32_t bits = (k + 127) << 23;
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

/*
 * e^x for x <= 0: x = k ln 2 + r with |r| <= ln(2)/2 and e^x = 2^k e^r, e^r by its Taylor polynomial of
 * degree 7 (truncation error below 6e-9 relative). For x < -87 (results below about 1.6e-38) it returns 0;
 * NaN stays NaN.
 */
static inline float exp_nonpos(float x) {
    float xc = x >= -87.0f ? x : 0.0f;
    float k = rintf(xc * LOG2E);
    float r = (xc - k * LN2_HI) - k * LN2_LO;
    float p = 1.0f / 5040.0f;
    p = MADD(p, r, 1.0f / 720.0f);
    p = MADD(p, r, 1.0f / 120.0f);
    p = MADD(p, r, 1.0f / 24.0f);
    p = MADD(p, r, 1.0f / 6.0f);
    p = MADD(p, r, 0.5f);
    p = MADD(p, r, 1.0f);
    p = MADD(p, r, 1.0f);
    float y = p * pow2i((int32_t)k);
    return x >= -87.0f ? y : (x != x ? x : 0.0f);
}

/* ------------------------------------------------------------------ kernels on [lo, hi) */

typedef struct {
    const float *t0, *t1, *g;
    float *o0, *o1, *out;
    float beta, floor_, a, b;
} args_t;

/* a + b sigma(z), sigma(z) = 1 / (1 + e^-z) through e = e^-|z| (no overflow) */
static inline float affine_sigmoid(float z, float a, float b) {
    float e = exp_nonpos(-fabsf(z));
    float s = (z >= 0.0f ? 1.0f : e) / (1.0f + e);
    return MADD(b, s, a);
}

static void project_range(const args_t *A, long lo, long hi) {
    const float *t0 = A->t0, *t1 = A->t1;
    float *out = A->o0;
    const float beta = A->beta, a = A->a, b = A->b;
    for (long i = lo; i < hi; i++)
        out[i] = affine_sigmoid((t1[i] - t0[i]) * beta, a, b);
}

/* project_range for the centered dual (-t, t): t - (-t) = t + t, bit for bit */
static void project_centered_range(const args_t *A, long lo, long hi) {
    const float *t = A->t1;
    float *out = A->o0;
    const float beta = A->beta, a = A->a, b = A->b;
    for (long i = lo; i < hi; i++)
        out[i] = affine_sigmoid((t[i] + t[i]) * beta, a, b);
}

/* the primal form's renormalisation of the centered dual (-t, t) (renorm_pair clips t - (-t) to [fl, -fl]: t to
 * [fl/2, -fl/2], with fl/2 exact; NaN stays NaN), then project_centered_range of it, in one pass */
static void clamp_project_centered_range(const args_t *A, long lo, long hi) {
    float *t = A->o1, *out = A->out;
    const float half_fl = A->floor_, beta = A->beta, a = A->a, b = A->b;
    for (long i = lo; i < hi; i++) {
        float x = t[i];
        x = x < half_fl ? half_fl : (x > -half_fl ? -half_fl : x);
        t[i] = x;
        out[i] = affine_sigmoid((x + x) * beta, a, b);
    }
}

/* theta_j - max_k theta_k, floored, through d = theta_1 - theta_0: the larger entry becomes +0 and the other
 * max(-|d|, floor), which is theta_min - theta_max exactly (a difference rounds the same with its sign flipped),
 * so the projection's theta_1 - theta_0 is d bit for bit. An infinite d gives 0 and the floor (not inf - inf);
 * a NaN d (a NaN entry, or two equal infinities) NaN in both. */
static inline void renorm_pair(float a, float b, float fl, float *x0, float *x1) {
    float d = b - a;
    float o = -fabsf(d);
    o = o < fl ? fl : o;
    float zero = d != d ? d : 0.0f;
    *x1 = d >= 0.0f ? zero : o;
    *x0 = d >= 0.0f ? o : zero;
}

static void renorm_range(const args_t *A, long lo, long hi) {
    float *t0 = A->o0, *t1 = A->o1;
    const float fl = A->floor_;
    for (long i = lo; i < hi; i++) {
        float x0, x1;
        renorm_pair(t0[i], t1[i], fl, &x0, &x1);
        t0[i] = x0;
        t1[i] = x1;
    }
}

/* renorm_range then project_range in one pass: the same operations on the same values, so the same results
 * bit for bit, with the dual read once. */
static void renorm_project_range(const args_t *A, long lo, long hi) {
    float *t0 = A->o0, *t1 = A->o1, *out = A->out;
    const float fl = A->floor_, beta = A->beta, a = A->a, b = A->b;
    for (long i = lo; i < hi; i++) {
        float x0, x1;
        renorm_pair(t0[i], t1[i], fl, &x0, &x1);
        t0[i] = x0;
        t1[i] = x1;
        out[i] = affine_sigmoid((x1 - x0) * beta, a, b);
    }
}

/* q g with q = 1 and q = -1 as a copy and a sign flip (exact even where denormals are flushed), as torch's
 * copy_ and neg do. */
static inline float times_level(float q, float x) { return q == 1.0f ? x : (q == -1.0f ? -x : q * x); }

static void pullback_range(const args_t *A, long lo, long hi) {
    const float *g = A->g;
    float *g0 = A->o0, *g1 = A->o1;
    const float q0 = A->a, q1 = A->b;
    for (long i = lo; i < hi; i++) {
        float x = g[i];
        g0[i] = times_level(q0, x);
        g1[i] = times_level(q1, x);
    }
}

/* 1 - e^-a for 0 <= a < 0.35, without the cancellation of 1 - e: -expm1(-a) by its Taylor series to
 * degree 9 (truncation error below 1e-9 relative). */
static inline float one_minus_exp_small(float a) {
    float p = 1.0f / 362880.0f;
    p = MADD(p, -a, 1.0f / 40320.0f);
    p = MADD(p, -a, 1.0f / 5040.0f);
    p = MADD(p, -a, 1.0f / 720.0f);
    p = MADD(p, -a, 1.0f / 120.0f);
    p = MADD(p, -a, 1.0f / 24.0f);
    p = MADD(p, -a, 1.0f / 6.0f);
    p = MADD(p, -a, 0.5f);
    p = MADD(p, -a, 1.0f);
    return a * p;
}

/*
 * Sign-Swish [BNN+], x = mu theta, e = e^-|x|:
 *   SS(x)  = 2 swish'(x) - 1 = sign(x) [(1 - e)/(1 + e) + 2 |x| e / (1 + e)^2]   (odd; 1 - e from its series
 *            below |x| = 0.35, so SS keeps its relative accuracy near 0)
 *   SS'(x) = 4 e / (1 + e)^2 [1 - (|x|/2) (1 - e)/(1 + e)]                         (even)
 * and the latent gradient mu SS'(mu theta) g. Where e underflows (|x| > 87) SS' is below 1e-36 |x| and
 * is returned as 0.
 */
static void ss_value_range(const args_t *A, long lo, long hi) {
    const float *t = A->t0;
    float *out = A->o0;
    const float mu = A->beta;
    for (long i = lo; i < hi; i++) {
        float x = t[i] * mu;
        float a = fabsf(x);
        float e = exp_nonpos(-a);
        float r = 1.0f / (1.0f + e);
        float ome = a < 0.35f ? one_minus_exp_small(a) : 1.0f - e;
        float v = e == 0.0f ? 1.0f : MADD(ome, r, 2.0f * a * e * r * r);
        out[i] = x < 0.0f ? -v : v;
    }
}

static void ss_grad_range(const args_t *A, long lo, long hi) {
    const float *t = A->t0, *g = A->g;
    float *out = A->o0;
    const float mu = A->beta;
    for (long i = lo; i < hi; i++) {
        float x = t[i] * mu;
        float a = fabsf(x);
        float e = exp_nonpos(-a);
        float r = 1.0f / (1.0f + e);
        float c = 1.0f - 0.5f * a * ((1.0f - e) * r);
        float d = mu * (4.0f * e * r * r) * c;
        out[i] = (e == 0.0f ? 0.0f : d) * g[i];
    }
}

/* ------------------------------------------------------------------ threads */

typedef void (*range_fn)(const args_t *, long, long);

#define GRAIN 32768L

#if defined(__SSE__) || defined(__x86_64__) || defined(_M_X64)
#include <xmmintrin.h>
#define FP_MODE_GET() _mm_getcsr()
#define FP_MODE_SET(m) _mm_setcsr(m)
#else
#define FP_MODE_GET() 0u
#define FP_MODE_SET(m) ((void)(m))
#endif

/* fn over [0, n) in up to `threads` contiguous chunks (multiples of 64 elements). With OpenMP (native.py
 * builds with -fopenmp where the compiler has it) the chunks run on an OpenMP runtime; built by GCC that is
 * the libgomp torch itself loaded, so they share torch's intra-op threads instead of competing with them.
 * Each chunk runs with the calling thread's floating-point mode (torch.set_flush_denormal sets it on the
 * calling thread only), so a result does not depend on which thread computed it. Without OpenMP the chunks
 * run one after the other. */
static void parallel(range_fn fn, const args_t *args, long n, int threads) {
    if (threads > n / GRAIN) threads = (int)(n / GRAIN);
    if (threads <= 1) {
        fn(args, 0, n);
        return;
    }
    long chunk = ((n + threads - 1) / threads + 63) & ~63L;
    unsigned int mode = FP_MODE_GET();
#ifdef _OPENMP
#pragma omp parallel for num_threads(threads) schedule(static, 1)
#endif
    for (int i = 0; i < threads; i++) {
        long lo = i * chunk, hi = lo + chunk < n ? lo + chunk : n;
        if (lo < hi) {
            unsigned int own = FP_MODE_GET();
            FP_MODE_SET(mode);
            fn(args, lo, hi);
            FP_MODE_SET(own);
        }
    }
}

/* ------------------------------------------------------------------ entry points (float32, contiguous) */

/* out = a + b sigma(beta (t1 - t0)) */
void proxopt_sm2_project(const float *t0, const float *t1, float *out, long n, float beta, float a, float b,
                         int threads) {
    args_t A = {t0, t1, NULL, out, NULL, NULL, beta, 0.0f, a, b};
    parallel(project_range, &A, n, threads);
}

/* out = a + b sigma(beta (t - (-t))): proxopt_sm2_project of the centered dual (-t, t) */
void proxopt_sm2_project_centered(const float *t, float *out, long n, float beta, float a, float b, int threads) {
    args_t A = {NULL, t, NULL, out, NULL, NULL, beta, 0.0f, a, b};
    parallel(project_centered_range, &A, n, threads);
}

/* t <- min(max(t, half_floor), -half_floor) in place, then out = a + b sigma(beta (t + t)) */
void proxopt_sm2_clamp_project_centered(float *t, float *out, long n, float beta, float half_floor, float a, float b,
                                        int threads) {
    args_t A = {NULL, NULL, NULL, NULL, t, out, beta, half_floor, a, b};
    parallel(clamp_project_centered_range, &A, n, threads);
}

/* (t0, t1) <- (t0, t1) - max(t0, t1), floored at floor_, in place */
void proxopt_sm2_renorm(float *t0, float *t1, long n, float floor_, int threads) {
    args_t A = {NULL, NULL, NULL, t0, t1, NULL, 0.0f, floor_, 0.0f, 0.0f};
    parallel(renorm_range, &A, n, threads);
}

/* proxopt_sm2_renorm, then proxopt_sm2_project of the renormalised dual into out, in one pass */
void proxopt_sm2_renorm_project(float *t0, float *t1, float *out, long n, float beta, float floor_, float a,
                                float b, int threads) {
    args_t A = {NULL, NULL, NULL, t0, t1, out, beta, floor_, a, b};
    parallel(renorm_project_range, &A, n, threads);
}

/* g0 = q0 g, g1 = q1 g */
void proxopt_sm2_pullback(const float *g, float *g0, float *g1, long n, float q0, float q1, int threads) {
    args_t A = {NULL, NULL, g, g0, g1, NULL, 0.0f, 0.0f, q0, q1};
    parallel(pullback_range, &A, n, threads);
}

/* out = SS(mu theta) */
void proxopt_ss_value(const float *theta, float *out, long n, float mu, int threads) {
    args_t A = {theta, NULL, NULL, out, NULL, NULL, mu, 0.0f, 0.0f, 0.0f};
    parallel(ss_value_range, &A, n, threads);
}

/* out = mu SS'(mu theta) g */
void proxopt_ss_grad(const float *theta, const float *g, float *out, long n, float mu, int threads) {
    args_t A = {theta, NULL, g, out, NULL, NULL, mu, 0.0f, 0.0f, 0.0f};
    parallel(ss_grad_range, &A, n, threads);
}

/* the interface version native.py checks */
int proxopt_native_version(void) { return 8; }
