/* Gradient checks of the layer kernels and of the whole model: each analytic
 * backward (conv2d, relu, maxpool2d, flatten, linear, softmax cross-entropy,
 * cfx_model_backward) against central finite differences of a scalar
 * objective run through the float forward and accumulated in double.
 * Layer objectives are L = sum(out * R) for a fixed random R, so dout = R.
 * Spatial activations are [C][N][H][W]; see include/cfx/nn.h. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "cfx/nn.h"  /* defines: the layer kernels, cfx_model */
#include "cfx/rng.h" /* defines: cfx_rng */

/* Written into outputs before a call that must overwrite them. */
#define SENTINEL 777.0f

static cfx_rng rng;

static float urand(float lo, float hi) { return lo + (hi - lo) * cfx_rng_float(&rng); }

static void fill(float *x, size_t n, float lo, float hi)
{
    for (size_t i = 0; i < n; i++)
        x[i] = urand(lo, hi);
}

static void fill_value(float *x, size_t n, float v)
{
    for (size_t i = 0; i < n; i++)
        x[i] = v;
}

static float *falloc(size_t n) { return malloc((n ? n : 1) * sizeof(float)); }

static double dot(const float *a, const float *b, size_t n)
{
    double s = 0.0;
    for (size_t i = 0; i < n; i++)
        s += (double)a[i] * b[i];
    return s;
}

/* ---- finite-difference machinery -------------------------------------- */

/* Runs the float forward and returns the objective; NAN means "the step
 * crossed a kink (relu or maxpool switched)". */
typedef double (*objective_fn)(void *ctx);

/* Tolerances of one gradient check. */
typedef struct {
    float h;         /* step on the float variable */
    double rel2;     /* bound on ||a - n||_2 / ||n||_2 */
    double elem;     /* bound on |a_i - n_i| / (|n_i| + 0.1 ||n||_inf) */
    double max_skip; /* fraction of elements allowed to be skipped at kinks */
} fd_tol;

/* Largest errors seen over all checks, reported at the end. */
static double worst_rel2, worst_elem;

/* Compares grad[0..n) with central differences of f over x[0..n). The step
 * is what float rounding actually made of x +- h. A step that crosses a
 * kink is retried at h / 8 and h / 64; if those cross too, the element is
 * skipped. */
static void check_grad(const char *what, objective_fn f, void *ctx, float *x, const float *grad,
                       size_t n, fd_tol tol)
{
    double *num = malloc((n ? n : 1) * sizeof *num);
    int *skip = calloc(n ? n : 1, sizeof *skip);
    size_t n_skip = 0, n_small = 0;
    for (size_t i = 0; i < n; i++) {
        float x0 = x[i], h = tol.h;
        for (int try = 0; try < 3; try++, h /= 8.0f) {
            x[i] = x0 + h;
            float xp = x[i];
            double fp = f(ctx);
            x[i] = x0 - h;
            float xm = x[i];
            double fm = f(ctx);
            x[i] = x0;
            num[i] = (fp - fm) / ((double)xp - (double)xm);
            skip[i] = isnan(fp) || isnan(fm);
            if (!skip[i])
                break;
            n_small += try == 0;
        }
        n_skip += skip[i];
    }
    double diff2 = 0.0, norm2 = 0.0, inf = 0.0;
    for (size_t i = 0; i < n; i++)
        if (!skip[i]) {
            diff2 += (grad[i] - num[i]) * (grad[i] - num[i]);
            norm2 += num[i] * num[i];
            inf = fmax(inf, fabs(num[i]));
        }
    double rel2 = sqrt(diff2) / sqrt(norm2), elem = 0.0;
    size_t worst = 0;
    for (size_t i = 0; i < n; i++) {
        double e = fabs(grad[i] - num[i]) / (fabs(num[i]) + 0.1 * inf);
        if (!skip[i] && e > elem)
            elem = e, worst = i;
    }
    if (getenv("CFX_TEST_VERBOSE"))
        print_message("%-40s n=%4zu rel2=%.2e elem=%.2e smaller h=%zu skipped=%zu\n", what, n, rel2,
                      elem, n_small, n_skip);
    if (!(norm2 > 0.0))
        fail_msg("%s: the numerical gradient is zero, the check is vacuous", what);
    if ((double)n_skip > tol.max_skip * (double)n)
        fail_msg("%s: %zu of %zu elements crossed a kink", what, n_skip, n);
    if (!(rel2 < tol.rel2) || !(elem < tol.elem))
        fail_msg("%s: rel2 %.3e (bound %.1e), elem %.3e (bound %.1e) at [%zu]: analytic %.6g "
                 "numerical %.6g",
                 what, rel2, tol.rel2, elem, tol.elem, worst, grad[worst], num[worst]);
    worst_rel2 = fmax(worst_rel2, rel2);
    worst_elem = fmax(worst_elem, elem);
    free(num);
    free(skip);
}

/* Layers that are linear in each variable: central differences are exact up
 * to float rounding of the forward. */
static const fd_tol linear_tol = {.h = 1e-2f, .rel2 = 1e-4, .elem = 1e-3, .max_skip = 0.0};

static void assert_close(const float *a, const float *b, size_t n, double tol, const char *what)
{
    for (size_t i = 0; i < n; i++)
        if (!(fabs((double)a[i] - b[i]) <= tol * (1.0 + fabs((double)b[i]))))
            fail_msg("%s: [%zu] %.8g != %.8g", what, i, a[i], b[i]);
}

/* ---- conv2d ------------------------------------------------------------ */

typedef struct {
    int N, C, H, W, OC, K, S, P;
} conv_shape;

typedef struct {
    conv_shape s;
    float *in, *w, *b, *R, *out, *col;
    size_t n_out;
} conv_ctx;

static double conv_objective(void *p)
{
    conv_ctx *c = p;
    const conv_shape *s = &c->s;
    cfx_conv2d_forward(c->out, c->col, c->in, c->w, c->b, s->N, s->C, s->H, s->W, s->OC, s->K, s->S,
                       s->P);
    return dot(c->out, c->R, c->n_out);
}

