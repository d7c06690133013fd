/* Unit tests of cfx-viz's analyses (tools/viz/analysis.c) and plotting
 * helpers: saliency against finite differences of the class score through
 * libcfx's forward pass, Grad-CAM of a hand-set network against values worked
 * out by hand, Integrated Gradients' completeness, SmoothGrad's limits,
 * occlusion against a brute-force loop, Spearman correlation with ties,
 * confusion statistics, the randomisation sanity check of every method,
 * bilinear resizing, denormalisation and nice ticks. No files are read.
 * (Guided Backpropagation is checked against torch in test_reference.) */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "analysis.h"   /* defines: viz_saliency, viz_gradcam, viz_spearman, ... */
#include "featvis.h"    /* defines: viz_receptive_field, viz_channels, viz_pca_2d */
#include "cfx/config.h" /* defines: cfx_parse_layers */
#include "cfx/data.h"   /* defines: cfx_batch_fill, cfx_dataset */
#include "cfx/rng.h"    /* defines: cfx_rng */
#include "plot.h"       /* defines: viz_nice_ticks, viz_viridis */

static void make_model(cfx_model *m, const char *layers, int c, int h, int w, int batch, int flags)
{
    cfx_layer_spec specs[CFX_MAX_LAYERS];
    int n;
    cfx_error err;
    assert_int_equal(cfx_parse_layers(layers, specs, &n, &err), 0);
    assert_int_equal(cfx_model_create(m, specs, n, c, h, w, batch, flags, &err), 0);
}

/* ---- saliency --------------------------------------------------------- */

/* Score of class cls for image i of the batch in m->acts[0]. */
static double score(cfx_model *m, int n, int i, int cls)
{
    const float *z = cfx_model_forward(m, n);
    return z[(size_t)i * m->n_classes + cls];
}

/* d score / d input by central differences must match dacts[0]; the map is
 * its channel-wise maximum of absolute values. The network is piecewise
 * linear, so the differences are exact unless a step crosses a kink; such
 * elements are recognised (the one-sided differences disagree) and skipped. */
static void check_saliency(int flags)
{
    enum { N = 2, C = 2, H = 6, W = 6, HW = H * W };
    cfx_model m;
    make_model(&m,
               "conv2d out=4 kernel=3 padding=1; relu; maxpool2d kernel=2; "
               "conv2d out=3 kernel=3 padding=1; relu; flatten; linear out=5",
               C, H, W, N, flags);
    cfx_model_init_params(&m, 7);
    cfx_rng rng;
    cfx_rng_seed(&rng, 99);
    for (int j = 0; j < C * N * HW; j++)
        m.acts[0][j] = 2.0f * cfx_rng_float(&rng) - 1.0f;
    int classes[N] = {3, 1};
    viz_class_score_backward(&m, N, classes);
    float grad[C * N * HW], maps[N * HW];
    memcpy(grad, m.dacts[0], sizeof grad);
    viz_saliency(&m, N, maps);

    const float h = 1e-3f;
    int checked = 0, skipped = 0;
    double fd_abs_max[N * HW] = {0};
    for (int i = 0; i < N; i++) {
        for (int c = 0; c < C; c++) {
            for (int p = 0; p < HW; p++) {
                float *x = &m.acts[0][((size_t)c * N + i) * HW + p], x0 = *x;
                double s0 = score(&m, N, i, classes[i]);
                *x = x0 + h;
                double sp = score(&m, N, i, classes[i]);
                *x = x0 - h;
                double sm = score(&m, N, i, classes[i]);
                *x = x0;
                double fwd = (sp - s0) / h, bwd = (s0 - sm) / h, fd = (sp - sm) / (2 * h);
                if (fabs(fwd - bwd) > 1e-3 * (1.0 + fabs(fd))) {
                    skipped++; /* a ReLU or max switched inside the step */
                    continue;
                }
                double g = grad[((size_t)c * N + i) * HW + p];
                assert_true(fabs(g - fd) <= 1e-3 * (1.0 + fabs(fd)));
                if (fabs(fd) > fd_abs_max[i * HW + p])
                    fd_abs_max[i * HW + p] = fabs(fd);
                checked++;
            }
        }
    }
    printf("saliency: %d elements checked, %d skipped (kink)\n", checked, skipped);
    assert_true(checked >= 9 * (checked + skipped) / 10);
    for (int j = 0; j < N * HW; j++) {
        assert_true(maps[j] >= 0.0f);
        assert_true(maps[j] >= fd_abs_max[j] - 1e-3 * (1.0 + fd_abs_max[j]));
    }
    /* the map is exactly the channel maximum of |gradient| */
    for (int i = 0; i < N; i++)
        for (int p = 0; p < HW; p++) {
            float a = fabsf(grad[((size_t)0 * N + i) * HW + p]);
            float b = fabsf(grad[((size_t)1 * N + i) * HW + p]);
            assert_true(maps[i * HW + p] == (a > b ? a : b));
        }
    cfx_model_free(&m);
}

