/* Both convolution kernels (im2col + SGEMM, and the direct AVX-512 one for
 * stride-1 "same" shapes) against a plain 7-loop convolution: the forward,
 * cfx_im2col itself, cfx_col2im as its adjoint, and the backward (dinput,
 * dweight, dbias), over shapes with stride and padding edge cases and, for
 * the direct kernel, channel counts and batch sizes that leave partial
 * register blocks. Activations are [C][N][H][W]; weights [OC][C][K][K]. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include <cmocka.h>

#include "cfx/nn.h"  /* defines: cfx_conv2d_forward, cfx_im2col, cfx_col2im */
#include "cfx/rng.h" /* defines: cfx_rng */

typedef struct {
    int N, C, H, W, OC, K, S, P;
} conv_shape;

/* clang-format off */
static const conv_shape shapes[] = {
    /* N  C  H  W OC  K  S  P */
    {1, 1, 5, 5, 1, 3, 1, 0}, /* plain */
    {5, 3, 8, 8, 4, 3, 1, 1}, /* batch 5, "same" padding */
    {2, 2, 7, 7, 3, 3, 2, 1}, /* stride 2, odd size */
    {1, 2, 7, 9, 2, 3, 2, 0}, /* stride 2, odd, last column never reached */
    {5, 3, 5, 5, 2, 5, 1, 0}, /* kernel == input: 1x1 output */
    {1, 2, 4, 6, 3, 4, 1, 0}, /* kernel == input height, non-square */
    {2, 3, 6, 5, 4, 1, 1, 0}, /* 1x1 kernel */
    {5, 2, 5, 4, 3, 1, 2, 0}, /* 1x1 kernel, stride 2 */
    {1, 2, 3, 3, 2, 1, 1, 2}, /* 1x1 kernel, padding 2: border is bias only */
    {2, 2, 4, 5, 2, 3, 1, 3}, /* padding larger than needed */
    {2, 1, 3, 3, 2, 3, 1, 4}, /* padding larger than the image */
    {1, 1, 1, 1, 2, 5, 1, 2}, /* 1x1 image, 5x5 "same" convolution */
    {2, 2, 2, 3, 2, 5, 1, 2}, /* image smaller than the kernel */
    {1, 2, 1, 4, 3, 7, 1, 3}, /* 1-pixel-high image, 7x7 kernel */
    {3, 2, 9, 9, 3, 5, 3, 2}, /* stride 3 */
    {1, 1, 6, 6, 1, 3, 2, 2}, /* stride 2, padding 2 */
    {2, 3, 8, 5, 2, 2, 2, 1}, /* even kernel with padding */
    /* stride-1 "same" shapes with H*W % 16 == 0: the direct kernel's */
    {2, 3, 32, 32, 16, 3, 1, 1}, /* the seed's conv1 */
    {3, 16, 16, 16, 32, 3, 1, 1}, /* conv2, batch 3 */
    {1, 32, 8, 8, 64, 3, 1, 1}, /* conv3, one image */
    {3, 3, 4, 4, 10, 3, 1, 1}, /* 4x4 planes: vectors span rows and images */
    {2, 7, 8, 8, 5, 3, 1, 1}, /* 7 = 6 + 1 input, 5 = 4 + 1 output channels */
    {5, 13, 2, 8, 11, 3, 1, 1}, /* 13 = 6 + 6 + 1, 11 = 8 + 2 + 1, two rows */
    {2, 2, 4, 8, 3, 5, 1, 2}, /* 5x5 kernel */
    {3, 4, 8, 2, 3, 7, 1, 3}, /* 7x7 kernel wider than the image */
    {1, 4, 4, 4, 6, 1, 1, 0}, /* 1x1 kernel */
};
/* clang-format on */
#define N_SHAPES (sizeof shapes / sizeof shapes[0])

static cfx_rng rng;

static void fill(float *x, size_t n, float lo, float hi)
{
    for (size_t i = 0; i < n; i++)
        x[i] = lo + (hi - lo) * cfx_rng_float(&rng);
}

static float *falloc(size_t n) { return malloc((n ? n : 1) * sizeof(float)); }