static void test_conv2d_grad(void **state)
{
    (void)state;
    /* clang-format off */
    static const conv_shape shapes[] = {
        /* N  C  H  W OC  K  S  P */
        {1, 1, 5, 5, 1, 3, 1, 0},
        {2, 3, 6, 7, 4, 3, 1, 1},
        {3, 2, 7, 5, 3, 3, 2, 1},
        {2, 2, 9, 6, 2, 5, 2, 2},
        {1, 3, 4, 6, 5, 1, 1, 0},
        {2, 2, 5, 4, 3, 1, 2, 1},
        {3, 1, 8, 3, 2, 5, 1, 2},
        {1, 2, 6, 9, 3, 3, 2, 0},
        {2, 3, 5, 5, 2, 5, 1, 0},
        {3, 2, 3, 4, 2, 3, 1, 2},
    };
    /* clang-format on */
    cfx_rng_seed(&rng, 101);
    for (size_t t = 0; t < sizeof shapes / sizeof shapes[0]; t++) {
        conv_shape s = shapes[t];
        int OH = cfx_window_out(s.H, s.K, s.S, s.P), OW = cfx_window_out(s.W, s.K, s.S, s.P);
        size_t n_in = (size_t)s.C * s.N * s.H * s.W, n_w = (size_t)s.OC * s.C * s.K * s.K;
        size_t n_out = (size_t)s.OC * s.N * OH * OW,
               n_col = (size_t)s.C * s.K * s.K * s.N * OH * OW;
        conv_ctx c = {.s = s, .n_out = n_out};
        c.in = falloc(n_in), c.w = falloc(n_w), c.b = falloc(s.OC), c.R = falloc(n_out);
        c.out = falloc(n_out), c.col = falloc(n_col);
        float *din = falloc(n_in), *dw = falloc(n_w), *db = falloc(s.OC), *dcol = falloc(n_col);
        float *dw2 = falloc(n_w), *db2 = falloc(s.OC);
        fill(c.in, n_in, -1, 1), fill(c.w, n_w, -0.5f, 0.5f), fill(c.b, s.OC, -0.5f, 0.5f);
        fill(c.R, n_out, -1, 1);
        fill_value(din, n_in, SENTINEL), fill_value(dw, n_w, SENTINEL);
        fill_value(db, s.OC, SENTINEL);

        conv_objective(&c);
        cfx_conv2d_backward(din, dw, db, c.col, dcol, c.R, c.in, c.w, s.N, s.C, s.H, s.W, s.OC, s.K,
                            s.S, s.P);
        /* din = NULL must not change the parameter gradients. */
        cfx_conv2d_backward(NULL, dw2, db2, c.col, dcol, c.R, c.in, c.w, s.N, s.C, s.H, s.W, s.OC,
                            s.K, s.S, s.P);
        assert_close(dw2, dw, n_w, 0.0, "conv2d dweight with din = NULL");
        assert_close(db2, db, s.OC, 0.0, "conv2d dbias with din = NULL");
        /* dweight = dbias = NULL (cfx-viz) must give the same din. */
        float *din2 = falloc(n_in);
        cfx_conv2d_backward(din2, NULL, NULL, c.col, dcol, c.R, c.in, c.w, s.N, s.C, s.H, s.W,
                            s.OC, s.K, s.S, s.P);
        assert_close(din2, din, n_in, 0.0, "conv2d din with dweight = dbias = NULL");
        free(din2);

        char what[96];
        snprintf(what, sizeof what, "conv2d N%d C%d %dx%d OC%d K%d S%d P%d", s.N, s.C, s.H, s.W,
                 s.OC, s.K, s.S, s.P);
        char name[128];
        snprintf(name, sizeof name, "%s input", what);
        check_grad(name, conv_objective, &c, c.in, din, n_in, linear_tol);
        snprintf(name, sizeof name, "%s weight", what);
        check_grad(name, conv_objective, &c, c.w, dw, n_w, linear_tol);
        snprintf(name, sizeof name, "%s bias", what);
        check_grad(name, conv_objective, &c, c.b, db, s.OC, linear_tol);

        free(c.in), free(c.w), free(c.b), free(c.R), free(c.out), free(c.col);
        free(din), free(dw), free(db), free(dcol), free(dw2), free(db2);
    }
}

/* ---- relu -------------------------------------------------------------- */

typedef struct {
    float *in, *out, *R;
    size_t n;
} relu_ctx;

static double relu_objective(void *p)
{
    relu_ctx *c = p;
    cfx_relu_forward(c->out, c->in, c->n);
    return dot(c->out, c->R, c->n);
}

static void test_relu_grad(void **state)
{
    (void)state;
    enum { n = 97 };
    cfx_rng_seed(&rng, 202);
    float in[n], out[n], R[n], din[n];
    /* |x| >= 0.05 > h: no step crosses the kink. */
    for (int i = 0; i < n; i++)
        in[i] = (cfx_rng_float(&rng) < 0.5f ? -1.0f : 1.0f) * urand(0.05f, 1.0f);
    fill(R, n, -1, 1);
    relu_ctx c = {in, out, R, n};
    relu_objective(&c);
    for (int i = 0; i < n; i++)
        assert_true(out[i] == (in[i] > 0.0f ? in[i] : 0.0f));
    fill_value(din, n, SENTINEL);
    cfx_relu_backward(din, R, out, n);
    check_grad("relu", relu_objective, &c, in, din, n, linear_tol);

    /* At exactly zero the gradient is zero, as in PyTorch. */
    float z_in[2] = {0.0f, -0.0f}, z_out[2], z_d[2] = {SENTINEL, SENTINEL}, z_R[2] = {1, 1};
    cfx_relu_forward(z_out, z_in, 2);
    cfx_relu_backward(z_d, z_R, z_out, 2);
    assert_true(z_out[0] == 0.0f && z_out[1] == 0.0f && z_d[0] == 0.0f && z_d[1] == 0.0f);
}

/* ---- gelu -------------------------------------------------------------- */