static void test_saliency_finite_differences(void **state)
{
    (void)state;
    check_saliency(CFX_MODEL_INPUT_GRAD);                              /* fused ReLUs */
    check_saliency(CFX_MODEL_INPUT_GRAD | CFX_MODEL_KEEP_ACTIVATIONS); /* separate layers */
}

/* ---- Grad-CAM --------------------------------------------------------- */

/* Input 1 x 2 x 2, conv2d out=2 kernel=1, flatten, linear out=2:
 *   A0 = 1 * x + 0,  A1 = -1 * x + 0.5
 *   features (c, h, w) = [A0(4), A1(4)]
 *   class 0 row V0 = [1 0 0 0 | 0 0 0 2],  class 1 row V1 = [0 1 1 0 | -1 0 0 0]
 * d score_c / d A_k is the slice of V_c, so alpha_k is its mean:
 *   class 0: alpha = (1/4, 2/4),  class 1: alpha = (2/4, -1/4).
 * Image 0, x = [1 2; 3 -1], class 1:
 *   A0 = [1 2 3 -1], A1 = [-0.5 -1.5 -2.5 1.5]
 *   0.5 A0 - 0.25 A1 = [0.625 1.375 2.125 -0.875] -> ReLU [0.625 1.375 2.125 0]
 * Image 1, x = [0 1; 2 0], class 0:
 *   A0 = [0 1 2 0], A1 = [0.5 -0.5 -1.5 0.5]
 *   0.25 A0 + 0.5 A1 = [0.25 0 -0.25 0.25] -> ReLU [0.25 0 0 0.25] */
static void test_gradcam_by_hand(void **state)
{
    (void)state;
    cfx_model m;
    make_model(&m, "conv2d out=2 kernel=1; flatten; linear out=2", 1, 2, 2, 2,
               CFX_MODEL_KEEP_ACTIVATIONS);
    float *p = m.params;
    const cfx_layer *conv = &m.layers[0], *lin = &m.layers[2];
    p[conv->weight_offset + 0] = 1.0f, p[conv->weight_offset + 1] = -1.0f;
    p[conv->bias_offset + 0] = 0.0f, p[conv->bias_offset + 1] = 0.5f;
    const float V[2][8] = {{1, 0, 0, 0, 0, 0, 0, 2}, {0, 1, 1, 0, -1, 0, 0, 0}};
    memcpy(p + lin->weight_offset, V, sizeof V);
    p[lin->bias_offset] = p[lin->bias_offset + 1] = 0.0f;
    /* acts[0] is [C=1][N=2][2][2] */
    const float x[8] = {1, 2, 3, -1, 0, 1, 2, 0};
    memcpy(m.acts[0], x, sizeof x);
    int classes[2] = {1, 0};
    viz_class_score_backward(&m, 2, classes);
    assert_int_equal(viz_last_conv(&m), 0);
    float cam[8];
    viz_gradcam(&m, 0, 2, cam);
    const float want[8] = {0.625f, 1.375f, 2.125f, 0.0f, 0.25f, 0.0f, 0.0f, 0.25f};
    for (int j = 0; j < 8; j++)
        assert_float_equal(cam[j], want[j], 1e-6);
    cfx_model_free(&m);
}

/* ---- statistics ------------------------------------------------------- */

static void test_spearman(void **state)
{
    (void)state;
    const float a[5] = {1, 2, 3, 4, 5}, up[5] = {10, 20, 30, 40, 50}, down[5] = {5, 4, 3, 2, 1};
    assert_float_equal(viz_spearman(a, up, 5), 1.0, 1e-12);
    assert_float_equal(viz_spearman(a, down, 5), -1.0, 1e-12);
    /* ties share their average rank: ranks of b are 1 2 3.5 5 3.5, so
     * rho = 8 / sqrt(10 * 9.5) */
    const float b[5] = {5, 6, 7, 8, 7};
    assert_float_equal(viz_spearman(a, b, 5), 8.0 / sqrt(95.0), 1e-12);
    const float flat[5] = {2, 2, 2, 2, 2};
    assert_true(isnan(viz_spearman(a, flat, 5)));
    const double v[4] = {0.5, NAN, 1.5, NAN};
    assert_float_equal(viz_nanmean(v, 4), 1.0, 1e-12);
    assert_true(isnan(viz_nanmean(v + 1, 1)));
}

