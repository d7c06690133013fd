/* Integrated Gradients, SmoothGrad, occlusion, Guided Backpropagation and
 * Guided Grad-CAM for cfx-viz (see attribution.h). */
#include "attribution.h" /* defines: viz_explain_all, viz_integrated_gradients, ... */

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "analysis.h" /* defines: viz_class_score_backward, viz_saliency, viz_gradcam */
#include "cfx/data.h" /* defines: CFX_CIFAR10_MEAN, CFX_CIFAR10_STD */
#include "cfx/rng.h"  /* defines: cfx_rng */

const char *const VIZ_METHOD_KEY[VIZ_N_METHODS] = {
    "saliency",   "gradcam",   "integrated_gradients", "integrated_gradients_blur",
    "smoothgrad", "occlusion", "guided_backprop",      "guided_gradcam",
};
const char *const VIZ_METHOD_LABEL[VIZ_N_METHODS] = {
    "saliency",   "Grad-CAM",  "Integrated Gradients (black)", "Integrated Gradients (blurred)",
    "SmoothGrad", "occlusion", "Guided Backprop",              "Guided Grad-CAM",
};

const char *const VIZ_METHOD_SHORT[VIZ_N_METHODS] = {
    "saliency", "Grad-CAM", "IG black", "IG blur", "SmoothGrad", "occlusion", "guided BP", "guided CAM",
};

void viz_attr_defaults(viz_attr_opts *o)
{
    *o = (viz_attr_opts){.ig_steps = 32, .blur_sigma = 4.0, .sg_noise = 0.15, .sg_samples = 16,
                         .occ_patch = 8, .occ_stride = 4, .seed = 1, .actmax_steps = 128,
                         .explorer_images = VIZ_EXPLORER_DETAILS};
}

static size_t input_len(const cfx_model *m, int n)
{
    return (size_t)m->in_c * (size_t)n * (size_t)m->in_h * (size_t)m->in_w;
}

void viz_class_scores(cfx_model *m, int n, const int *classes, const float *x, double *scores)
{
    memcpy(m->acts[0], x, input_len(m, n) * sizeof(float));
    const float *logits = cfx_model_forward(m, n);
    for (int i = 0; i < n; i++)
        scores[i] = logits[(size_t)i * m->n_classes + classes[i]];
}

void viz_input_gradient(cfx_model *m, int n, const int *classes, const float *x, float *grad)
{
    memcpy(m->acts[0], x, input_len(m, n) * sizeof(float));
    viz_class_score_backward(m, n, classes);
    memcpy(grad, m->dacts[0], input_len(m, n) * sizeof(float));
}

/* Samples of n images each that one pass of m holds: 1 to `total`. */
static int samples_per_pass(const cfx_model *m, int n, int total)
{
    int per = m->max_batch / n;
    return per < 1 ? 1 : per > total ? total : per;
}

/* Sums into sum[] the input gradients of the class scores at `samples`
 * inputs of n images each, several samples to a pass of m (as many as its
 * max_batch holds): make(ctx, s, in) writes sample s ([C][n][H][W]) into in,
 * called in sample order; each element adds the samples in order. */
typedef void (*sample_fn)(void *ctx, int s, float *in);

static void summed_gradients(cfx_model *m, int n, const int *classes, int samples, sample_fn make,
                             void *ctx, double *sum)
{
    const size_t plane = (size_t)m->in_h * m->in_w, len = input_len(m, n);
    const int per = samples_per_pass(m, n, samples);
    const int nb = per * n;
    float *one = cfx_malloc(len * sizeof(float)),
          *in = cfx_malloc(input_len(m, nb) * sizeof(float)),
          *g = cfx_malloc(input_len(m, nb) * sizeof(float));
    int *cls = cfx_malloc((size_t)nb * sizeof *cls);
    for (int i = 0; i < nb; i++)
        cls[i] = classes[i % n];
    for (int s0 = 0; s0 < samples; s0 += per) {
        const int k = samples - s0 < per ? samples - s0 : per, N = k * n;
        for (int j = 0; j < k; j++) { /* sample j's image i is image j * n + i of the pass */
            make(ctx, s0 + j, one);
            for (int c = 0; c < m->in_c; c++)
                memcpy(in + ((size_t)c * N + (size_t)j * n) * plane, one + (size_t)c * n * plane,
                       n * plane * sizeof(float));
        }
        viz_input_gradient(m, N, cls, in, g);
        for (int j = 0; j < k; j++)
            for (int c = 0; c < m->in_c; c++) {
                const float *gj = g + ((size_t)c * N + (size_t)j * n) * plane;
                double *sc = sum + (size_t)c * n * plane;
                for (size_t p = 0; p < n * plane; p++)
                    sc[p] += gj[p];
            }
    }
    free(one);
    free(in);
    free(g);
    free(cls);
}

