/* Channel top images, PCA of the penultimate features and activation
 * maximisation for cfx-viz (see featvis.h). */
#include "featvis.h" /* defines: viz_channels, viz_pca_2d, viz_activation_maximisation */

#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "analysis.h"    /* defines: viz_class_score_backward */
#include "attribution.h" /* defines: viz_blur */
#include "cfx/data.h"    /* defines: CFX_CIFAR10_MEAN, CFX_CIFAR10_STD */
#include "cfx/rng.h"     /* defines: cfx_rng */

viz_field viz_receptive_field(const cfx_model *m, int layer)
{
    int chain[CFX_MAX_LAYERS * 4], n = 0; /* the layers from `layer` back to the input */
    for (int l = layer; l >= 0 && n < (int)(sizeof chain / sizeof chain[0]); l = m->layers[l].input[0])
        chain[n++] = l;
    viz_field f = {1, 1, 0};
    for (int k = n - 1; k >= 0; k--) {
        const cfx_layer *L = &m->layers[chain[k]];
        const cfx_layer_spec *s = &L->spec;
        if (s->kernel > 0) { /* conv2d, maxpool2d */
            f.offset -= s->padding * f.jump;
            f.size += (s->kernel - 1) * f.jump;
            f.jump *= s->stride > 0 ? s->stride : 1;
        } else if (!L->flat_out && L->out_h == 1 && L->in_h > 1) { /* a global pool */
            f = (viz_field){m->in_h, m->in_h, 0};
        }
    }
    return f;
}

int viz_channel_layers(const cfx_model *m, const char *list, int *layers, cfx_error *err)
{
    int n = 0;
    if (!list) {
        for (int i = 0; i < m->n_layers; i++)
            if (!strcmp(m->layers[i].kind->name, "conv2d"))
                layers[n++] = i;
        return n;
    }
    char buf[1024];
    snprintf(buf, sizeof buf, "%s", list);
    for (char *save = NULL, *tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        int l = cfx_model_find_layer(m, tok);
        if (l < 0)
            return cfx_fail(err, "--layers: the model has no layer '%s'", tok);
        if (m->layers[l].flat_out)
            return cfx_fail(err, "--layers: layer '%s' has a flat output (no channels)", tok);
        if (n == CFX_MAX_LAYERS)
            return cfx_fail(err, "--layers: more than %d layers", CFX_MAX_LAYERS);
        layers[n++] = l;
    }
    if (n == 0)
        return cfx_fail(err, "--layers: empty list");
    return n;
}

int viz_channels_init(viz_channels *ch, const cfx_model *m, const int *layers, int n_layers,
                      int use_max, int n_images, cfx_error *err)
{
    memset(ch, 0, sizeof *ch);
    ch->use_max = use_max;
    ch->n_layers = n_layers;
    ch->top = cfx_calloc((size_t)(n_layers ? n_layers : 1), sizeof *ch->top);
    for (int k = 0; k < n_layers; k++) {
        const cfx_layer *L = &m->layers[layers[k]];
        viz_channel_top *t = &ch->top[k];
        *t = (viz_channel_top){layers[k], L->out_c, L->out_h, L->out_w,
                               viz_receptive_field(m, layers[k]), NULL, NULL, NULL};
        size_t slots = (size_t)t->C * VIZ_TOP;
        t->value = cfx_malloc(slots * sizeof(float));
        t->image = cfx_malloc(slots * sizeof(int));
        t->pos = cfx_calloc(slots, sizeof(int));
        for (size_t j = 0; j < slots; j++)
            t->value[j] = -INFINITY, t->image[j] = -1;
    }
    const cfx_layer *head = &m->layers[m->n_layers - 1];
    ch->feature_layer = head->input[0];
    if (ch->feature_layer < 0 || !m->layers[ch->feature_layer].flat_out)
        return cfx_fail(err, "the model's last layer does not read flat features: no embedding");
    const cfx_layer *F = &m->layers[ch->feature_layer];
    ch->F = F->out_c * F->out_h * F->out_w;
    ch->n_images = n_images;
    ch->features = cfx_malloc((size_t)n_images * ch->F * sizeof(float));
    return 0;
}

/* Inserts (v, image, pos) into a channel's descending top list. */
static void top_insert(float *value, int *image, int *pos, float v, int img, int p)
{
    if (!(v > value[VIZ_TOP - 1]))
        return;
    int k = VIZ_TOP - 1;
    for (; k > 0 && value[k - 1] < v; k--)
        value[k] = value[k - 1], image[k] = image[k - 1], pos[k] = pos[k - 1];
    value[k] = v, image[k] = img, pos[k] = p;
}