static void test_confusion_per_class_pairs(void **state)
{
    (void)state;
    enum { K = 3 };
    const int labels[8] = {0, 0, 0, 1, 1, 2, 2, 2};
    const int preds[8] = {0, 1, 2, 1, 0, 2, 1, 1};
    long cm[K * K];
    viz_confusion(labels, preds, 8, K, cm);
    const long want[K * K] = {1, 1, 1, 1, 1, 0, 0, 2, 1};
    assert_memory_equal(cm, want, sizeof want);
    viz_class_metrics pc[K];
    viz_per_class(cm, K, pc);
    /* class 1: tp 1, predicted 4 times, 2 images */
    assert_float_equal(pc[1].precision, 0.25, 1e-12);
    assert_float_equal(pc[1].recall, 0.5, 1e-12);
    assert_float_equal(pc[1].f1, 2 * 0.25 * 0.5 / 0.75, 1e-12);
    assert_int_equal(pc[2].support, 3);
    viz_pair pairs[5];
    int n = viz_confused_pairs(cm, K, pairs, 5);
    assert_int_equal(n, 3); /* (1,2): 2 errors, (0,1): 2, (0,2): 1 */
    assert_int_equal(pairs[0].a, 0), assert_int_equal(pairs[0].b, 1);
    assert_int_equal(pairs[1].a, 1), assert_int_equal(pairs[1].b, 2);
    assert_int_equal(pairs[1].ab, 0), assert_int_equal(pairs[1].ba, 2);
    assert_int_equal(pairs[2].a, 0), assert_int_equal(pairs[2].b, 2);
    assert_int_equal(viz_confused_pairs(cm, K, pairs, 1), 1);
    assert_int_equal(pairs[0].a, 0), assert_int_equal(pairs[0].b, 1);
    /* a class never predicted: precision and F1 are 0, not NaN */
    const int l2[2] = {0, 1}, p2[2] = {0, 0};
    viz_confusion(l2, p2, 2, K, cm);
    viz_per_class(cm, K, pc);
    assert_float_equal(pc[1].precision, 0.0, 0.0);
    assert_float_equal(pc[1].f1, 0.0, 0.0);
}

/* ---- attribution methods ---------------------------------------------- */

/* A small network with every kind of layer of the recipes (ReLU, GELU,
 * max-pool, BatchNorm in eval mode with its statistics moved off 0 / 1). */
static void make_explained_model(cfx_model *m, int n)
{
    make_model(m,
               "conv2d out=4 kernel=3 padding=1; batchnorm2d; relu; maxpool2d kernel=2; "
               "conv2d out=4 kernel=3 padding=1; gelu; flatten; linear out=3",
               3, 8, 8, n, CFX_MODEL_INPUT_GRAD | CFX_MODEL_KEEP_ACTIVATIONS);
    cfx_model_init_params(m, 21);
    for (size_t j = 0; j < m->n_params; j++) /* scores of order 1, not 0.01 */
        m->params[j] *= 2.0f;
    for (size_t j = 0; j < m->n_buffers; j++) /* running mean 0.1.., variance 1.3.. */
        m->buffers[j] = j < 4 ? 0.1f * (float)j : 1.3f + 0.2f * (float)(j - 4);
    cfx_model_set_training(m, 0);
}

static void random_images(float *x, size_t len, uint64_t seed)
{
    cfx_rng rng;
    cfx_rng_seed(&rng, seed);
    for (size_t j = 0; j < len; j++)
        x[j] = 2.0f * cfx_rng_float(&rng) - 1.0f;
}

/* Completeness (Sundararajan et al.): the attributions of each image sum to
 * score(x) - score(baseline) within 1 %, from a black and from a blurred
 * baseline; and attributions are zero where image and baseline agree. */
static void test_integrated_gradients_completeness(void **state)
{
    (void)state;
    enum { N = 2, LEN = 3 * N * 64 };
    cfx_model m;
    make_explained_model(&m, VIZ_SAMPLES_PER_PASS * N); /* several samples a pass */
    static float x[LEN], b[LEN], attr[LEN];
    random_images(x, LEN, 8);
    for (int j = 0; j < LEN; j++)
        x[j] *= 2.0f;
    int classes[N] = {1, 2};
    for (int baseline = 0; baseline < 2; baseline++) {
        if (baseline == 0)
            for (int j = 0; j < LEN; j++)
                b[j] = j < 2 * 64 ? x[j] : -1.5f; /* image 0's first channel as x: zero attribution */
        else
            viz_blur(x, 3, N, 8, 8, 3.0, b);
        viz_integrated_gradients(&m, N, classes, x, b, 512, attr);
        double fx[N], fb[N];
        viz_class_scores(&m, N, classes, x, fx);
        viz_class_scores(&m, N, classes, b, fb);
        for (int i = 0; i < N; i++) {
            double sum = 0.0;
            for (int c = 0; c < 3; c++)
                for (int p = 0; p < 64; p++)
                    sum += attr[(c * N + i) * 64 + p];
            printf("IG, baseline %d, image %d: sum %.6f, score difference %.6f\n", baseline, i,
                   sum, fx[i] - fb[i]);
            assert_true(fabs(fx[i] - fb[i]) > 1e-3);
            assert_true(fabs(sum - (fx[i] - fb[i])) <= 0.01 * fabs(fx[i] - fb[i]));
        }
        if (baseline == 0)
            for (int p = 0; p < 64; p++)
                assert_true(attr[p] == 0.0f);
    }
    cfx_model_free(&m);
}

