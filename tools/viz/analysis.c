/* Saliency, Grad-CAM, confusion statistics, Spearman correlation and the
 * model randomisation sanity check for cfx-viz (see analysis.h). */
#include "analysis.h" /* defines: viz_saliency, viz_gradcam, viz_spearman, viz_sanity_run */

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cfx/data.h" /* defines: CFX_CIFAR10_MEAN, CFX_CIFAR10_STD, CFX_IMAGE_SIZE */

/* ---- explanations ----------------------------------------------------- */

void viz_class_score_backward(cfx_model *m, int n, const int *classes)
{
    cfx_model_forward(m, n);
    int K = m->n_classes;
    float *d = m->dacts[m->n_layers];
    memset(d, 0, (size_t)n * K * sizeof *d);
    for (int i = 0; i < n; i++)
        d[(size_t)i * K + classes[i]] = 1.0f;
    cfx_model_backward(m, n);
}

void viz_saliency(const cfx_model *m, int n, float *maps)
{
    viz_channel_max_abs(m->dacts[0], m->in_c, n, m->in_h * m->in_w, maps); /* [C][n][H][W] */
}

int viz_first_conv(const cfx_model *m)
{
    for (int i = 0; i < m->n_layers; i++)
        if (m->layers[i].n_tensors && m->layers[i].tensors[0].rank == 4)
            return i;
    return -1;
}

int viz_last_conv(const cfx_model *m)
{
    int c = -1;
    for (int i = m->n_layers - 1; i >= 0 && c < 0; i--)
        if (m->layers[i].n_tensors && m->layers[i].tensors[0].rank == 4)
            c = i;
    if (c < 0)
        return -1;
    /* Inside a block ("layer4.1.downsample.0"): the block's output ("layer4.1"),
     * the outermost layer named by a prefix of its name that comes after it. */
    char block[CFX_NAME_LEN];
    snprintf(block, sizeof block, "%s", m->layers[c].key);
    int best = c;
    for (char *dot; (dot = strrchr(block, '.'));) {
        *dot = '\0';
        int out = cfx_model_find_layer(m, block);
        if (out > c && !m->layers[out].flat_out)
            best = out;
    }
    return best;
}

void viz_gradcam(const cfx_model *m, int layer, int n, float *cams)
{
    const cfx_layer *L = &m->layers[layer];
    int K = L->out_c;
    size_t hw = (size_t)L->out_h * L->out_w;
    const float *A = m->acts[layer + 1], *dA = m->dacts[layer + 1]; /* [K][n][h][w] */
    for (int i = 0; i < n; i++) {
        double *cam = calloc(hw, sizeof *cam);
        for (int k = 0; k < K; k++) {
            const float *a = A + ((size_t)k * n + i) * hw, *da = dA + ((size_t)k * n + i) * hw;
            double alpha = 0.0;
            for (size_t p = 0; p < hw; p++)
                alpha += da[p];
            alpha /= (double)hw;
            for (size_t p = 0; p < hw; p++)
                cam[p] += alpha * a[p];
        }
        for (size_t p = 0; p < hw; p++)
            cams[(size_t)i * hw + p] = cam[p] > 0.0 ? (float)cam[p] : 0.0f;
        free(cam);
    }
}

void viz_resize_bilinear(const float *in, int h, int w, float *out, int H, int W)
{
    for (int y = 0; y < H; y++) {
        double sy = ((double)y + 0.5) * h / H - 0.5;
        if (sy < 0)
            sy = 0;
        int y0 = (int)sy, y1 = y0 + 1 < h ? y0 + 1 : h - 1;
        double fy = sy - y0;
        for (int x = 0; x < W; x++) {
            double sx = ((double)x + 0.5) * w / W - 0.5;
            if (sx < 0)
                sx = 0;
            int x0 = (int)sx, x1 = x0 + 1 < w ? x0 + 1 : w - 1;
            double fx = sx - x0;
            double top = (1 - fx) * in[y0 * w + x0] + fx * in[y0 * w + x1];
            double bot = (1 - fx) * in[y1 * w + x0] + fx * in[y1 * w + x1];
            out[y * W + x] = (float)((1 - fy) * top + fy * bot);
        }
    }
}