void viz_channels_observe(void *ctx, const cfx_model *m, int start, int count)
{
    viz_channels *ch = ctx;
    for (int k = 0; k < ch->n_layers; k++) {
        viz_channel_top *t = &ch->top[k];
        const int HW = t->H * t->W;
        const float *A = m->acts[t->layer + 1]; /* [C][count][H][W] */
        for (int c = 0; c < t->C; c++)
            for (int i = 0; i < count; i++) {
                const float *a = A + ((size_t)c * count + i) * HW;
                double sum = 0.0;
                int arg = 0;
                for (int p = 0; p < HW; p++) {
                    sum += a[p];
                    arg = a[p] > a[arg] ? p : arg;
                }
                float v = ch->use_max ? a[arg] : (float)(sum / HW);
                size_t o = (size_t)c * VIZ_TOP;
                top_insert(t->value + o, t->image + o, t->pos + o, v, start + i, arg);
            }
    }
    const float *feat = m->acts[ch->feature_layer + 1]; /* flat: [count][F] */
    if (start + count <= ch->n_images)
        memcpy(ch->features + (size_t)start * ch->F, feat, (size_t)count * ch->F * sizeof(float));
}

void viz_channels_free(viz_channels *ch)
{
    for (int k = 0; ch->top && k < ch->n_layers; k++) {
        free(ch->top[k].value);
        free(ch->top[k].image);
        free(ch->top[k].pos);
    }
    free(ch->top);
    free(ch->features);
    memset(ch, 0, sizeof *ch);
}

/* LAPACK (OpenBLAS): selected eigenpairs of a symmetric matrix, column-major. */
extern void dsyevr_(const char *jobz, const char *range, const char *uplo, const int *n, double *a,
                    const int *lda, const double *vl, const double *vu, const int *il,
                    const int *iu, const double *abstol, int *m, double *w, double *z,
                    const int *ldz, int *isuppz, double *work, const int *lwork, int *iwork,
                    const int *liwork, int *info);

/* The two largest eigenpairs of the symmetric cov[F][F] (upper triangle,
 * row-major): values w[0] <= w[1], vectors z[2][F]. Only these two are
 * computed, not all F (a tenth of the time for F = 1,024). */
static int top2_eigen(double *cov, int F, double *w, double *z)
{
    const char *jobz = "V", *range = "I", *uplo = "L";
    const int il = F - 1, iu = F;
    const double none = 0.0, abstol = 0.0;
    int m = 0, info = 0, lwork = -1, liwork = -1, iwq;
    int *isuppz = cfx_malloc(4 * sizeof(int));
    double wq;
    dsyevr_(jobz, range, uplo, &F, cov, &F, &none, &none, &il, &iu, &abstol, &m, w, z, &F, isuppz,
            &wq, &lwork, &iwq, &liwork, &info);
    lwork = (int)wq, liwork = iwq;
    double *work = cfx_malloc((size_t)lwork * sizeof *work);
    int *iwork = cfx_malloc((size_t)liwork * sizeof *iwork);
    dsyevr_(jobz, range, uplo, &F, cov, &F, &none, &none, &il, &iu, &abstol, &m, w, z, &F, isuppz,
            work, &lwork, iwork, &liwork, &info);
    free(work), free(iwork), free(isuppz);
    return info != 0 ? info : m == 2 ? 0 : -1;
}