/* The blur keeps a constant image and the mean of each plane (reflected edges). */
static void test_blur(void **state)
{
    (void)state;
    float x[2 * 6 * 6], y[2 * 6 * 6];
    for (int j = 0; j < 36; j++)
        x[j] = 0.75f, x[36 + j] = (float)(j % 6 == 2); /* a vertical line */
    viz_blur(x, 1, 2, 6, 6, 1.0, y);
    for (int j = 0; j < 36; j++)
        assert_float_equal(y[j], 0.75f, 1e-6);
    assert_true(y[36 + 2] < 1.0f && y[36 + 1] > 0.0f && y[36 + 3] > y[36 + 5]);
    for (int r = 1; r < 6; r++) /* every row alike: the line is vertical */
        assert_float_equal(y[36 + r * 6 + 1], y[36 + 1], 1e-6);
}

/* SmoothGrad without noise is the gradient; for a linear network it is the
 * gradient at any noise level; the noise is fixed by the seed. */
static void test_smoothgrad(void **state)
{
    (void)state;
    enum { N = 2, LEN = 3 * N * 64 };
    cfx_model m;
    make_explained_model(&m, VIZ_SAMPLES_PER_PASS * N); /* several samples a pass */
    static float x[LEN], g[LEN], sg[LEN], again[LEN];
    random_images(x, LEN, 9);
    int classes[N] = {0, 2};
    viz_input_gradient(&m, N, classes, x, g);
    viz_smoothgrad(&m, N, classes, x, 0.0, 3, 1, sg);
    assert_memory_equal(g, sg, sizeof g);
    viz_smoothgrad(&m, N, classes, x, 0.2, 8, 5, sg);
    viz_smoothgrad(&m, N, classes, x, 0.2, 8, 5, again);
    assert_memory_equal(sg, again, sizeof sg);
    viz_smoothgrad(&m, N, classes, x, 0.2, 8, 6, again);
    assert_true(memcmp(sg, again, sizeof sg) != 0);
    cfx_model_free(&m);

    cfx_model lin;
    make_model(&lin, "conv2d out=2 kernel=3 padding=1; flatten; linear out=3", 3, 8, 8, N,
               CFX_MODEL_INPUT_GRAD | CFX_MODEL_KEEP_ACTIVATIONS);
    cfx_model_init_params(&lin, 4);
    viz_input_gradient(&lin, N, classes, x, g);
    viz_smoothgrad(&lin, N, classes, x, 0.5, 4, 2, sg);
    for (int j = 0; j < LEN; j++)
        assert_float_equal(sg[j], g[j], 1e-5 * (fabs(g[j]) + 1e-3));
    cfx_model_free(&lin);
}

/* Occlusion against a brute-force loop over pixels: for each pixel, every
 * square that covers it occluded alone in a one-image model. */
static void test_occlusion_brute_force(void **state)
{
    (void)state;
    enum { N = 2, LEN = 3 * N * 64, P = 3, S = 2 };
    cfx_model m, one;
    make_explained_model(&m, VIZ_SAMPLES_PER_PASS * N); /* several samples a pass */
    make_explained_model(&one, 1);
    static float x[LEN], maps[N * 64];
    random_images(x, LEN, 10);
    int classes[N] = {2, 0};
    viz_occlusion(&m, N, classes, x, P, S, maps);
    const int starts[4] = {0, 2, 4, 5}; /* stride 2, the last flush with the edge */
    for (int i = 0; i < N; i++) {
        float img[3 * 64], occ[3 * 64];
        for (int c = 0; c < 3; c++)
            memcpy(img + c * 64, x + (c * N + i) * 64, 64 * sizeof(float));
        double base;
        viz_class_scores(&one, 1, &classes[i], img, &base);
        for (int p = 0; p < 64; p++) {
            int py = p / 8, px = p % 8, count = 0;
            double drop = 0.0;
            for (int a = 0; a < 4; a++)
                for (int b = 0; b < 4; b++) {
                    int y0 = starts[a], x0 = starts[b];
                    if (py < y0 || py >= y0 + P || px < x0 || px >= x0 + P)
                        continue;
                    memcpy(occ, img, sizeof occ);
                    for (int c = 0; c < 3; c++)
                        for (int y = y0; y < y0 + P; y++)
                            for (int xx = x0; xx < x0 + P; xx++)
                                occ[c * 64 + y * 8 + xx] = 0.0f;
                    double s;
                    viz_class_scores(&one, 1, &classes[i], occ, &s);
                    drop += base - s, count++;
                }
            assert_true(count > 0);
            assert_float_equal(maps[i * 64 + p], drop / count, 1e-5);
        }
    }
    cfx_model_free(&m);
    cfx_model_free(&one);
}