/* GELU and its derivative against double-precision erf, every 1/512 from
 * -14 to 14. Relative error: < 1e-6 for |x| < 3, < 2e-5 in the far negative
 * tail (the float rounding of exp's argument x^2/2), where 1 + erff(x/sqrt 2)
 * in float would lose every digit below x = -5.5. NaN goes through, +inf stays. */
static void test_gelu_accuracy(void **state)
{
    (void)state;
    enum { n = 2 * 14 * 512 + 1 };
    static float x[n], y[n], d[n], ones[n];
    for (int i = 0; i < n; i++) {
        x[i] = -14.0f + (float)i / 512.0f;
        ones[i] = 1.0f;
    }
    cfx_gelu_forward(y, x, n);
    cfx_gelu_backward(d, ones, x, n);
    double worst_mid = 0.0, worst_tail = 0.0, worst_d = 0.0;
    for (int i = 0; i < n; i++) {
        double v = x[i], cdf = 0.5 * erfc(-v / sqrt(2.0));
        double want_y = v * cdf, want_d = cdf + v * exp(-0.5 * v * v) / sqrt(2.0 * 3.14159265358979323846);
        double err_y = fabs(y[i] - want_y) / fabs(want_y);
        assert_true(fabs(y[i] - want_y) < 1e-36 + 2e-5 * fabs(want_y));
        if (fabs(v) < 3.0 && v != 0.0 && err_y > worst_mid)
            worst_mid = err_y;
        if (fabs(v) >= 3.0 && fabs(want_y) > 1e-36 && err_y > worst_tail)
            worst_tail = err_y;
        if (fabs(d[i] - want_d) > worst_d) /* absolute: GELU' crosses zero at -0.75 */
            worst_d = fabs(d[i] - want_d);
    }
    printf("gelu: worst relative error %.2e for |x| < 3, %.2e beyond; derivative absolute %.2e\n",
           worst_mid, worst_tail, worst_d);
    assert_true(worst_mid < 1e-6);
    assert_true(worst_tail < 2e-5);
    assert_true(worst_d < 1e-6);
    float special[3] = {NAN, INFINITY, 0.0f}, out[3], grad[3];
    cfx_gelu_forward(out, special, 3);
    cfx_gelu_backward(grad, ones, special, 3);
    assert_true(isnan(out[0]) && isnan(grad[0]));
    assert_true(out[1] == INFINITY);
    assert_true(out[2] == 0.0f && grad[2] == 0.5f);
}

/* ---- maxpool2d --------------------------------------------------------- */

typedef struct {
    int planes, H, W, K, S;
    float *in, *out, *R;
    size_t n_out;
} pool_ctx;

static double pool_objective(void *p)
{
    pool_ctx *c = p;
    cfx_maxpool_forward(c->out, c->in, c->planes, c->H, c->W, c->K, c->S);
    return dot(c->out, c->R, c->n_out);
}

static void test_maxpool_grad(void **state)
{
    (void)state;
    /* clang-format off */
    static const struct {
        int C, N, H, W, K, S;
    } cases[] = {
        {2, 3, 6, 8, 2, 2}, /* even sizes */
        {1, 2, 7, 5, 2, 2}, /* odd sizes: last row and column unused */
        {2, 1, 7, 9, 3, 2}, /* overlapping windows */
        {3, 2, 5, 6, 3, 2},
        {1, 1, 8, 7, 3, 3},
        {2, 2, 4, 5, 2, 1},
    };
    /* clang-format on */
    cfx_rng_seed(&rng, 303);
    for (size_t t = 0; t < sizeof cases / sizeof cases[0]; t++) {
        int planes = cases[t].C * cases[t].N, H = cases[t].H, W = cases[t].W;
        int K = cases[t].K, S = cases[t].S;
        int OH = cfx_window_out(H, K, S, 0), OW = cfx_window_out(W, K, S, 0);
        size_t n_in = (size_t)planes * H * W, n_out = (size_t)planes * OH * OW;
        pool_ctx c = {planes, H, W, K, S, falloc(n_in), falloc(n_out), falloc(n_out), n_out};
        float *din = falloc(n_in);
        /* Distinct values 0.05 apart (a shuffled ramp): no ties, and a step
         * of h = 0.01 never changes a window's argmax. */
        int *perm = malloc(n_in * sizeof *perm);
        for (size_t i = 0; i < n_in; i++)
            perm[i] = (int)i;
        cfx_shuffle(perm, (int)n_in, &rng);
        for (size_t i = 0; i < n_in; i++)
            c.in[i] = 0.05f * (float)perm[i] - 0.025f * (float)n_in;
        fill(c.R, n_out, -1, 1);

        pool_objective(&c);
        for (int p = 0; p < planes; p++) /* forward against a direct max */
            for (int oh = 0; oh < OH; oh++)
                for (int ow = 0; ow < OW; ow++) {
                    float m = -INFINITY;
                    for (int kh = 0; kh < K; kh++)
                        for (int kw = 0; kw < K; kw++)
                            m = fmaxf(m, c.in[((size_t)p * H + oh * S + kh) * W + ow * S + kw]);
                    assert_true(c.out[((size_t)p * OH + oh) * OW + ow] == m);
                }
        fill_value(din, n_in, SENTINEL);
        cfx_maxpool_backward(din, c.R, c.in, planes, H, W, K, S);
        char what[96];
        snprintf(what, sizeof what, "maxpool C%d N%d %dx%d K%d S%d", cases[t].C, cases[t].N, H, W,
                 K, S);
        check_grad(what, pool_objective, &c, c.in, din, n_in, linear_tol);
        free(c.in), free(c.out), free(c.R), free(din), free(perm);
    }
}