typedef struct {
    const float *x, *b;
    size_t len;
    int steps;
} ig_path;

/* Point k of the path: b + (k + 1/2) / steps * (x - b). */
static void ig_point(void *ctx, int k, float *in)
{
    const ig_path *p = ctx;
    float a = (float)((k + 0.5) / p->steps);
    for (size_t j = 0; j < p->len; j++)
        in[j] = p->b[j] + a * (p->x[j] - p->b[j]);
}

void viz_integrated_gradients(cfx_model *m, int n, const int *classes, const float *x,
                              const float *b, int steps, float *attr)
{
    size_t len = input_len(m, n);
    double *sum = cfx_calloc(len, sizeof(double));
    ig_path path = {x, b, len, steps};
    summed_gradients(m, n, classes, steps, ig_point, &path, sum);
    for (size_t j = 0; j < len; j++)
        attr[j] = (float)((x[j] - b[j]) * sum[j] / steps);
    free(sum);
}

/* Index i reflected into 0..n-1 (one reflection: the kernels are narrower than the image). */
static int reflect(int i, int n)
{
    i = i < 0 ? -i : i;
    return i >= n ? 2 * (n - 1) - i : i;
}

void viz_blur(const float *x, int C, int n, int H, int W, double sigma, float *out)
{
    int r = (int)ceil(3.0 * sigma);
    r = r < H - 1 ? r : H - 1;
    r = r < W - 1 ? r : W - 1;
    double *k = cfx_malloc((size_t)(2 * r + 1) * sizeof(double)), total = 0.0;
    for (int d = -r; d <= r; d++)
        total += k[d + r] = exp(-0.5 * d * d / (sigma * sigma));
    double *tmp = cfx_malloc((size_t)H * W * sizeof(double));
    for (size_t p = 0; p < (size_t)C * n; p++) {
        const float *in = x + p * H * W;
        for (int y = 0; y < H; y++) /* rows */
            for (int xx = 0; xx < W; xx++) {
                double s = 0.0;
                for (int d = -r; d <= r; d++)
                    s += k[d + r] * in[y * W + reflect(xx + d, W)];
                tmp[y * W + xx] = s / total;
            }
        for (int y = 0; y < H; y++) /* columns */
            for (int xx = 0; xx < W; xx++) {
                double s = 0.0;
                for (int d = -r; d <= r; d++)
                    s += k[d + r] * tmp[reflect(y + d, H) * W + xx];
                out[p * H * W + y * W + xx] = (float)(s / total);
            }
    }
    free(tmp);
    free(k);
}

static double gaussian(cfx_rng *rng)
{
    double u = cfx_rng_double(rng), v = cfx_rng_double(rng);
    return sqrt(-2.0 * log(1.0 - u)) * cos(6.283185307179586 * v);
}

typedef struct {
    const float *x;
    const double *sigma; /* per image */
    size_t len, plane;
    int n;
    cfx_rng rng;
} noisy_copies;

/* The next noisy copy (the samples are made in order, from one generator). */
static void noisy_copy(void *ctx, int s, float *in)
{
    (void)s;
    noisy_copies *q = ctx;
    for (size_t j = 0; j < q->len; j++)
        in[j] = q->x[j] + (float)(q->sigma[(j / q->plane) % (size_t)q->n] * gaussian(&q->rng));
}