/* Sizes of one shape's arrays. */
typedef struct {
    int OH, OW;
    size_t in, w, out, col;
} conv_sizes;

static conv_sizes sizes_of(const conv_shape *s)
{
    conv_sizes z;
    z.OH = cfx_window_out(s->H, s->K, s->S, s->P);
    z.OW = cfx_window_out(s->W, s->K, s->S, s->P);
    z.in = (size_t)s->C * s->N * s->H * s->W;
    z.w = (size_t)s->OC * s->C * s->K * s->K;
    z.out = (size_t)s->OC * s->N * z.OH * z.OW;
    z.col = (size_t)s->C * s->K * s->K * s->N * z.OH * z.OW;
    return z;
}

static void describe(char *buf, size_t len, const conv_shape *s)
{
    snprintf(buf, len, "N%d C%d %dx%d OC%d K%d S%d P%d", s->N, s->C, s->H, s->W, s->OC, s->K, s->S,
             s->P);
}

/* in[c][n][ih][iw], or 0 outside the image. */
static double pixel(const float *in, const conv_shape *s, int c, int n, int ih, int iw)
{
    if (ih < 0 || ih >= s->H || iw < 0 || iw >= s->W)
        return 0.0;
    return in[(((size_t)c * s->N + n) * s->H + ih) * s->W + iw];
}

/* Largest |a - ref| / scale over n elements; a NaN (an output left at its
 * NaN fill) counts as infinite. */
static double max_err(const float *a, const double *ref, const double *scale, size_t n)
{
    double e = 0.0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - ref[i]) / (scale[i] + 1e-30);
        e = isnan(d) ? INFINITY : fmax(e, d);
    }
    return e;
}

/* Relative to the sum of |terms| of each output, a float dot product of up to
 * a few hundred terms stays far below this; an index bug is O(1). */
#define TOL 1e-5

static double worst_fwd, worst_bwd, worst_adj;

/* Runs a test with the direct kernel on or off; the "on" runs are skipped on
 * CPUs without AVX-512 (the im2col path is then the only one). The skip is
 * in the test (setup functions cannot skip in cmocka: that is an error). */
static int direct_missing;

static int use_gemm(void **state)
{
    (void)state;
    cfx_conv2d_use_direct(0);
    return 0;
}

static int use_direct(void **state)
{
    (void)state;
    direct_missing = !cfx_conv2d_use_direct(1);
    return 0;
}

static void skip_without_direct(void)
{
    if (direct_missing) {
        direct_missing = 0;
        print_message("this CPU has no AVX-512: the direct kernel is not tested here\n");
        skip();
    }
}

/* ---- forward ----------------------------------------------------------- */

static void test_forward(void **state)
{
    (void)state;
    skip_without_direct();
    cfx_rng_seed(&rng, 1);
    for (size_t t = 0; t < N_SHAPES; t++) {
        const conv_shape *s = &shapes[t];
        conv_sizes z = sizes_of(s);
        float *in = falloc(z.in), *w = falloc(z.w), *b = falloc(s->OC);
        float *out = falloc(z.out), *col = falloc(z.col);
        double *ref = malloc(z.out * sizeof *ref), *scale = malloc(z.out * sizeof *scale);
        fill(in, z.in, -1, 1), fill(w, z.w, -1, 1), fill(b, s->OC, -1, 1);
        for (size_t i = 0; i < z.out; i++)
            out[i] = NAN;

        cfx_conv2d_forward(out, col, in, w, b, s->N, s->C, s->H, s->W, s->OC, s->K, s->S, s->P);
        for (int n = 0; n < s->N; n++)
            for (int oc = 0; oc < s->OC; oc++)
                for (int oh = 0; oh < z.OH; oh++)
                    for (int ow = 0; ow < z.OW; ow++) {
                        double sum = b[oc], abs = fabs(b[oc]);
                        for (int c = 0; c < s->C; c++)
                            for (int kh = 0; kh < s->K; kh++)
                                for (int kw = 0; kw < s->K; kw++) {
                                    double x = pixel(in, s, c, n, oh * s->S - s->P + kh,
                                                     ow * s->S - s->P + kw);
                                    double wt =
                                        w[(((size_t)oc * s->C + c) * s->K + kh) * s->K + kw];
                                    sum += wt * x;
                                    abs += fabs(wt * x);
                                }
                        size_t o = (((size_t)oc * s->N + n) * z.OH + oh) * z.OW + ow;
                        ref[o] = sum, scale[o] = abs;
                    }
        double e = max_err(out, ref, scale, z.out);
        worst_fwd = fmax(worst_fwd, e);
        if (!(e < TOL)) {
            char d[80];
            describe(d, sizeof d, s);
            fail_msg("forward %s: error %.3e", d, e);
        }
        free(in), free(w), free(b), free(out), free(col), free(ref), free(scale);
    }
}