/* Ties go to the first maximum in row-major window order. */
static void test_maxpool_ties(void **state)
{
    (void)state;
    /* Windows (2x2, stride 2) and their first maxima: top-left all 1 -> 0,
     * top-right 2 0 / 2 2 -> 2, bottom-left 0 3 / 3 3 -> 9, bottom-right
     * 5 4 / 5 5 -> 10. */
    /* clang-format off */
    const float in[16] = {1, 1, 2, 0,
                          1, 1, 2, 2,
                          0, 3, 5, 4,
                          3, 3, 5, 5};
    /* clang-format on */
    const float dout[4] = {1, 2, 3, 4};
    float out[4], din[16];
    cfx_maxpool_forward(out, in, 1, 4, 4, 2, 2);
    cfx_maxpool_backward(din, dout, in, 1, 4, 4, 2, 2);
    const float want_out[4] = {1, 2, 3, 5};
    const float want_din[16] = {1, 0, 2, 0, 0, 0, 0, 0, 0, 3, 4, 0, 0, 0, 0, 0};
    assert_memory_equal(out, want_out, sizeof out);
    assert_memory_equal(din, want_din, sizeof din);
}

/* The 2x2 pool on widths 8, 16 and 32 (an AVX-512 path where the CPU has
 * it) against plain loops, with many ties and negative maxima, with and
 * without the fused ReLU, for plane counts that leave a scalar tail. */
static void test_maxpool_wide_ties(void **state)
{
    (void)state;
    const int widths[] = {8, 16, 32}, heights[] = {2, 4, 6}, plane_counts[] = {1, 3, 8};
    cfx_rng_seed(&rng, 21);
    for (int wi = 0; wi < 3; wi++)
        for (int hi = 0; hi < 3; hi++)
            for (int pi = 0; pi < 3; pi++) {
                const int W = widths[wi], H = heights[hi], planes = plane_counts[pi];
                const int OH = H / 2, OW = W / 2;
                size_t n_in = (size_t)planes * H * W, n_out = (size_t)planes * OH * OW;
                float *in = falloc(n_in), *out = falloc(n_out), *dout = falloc(n_out);
                float *din = falloc(n_in), *want_din = falloc(n_in), *want_out = falloc(n_out);
                for (size_t i = 0; i < n_in; i++) /* -2..2: ties everywhere, some max <= 0 */
                    in[i] = (float)((int)(5.0f * cfx_rng_float(&rng)) - 2);
                for (size_t i = 0; i < n_out; i++)
                    dout[i] = 1.0f + (float)i;
                for (int relu = 0; relu < 2; relu++) {
                    memset(want_din, 0, n_in * sizeof *want_din);
                    for (int p = 0; p < planes; p++)
                        for (int oh = 0; oh < OH; oh++)
                            for (int ow = 0; ow < OW; ow++) {
                                size_t base = ((size_t)p * H + 2 * oh) * W + 2 * ow, arg = base;
                                const size_t at[4] = {base, base + 1, base + W, base + W + 1};
                                for (int t = 1; t < 4; t++) /* the first maximum wins */
                                    if (in[at[t]] > in[arg])
                                        arg = at[t];
                                size_t o = ((size_t)p * OH + oh) * OW + ow;
                                want_out[o] = in[arg];
                                if (!relu || in[arg] > 0.0f)
                                    want_din[arg] = dout[o];
                            }
                    cfx_maxpool_forward(out, in, planes, H, W, 2, 2);
                    (relu ? cfx_maxpool_relu_backward : cfx_maxpool_backward)(din, dout, in, planes,
                                                                              H, W, 2, 2);
                    assert_memory_equal(out, want_out, n_out * sizeof *out);
                    assert_memory_equal(din, want_din, n_in * sizeof *din);
                }
                free(in), free(out), free(dout), free(din), free(want_din), free(want_out);
            }
}

/* ---- flatten ----------------------------------------------------------- */

typedef struct {
    int N, C, HW;
    float *in, *out, *R;
} flat_ctx;

static double flat_objective(void *p)
{
    flat_ctx *c = p;
    cfx_flatten_forward(c->out, c->in, c->N, c->C, c->HW);
    return dot(c->out, c->R, (size_t)c->N * c->C * c->HW);
}

static void test_flatten(void **state)
{
    (void)state;
    enum { N = 3, C = 4, HW = 6, n = N * C * HW };
    cfx_rng_seed(&rng, 404);
    float in[n], out[n], R[n], din[n];
    fill(in, n, -1, 1), fill(R, n, -1, 1);
    flat_ctx c = {N, C, HW, in, out, R};
    flat_objective(&c);
    /* out[n][c * HW + hw] = in[c][n][hw]: features per image in (c, h, w) order. */
    for (int i = 0; i < N; i++)
        for (int ch = 0; ch < C; ch++)
            for (int k = 0; k < HW; k++)
                assert_true(out[(i * C + ch) * HW + k] == in[(ch * N + i) * HW + k]);
    fill_value(din, n, SENTINEL);
    cfx_flatten_backward(din, R, N, C, HW);
    check_grad("flatten", flat_objective, &c, in, din, n, linear_tol);
}

/* ---- linear ------------------------------------------------------------ */

typedef struct {
    int N, in_f, out_f;
    float *in, *w, *b, *out, *R;
} lin_ctx;

static double lin_objective(void *p)
{
    lin_ctx *c = p;
    cfx_linear_forward(c->out, c->in, c->w, c->b, c->N, c->in_f, c->out_f);
    return dot(c->out, c->R, (size_t)c->N * c->out_f);
}