void viz_smoothgrad(cfx_model *m, int n, const int *classes, const float *x, double noise,
                    int samples, uint64_t seed, float *grad)
{
    size_t len = input_len(m, n), img = (size_t)m->in_h * m->in_w;
    double *sum = cfx_calloc(len, sizeof(double)), *sigma = cfx_malloc((size_t)n * sizeof(double));
    for (int i = 0; i < n; i++) { /* noise relative to each image's range */
        float lo = INFINITY, hi = -INFINITY;
        for (int c = 0; c < m->in_c; c++)
            for (size_t p = 0; p < img; p++) {
                float v = x[((size_t)c * n + i) * img + p];
                lo = v < lo ? v : lo, hi = v > hi ? v : hi;
            }
        sigma[i] = noise * (hi - lo);
    }
    noisy_copies q = {x, sigma, len, img, n, {0}};
    cfx_rng_seed(&q.rng, seed);
    summed_gradients(m, n, classes, samples, noisy_copy, &q, sum);
    for (size_t j = 0; j < len; j++)
        grad[j] = (float)(sum[j] / samples);
    free(sum);
    free(sigma);
}

/* Square positions along a side of `size`: every stride-th, the last flush with the edge. */
static int square_positions(int size, int patch, int stride, int *pos)
{
    int k = 0;
    for (int p = 0; p + patch <= size; p += stride)
        pos[k++] = p;
    if (k == 0 || pos[k - 1] + patch < size)
        pos[k++] = size - patch > 0 ? size - patch : 0;
    return k;
}

void viz_occlusion(cfx_model *m, int n, const int *classes, const float *x, int patch,
                   int stride, float *maps)
{
    const int C = m->in_c, H = m->in_h, W = m->in_w;
    patch = patch < H ? patch : H;
    patch = patch < W ? patch : W;
    size_t img = (size_t)H * W;
    int *ys = cfx_malloc((size_t)(H + 1) * sizeof(int)), *xs = cfx_malloc((size_t)(W + 1) * sizeof(int));
    int ny = square_positions(H, patch, stride, ys), nx = square_positions(W, patch, stride, xs);
    double *base = cfx_malloc((size_t)n * sizeof(double));
    double *drop = cfx_calloc((size_t)n * img, sizeof(double));
    int *cover = cfx_calloc(img, sizeof(int));
    viz_class_scores(m, n, classes, x, base);
    /* as many squares to a forward pass as m holds: square j's image i is
     * image j * n + i of the pass */
    const int n_sq = ny * nx;
    const int per = samples_per_pass(m, n, n_sq);
    float *occluded = cfx_malloc(input_len(m, per * n) * sizeof(float));
    double *score = cfx_malloc((size_t)per * n * sizeof(double));
    int *cls = cfx_malloc((size_t)per * n * sizeof *cls);
    for (int i = 0; i < per * n; i++)
        cls[i] = classes[i % n];
    for (int q0 = 0; q0 < n_sq; q0 += per) {
        const int k = n_sq - q0 < per ? n_sq - q0 : per, N = k * n;
        for (int j = 0; j < k; j++) {
            const int y0 = ys[(q0 + j) / nx], x0 = xs[(q0 + j) % nx];
            for (int c = 0; c < C; c++) {
                float *dst = occluded + ((size_t)c * N + (size_t)j * n) * img;
                memcpy(dst, x + (size_t)c * n * img, n * img * sizeof(float));
                for (int i = 0; i < n; i++)
                    for (int y = y0; y < y0 + patch; y++)
                        memset(dst + i * img + (size_t)y * W + x0, 0, patch * sizeof(float));
            }
        }
        viz_class_scores(m, N, cls, occluded, score);
        for (int j = 0; j < k; j++) { /* in square order, as one square a pass would */
            const int y0 = ys[(q0 + j) / nx], x0 = xs[(q0 + j) % nx];
            for (int y = y0; y < y0 + patch; y++)
                for (int xx = x0; xx < x0 + patch; xx++) {
                    cover[y * W + xx]++;
                    for (int i = 0; i < n; i++)
                        drop[(size_t)i * img + y * W + xx] += base[i] - score[j * n + i];
                }
        }
    }
    for (int i = 0; i < n; i++)
        for (size_t p = 0; p < img; p++)
            maps[i * img + p] = cover[p] ? (float)(drop[i * img + p] / cover[p]) : 0.0f;
    free(ys), free(xs), free(base), free(score), free(drop), free(cover), free(occluded), free(cls);
}

void viz_guided_backprop(cfx_model *m, int n, const int *classes, const float *x, float *grad)
{
    int was = m->guided;
    m->guided = 1;
    viz_input_gradient(m, n, classes, x, grad);
    m->guided = was;
}