/* ---- what the network learned ----------------------------------------- */

/* The seed network's receptive fields, worked out by hand: conv 3x3 pad 1
 * (3 px, from -1), max-pool 2 (4 px, stride 2), conv (8 px from -3), pool
 * (10 px, stride 4), conv (18 px from -7); a global pool sees everything. */
static void test_receptive_field(void **state)
{
    (void)state;
    cfx_model m;
    make_model(&m,
               "conv2d out=2 kernel=3 padding=1; relu; maxpool2d kernel=2; conv2d out=2 kernel=3 "
               "padding=1; maxpool2d kernel=2; conv2d out=2 kernel=3 padding=1; avgpool; flatten; "
               "linear out=2",
               3, 32, 32, 1, 0);
    viz_field f = viz_receptive_field(&m, 0);
    assert_true(f.size == 3 && f.jump == 1 && f.offset == -1);
    f = viz_receptive_field(&m, 2);
    assert_true(f.size == 4 && f.jump == 2 && f.offset == -1);
    f = viz_receptive_field(&m, 3);
    assert_true(f.size == 8 && f.jump == 2 && f.offset == -3);
    f = viz_receptive_field(&m, 5);
    assert_true(f.size == 18 && f.jump == 4 && f.offset == -7);
    f = viz_receptive_field(&m, 6);
    assert_true(f.size == 32 && f.offset == 0);
    cfx_model_free(&m);
}

/* The top images per channel, gathered chunk by chunk as during the test
 * pass, equal a brute-force ranking of the whole set; the features are the
 * head's input. */
static void test_channel_top_images(void **state)
{
    (void)state;
    enum { N = 40, CHUNK = 16, HW = 64 };
    cfx_model m;
    make_model(&m, "conv2d out=3 kernel=3 padding=1; relu; maxpool2d kernel=2; flatten; linear out=4",
               3, 8, 8, CHUNK, 0);
    cfx_model_init_params(&m, 13);
    static float x[3 * N * HW], chunk_x[3 * CHUNK * HW];
    random_images(x, sizeof x / sizeof x[0], 3);
    int layers[1] = {0};
    viz_channels ch;
    cfx_error err;
    assert_int_equal(viz_channels_init(&ch, &m, layers, 1, 1, N, &err), 0);
    assert_int_equal(ch.F, 3 * 16);
    static float value[3][N]; /* brute force: the max of channel c over image i */
    static int pos[3][N];
    static float feat[N][48];
    for (int start = 0; start < N; start += CHUNK) {
        int count = N - start < CHUNK ? N - start : CHUNK;
        for (int c = 0; c < 3; c++)
            memcpy(chunk_x + (size_t)c * count * HW, x + ((size_t)c * N + start) * HW,
                   (size_t)count * HW * sizeof(float));
        memcpy(m.acts[0], chunk_x, (size_t)3 * count * HW * sizeof(float));
        cfx_model_forward(&m, count);
        viz_channels_observe(&ch, &m, start, count);
        for (int c = 0; c < 3; c++)
            for (int i = 0; i < count; i++) {
                const float *a = m.acts[1] + ((size_t)c * count + i) * HW;
                int arg = 0;
                for (int p = 1; p < HW; p++)
                    arg = a[p] > a[arg] ? p : arg;
                value[c][start + i] = a[arg], pos[c][start + i] = arg;
            }
        memcpy(feat[start], m.acts[4], (size_t)count * 48 * sizeof(float)); /* flatten's */
    }
    for (int c = 0; c < 3; c++) {
        int used[N] = {0};
        for (int k = 0; k < VIZ_TOP; k++) {
            int best = -1;
            for (int i = 0; i < N; i++)
                if (!used[i] && (best < 0 || value[c][i] > value[c][best]))
                    best = i;
            used[best] = 1;
            assert_int_equal(ch.top[0].image[c * VIZ_TOP + k], best);
            assert_true(ch.top[0].value[c * VIZ_TOP + k] == value[c][best]);
            assert_int_equal(ch.top[0].pos[c * VIZ_TOP + k], pos[c][best]);
        }
    }
    assert_memory_equal(ch.features, feat, sizeof feat);
    viz_channels_free(&ch);
    cfx_model_free(&m);
}