static void test_linear_grad(void **state)
{
    (void)state;
    static const int shapes[][3] = {{1, 7, 5}, {2, 7, 5}, {3, 12, 10}, {2, 1, 3}, {3, 4, 1}};
    cfx_rng_seed(&rng, 505);
    for (size_t t = 0; t < sizeof shapes / sizeof shapes[0]; t++) {
        int N = shapes[t][0], in_f = shapes[t][1], out_f = shapes[t][2];
        size_t n_in = (size_t)N * in_f, n_w = (size_t)out_f * in_f, n_out = (size_t)N * out_f;
        lin_ctx c = {.N = N, .in_f = in_f, .out_f = out_f};
        c.in = falloc(n_in), c.w = falloc(n_w), c.b = falloc(out_f);
        c.out = falloc(n_out), c.R = falloc(n_out);
        float *din = falloc(n_in), *dw = falloc(n_w), *db = falloc(out_f);
        float *dw2 = falloc(n_w), *db2 = falloc(out_f);
        fill(c.in, n_in, -1, 1), fill(c.w, n_w, -0.5f, 0.5f), fill(c.b, out_f, -0.5f, 0.5f);
        fill(c.R, n_out, -1, 1);
        lin_objective(&c);
        for (int i = 0; i < N; i++) /* forward against a direct sum */
            for (int o = 0; o < out_f; o++) {
                double s = c.b[o];
                for (int k = 0; k < in_f; k++)
                    s += (double)c.in[i * in_f + k] * c.w[o * in_f + k];
                float ref = (float)s;
                assert_close(&c.out[i * out_f + o], &ref, 1, 1e-5, "linear forward");
            }
        fill_value(din, n_in, SENTINEL), fill_value(dw, n_w, SENTINEL);
        fill_value(db, out_f, SENTINEL);
        cfx_linear_backward(din, dw, db, c.R, c.in, c.w, N, in_f, out_f);
        cfx_linear_backward(NULL, dw2, db2, c.R, c.in, c.w, N, in_f, out_f);
        assert_close(dw2, dw, n_w, 0.0, "linear dweight with din = NULL");
        assert_close(db2, db, out_f, 0.0, "linear dbias with din = NULL");
        char what[64], name[96];
        snprintf(what, sizeof what, "linear N%d %d->%d", N, in_f, out_f);
        snprintf(name, sizeof name, "%s input", what);
        check_grad(name, lin_objective, &c, c.in, din, n_in, linear_tol);
        snprintf(name, sizeof name, "%s weight", what);
        check_grad(name, lin_objective, &c, c.w, dw, n_w, linear_tol);
        snprintf(name, sizeof name, "%s bias", what);
        check_grad(name, lin_objective, &c, c.b, db, out_f, linear_tol);
        free(c.in), free(c.w), free(c.b), free(c.out), free(c.R);
        free(din), free(dw), free(db), free(dw2), free(db2);
    }
}

/* ---- softmax cross-entropy --------------------------------------------- */

typedef struct {
    int N, K;
    float *logits;
    const int *labels;
} xent_ctx;

/* The mean loss over the batch. */
static double xent_objective(void *p)
{
    xent_ctx *c = p;
    double loss = 0.0;
    long correct = 0;
    cfx_softmax_xent(c->logits, c->labels, c->N, c->K, 1.0f / (float)c->N, NULL, &loss, &correct);
    return loss / c->N;
}

static void test_softmax_xent_grad(void **state)
{
    (void)state;
    enum { N = 3, K = 10 };
    cfx_rng_seed(&rng, 606);
    float logits[N * K], d[N * K];
    int labels[N];
    fill(logits, N * K, -3, 3);
    for (int i = 0; i < N; i++)
        labels[i] = (int)cfx_rng_below(&rng, K);
    logits[1 * K + labels[1]] = 5.0f; /* image 1 is predicted right */

    /* Loss and correct count against a direct computation; both accumulate. */
    double loss = 0.5, want = 0.5;
    long correct = 2, want_correct = 2;
    fill_value(d, N * K, SENTINEL);
    cfx_softmax_xent(logits, labels, N, K, 1.0f / N, d, &loss, &correct);
    for (int i = 0; i < N; i++) {
        double s = 0.0;
        int arg = 0;
        for (int k = 0; k < K; k++) {
            s += exp((double)logits[i * K + k]);
            if (logits[i * K + k] > logits[i * K + arg])
                arg = k;
        }
        want += log(s) - logits[i * K + labels[i]];
        want_correct += arg == labels[i];
    }
    assert_true(fabs(loss - want) < 1e-9 * fabs(want));
    assert_int_equal(correct, want_correct);
    assert_true(want_correct > 2);

    xent_ctx c = {N, K, logits, labels};
    const fd_tol tol = {.h = 1e-3f, .rel2 = 1e-4, .elem = 1e-3, .max_skip = 0.0};
    check_grad("softmax_xent logits", xent_objective, &c, logits, d, N * K, tol);
}

/* Huge logits neither overflow nor lose the gradient. */
static void test_softmax_xent_stable(void **state)
{
    (void)state;
    const float logits[2 * 3] = {1000.0f, 0.0f, -1000.0f, 500.0f, 500.0f, 500.0f};
    const int labels[2] = {1, 2};
    float d[6];
    double loss = 0.0;
    long correct = 0;
    cfx_softmax_xent(logits, labels, 2, 3, 1.0f, d, &loss, &correct);
    assert_true(fabs(loss - (1000.0 + log(3.0))) < 1e-9);
    assert_int_equal(correct, 0); /* image 1 ties: the first maximum (0) wins */
    const float want[6] = {1, -1, 0, 1.0f / 3, 1.0f / 3, -2.0f / 3};
    assert_close(d, want, 6, 1e-6, "softmax_xent dlogits at huge logits");
}

/* ---- the whole model --------------------------------------------------- */

typedef struct {
    cfx_model *m;
    int n;
    const int *labels;
    int *pattern, *base; /* relu signs and maxpool argmaxes */
    size_t n_pattern;
} model_ctx;

/* The kinks the forward took: relu output signs and maxpool argmaxes. */
static size_t model_pattern(const cfx_model *m, int n, int *pat)
{
    size_t k = 0;
    for (int i = 0; i < m->n_layers; i++) {
        const cfx_layer *L = &m->layers[i];
        if (L->kind->flags & CFX_KIND_RELU) {
            size_t sz = (size_t)n * L->out_c * L->out_h * L->out_w;
            for (size_t j = 0; j < sz; j++, k++)
                if (pat)
                    pat[k] = m->acts[i + 1][j] > 0.0f;
        } else if (strcmp(L->kind->name, "maxpool2d") == 0) {
            int H = L->in_h, W = L->in_w, K = L->spec.kernel, S = L->spec.stride;
            for (int p = 0; p < L->in_c * n; p++)
                for (int oh = 0; oh < L->out_h; oh++)
                    for (int ow = 0; ow < L->out_w; ow++, k++) {
                        if (!pat)
                            continue;
                        const float *x = m->acts[i] + (size_t)p * H * W;
                        int arg = (oh * S) * W + ow * S;
                        for (int kh = 0; kh < K; kh++)
                            for (int kw = 0; kw < K; kw++)
                                if (x[(oh * S + kh) * W + ow * S + kw] > x[arg])
                                    arg = (oh * S + kh) * W + ow * S + kw;
                        pat[k] = arg;
                    }
        }
    }
    return k;
}