void viz_channel_max_abs(const float *g, int C, int n, int HW, float *maps)
{
    for (int i = 0; i < n; i++)
        for (int p = 0; p < HW; p++) {
            float best = 0.0f;
            for (int c = 0; c < C; c++) {
                float v = fabsf(g[((size_t)c * n + i) * HW + p]);
                best = v > best ? v : best;
            }
            maps[(size_t)i * HW + p] = best;
        }
}

void viz_channel_sum_abs(const float *g, int C, int n, int HW, float *maps)
{
    for (int i = 0; i < n; i++)
        for (int p = 0; p < HW; p++) {
            double s = 0.0;
            for (int c = 0; c < C; c++)
                s += fabsf(g[((size_t)c * n + i) * HW + p]);
            maps[(size_t)i * HW + p] = (float)s;
        }
}

int viz_method_size(const cfx_model *m, int cam_layer, viz_method k)
{
    if (k == VIZ_GRADCAM)
        return m->layers[cam_layer].out_h * m->layers[cam_layer].out_w;
    return m->in_h * m->in_w;
}

void viz_black_image(const cfx_model *m, int n, float *b)
{
    size_t plane = (size_t)n * m->in_h * m->in_w;
    for (int c = 0; c < m->in_c; c++)
        for (size_t j = 0; j < plane; j++)
            b[c * plane + j] = c < CFX_IMAGE_CHANNELS ? -CFX_CIFAR10_MEAN[c] / CFX_CIFAR10_STD[c] : 0.0f;
}

/* Guided Grad-CAM: the guided gradient times Grad-CAM resized to the input. */
static void guided_gradcam(const cfx_model *m, int n, int cam_layer, const float *guided,
                           const float *cams, float *maps)
{
    const int H = m->in_h, W = m->in_w, HW = H * W;
    const cfx_layer *L = &m->layers[cam_layer];
    float *up = cfx_malloc((size_t)HW * sizeof(float));
    for (int i = 0; i < n; i++) {
        viz_resize_bilinear(cams + (size_t)i * L->out_h * L->out_w, L->out_h, L->out_w, up, H, W);
        for (int p = 0; p < HW; p++) {
            float best = 0.0f;
            for (int c = 0; c < m->in_c; c++) {
                float v = fabsf(guided[((size_t)c * n + i) * HW + p] * up[p]);
                best = v > best ? v : best;
            }
            maps[(size_t)i * HW + p] = best;
        }
    }
    free(up);
}

void viz_explain_all(cfx_model *m, int n, const int *classes, const float *x, int cam_layer,
                     const viz_attr_opts *o, float *const maps[VIZ_N_METHODS])
{
    const int C = m->in_c, HW = m->in_h * m->in_w;
    size_t len = input_len(m, n);
    float *g = cfx_malloc(len * sizeof(float)), *b = cfx_malloc(len * sizeof(float));
    memcpy(m->acts[0], x, len * sizeof(float));
    viz_class_score_backward(m, n, classes);
    viz_saliency(m, n, maps[VIZ_SALIENCY]);
    viz_gradcam(m, cam_layer, n, maps[VIZ_GRADCAM]);
    viz_black_image(m, n, b);
    viz_integrated_gradients(m, n, classes, x, b, o->ig_steps, g);
    viz_channel_sum_abs(g, C, n, HW, maps[VIZ_IG_BLACK]);
    viz_blur(x, C, n, m->in_h, m->in_w, o->blur_sigma, b);
    viz_integrated_gradients(m, n, classes, x, b, o->ig_steps, g);
    viz_channel_sum_abs(g, C, n, HW, maps[VIZ_IG_BLUR]);
    viz_smoothgrad(m, n, classes, x, o->sg_noise, o->sg_samples, o->seed, g);
    viz_channel_max_abs(g, C, n, HW, maps[VIZ_SMOOTHGRAD]);
    viz_occlusion(m, n, classes, x, o->occ_patch, o->occ_stride, maps[VIZ_OCCLUSION]);
    viz_guided_backprop(m, n, classes, x, g);
    viz_channel_max_abs(g, C, n, HW, maps[VIZ_GUIDED_BP]);
    guided_gradcam(m, n, cam_layer, g, maps[VIZ_GRADCAM], maps[VIZ_GUIDED_GRADCAM]);
    free(g);
    free(b);
}