/* Points spread 3 along u and 1 along v (orthonormal in 5-D) plus tiny
 * noise: PCA finds u then v, the projections are the coordinates up to
 * sign, and the variance shares are 9/10 and 1/10. */
static void test_pca_2d(void **state)
{
    (void)state;
    enum { N = 400, F = 5 };
    const double u[F] = {0.6, 0.8, 0, 0, 0}, v[F] = {0, 0, 0, 0.6, -0.8};
    static float data[N * F], coords[N * 2];
    static double a[N], b[N];
    cfx_rng rng;
    cfx_rng_seed(&rng, 17);
    for (int i = 0; i < N; i++) {
        a[i] = 3.0 * (2.0 * cfx_rng_double(&rng) - 1.0) * sqrt(3.0);
        b[i] = (2.0 * cfx_rng_double(&rng) - 1.0) * sqrt(3.0);
    }
    double ma = 0, mb = 0, ab = 0, aa = 0;
    for (int i = 0; i < N; i++)
        ma += a[i] / N, mb += b[i] / N;
    for (int i = 0; i < N; i++) /* b uncorrelated with a in the sample, exactly */
        ab += (a[i] - ma) * (b[i] - mb), aa += (a[i] - ma) * (a[i] - ma);
    for (int i = 0; i < N; i++)
        b[i] -= ab / aa * (a[i] - ma);
    for (int i = 0; i < N; i++)
        for (int f = 0; f < F; f++)
            data[i * F + f] = (float)(a[i] * u[f] + b[i] * v[f] + 1e-4 * (cfx_rng_double(&rng) - 0.5) + 2.0);
    double explained[2];
    cfx_error err;
    assert_int_equal(viz_pca_2d(data, N, F, coords, explained, &err), 0);
    double sa = 0, sb = 0;
    for (int i = 0; i < N; i++) {
        sa += (a[i] - ma) * coords[2 * i];
        sb += (b[i] - mb) * coords[2 * i + 1];
    }
    for (int i = 0; i < N; i++) {
        assert_float_equal(coords[2 * i], (sa > 0 ? 1 : -1) * (a[i] - ma), 1e-3);
        assert_float_equal(coords[2 * i + 1], (sb > 0 ? 1 : -1) * (b[i] - mb), 1e-3);
    }
    double va = 0, vb = 0;
    for (int i = 0; i < N; i++)
        va += (a[i] - ma) * (a[i] - ma), vb += (b[i] - mb) * (b[i] - mb);
    assert_float_equal(explained[0], va / (va + vb), 1e-4);
    assert_float_equal(explained[1], vb / (va + vb), 1e-4);
    assert_int_equal(viz_pca_2d(data, 2, F, coords, explained, &err), -1);
}

/* Activation maximisation raises every class logit well above where it
 * starts, stays within the pixel range and is the same for the same seed. */
static void test_activation_maximisation(void **state)
{
    (void)state;
    enum { N = 3, LEN = 3 * N * 64 };
    cfx_model m;
    make_explained_model(&m, N);
    static float x[LEN], again[LEN];
    int classes[N] = {0, 1, 2};
    double before[N], after[N];
    viz_activation_maximisation(&m, N, classes, 0, 4, x); /* no steps: the starting noise */
    viz_class_scores(&m, N, classes, x, before);
    viz_activation_maximisation(&m, N, classes, 40, 4, x);
    viz_class_scores(&m, N, classes, x, after);
    for (int i = 0; i < N; i++) {
        printf("activation maximisation, class %d: logit %.3f -> %.3f\n", i, before[i], after[i]);
        assert_true(after[i] > before[i] + 0.5);
    }
    for (int c = 0; c < 3; c++)
        for (int j = 0; j < N * 64; j++) {
            float v = x[c * N * 64 + j];
            assert_true(v >= -CFX_CIFAR10_MEAN[c] / CFX_CIFAR10_STD[c] - 1e-6f);
            assert_true(v <= (1.0f - CFX_CIFAR10_MEAN[c]) / CFX_CIFAR10_STD[c] + 1e-6f);
        }
    viz_activation_maximisation(&m, N, classes, 40, 4, again);
    assert_memory_equal(x, again, sizeof x);
    cfx_model_free(&m);
}

/* ---- sanity check ----------------------------------------------------- */