/* The mean loss, or NAN if the forward took a different kink than at the
 * base point (the difference quotient then straddles a corner). */
static double model_objective(void *p)
{
    model_ctx *c = p;
    const float *logits = cfx_model_forward(c->m, c->n);
    double loss = 0.0;
    long correct = 0;
    cfx_softmax_xent(logits, c->labels, c->n, c->m->n_classes, 1.0f / (float)c->n, NULL, &loss,
                     &correct);
    model_pattern(c->m, c->n, c->pattern);
    if (memcmp(c->pattern, c->base, c->n_pattern * sizeof *c->pattern) != 0)
        return NAN;
    return loss / c->n;
}

/* m from the layer list `layers` over 3 x H x W images; fails the test if
 * the list does not parse or build. */
static void model_from_layers(cfx_model *m, const char *layers, int H, int W, int max_batch,
                              int flags)
{
    cfx_layer_spec specs[CFX_MAX_LAYERS];
    int n_specs;
    cfx_error err;
    if (cfx_parse_layers(layers, specs, &n_specs, &err) != 0 ||
        cfx_model_create(m, specs, n_specs, 3, H, W, max_batch, flags, &err) != 0)
        fail_msg("%s: %s", layers, err.msg);
}

/* Gradients of the mean loss of n images of 3 x H x W through the model of
 * the layer list `layers`, in training mode, or in eval mode after one
 * training forward pass has moved the running statistics. */
static void check_model(const char *what, const char *layers, int H, int W, int n, int max_batch,
                        uint64_t seed, int eval, const fd_tol *skip_more)
{
    cfx_model m;
    model_from_layers(&m, layers, H, W, max_batch, 1);
    cfx_model_init_params(&m, seed);
    cfx_rng_seed(&rng, seed);
    size_t n_in = (size_t)3 * n * H * W;
    fill(m.acts[0], n_in, -1, 1);
    int labels[8];
    for (int i = 0; i < n; i++)
        labels[i] = (int)cfx_rng_below(&rng, (uint32_t)m.n_classes);
    if (eval) {
        cfx_model_forward(&m, n);
        cfx_model_set_training(&m, 0);
    }

    const float *logits = cfx_model_forward(&m, n);
    double loss = 0.0;
    long correct = 0;
    cfx_softmax_xent(logits, labels, n, m.n_classes, 1.0f / (float)n, m.dacts[m.n_layers], &loss,
                     &correct);
    fill_value(m.grads, m.n_params + CFX_GRAD_TAIL, SENTINEL);
    fill_value(m.dacts[0], n_in, SENTINEL);
    cfx_model_backward(&m, n);
    for (int i = 0; i < CFX_GRAD_TAIL; i++) /* the statistics tail is left alone */
        assert_true(m.grads[m.n_params + i] == SENTINEL);

    float *g_params = falloc(m.n_params), *g_in = falloc(n_in);
    memcpy(g_params, m.grads, m.n_params * sizeof *g_params);
    memcpy(g_in, m.dacts[0], n_in * sizeof *g_in);
    model_ctx c = {&m, n, labels, NULL, NULL, model_pattern(&m, n, NULL)};
    c.pattern = malloc((c.n_pattern ? c.n_pattern : 1) * sizeof(int));
    c.base = malloc((c.n_pattern ? c.n_pattern : 1) * sizeof(int));
    model_pattern(&m, n, c.base);

    /* Below h ~ 4e-3 the float forward's rounding (~1/h) dominates; measured
     * errors are ~10x under these bounds. */
    const fd_tol usual = {.h = 4e-3f, .rel2 = 5e-3, .elem = 2e-2, .max_skip = 0.02};
    const fd_tol tol = skip_more ? *skip_more : usual;
    char name[96];
    snprintf(name, sizeof name, "%s params", what);
    check_grad(name, model_objective, &c, m.params, g_params, m.n_params, tol);
    snprintf(name, sizeof name, "%s input", what);
    check_grad(name, model_objective, &c, m.acts[0], g_in, n_in, tol);

    /* n = 0 zeroes the gradients. */
    cfx_model_backward(&m, 0);
    for (size_t i = 0; i < m.n_params; i++)
        assert_true(m.grads[i] == 0.0f);

    free(g_params), free(g_in), free(c.pattern), free(c.base);
    cfx_model_free(&m);
}

static void test_model_grad(void **state)
{
    (void)state;
    check_model("model conv-relu-pool-flatten-linear",
                "conv2d out=4 kernel=3 padding=1; relu; maxpool2d kernel=2; flatten; linear out=10",
                8, 8, 2, 2, 11, 0, NULL);
    /* Two convolutions (the second one's din feeds the first), overlapping
     * pooling, a hidden linear layer; fewer images than max_batch. */
    check_model("model conv-conv-pool-linear-linear",
                "conv2d out=4 kernel=5 stride=2 padding=2; relu; conv2d out=5 kernel=3 padding=1;"
                "relu; maxpool2d kernel=3 stride=2; flatten; linear out=8; relu; linear out=3",
                9, 7, 3, 4, 12, 0, NULL);
}

/* Residual blocks (one with a projection shortcut), BatchNorm in both modes,
 * convolutions without bias and with stride 2, global average pooling, GELU,
 * and an output read by two layers (its gradient is a sum). */