/* ---- im2col and col2im ------------------------------------------------- */

/* cfx_im2col writes every entry, exactly as its definition says. */
static void test_im2col(void **state)
{
    (void)state;
    cfx_rng_seed(&rng, 2);
    for (size_t t = 0; t < N_SHAPES; t++) {
        const conv_shape *s = &shapes[t];
        conv_sizes z = sizes_of(s);
        float *in = falloc(z.in), *col = falloc(z.col);
        fill(in, z.in, -1, 1);
        for (size_t i = 0; i < z.col; i++)
            col[i] = NAN;
        cfx_im2col(col, in, s->N, s->C, s->H, s->W, s->K, s->S, s->P, z.OH, z.OW);
        size_t row_len = (size_t)s->N * z.OH * z.OW;
        for (int c = 0; c < s->C; c++)
            for (int kh = 0; kh < s->K; kh++)
                for (int kw = 0; kw < s->K; kw++)
                    for (int n = 0; n < s->N; n++)
                        for (int oh = 0; oh < z.OH; oh++)
                            for (int ow = 0; ow < z.OW; ow++) {
                                size_t r = ((size_t)c * s->K + kh) * s->K + kw;
                                size_t j = ((size_t)n * z.OH + oh) * z.OW + ow;
                                double want = pixel(in, s, c, n, oh * s->S - s->P + kh,
                                                    ow * s->S - s->P + kw);
                                if (!(col[r * row_len + j] == want)) {
                                    char d[80];
                                    describe(d, sizeof d, s);
                                    fail_msg("im2col %s: row %zu column %zu is %g, want %g", d, r,
                                             j, col[r * row_len + j], want);
                                }
                            }
        free(in), free(col);
    }
}

/* <im2col(x), y> == <x, col2im(y)>, and col2im adds to what is there. */
static void test_col2im_adjoint(void **state)
{
    (void)state;
    cfx_rng_seed(&rng, 3);
    for (size_t t = 0; t < N_SHAPES; t++) {
        const conv_shape *s = &shapes[t];
        conv_sizes z = sizes_of(s);
        float *x = falloc(z.in), *y = falloc(z.col), *col = falloc(z.col);
        float *back = falloc(z.in), *base = falloc(z.in), *acc = falloc(z.in);
        fill(x, z.in, -1, 1), fill(y, z.col, -1, 1), fill(base, z.in, -1, 1);
        cfx_im2col(col, x, s->N, s->C, s->H, s->W, s->K, s->S, s->P, z.OH, z.OW);
        for (size_t i = 0; i < z.in; i++)
            back[i] = 0.0f, acc[i] = base[i];
        cfx_col2im(back, y, s->N, s->C, s->H, s->W, s->K, s->S, s->P, z.OH, z.OW);
        cfx_col2im(acc, y, s->N, s->C, s->H, s->W, s->K, s->S, s->P, z.OH, z.OW);

        double lhs = 0.0, rhs = 0.0, abs = 0.0;
        for (size_t i = 0; i < z.col; i++)
            lhs += (double)col[i] * y[i], abs += fabs((double)col[i] * y[i]);
        for (size_t i = 0; i < z.in; i++)
            rhs += (double)x[i] * back[i];
        double e = fabs(lhs - rhs) / (abs + 1e-30);
        worst_adj = fmax(worst_adj, e);
        char d[80];
        describe(d, sizeof d, s);
        if (!(e < TOL))
            fail_msg("col2im %s is not the adjoint of im2col: %.9g vs %.9g", d, lhs, rhs);
        for (size_t i = 0; i < z.in; i++)
            if (!(fabsf(acc[i] - (base[i] + back[i])) <= 1e-6f * (1.0f + fabsf(acc[i]))))
                fail_msg("col2im %s does not accumulate at [%zu]", d, i);
        free(x), free(y), free(col), free(back), free(base), free(acc);
    }
}