static void test_sanity_randomisation(void **state)
{
    (void)state;
    enum { N = 2 };
    cfx_model m;
    make_model(&m,
               "conv2d out=4 kernel=3 padding=1; relu; maxpool2d kernel=2; "
               "conv2d out=4 kernel=3 padding=1; relu; flatten; linear out=3",
               3, 8, 8, N, CFX_MODEL_INPUT_GRAD | CFX_MODEL_KEEP_ACTIVATIONS);
    cfx_model_init_params(&m, 3);
    cfx_rng rng;
    cfx_rng_seed(&rng, 5);
    for (int j = 0; j < 3 * N * 64; j++)
        m.acts[0][j] = 2.0f * cfx_rng_float(&rng) - 1.0f;
    float *before = malloc(m.n_params * sizeof(float));
    memcpy(before, m.params, m.n_params * sizeof(float));
    int classes[N] = {0, 2};
    float *x = malloc(3 * N * 64 * sizeof(float));
    memcpy(x, m.acts[0], 3 * N * 64 * sizeof(float));
    viz_attr_opts o;
    viz_attr_defaults(&o);
    o.ig_steps = 8, o.sg_samples = 4, o.occ_patch = 3, o.occ_stride = 2;
    viz_sanity s;
    cfx_error err;
    assert_int_equal(viz_sanity_run(&m, N, classes, x, 3, &o, 11, &s, &err), 0);
    assert_memory_equal(m.params, before, m.n_params * sizeof(float)); /* restored */
    assert_int_equal(s.n_steps, 4); /* trained, then layers 6, 3, 0 */
    assert_int_equal(s.layer[0], -1);
    assert_int_equal(s.layer[1], 6);
    assert_int_equal(s.layer[2], 3);
    assert_int_equal(s.layer[3], 0);
    assert_int_equal(s.size[VIZ_SALIENCY], 64);
    assert_int_equal(s.size[VIZ_GRADCAM], 16);
    assert_int_equal(s.size[VIZ_OCCLUSION], 64);
    for (int k = 0; k < VIZ_N_METHODS; k++)
        for (int i = 0; i < N; i++)
            assert_float_equal(s.rho[k][i], 1.0, 1e-12);
    /* step 0 equals a direct computation with the trained weights */
    float *maps[VIZ_N_METHODS];
    for (int k = 0; k < VIZ_N_METHODS; k++)
        maps[k] = malloc((size_t)N * s.size[k] * sizeof(float));
    viz_explain_all(&m, N, classes, x, 3, &o, maps);
    float sal[N * 64];
    memcpy(m.acts[0], x, sizeof sal * 3);
    viz_class_score_backward(&m, N, classes);
    viz_saliency(&m, N, sal);
    assert_memory_equal(sal, s.maps[VIZ_SALIENCY], sizeof sal);
    for (int k = 0; k < VIZ_N_METHODS; k++) {
        assert_memory_equal(maps[k], s.maps[k], (size_t)N * s.size[k] * sizeof(float));
        /* the last step: every parameter layer re-initialised, every map changes */
        int diff = 0;
        for (int j = 0; j < N * s.size[k]; j++)
            diff += s.maps[k][(size_t)3 * N * s.size[k] + j] != maps[k][j];
        assert_true(diff > 0);
        free(maps[k]);
    }
    viz_sanity_free(&s);
    free(x);
    /* refuses a model without input gradients */
    cfx_model plain;
    make_model(&plain, "conv2d out=2 kernel=3; flatten; linear out=2", 1, 4, 4, 1, 0);
    float x1[16] = {0};
    assert_int_equal(viz_sanity_run(&plain, 1, classes, x1, 0, &o, 1, &s, &err), -1);
    cfx_model_free(&plain);
    free(before);
    cfx_model_free(&m);
}

static void test_copy_layer_params(void **state)
{
    (void)state;
    cfx_model m;
    make_model(&m, "conv2d out=2 kernel=3; relu; flatten; linear out=2", 1, 4, 4, 1, 0);
    float *src = malloc(m.n_params * sizeof(float));
    for (size_t j = 0; j < m.n_params; j++)
        src[j] = 100.0f + (float)j;
    viz_copy_layer_params(&m, src, 3);
    for (size_t j = 0; j < m.n_params; j++) {
        int in_linear = j >= m.layers[3].weight_offset;
        assert_true(m.params[j] == (in_linear ? src[j] : 0.0f));
    }
    int layers[CFX_MAX_LAYERS];
    assert_int_equal(viz_param_layers(&m, layers), 2);
    assert_int_equal(layers[0], 0);
    assert_int_equal(layers[1], 3);
    free(src);
    cfx_model_free(&m);
}

/* ---- images and plotting helpers -------------------------------------- */