static void test_residual_grad(void **state)
{
    (void)state;
    const char *resnet = "conv2d out=4 kernel=3 padding=1 bias=false name=stem; batchnorm2d;"
                         "relu; basicblock out=4 name=b1; basicblock out=6 stride=2 name=b2;"
                         "avgpool; flatten; linear out=3";
    /* The same wiring by hand with GELU: smooth, so nothing is skipped. */
    const char *smooth = "conv2d out=4 kernel=3 padding=1 bias=false name=stem; batchnorm2d;"
                         "gelu name=s; conv2d out=6 kernel=3 stride=2 padding=1 bias=false;"
                         "batchnorm2d; gelu; conv2d out=6 kernel=3 padding=1 bias=false;"
                         "batchnorm2d name=main; conv2d out=6 kernel=1 stride=2 bias=false in=s;"
                         "batchnorm2d name=short; add in=main,short; gelu; avgpool; flatten;"
                         "linear out=3";
    check_model("smooth residual, training mode", smooth, 8, 8, 3, 4, 24, 0, NULL);
    check_model("smooth residual, eval mode", smooth, 8, 8, 3, 4, 25, 1, NULL);
    /* With ReLUs (basicblock), batch statistics move every ReLU input when
     * any parameter moves: a quarter of the differences cross a kink and are
     * skipped, others are retried at steps small enough for float rounding
     * to show, hence looser bounds (the smooth model above is the strict
     * check; tests/test_reference.c compares this one with PyTorch). */
    const fd_tol bn_tol = {.h = 4e-3f, .rel2 = 2e-2, .elem = 0.2, .max_skip = 0.4};
    check_model("residual, training mode", resnet, 8, 8, 3, 4, 21, 0, &bn_tol);
    check_model("residual, eval mode", resnet, 8, 8, 3, 4, 22, 1, &bn_tol);
    check_model("scaled linear head, frozen conv",
                "conv2d out=3 kernel=3 padding=1 trainable=false; relu; flatten;"
                "linear out=6 scale=2; relu; linear out=4 scale=-1.5 lr_scale=64",
                5, 5, 2, 2, 26, 0, NULL);
    check_model("gelu, avgpool, shared output",
                "conv2d out=3 kernel=3 padding=1; gelu name=g; conv2d out=3 kernel=1;"
                "add in=g,-1; batchnorm2d affine=false; maxpool2d kernel=3 stride=1; avgpool;"
                "flatten; linear out=4 bias=false",
                6, 6, 2, 2, 23, 0, NULL);
}

/* dirac=true: torch.nn.init.dirac_, so with zero bias the convolution
 * passes input channels 0..2 through and output channel 3 is zero. */
static void test_dirac_init(void **state)
{
    (void)state;
    cfx_model m;
    model_from_layers(&m, "conv2d out=4 kernel=3 padding=1 dirac=true; flatten; linear out=2", 6,
                      6, 2, 0);
    cfx_model_init_params(&m, 3);
    memset(m.params + m.layers[0].bias_offset, 0, m.layers[0].n_bias * sizeof(float));
    cfx_rng_seed(&rng, 4);
    fill(m.acts[0], (size_t)3 * 2 * 36, -1, 1);
    cfx_model_forward(&m, 2);
    const float *out = m.acts[1]; /* [4][2][6][6] */
    for (int c = 0; c < 3; c++)
        assert_memory_equal(out + (size_t)c * 2 * 36, m.acts[0] + (size_t)c * 2 * 36,
                            2 * 36 * sizeof(float));
    for (int j = 0; j < 2 * 36; j++)
        assert_true(out[3 * 2 * 36 + j] == 0.0f);
    cfx_model_free(&m);
}

/* Runs one pass of the kernels split over cfx_threads() into out[0..7). */
static void threaded_passes(float *const *out, const float *x, const float *dy, int C, int N, int H,
                            int W)
{
    const size_t NHW = (size_t)N * H * W, n = (size_t)C * NHW;
    double sums[2][64] = {{0}}, mean[64], invstd[64], a[64], b[64];
    cfx_batchnorm_sums(sums[0], x, NULL, C, NHW);
    for (int c = 0; c < C; c++)
        mean[c] = sums[0][c] / (double)NHW;
    cfx_batchnorm_sums(sums[1], x, mean, C, NHW);
    for (int c = 0; c < C; c++)
        invstd[c] = 1.0 / sqrt(sums[1][c] / (double)NHW + 1e-5);
    cfx_batchnorm_apply(out[0], x, mean, invstd, NULL, NULL, C, NHW);
    cfx_batchnorm_grad_sums(a, b, dy, x, mean, invstd, C, NHW);
    cfx_batchnorm_input_grad(out[1], dy, x, mean, invstd, NULL, a, b, C, NHW);
    cfx_gelu_forward(out[2], x, n);
    cfx_gelu_backward(out[3], dy, x, n);
    cfx_relu_backward(out[4], dy, x, n);
    cfx_maxpool_forward(out[5], x, C * N, H, W, 3, 2);
    cfx_maxpool_backward(out[6], dy, x, C * N, H, W, 3, 2);
    memcpy(out[7], sums, sizeof sums); /* the statistics themselves */
}

/* BatchNorm, GELU, ReLU, max-pool and the im2col convolution's three passes
 * (9 chunks of one image, the weight gradient in 8 groups) split over 3
 * threads give bitwise the results of 1 thread. */