void viz_denormalize(const float *x, int n, int i, uint8_t *rgb)
{
    enum { HW = CFX_IMAGE_SIZE * CFX_IMAGE_SIZE };
    for (int c = 0; c < 3; c++) {
        const float *plane = x + ((size_t)c * n + i) * HW;
        for (int p = 0; p < HW; p++) {
            double v = (plane[p] * CFX_CIFAR10_STD[c] + CFX_CIFAR10_MEAN[c]) * 255.0;
            long b = lround(v);
            rgb[p * 3 + c] = (uint8_t)(b < 0 ? 0 : b > 255 ? 255 : b);
        }
    }
}

/* ---- statistics ------------------------------------------------------- */

typedef struct {
    float v;
    int i;
} ranked;

static int cmp_ranked(const void *pa, const void *pb)
{
    const ranked *a = pa, *b = pb;
    return a->v < b->v ? -1 : a->v > b->v ? 1 : a->i - b->i;
}

/* Average ranks (1-based) of v into r. */
static void ranks(const float *v, int n, double *r)
{
    ranked *s = malloc((size_t)n * sizeof *s);
    for (int i = 0; i < n; i++)
        s[i].v = v[i], s[i].i = i;
    qsort(s, (size_t)n, sizeof *s, cmp_ranked);
    for (int i = 0; i < n;) {
        int j = i;
        while (j + 1 < n && s[j + 1].v == s[i].v)
            j++;
        double avg = (i + j) / 2.0 + 1.0;
        for (int k = i; k <= j; k++)
            r[s[k].i] = avg;
        i = j + 1;
    }
    free(s);
}

double viz_spearman(const float *a, const float *b, int n)
{
    if (n < 2)
        return NAN;
    double *ra = malloc((size_t)n * sizeof *ra), *rb = malloc((size_t)n * sizeof *rb);
    ranks(a, n, ra);
    ranks(b, n, rb);
    double mean = (n + 1) / 2.0, sab = 0, saa = 0, sbb = 0;
    for (int i = 0; i < n; i++) {
        double da = ra[i] - mean, db = rb[i] - mean;
        sab += da * db, saa += da * da, sbb += db * db;
    }
    free(ra);
    free(rb);
    if (saa == 0.0 || sbb == 0.0)
        return NAN;
    return sab / sqrt(saa * sbb);
}

void viz_confusion(const int *labels, const int *preds, int n, int K, long *cm)
{
    memset(cm, 0, (size_t)K * K * sizeof *cm);
    for (int i = 0; i < n; i++)
        if (labels[i] >= 0 && labels[i] < K && preds[i] >= 0 && preds[i] < K)
            cm[(size_t)labels[i] * K + preds[i]]++;
}

void viz_per_class(const long *cm, int K, viz_class_metrics *out)
{
    for (int k = 0; k < K; k++) {
        long tp = cm[(size_t)k * K + k], row = 0, col = 0;
        for (int j = 0; j < K; j++) {
            row += cm[(size_t)k * K + j];
            col += cm[(size_t)j * K + k];
        }
        viz_class_metrics *c = &out[k];
        c->support = row;
        c->precision = col ? (double)tp / col : 0.0;
        c->recall = row ? (double)tp / row : 0.0;
        c->f1 = c->precision + c->recall > 0
                    ? 2 * c->precision * c->recall / (c->precision + c->recall)
                    : 0.0;
    }
}

int viz_confused_pairs(const long *cm, int K, viz_pair *pairs, int max_pairs)
{
    int n = 0;
    for (int a = 0; a < K; a++) {
        for (int b = a + 1; b < K; b++) {
            viz_pair p = {a, b, cm[(size_t)a * K + b], cm[(size_t)b * K + a]};
            long total = p.ab + p.ba;
            if (total == 0)
                continue;
            /* insertion into the sorted top list (strictly more errors moves up,
             * so earlier pairs win ties) */
            int pos = n;
            while (pos > 0 && pairs[pos - 1].ab + pairs[pos - 1].ba < total)
                pos--;
            if (pos >= max_pairs)
                continue;
            int last = n < max_pairs ? n : max_pairs - 1;
            for (int j = last; j > pos; j--)
                pairs[j] = pairs[j - 1];
            pairs[pos] = p;
            if (n < max_pairs)
                n++;
        }
    }
    return n;
}

/* ---- model randomisation sanity check --------------------------------- */

int viz_param_layers(const cfx_model *m, int *layers)
{
    int n = 0;
    for (int i = 0; i < m->n_layers; i++)
        if (m->layers[i].n_weight + m->layers[i].n_bias > 0)
            layers[n++] = i;
    return n;
}