/* ---- backward ---------------------------------------------------------- */

static void test_backward(void **state)
{
    (void)state;
    skip_without_direct();
    cfx_rng_seed(&rng, 4);
    for (size_t t = 0; t < N_SHAPES; t++) {
        const conv_shape *s = &shapes[t];
        conv_sizes z = sizes_of(s);
        float *in = falloc(z.in), *w = falloc(z.w), *b = falloc(s->OC), *out = falloc(z.out);
        float *col = falloc(z.col), *dcol = falloc(z.col), *dout = falloc(z.out);
        float *din = falloc(z.in), *dw = falloc(z.w), *db = falloc(s->OC);
        double *rin = calloc(z.in, sizeof *rin), *sin = calloc(z.in, sizeof *sin);
        double *rw = calloc(z.w, sizeof *rw), *sw = calloc(z.w, sizeof *sw);
        double *rb = calloc(s->OC, sizeof *rb), *sb = calloc(s->OC, sizeof *sb);
        fill(in, z.in, -1, 1), fill(w, z.w, -1, 1), fill(b, s->OC, -1, 1);
        fill(dout, z.out, -1, 1);
        for (size_t i = 0; i < z.in; i++)
            din[i] = NAN;
        for (size_t i = 0; i < z.w; i++)
            dw[i] = NAN;
        for (int i = 0; i < s->OC; i++)
            db[i] = NAN;

        cfx_conv2d_forward(out, col, in, w, b, s->N, s->C, s->H, s->W, s->OC, s->K, s->S, s->P);
        cfx_conv2d_backward(din, dw, db, col, dcol, dout, in, w, s->N, s->C, s->H, s->W, s->OC,
                            s->K, s->S, s->P);
        /* Without din (a first layer), dweight and dbias come out the same. */
        float *dw2 = falloc(z.w), *db2 = falloc(s->OC);
        cfx_conv2d_backward(NULL, dw2, db2, col, dcol, dout, in, w, s->N, s->C, s->H, s->W, s->OC,
                            s->K, s->S, s->P);
        for (size_t i = 0; i < z.w; i++)
            assert_true(dw2[i] == dw[i]);
        for (int i = 0; i < s->OC; i++)
            assert_true(db2[i] == db[i]);
        free(dw2), free(db2);

        /* Direct: every (output, tap) pair adds to one weight and one pixel. */
        for (int n = 0; n < s->N; n++)
            for (int oc = 0; oc < s->OC; oc++)
                for (int oh = 0; oh < z.OH; oh++)
                    for (int ow = 0; ow < z.OW; ow++) {
                        double g = dout[(((size_t)oc * s->N + n) * z.OH + oh) * z.OW + ow];
                        rb[oc] += g, sb[oc] += fabs(g);
                        for (int c = 0; c < s->C; c++)
                            for (int kh = 0; kh < s->K; kh++)
                                for (int kw = 0; kw < s->K; kw++) {
                                    int ih = oh * s->S - s->P + kh, iw = ow * s->S - s->P + kw;
                                    if (ih < 0 || ih >= s->H || iw < 0 || iw >= s->W)
                                        continue;
                                    size_t wi = (((size_t)oc * s->C + c) * s->K + kh) * s->K + kw;
                                    size_t xi = (((size_t)c * s->N + n) * s->H + ih) * s->W + iw;
                                    rw[wi] += g * in[xi], sw[wi] += fabs(g * in[xi]);
                                    rin[xi] += g * w[wi], sin[xi] += fabs(g * w[wi]);
                                }
                    }
        /* Pixels and weights that no output reaches (scale 0) must be exactly 0. */
        double e_in = max_err(din, rin, sin, z.in), e_w = max_err(dw, rw, sw, z.w);
        double e_b = max_err(db, rb, sb, s->OC);
        worst_bwd = fmax(worst_bwd, fmax(e_in, fmax(e_w, e_b)));
        if (!(e_in < TOL && e_w < TOL && e_b < TOL)) {
            char d[80];
            describe(d, sizeof d, s);
            fail_msg("backward %s: dinput %.3e, dweight %.3e, dbias %.3e", d, e_in, e_w, e_b);
        }
        free(in), free(w), free(b), free(out), free(col), free(dcol), free(dout);
        free(din), free(dw), free(db), free(rin), free(sin), free(rw), free(sw), free(rb), free(sb);
    }
}