static void test_threads_split(void **state)
{
    (void)state;
    enum { C = 24, N = 9, H = 31, W = 31, OC = 40, K = 3 };
    const size_t n = (size_t)C * N * H * W;
    float *x = falloc(n), *dy = falloc(n), *w = falloc((size_t)OC * C * K * K);
    cfx_rng_seed(&rng, 21);
    fill(x, n, -2, 2), fill(dy, n, -1, 1), fill(w, (size_t)OC * C * K * K, -0.2f, 0.2f);
    float *out[2][8], *conv[2][3];
    const size_t n_conv[3] = {(size_t)OC * N * H * W, n, (size_t)OC * C * K * K};
    float *dconv = falloc(n_conv[0]);
    fill(dconv, n_conv[0], -1, 1);
    const size_t col = (size_t)C * K * K * N * H * W;
    float *colbuf = falloc(col), *dcolbuf = falloc(col);
    for (int r = 0; r < 2; r++) {
        cfx_set_threads(r == 0 ? 1 : 3);
        for (int k = 0; k < 8; k++)
            out[r][k] = falloc(n);
        threaded_passes(out[r], x, dy, C, N, H, W);
        for (int k = 0; k < 3; k++)
            conv[r][k] = falloc(n_conv[k]);
        cfx_conv2d_forward(conv[r][0], colbuf, x, w, NULL, N, C, H, W, OC, K, 1, 1);
        cfx_conv2d_backward(conv[r][1], conv[r][2], NULL, colbuf, dcolbuf, dconv, x, w, N, C, H, W,
                            OC, K, 1, 1);
    }
    cfx_set_threads(1);
    const size_t pooled = (size_t)C * N * 15 * 15, bytes[8] = {n, n, n, n, n, pooled, n, 0};
    for (int k = 0; k < 7; k++)
        assert_memory_equal(out[0][k], out[1][k], bytes[k] * sizeof(float));
    assert_memory_equal(out[0][7], out[1][7], 2 * 64 * sizeof(double));
    for (int k = 0; k < 3; k++)
        if (memcmp(conv[0][k], conv[1][k], n_conv[k] * sizeof(float)) != 0)
            fail_msg("conv pass %d differs on 3 threads", k);
    for (int r = 0; r < 2; r++) {
        for (int k = 0; k < 8; k++)
            free(out[r][k]);
        for (int k = 0; k < 3; k++)
            free(conv[r][k]);
    }
    free(x), free(dy), free(w), free(dconv), free(colbuf), free(dcolbuf);
}

/* identity=true: the default init, then filters 0..2 pass input channels
 * 0..2 through; filter 3 keeps its random (non-zero) weights. */
static void test_identity_init(void **state)
{
    (void)state;
    cfx_model m;
    model_from_layers(&m, "conv2d out=4 kernel=3 padding=1 identity=true; flatten; linear out=2",
                      4, 4, 1, 0);
    cfx_model_init_params(&m, 3);
    const float *w = m.params + m.layers[0].weight_offset; /* [4][3][3][3] */
    for (int f = 0; f < 3; f++)
        for (int j = 0; j < 27; j++)
            assert_true(w[f * 27 + j] == (j == f * 9 + 4 ? 1.0f : 0.0f));
    int nonzero = 0;
    for (int j = 0; j < 27; j++)
        nonzero += w[3 * 27 + j] != 0.0f;
    assert_int_equal(nonzero, 27);
    cfx_model_free(&m);
}

/* Whitening: on images whose channels are strongly correlated, the first D
 * filters of cfx_whiten_weights map the 2x2 patches to outputs with identity
 * covariance (eps is negligible against the eigenvalues), the last D are
 * their negatives, and a wrong out= is refused. */
static void test_whiten_init(void **state)
{
    (void)state;
    enum { N = 40, C = 3, H = 8, W = 8, K = 2, D = C * K * K, P = (H - K + 1) * (W - K + 1) };
    float *img = falloc((size_t)C * N * H * W), *w = falloc(2 * D * D);
    cfx_rng_seed(&rng, 11);
    for (int n = 0; n < N; n++)
        for (int j = 0; j < H * W; j++) { /* a shared component plus noise per channel */
            float common = urand(-1, 1);
            for (int c = 0; c < C; c++)
                img[((size_t)c * N + n) * H * W + j] = 2.0f * common + urand(-0.3f, 0.3f) * (c + 1);
        }
    cfx_error err;
    assert_int_equal(cfx_whiten_weights(w, 2 * D, img, N, C, H, W, K, 1e-9, &err), 0);
    double cov[D][D] = {{0}};
    for (int n = 0; n < N; n++)
        for (int y = 0; y + K <= H; y++)
            for (int x = 0; x + K <= W; x++) {
                double out[D] = {0};
                for (int f = 0; f < D; f++)
                    for (int c = 0; c < C; c++)
                        for (int i = 0; i < K * K; i++)
                            out[f] += (double)w[(f * C + c) * K * K + i] *
                                      img[((size_t)c * N + n) * H * W + (y + i / K) * W + x + i % K];
                for (int a = 0; a < D; a++)
                    for (int b = 0; b < D; b++)
                        cov[a][b] += out[a] * out[b] / ((double)N * P);
            }
    for (int a = 0; a < D; a++)
        for (int b = 0; b < D; b++)
            assert_true(fabs(cov[a][b] - (a == b)) < 1e-3);
    for (int j = 0; j < D * D; j++)
        assert_true(w[D * D + j] == -w[j]);
    assert_int_equal(cfx_whiten_weights(w, D, img, N, C, H, W, K, 1e-9, &err), -1);
    assert_non_null(strstr(err.msg, "out=24"));
    cfx_model m; /* the layer's bias starts at 0, as airbench's */
    model_from_layers(&m, "conv2d out=24 kernel=2 whiten=true; flatten; linear out=2", 4, 4, 1, 0);
    cfx_model_init_params(&m, 3);
    for (int j = 0; j < 24; j++)
        assert_true(m.params[m.layers[0].bias_offset + j] == 0.0f);
    cfx_model_free(&m);
    free(img);
    free(w);
}

static int report(void **state)
{
    (void)state;
    print_message("worst over all checks: rel2 %.2e, elem %.2e\n", worst_rel2, worst_elem);
    return 0;
}

int main(void)
{
    /* clang-format off */
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_conv2d_grad),
        cmocka_unit_test(test_relu_grad),
        cmocka_unit_test(test_gelu_accuracy),
        cmocka_unit_test(test_maxpool_grad),
        cmocka_unit_test(test_maxpool_ties),
        cmocka_unit_test(test_maxpool_wide_ties),
        cmocka_unit_test(test_flatten),
        cmocka_unit_test(test_linear_grad),
        cmocka_unit_test(test_softmax_xent_grad),
        cmocka_unit_test(test_softmax_xent_stable),
        cmocka_unit_test(test_model_grad),
        cmocka_unit_test(test_residual_grad),
        cmocka_unit_test(test_dirac_init),
        cmocka_unit_test(test_identity_init),
        cmocka_unit_test(test_threads_split),
        cmocka_unit_test(test_whiten_init),
    };
    /* clang-format on */
    return cmocka_run_group_tests(tests, NULL, report);
}