int viz_pca_2d(const float *features, int n, int F, float *coords, double explained[2],
               cfx_error *err)
{
    if (n < 3 || F < 2)
        return cfx_fail(err, "embedding: PCA needs at least 3 images and 2 features");
    double *mean = cfx_calloc((size_t)F, sizeof *mean);
    for (int i = 0; i < n; i++)
        for (int f = 0; f < F; f++)
            mean[f] += features[(size_t)i * F + f];
    for (int f = 0; f < F; f++)
        mean[f] /= n;
    double *x = cfx_malloc((size_t)n * F * sizeof *x), *cov = cfx_calloc((size_t)F * F, sizeof *cov);
    for (int i = 0; i < n; i++)
        for (int f = 0; f < F; f++)
            x[(size_t)i * F + f] = features[(size_t)i * F + f] - mean[f];
    cblas_dsyrk(CblasRowMajor, CblasUpper, CblasTrans, F, n, 1.0 / (n - 1), x, F, 0.0, cov, F);
    double eig[2], total = 0.0, *vec = cfx_malloc((size_t)2 * F * sizeof *vec);
    for (int f = 0; f < F; f++)
        total += cov[(size_t)f * F + f];
    int info = top2_eigen(cov, F, eig, vec);
    if (info == 0)
        for (int k = 0; k < 2; k++) {
            const double *v = vec + (size_t)(1 - k) * F; /* the largest first */
            int big = 0;
            for (int f = 1; f < F; f++)
                big = fabs(v[f]) > fabs(v[big]) ? f : big;
            double sign = v[big] < 0 ? -1.0 : 1.0;
            for (int i = 0; i < n; i++)
                coords[(size_t)i * 2 + k] =
                    (float)(sign * cblas_ddot(F, x + (size_t)i * F, 1, v, 1));
            explained[k] = total > 0 ? eig[1 - k] / total : 0.0;
        }
    free(mean), free(x), free(cov), free(vec);
    if (info != 0)
        return cfx_fail(err, "embedding: LAPACK dsyevr failed (info %d)", info);
    return 0;
}

/* x rolled by (dy, dx) pixels, cyclically, per plane of H x W. */
static void roll(const float *x, float *out, size_t planes, int H, int W, int dy, int dx)
{
    for (size_t p = 0; p < planes; p++)
        for (int y = 0; y < H; y++)
            for (int xx = 0; xx < W; xx++)
                out[p * H * W + (size_t)((y + dy + H) % H) * W + (xx + dx + W) % W] =
                    x[p * H * W + (size_t)y * W + xx];
}

void viz_activation_maximisation(cfx_model *m, int n, const int *classes, int steps,
                                 uint64_t seed, float *x)
{
    const int C = m->in_c, H = m->in_h, W = m->in_w;
    const size_t plane = (size_t)n * H * W, len = (size_t)C * plane;
    float *shifted = cfx_malloc(len * sizeof(float)), *g = cfx_malloc(len * sizeof(float));
    float *tmp = cfx_malloc(len * sizeof(float));
    cfx_rng rng;
    cfx_rng_seed(&rng, seed);
    for (size_t j = 0; j < len; j++)
        x[j] = 0.1f * (2.0f * cfx_rng_float(&rng) - 1.0f);
    for (int t = 0; t < steps; t++) {
        int dy = (int)cfx_rng_below(&rng, 5) - 2, dx = (int)cfx_rng_below(&rng, 5) - 2;
        roll(x, shifted, (size_t)C * n, H, W, dy, dx);
        memcpy(m->acts[0], shifted, len * sizeof(float));
        viz_class_score_backward(m, n, classes);
        roll(m->dacts[0], g, (size_t)C * n, H, W, -dy, -dx);
        for (int i = 0; i < n; i++) { /* normalised ascent step per image */
            double ss = 0.0;
            for (int c = 0; c < C; c++)
                for (int p = 0; p < H * W; p++)
                    ss += (double)g[c * plane + (size_t)i * H * W + p] * g[c * plane + (size_t)i * H * W + p];
            float step = (float)(0.05 * sqrt((double)C * H * W) / (sqrt(ss) + 1e-12));
            for (int c = 0; c < C; c++)
                for (int p = 0; p < H * W; p++) {
                    size_t j = c * plane + (size_t)i * H * W + p;
                    x[j] += step * g[j];
                }
        }
        if (t % 4 == 3) { /* blur: the high frequencies go, the structure stays */
            viz_blur(x, C, n, H, W, 0.5, tmp);
            memcpy(x, tmp, len * sizeof(float));
        }
        for (int c = 0; c < C; c++) { /* within the pixel range after normalisation */
            float lo = c < CFX_IMAGE_CHANNELS ? -CFX_CIFAR10_MEAN[c] / CFX_CIFAR10_STD[c] : -3.0f;
            float hi = c < CFX_IMAGE_CHANNELS ? (1.0f - CFX_CIFAR10_MEAN[c]) / CFX_CIFAR10_STD[c] : 3.0f;
            for (size_t j = 0; j < plane; j++) {
                float *v = x + c * plane + j;
                *v = *v < lo ? lo : *v > hi ? hi : *v;
            }
        }
    }
    free(shifted), free(g), free(tmp);
}