static void test_resize_bilinear(void **state)
{
    (void)state;
    /* torch.nn.functional.interpolate(x, size=4, mode="bilinear",
     * align_corners=False) of [[0, 1], [2, 3]] */
    const float in[4] = {0, 1, 2, 3};
    const float want[16] = {0,    0.25f, 0.75f, 1,    0.5f, 0.75f, 1.25f, 1.5f,
                            1.5f, 1.75f, 2.25f, 2.5f, 2,    2.25f, 2.75f, 3};
    float out[16];
    viz_resize_bilinear(in, 2, 2, out, 4, 4);
    for (int j = 0; j < 16; j++)
        assert_float_equal(out[j], want[j], 1e-6);
}

static void test_denormalize_inverts_batch_fill(void **state)
{
    (void)state;
    uint8_t rec[2][CFX_RECORD_BYTES];
    for (int i = 0; i < 2; i++) {
        rec[i][0] = (uint8_t)(i + 3);
        for (int j = 0; j < CFX_IMAGE_PIXELS; j++)
            rec[i][1 + j] = (uint8_t)((j * 7 + i * 31) % 256);
    }
    const uint8_t *records[2] = {rec[0], rec[1]};
    cfx_dataset ds = {.n = 2, .records = records};
    int idx[2] = {0, 1}, labels[2];
    float *x = malloc(2 * CFX_IMAGE_PIXELS * sizeof(float));
    cfx_batch_fill(x, labels, &ds, idx, 2, NULL);
    for (int i = 0; i < 2; i++) {
        uint8_t rgb[CFX_IMAGE_PIXELS];
        viz_denormalize(x, 2, i, rgb);
        for (int p = 0; p < 1024; p++)
            for (int c = 0; c < 3; c++)
                assert_int_equal(rgb[p * 3 + c], rec[i][1 + c * 1024 + p]);
    }
    free(x);
}

static void test_nice_ticks(void **state)
{
    (void)state;
    viz_ticks t;
    viz_nice_ticks(0.0, 1.0, 6, 0, &t);
    assert_int_equal(t.n, 6);
    assert_string_equal(t.label[0], "0.0");
    assert_string_equal(t.label[5], "1.0");
    viz_nice_ticks(0.72, 1.68, 6, 0, &t); /* step 0.2 inside the range */
    assert_int_equal(t.n, 5);
    assert_float_equal(t.v[0], 0.8, 1e-12);
    assert_string_equal(t.label[4], "1.6");
    viz_nice_ticks(0.05, 20.95, 6, 1, &t); /* epochs */
    assert_int_equal(t.n, 4);
    assert_string_equal(t.label[0], "5");
    assert_string_equal(t.label[3], "20");
    viz_nice_ticks(0.0, 0.9, 6, 1, &t); /* integers only, even for a short range */
    assert_int_equal(t.n, 1);
    assert_string_equal(t.label[0], "0");
    viz_nice_ticks(-0.6, 1.05, 8, 0, &t); /* step 0.25, typeset minus */
    assert_string_equal(t.label[0], "\u22120.50");
    assert_string_equal(t.label[2], "0.00");
    double lo = 0.13, hi = 0.87;
    viz_nice_limits(&lo, &hi, 5);
    assert_float_equal(lo, 0.0, 1e-12);
    assert_float_equal(hi, 1.0, 1e-12);
}

static void test_viridis(void **state)
{
    (void)state;
    viz_color a = viz_viridis(0.0), b = viz_viridis(1.0), nan = viz_viridis(NAN);
    assert_float_equal(a.r * 255, 0x44, 1e-9);
    assert_float_equal(a.b * 255, 0x54, 1e-9);
    assert_float_equal(b.g * 255, 0xe7, 1e-9);
    assert_float_equal(nan.r, a.r, 0.0);
    /* lightness (luma) rises monotonically */
    double prev = -1.0;
    for (int i = 0; i <= 100; i++) {
        viz_color c = viz_viridis(i / 100.0);
        double y = 0.2126 * c.r + 0.7152 * c.g + 0.0722 * c.b;
        assert_true(y > prev);
        prev = y;
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_saliency_finite_differences),
        cmocka_unit_test(test_gradcam_by_hand),
        cmocka_unit_test(test_spearman),
        cmocka_unit_test(test_confusion_per_class_pairs),
        cmocka_unit_test(test_integrated_gradients_completeness),
        cmocka_unit_test(test_blur),
        cmocka_unit_test(test_smoothgrad),
        cmocka_unit_test(test_occlusion_brute_force),
        cmocka_unit_test(test_receptive_field),
        cmocka_unit_test(test_channel_top_images),
        cmocka_unit_test(test_pca_2d),
        cmocka_unit_test(test_activation_maximisation),
        cmocka_unit_test(test_sanity_randomisation),
        cmocka_unit_test(test_copy_layer_params),
        cmocka_unit_test(test_resize_bilinear),
        cmocka_unit_test(test_denormalize_inverts_batch_fill),
        cmocka_unit_test(test_nice_ticks),
        cmocka_unit_test(test_viridis),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