void viz_copy_layer_params(cfx_model *m, const float *src, int layer)
{
    const cfx_layer *L = &m->layers[layer];
    memcpy(m->params + L->weight_offset, src + L->weight_offset, L->n_weight * sizeof(float));
    memcpy(m->params + L->bias_offset, src + L->bias_offset, L->n_bias * sizeof(float));
}

double viz_nanmean(const double *v, int n)
{
    double s = 0.0;
    int k = 0;
    for (int i = 0; i < n; i++)
        if (!isnan(v[i]))
            s += v[i], k++;
    return k ? s / k : NAN;
}

void viz_sanity_mean_text(const viz_sanity *sa, int k, int s, char *buf, size_t len)
{
    double v = viz_nanmean(sa->rho[k] + s * sa->n_images, sa->n_images);
    if (isnan(v))
        snprintf(buf, len, "n/a");
    else
        snprintf(buf, len, "%.3f", v);
}

int viz_sanity_run(cfx_model *m, int n, const int *classes, const float *x, int cam_layer,
                   const viz_attr_opts *o, uint64_t seed, viz_sanity *out, cfx_error *err)
{
    memset(out, 0, sizeof *out);
    int need = CFX_MODEL_INPUT_GRAD | CFX_MODEL_KEEP_ACTIVATIONS;
    if ((m->flags & need) != need || n > m->max_batch)
        return cfx_fail(err,
                        "sanity check: the model needs CFX_MODEL_INPUT_GRAD, "
                        "CFX_MODEL_KEEP_ACTIVATIONS and a batch of %d",
                        n);
    if (cam_layer < 0 || cam_layer >= m->n_layers || m->layers[cam_layer].flat_out)
        return cfx_fail(err, "sanity check: layer %d has no spatial output for Grad-CAM",
                        cam_layer);
    int *players = cfx_malloc((size_t)m->n_layers * sizeof *players);
    int n_all = viz_param_layers(m, players);
    int np = n_all < CFX_MAX_LAYERS ? n_all : CFX_MAX_LAYERS; /* those nearest the output */

    /* A model of the same layout holds the re-initialised parameters. */
    cfx_model scratch;
    if (cfx_model_create(&scratch, m->specs, m->n_specs, m->in_c, m->in_h, m->in_w, 1, 0, err) != 0)
        return -1;
    cfx_model_init_params(&scratch, seed);
    float *trained = cfx_malloc(m->n_params * sizeof(float));
    memcpy(trained, m->params, m->n_params * sizeof(float));

    out->n_steps = np + 1;
    out->n_images = n;
    for (int k = 0; k < VIZ_N_METHODS; k++) {
        out->size[k] = viz_method_size(m, cam_layer, (viz_method)k);
        out->maps[k] = cfx_malloc((size_t)out->n_steps * n * out->size[k] * sizeof(float));
        out->rho[k] = cfx_malloc((size_t)out->n_steps * n * sizeof(double));
    }
    for (int s = 0; s < out->n_steps; s++) {
        out->layer[s] = s == 0 ? -1 : players[n_all - s];
        if (s > 0)
            viz_copy_layer_params(m, scratch.params, out->layer[s]);
        float *step_maps[VIZ_N_METHODS];
        for (int k = 0; k < VIZ_N_METHODS; k++)
            step_maps[k] = out->maps[k] + (size_t)s * n * out->size[k];
        viz_explain_all(m, n, classes, x, cam_layer, o, step_maps);
        for (int k = 0; k < VIZ_N_METHODS; k++)
            for (int i = 0; i < n; i++)
                out->rho[k][s * n + i] = viz_spearman(out->maps[k] + (size_t)i * out->size[k],
                                                      step_maps[k] + (size_t)i * out->size[k],
                                                      out->size[k]);
        if (o->progress)
            o->progress(o->progress_ctx, s + 1, out->n_steps);
    }
    memcpy(m->params, trained, m->n_params * sizeof(float));
    free(trained);
    free(players);
    cfx_model_free(&scratch);
    return 0;
}

void viz_sanity_free(viz_sanity *s)
{
    for (int k = 0; k < VIZ_N_METHODS; k++) {
        free(s->maps[k]);
        free(s->rho[k]);
    }
    memset(s, 0, sizeof *s);
}