/* With the direct kernel on, it must really have run on the shapes made for it. */
static void test_direct_taken(void **state)
{
    (void)state;
    if (!cfx_conv2d_use_direct(1))
        skip();
    int usable = 0;
    for (size_t t = 0; t < N_SHAPES; t++)
        usable += cfx_conv2d_direct_usable(shapes[t].N, shapes[t].H, shapes[t].W, shapes[t].K,
                                           shapes[t].S, shapes[t].P);
    assert_int_equal(usable, 10); /* the 9 above and "batch 5, same padding" */
    cfx_conv2d_use_direct(0);
    assert_false(cfx_conv2d_direct_usable(2, 32, 32, 3, 1, 1));
}

/* The direct kernels on 3 threads give bitwise the outputs of 1 thread. */
static void test_direct_threads(void **state)
{
    (void)state;
    if (!cfx_conv2d_use_direct(1))
        skip();
    const conv_shape s = {7, 13, 8, 8, 11, 3, 1, 1};
    conv_sizes z = sizes_of(&s);
    float *in = falloc(z.in), *w = falloc(z.w), *b = falloc(s.OC), *dout = falloc(z.out);
    float *out[2], *din[2], *dw[2], db[2][16];
    cfx_rng_seed(&rng, 9);
    fill(in, z.in, -1, 1), fill(w, z.w, -1, 1), fill(b, s.OC, -1, 1), fill(dout, z.out, -1, 1);
    for (int r = 0; r < 2; r++) {
        out[r] = falloc(z.out), din[r] = falloc(z.in), dw[r] = falloc(z.w);
        cfx_set_threads(r == 0 ? 1 : 3);
        cfx_conv2d_relu_forward(out[r], NULL, in, w, b, s.N, s.C, s.H, s.W, s.OC, s.K, s.S, s.P);
        cfx_conv2d_backward(din[r], dw[r], db[r], NULL, NULL, dout, in, w, s.N, s.C, s.H, s.W, s.OC,
                            s.K, s.S, s.P);
    }
    cfx_set_threads(1);
    assert_memory_equal(out[0], out[1], z.out * sizeof(float));
    assert_memory_equal(din[0], din[1], z.in * sizeof(float));
    assert_memory_equal(dw[0], dw[1], z.w * sizeof(float));
    for (int r = 0; r < 2; r++)
        free(out[r]), free(din[r]), free(dw[r]);
    free(in), free(w), free(b), free(dout);
}

static int report(void **state)
{
    (void)state;
    print_message("worst relative errors: forward %.2e, backward %.2e, adjoint %.2e\n", worst_fwd,
                  worst_bwd, worst_adj);
    return 0;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup(test_forward, use_gemm),
        cmocka_unit_test_setup(test_forward, use_direct),
        cmocka_unit_test(test_im2col),
        cmocka_unit_test(test_col2im_adjoint),
        cmocka_unit_test_setup(test_backward, use_gemm),
        cmocka_unit_test_setup(test_backward, use_direct),
        cmocka_unit_test(test_direct_taken),
        cmocka_unit_test(test_direct_threads),
    };
    return cmocka_run_group_tests(tests, NULL, report);
}
