/* Every figure of cfx-viz, drawn with the plotting layer from a computed
 * viz_run (see figures.h). */
#include "figures.h" /* defines: viz_out_save, viz_fig_* */

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define K CFX_NUM_CLASSES
#define S CFX_IMAGE_SIZE
#define FONT_CAPTION 12.0

static const char *class_name(int k) { return CFX_CIFAR10_CLASSES[k]; }

/* ---- output ----------------------------------------------------------- */

int viz_out_save(viz_out *o, viz_fig *f, const char *name, int section, const char *title,
                 const char *caption, cfx_error *err)
{
    if (o->n == VIZ_MAX_ITEMS)
        return cfx_fail(err, "cfx-viz: more than %d figures", VIZ_MAX_ITEMS);
    viz_item *it = &o->items[o->n];
    memset(it, 0, sizeof *it);
    snprintf(it->rel, sizeof it->rel, "%s.%s", name, viz_format_ext(o->fmt));
    char path[CFX_PATH_LEN + 160];
    snprintf(path, sizeof path, "%s/%s", o->dir, it->rel);
    unsigned char *data;
    size_t len;
    if (viz_fig_encode(f, o->fmt, &data, &len, err) != 0)
        return -1;
    if (viz_write_file(path, data, len, err) != 0) {
        free(data);
        return -1;
    }
    if (o->fmt == VIZ_PDF) { /* browsers do not show PDF in <img>: embed a PNG */
        free(data);
        if (viz_fig_encode(f, VIZ_PNG, &data, &len, err) != 0)
            return -1;
        it->mime = viz_format_mime(VIZ_PNG);
    } else {
        it->mime = viz_format_mime(o->fmt);
    }
    it->data = data;
    it->len = len;
    it->section = section;
    it->width = (int)f->width;
    it->height = (int)f->height;
    snprintf(it->title, sizeof it->title, "%s", title);
    it->caption = strdup(caption ? caption : "");
    o->n++;
    return 0;
}

void viz_out_free(viz_out *o)
{
    for (int i = 0; i < o->n; i++) {
        free(o->items[i].data);
        free(o->items[i].caption);
    }
    o->n = 0;
}

/* ---- shared pieces ---------------------------------------------------- */

/* Bold title and optional grey subtitle centred in [x, x + w) from y down;
 * returns the height used. */
double viz_title_block(viz_fig *f, double cx, double y, const char *title, const char *subtitle,
                          int sub_flags)
{
    double h, used = 0.0;
    viz_text_size(f, title, VIZ_FONT_TITLE, VIZ_BOLD, NULL, &h);
    viz_text(f, cx, y, title, VIZ_FONT_TITLE, 0.5, 0.0, 0, VIZ_BOLD, VIZ_TEXT);
    used += h;
    if (subtitle && *subtitle) {
        double sh;
        viz_text_size(f, subtitle, VIZ_FONT, sub_flags, NULL, &sh);
        viz_text(f, cx, y + used + 3.0, subtitle, VIZ_FONT, 0.5, 0.0, 0, sub_flags, VIZ_GREY);
        used += 3.0 + sh;
    }
    return used;
}

static void min_max(const float *v, size_t n, float *lo, float *hi)
{
    *lo = *hi = n ? v[0] : 0.0f;
    for (size_t i = 1; i < n; i++) {
        *lo = v[i] < *lo ? v[i] : *lo;
        *hi = v[i] > *hi ? v[i] : *hi;
    }
}

/* "True: cat\nPred: dog (0.97)" */
static void true_pred(char *buf, size_t len, int label, int pred, double prob)
{
    snprintf(buf, len, "True: %s\nPred: %s (%.3f)", class_name(label), class_name(pred), prob);
}

/* The RGB bytes [32][32][3] of test image i. */
void viz_test_rgb(const viz_run *r, int i, uint8_t *rgb)
{
    const uint8_t *px = cfx_dataset_pixels(&r->test, i);
    for (int p = 0; p < S * S; p++)
        for (int c = 0; c < 3; c++)
            rgb[p * 3 + c] = px[c * S * S + p];
}

/* Image i with its caption below, centred on cx; returns the bottom. */
static double captioned_image(viz_fig *f, const uint8_t *rgb, double cx, double y, double size,
                              const char *caption, viz_color frame)
{
    viz_image_rgb(f, rgb, S, S, cx - size / 2, y, size, size);
    viz_frame(f, cx - size / 2, y, size, size, frame, frame.r == VIZ_RED.r ? 2.0 : 1.0);
    double h;
    viz_text_size(f, caption, FONT_CAPTION, 0, NULL, &h);
    viz_text(f, cx, y + size + 5.0, caption, FONT_CAPTION, 0.5, 0.0, 0, 0, VIZ_TEXT);
    return y + size + 5.0 + h;
}

/* ---- training curves -------------------------------------------------- */

static int curves(viz_out *o, const viz_run *r, int accuracy, cfx_error *err)
{
    int n = r->n_rows;
    double *x = cfx_malloc((size_t)n * sizeof *x), *tr = cfx_malloc((size_t)n * sizeof *tr),
           *va = cfx_malloc((size_t)n * sizeof *va);
    double scale = accuracy ? 100.0 : 1.0, best_y = NAN;
    double lo = INFINITY, hi = -INFINITY;
    for (int i = 0; i < n; i++) {
        const cfx_epoch_metrics *m = &r->rows[i];
        x[i] = m->epoch;
        tr[i] = scale * (accuracy ? m->train_accuracy : m->train_loss);
        va[i] = scale * (accuracy ? m->validation_accuracy : m->validation_loss);
        lo = fmin(lo, fmin(tr[i], va[i]));
        hi = fmax(hi, fmax(tr[i], va[i]));
        if (m->epoch == r->state.best_epoch)
            best_y = va[i];
    }
    double test = accuracy ? 100.0 * r->test_accuracy : r->test_loss;
    lo = fmin(lo, test), hi = fmax(hi, test);
    double dy = hi - lo > 0 ? hi - lo : 1.0, dx = x[n - 1] - x[0] > 0 ? x[n - 1] - x[0] : 1.0;

    viz_fig f;
    viz_fig_init(&f, 760, 500);
    viz_axes ax = {0};
    const char *title = accuracy ? "Accuracy per epoch" : "Loss per epoch";
    const char *ylabel = accuracy ? "accuracy (%)" : "cross-entropy loss";
    viz_axes_layout(&ax, &f, 0, 0, f.width, f.height, x[0] - 0.05 * dx, x[n - 1] + 0.05 * dx,
                    lo - 0.06 * dy, hi + 0.06 * dy, 1, title, "epoch", ylabel);
    viz_axes_draw(&ax, title, "epoch", ylabel);
    viz_axes_vline(&ax, r->state.best_epoch, VIZ_GREY, 1.5, VIZ_DASHED);
    viz_axes_hline(&ax, test, VIZ_GREEN, 1.5, VIZ_DOTTED);
    viz_axes_line(&ax, x, tr, n, VIZ_BLUE, 2.0, VIZ_SOLID, VIZ_CIRCLE);
    viz_axes_line(&ax, x, va, n, VIZ_ORANGE, 2.0, VIZ_SOLID, VIZ_CIRCLE);
    if (!isnan(best_y))
        viz_axes_marker(&ax, r->state.best_epoch, best_y, VIZ_STAR, 16.0, VIZ_ORANGE);

    char best[96], tl[96];
    if (accuracy) {
        snprintf(best, sizeof best, "best epoch %d (validation %.2f %%)", r->state.best_epoch,
                 best_y);
        snprintf(tl, sizeof tl, "test, best weights (%.2f %%)", test);
    } else {
        snprintf(best, sizeof best, "best epoch %d (validation loss %.4f)", r->state.best_epoch,
                 best_y);
        snprintf(tl, sizeof tl, "test, best weights (%.4f)", test);
    }
    viz_legend_entry e[4] = {
        {"train", VIZ_BLUE, VIZ_SOLID, VIZ_CIRCLE, NULL},
        {"validation", VIZ_ORANGE, VIZ_SOLID, VIZ_CIRCLE, NULL},
        {best, VIZ_GREY, VIZ_DASHED, VIZ_STAR, &VIZ_ORANGE},
        {tl, VIZ_GREEN, VIZ_DOTTED, VIZ_NO_MARKER, NULL},
    };
    double *px = cfx_malloc(2 * (size_t)n * sizeof *px),
           *py = cfx_malloc(2 * (size_t)n * sizeof *py);
    for (int i = 0; i < n; i++)
        px[i] = px[n + i] = x[i], py[i] = tr[i], py[n + i] = va[i];
    viz_axes_legend(&ax, e, 4, px, py, 2 * n);
    free(px), free(py), free(x), free(tr), free(va);

    char cap[256];
    snprintf(cap, sizeof cap,
             "Train and validation %s per epoch (%d epochs); the dashed line marks the best "
             "validation epoch, whose weights are in best.h5; the dotted line is their test %s.",
             accuracy ? "accuracy" : "loss", n, accuracy ? "accuracy" : "loss");
    int rc = viz_out_save(o, &f, accuracy ? "plots/accuracies" : "plots/loss_curves",
                          VIZ_SEC_TRAINING, title, cap, err);
    viz_fig_free(&f);
    return rc;
}

int viz_fig_loss_curves(viz_out *o, const viz_run *r, cfx_error *err)
{
    return curves(o, r, 0, err);
}

int viz_fig_accuracies(viz_out *o, const viz_run *r, cfx_error *err)
{
    return curves(o, r, 1, err);
}

/* ---- confusion matrix ------------------------------------------------- */

int viz_fig_confusion(viz_out *o, const viz_run *r, cfx_error *err)
{
    const double cell = 54.0, grid = K * cell;
    viz_fig f;
    viz_fig_init(&f, 10, 10); /* for measuring */
    double lw = 0.0, rot = 0.0;
    for (int k = 0; k < K; k++) {
        double w, h;
        viz_text_size(&f, class_name(k), VIZ_FONT, 0, &w, &h);
        lw = fmax(lw, w);
        rot = fmax(rot, (w + h) * sqrt(0.5));
    }
    double label_h;
    viz_text_size(&f, "predicted", VIZ_FONT_LABEL, 0, NULL, &label_h);
    char title[128], sub[128];
    snprintf(title, sizeof title, "Confusion matrix, test set");
    snprintf(sub, sizeof sub, "%d images, accuracy %.2f %%; colour: share of the true class",
             r->n_test, 100.0 * r->test_accuracy);
    double title_h, sub_h;
    viz_text_size(&f, title, VIZ_FONT_TITLE, VIZ_BOLD, NULL, &title_h);
    viz_text_size(&f, sub, VIZ_FONT, 0, NULL, &sub_h);
    double cb_extra = viz_colorbar_extra(&f, 0.0, 1.0, grid, "share of the true class");
    viz_fig_free(&f);

    double left = 12.0 + label_h + 8.0 + lw + 8.0, top = 12.0 + title_h + 3.0 + sub_h + 14.0;
    double bottom = 8.0 + rot + 8.0 + label_h + 12.0;
    double width = left + grid + 24.0 + 18.0 + cb_extra + 14.0;
    viz_fig_init(&f, width, top + grid + bottom);
    viz_title_block(&f, left + grid / 2, 12.0, title, sub, 0);
    for (int t = 0; t < K; t++) {
        long row = 0;
        for (int p = 0; p < K; p++)
            row += r->cm[t * K + p];
        for (int p = 0; p < K; p++) {
            long c = r->cm[t * K + p];
            double share = row ? (double)c / row : 0.0;
            viz_color col = viz_viridis(share);
            cairo_set_source_rgb(f.cr, col.r, col.g, col.b);
            cairo_rectangle(f.cr, left + p * cell, top + t * cell, cell, cell);
            cairo_fill(f.cr);
            char num[24];
            snprintf(num, sizeof num, "%ld", c);
            viz_text(&f, left + (p + 0.5) * cell, top + (t + 0.5) * cell, num, 13.0, 0.5, 0.5, 0,
                     t == p ? VIZ_BOLD : 0, viz_text_on_viridis(share));
        }
    }
    viz_frame(&f, left, top, grid, grid, VIZ_TEXT, 1.0);
    for (int k = 0; k < K; k++) {
        viz_text(&f, left - 8.0, top + (k + 0.5) * cell, class_name(k), VIZ_FONT, 1.0, 0.5, 0, 0,
                 VIZ_TEXT);
        /* 45 degree labels whose right end sits under the cell centre */
        double w, h;
        viz_text_size(&f, class_name(k), VIZ_FONT, 0, &w, &h);
        viz_text(&f, left + (k + 0.5) * cell + h * 0.35, top + grid + 8.0, class_name(k), VIZ_FONT,
                 1.0, 0.0, 45.0, 0, VIZ_TEXT);
    }
    viz_text(&f, 12.0, top + grid / 2, "true class", VIZ_FONT_LABEL, 0.5, 0.0, 90.0, 0, VIZ_TEXT);
    viz_text(&f, left + grid / 2, top + grid + 8.0 + rot + 8.0, "predicted class", VIZ_FONT_LABEL,
             0.5, 0.0, 0, 0, VIZ_TEXT);
    viz_colorbar(&f, left + grid + 24.0, top, 18.0, grid, 0.0, 1.0, "share of the true class");
    char cap[256];
    snprintf(cap, sizeof cap,
             "Rows: true class, columns: predicted class; each cell holds the number of test "
             "images, its colour the share of its row. The diagonal holds the %ld correct "
             "predictions.",
             (long)lround(r->test_accuracy * r->n_test));
    int rc = viz_out_save(o, &f, "plots/confusion_matrix", VIZ_SEC_TEST, title, cap, err);
    viz_fig_free(&f);
    return rc;
}

/* ---- misclassified examples ------------------------------------------- */

typedef struct {
    float p;
    int i;
} scored;

static int by_score_desc(const void *a, const void *b)
{
    const scored *x = a, *y = b;
    return x->p > y->p ? -1 : x->p < y->p ? 1 : x->i - y->i;
}

/* Wrong predictions (optionally only true a predicted b; a < 0: any), most
 * confident first; returns how many (<= max) went into out. */
static int confident_errors(const viz_run *r, int a, int b, int *out, int max)
{
    scored *s = cfx_malloc((size_t)r->n_test * sizeof *s);
    int n = 0;
    for (int i = 0; i < r->n_test; i++) {
        int y = r->labels[i], p = r->preds[i];
        if (y == p || (a >= 0 && (y != a || p != b)))
            continue;
        s[n].p = r->probs[(size_t)i * K + p];
        s[n++].i = i;
    }
    qsort(s, (size_t)n, sizeof *s, by_score_desc);
    int m = n < max ? n : max;
    for (int j = 0; j < m; j++)
        out[j] = s[j].i;
    free(s);
    return m;
}

int viz_fig_misclassified(viz_out *o, const viz_run *r, cfx_error *err)
{
    enum { COLS = 6, ROWS = 3, MAX = COLS * ROWS };
    int idx[MAX];
    int n = confident_errors(r, -1, -1, idx, MAX);
    long errors = r->n_test - lround(r->test_accuracy * r->n_test);
    const double size = 96.0, tile_w = 166.0, row_h = size + 5.0 + 3 * 15.0 + 14.0;
    int rows = n ? (n + COLS - 1) / COLS : 1;
    viz_fig f;
    viz_fig_init(&f, 20.0 + COLS * tile_w + 20.0, 70.0 + rows * row_h + 6.0);
    char title[128], sub[160];
    snprintf(title, sizeof title, "Misclassified test images");
    snprintf(sub, sizeof sub,
             "the %d most confident of %ld errors; probability of the predicted class", n, errors);
    viz_title_block(&f, f.width / 2, 12.0, title, sub, 0);
    for (int j = 0; j < n; j++) {
        int i = idx[j];
        uint8_t rgb[CFX_IMAGE_PIXELS];
        viz_test_rgb(r, i, rgb);
        char cap[128];
        true_pred(cap, sizeof cap, r->labels[i], r->preds[i],
                  r->probs[(size_t)i * K + r->preds[i]]);
        char full[160];
        snprintf(full, sizeof full, "%s\ntest #%d", cap, i);
        double cx = 20.0 + (j % COLS + 0.5) * tile_w, y = 70.0 + (j / COLS) * row_h;
        captioned_image(&f, rgb, cx, y, size, full, VIZ_RED);
    }
    if (n == 0)
        viz_text(&f, f.width / 2, 100.0, "no misclassified test images", VIZ_FONT, 0.5, 0.0, 0, 0,
                 VIZ_GREY);
    char cap[200];
    snprintf(cap, sizeof cap,
             "The %d test images the model got wrong with the highest confidence, shown "
             "denormalised and enlarged 3x with nearest-neighbour scaling.",
             n);
    int rc = viz_out_save(o, &f, "plots/misclassified_examples", VIZ_SEC_TEST, title, cap, err);
    viz_fig_free(&f);
    return rc;
}

/* ---- feature maps ----------------------------------------------------- */

#define VIZ_MAX_CHANNELS 64 /* channels drawn per feature-map figure */

static int featuremap(viz_out *o, const viz_run *r, int l, cfx_error *err)
{
    const cfx_layer *L = &r->model.layers[l];
    int C = L->out_c, H = L->out_h, W = L->out_w;
    int shown = C < VIZ_MAX_CHANNELS ? C : VIZ_MAX_CHANNELS; /* wide layers: the first ones */
    int cols = shown >= 32 ? 16 : shown >= 8 ? 8 : shown;
    int rows = (shown + cols - 1) / cols;
    double tile = W * fmax(1.0, floor(64.0 / W)); /* whole-pixel enlargement near 64 px */
    const double gap = 6.0, label = 15.0, header = 100.0;
    char spec[256], title[300], sub[400], part[64] = "";
    cfx_layer_spec_format(&L->spec, spec, sizeof spec);
    const char *tn = L->kind->torch_name;
    if (shown < C)
        snprintf(part, sizeof part, " (channels 0-%d of %d shown)", shown - 1, C);
    snprintf(title, sizeof title, "Layer %d: %s, output %d × %d × %d%s", l, tn, C, H, W, part);
    int img = r->images[0];
    snprintf(sub, sizeof sub, "%s\ntest image #%d (%s); each channel scaled to its own range", spec,
             img, class_name(r->img_label[0]));
    viz_fig f;
    viz_fig_init(&f, 10, 10); /* for measuring */
    double tw, sw;
    viz_text_size(&f, title, VIZ_FONT_TITLE, VIZ_BOLD, &tw, NULL);
    viz_text_size(&f, sub, VIZ_FONT, 0, &sw, NULL);
    viz_fig_free(&f);
    double width = fmax(40.0 + cols * (tile + gap), 98.0 + fmax(tw, sw) + 20.0);
    viz_fig_init(&f, width, header + rows * (tile + label + gap) + 12.0);
    /* input thumbnail, then the titles beside it */
    viz_image_rgb(&f, r->img_rgb[0], S, S, 20.0, 14.0, 64.0, 64.0);
    viz_frame(&f, 20.0, 14.0, 64.0, 64.0, VIZ_TEXT, 1.0);
    viz_text(&f, 98.0, 14.0, title, VIZ_FONT_TITLE, 0.0, 0.0, 0, VIZ_BOLD, VIZ_TEXT);
    viz_text(&f, 98.0, 40.0, sub, VIZ_FONT, 0.0, 0.0, 0, 0, VIZ_GREY);

    double x0 = (width - cols * (tile + gap) + gap) / 2;
    for (int c = 0; c < shown; c++) {
        const float *map = r->features[l] + (size_t)c * H * W;
        float lo, hi;
        min_max(map, (size_t)H * W, &lo, &hi);
        double x = x0 + (c % cols) * (tile + gap), y = header + (c / cols) * (tile + label + gap);
        viz_image_map(&f, map, H, W, lo, hi > lo ? hi : lo + 1.0f, x, y, tile, tile, 1.0, 0);
        char num[16];
        snprintf(num, sizeof num, "%d", c);
        viz_text(&f, x + tile / 2, y + tile + 2.0, num, 11.0, 0.5, 0.0, 0, 0, VIZ_GREY);
    }
    char name[64], cap[300];
    snprintf(name, sizeof name, "featuremaps/layer_%02d_%s", l, tn);
    snprintf(cap, sizeof cap,
             "%s %d channels of layer %d (%s) for test image #%d, each scaled from its minimum "
             "(dark) to its maximum (yellow).",
             shown < C ? "The first" : "All", shown, l, tn, img);
    int rc = viz_out_save(o, &f, name, VIZ_SEC_FEATURES, title, cap, err);
    viz_fig_free(&f);
    return rc;
}

int viz_fig_featuremaps(viz_out *o, const viz_run *r, cfx_error *err)
{
    for (int l = 0; l < r->model.n_layers; l++)
        if (r->features && r->features[l] && featuremap(o, r, l, err) != 0)
            return -1;
    return 0;
}

/* ---- first-layer filters ---------------------------------------------- */

int viz_fig_conv1_filters(viz_out *o, const viz_run *r, cfx_error *err)
{
    int l = viz_first_conv(&r->model);
    if (l < 0)
        return cfx_fail(err, "%s: the model has no conv2d layer", r->ckpt_path);
    const cfx_layer *L = &r->model.layers[l];
    int OC = L->out_c, C = L->in_c, KK = L->spec.kernel;
    const float *w = r->model.params + L->weight_offset;
    float lo, hi;
    min_max(w, L->n_weight, &lo, &hi);
    int cols = OC < 8 ? OC : 8, rows = (OC + cols - 1) / cols;
    double tile = KK * fmax(1.0, floor(72.0 / KK)), gap = 14.0, label = 16.0;
    viz_fig f;
    viz_fig_init(&f, fmax(40.0 + cols * (tile + gap), 640.0),
                 80.0 + rows * (tile + label + gap) + 8.0);
    char title[160], sub[200];
    snprintf(title, sizeof title, "First-layer filters (layer %d, %d × %d × %d × %d)", l, OC, C, KK,
             KK);
    snprintf(sub, sizeof sub,
             "channels shown as RGB; weights scaled jointly: %s%.2f black, %s%.2f white",
             lo < 0 ? "−" : "", fabs(lo), hi < 0 ? "−" : "", fabs(hi));
    viz_title_block(&f, f.width / 2, 12.0, title, sub, 0);
    double x0 = (f.width - cols * (tile + gap) + gap) / 2;
    uint8_t *rgb = cfx_malloc((size_t)KK * KK * 3);
    for (int oc = 0; oc < OC; oc++) {
        for (int p = 0; p < KK * KK; p++)
            for (int c = 0; c < 3; c++) {
                float v = w[((size_t)oc * C + (c < C ? c : 0)) * KK * KK + p];
                rgb[p * 3 + c] = (uint8_t)lround(255.0 * (v - lo) / (hi > lo ? hi - lo : 1.0f));
            }
        double x = x0 + (oc % cols) * (tile + gap), y = 76.0 + (oc / cols) * (tile + label + gap);
        viz_image_rgb(&f, rgb, KK, KK, x, y, tile, tile);
        viz_frame(&f, x, y, tile, tile, VIZ_GREY, 1.0);
        char num[16];
        snprintf(num, sizeof num, "%d", oc);
        viz_text(&f, x + tile / 2, y + tile + 3.0, num, FONT_CAPTION, 0.5, 0.0, 0, 0, VIZ_TEXT);
    }
    free(rgb);
    char cap[200];
    snprintf(cap, sizeof cap,
             "The %d filters of the first convolution, their three input channels as red, green "
             "and blue.",
             OC);
    int rc = viz_out_save(o, &f, "plots/conv1_filters", VIZ_SEC_EXPLAIN, title, cap, err);
    viz_fig_free(&f);
    return rc;
}

/* ---- saliency and Grad-CAM -------------------------------------------- */

/* One figure of attribution maps: a row per chosen image with the image,
 * one column per method (each map scaled to its maximum; negative values,
 * which only occlusion has, shown as 0) and the last method over the image
 * in grey (Grad-CAM resized bilinearly). */
typedef struct {
    const char *file, *title, *subtitle, *caption;
    int n_methods;
    viz_method methods[3];
    int markup; /* the subtitle is pango markup */
} method_figure;

static void grey_image(const uint8_t *rgb, uint8_t *grey)
{
    for (int p = 0; p < S * S; p++) {
        const uint8_t *c = rgb + 3 * p;
        grey[3 * p] = grey[3 * p + 1] = grey[3 * p + 2] =
            (uint8_t)lround(0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2]);
    }
}

static void column_heading(const viz_run *r, viz_method k, char *buf, size_t len)
{
    if (k == VIZ_GRADCAM)
        snprintf(buf, len, "Grad-CAM (%d × %d)", r->cam_h, r->cam_w);
    else if (k == VIZ_IG_BLACK || k == VIZ_IG_BLUR)
        snprintf(buf, len, "from the %s image", k == VIZ_IG_BLACK ? "black" : "blurred");
    else
        snprintf(buf, len, "%s", VIZ_METHOD_LABEL[k]);
}

static int method_rows(viz_out *o, const viz_run *r, const method_figure *mf, cfx_error *err)
{
    const double tile = 160.0, gap = 18.0, left = 176.0, head = 84.0, row_h = tile + gap;
    const int cols = mf->n_methods + 2;
    const char *cb_label = "map / its maximum";
    viz_fig f;
    viz_fig_init(&f, 10, 10);
    double cb_extra = viz_colorbar_extra(&f, 0, 1, r->n_images * row_h - gap, cb_label);
    viz_fig_free(&f);
    double width = left + cols * (tile + gap) + 18.0 + cb_extra + 16.0;
    viz_fig_init(&f, width, head + r->n_images * row_h + 8.0);
    viz_title_block(&f, width / 2, 10.0, mf->title, mf->subtitle, mf->markup ? VIZ_MARKUP : 0);
    for (int c = 0; c < cols; c++) {
        char h[80] = "image";
        if (c > 0 && c <= mf->n_methods)
            column_heading(r, mf->methods[c - 1], h, sizeof h);
        else if (c > 0)
            snprintf(h, sizeof h, "overlay");
        viz_text(&f, left + c * (tile + gap) + tile / 2, head - 6.0, h, VIZ_FONT_LABEL, 0.5, 1.0,
                 0, 0, VIZ_TEXT);
    }
    for (int i = 0; i < r->n_images; i++) {
        double y = head + i * row_h;
        char lab[160], tp[128];
        true_pred(tp, sizeof tp, r->img_label[i], r->img_pred[i], r->img_prob[i]);
        snprintf(lab, sizeof lab, "test #%d\n%s", r->images[i], tp);
        viz_text(&f, left - 14.0, y + tile / 2, lab, VIZ_FONT, 1.0, 0.5, 0, 0,
                 r->img_label[i] == r->img_pred[i] ? VIZ_TEXT : VIZ_RED);
        viz_image_rgb(&f, r->img_rgb[i], S, S, left, y, tile, tile);
        double vmax = 1.0;
        const float *map = NULL;
        for (int c = 0; c < mf->n_methods; c++) {
            viz_method k = mf->methods[c];
            int mh = k == VIZ_GRADCAM ? r->cam_h : S, mw = k == VIZ_GRADCAM ? r->cam_w : S;
            map = viz_run_map(r, k) + (size_t)i * mh * mw;
            float lo, hi;
            min_max(map, (size_t)mh * mw, &lo, &hi);
            vmax = hi > 0 ? hi : 1.0;
            viz_image_map(&f, map, mh, mw, 0.0, vmax, left + (c + 1) * (tile + gap), y, tile, tile,
                          1.0, 0);
        }
        uint8_t grey[CFX_IMAGE_PIXELS];
        grey_image(r->img_rgb[i], grey);
        double xo = left + (cols - 1) * (tile + gap);
        viz_image_rgb(&f, grey, S, S, xo, y, tile, tile);
        int cam = mf->methods[mf->n_methods - 1] == VIZ_GRADCAM;
        const float *over = cam ? r->gradcam_up + (size_t)i * S * S : map;
        viz_image_map_overlay(&f, over, S, S, 0.0, vmax, xo, y, tile, tile, 0.9, cam);
        for (int c = 0; c < cols; c++)
            viz_frame(&f, left + c * (tile + gap), y, tile, tile, VIZ_GREY, 1.0);
    }
    viz_colorbar(&f, left + cols * (tile + gap), head, 18.0, r->n_images * row_h - gap, 0.0, 1.0,
                 cb_label);
    int rc = viz_out_save(o, &f, mf->file, VIZ_SEC_EXPLAIN, mf->title, mf->caption, err);
    viz_fig_free(&f);
    return rc;
}

int viz_fig_saliency(viz_out *o, const viz_run *r, cfx_error *err)
{
    method_figure mf = {"plots/saliency", "Saliency of the predicted class",
                        "|∂ score / ∂ input|, maximum over the RGB channels",
                        "Saliency: the absolute gradient of the predicted class score (logit) "
                        "with respect to the input pixels, maximum over the colour channels, "
                        "computed by libcfx's backward pass.",
                        1, {VIZ_SALIENCY}, 0};
    return method_rows(o, r, &mf, err);
}

int viz_fig_gradcam(viz_out *o, const viz_run *r, cfx_error *err)
{
    const cfx_layer *C = &r->model.layers[r->cam_layer];
    char sub[300], cap[400];
    snprintf(sub, sizeof sub,
             "layer %d %s (%s, %d × %d × %d): ReLU(Σ<sub>k</sub> α<sub>k</sub> "
             "A<sup>k</sup>), α<sub>k</sub> = mean of ∂ score / ∂ A<sup>k</sup>",
             r->cam_layer, C->key, C->kind->torch_name, C->out_c, C->out_h, C->out_w);
    snprintf(cap, sizeof cap,
             "Grad-CAM on layer %d, the last convolution: its %d channels weighted by the "
             "mean gradient of the predicted class score, summed and passed through ReLU; "
             "the overlay is the map resized bilinearly to 32 × 32.",
             r->cam_layer, C->out_c);
    method_figure mf = {"plots/gradcam", "Grad-CAM of the predicted class", sub, cap, 1,
                        {VIZ_GRADCAM}, 1};
    return method_rows(o, r, &mf, err);
}

int viz_fig_integrated_gradients(viz_out *o, const viz_run *r, cfx_error *err)
{
    char sub[200], cap[600];
    snprintf(sub, sizeof sub,
             "(x − x′) × mean of ∂ score / ∂ input on the path from the baseline x′ to x "
             "(%d steps), Σ over RGB of |·|",
             r->attr.ig_steps);
    double worst = 0.0;
    for (int b = 0; b < 2; b++)
        for (int i = 0; i < r->n_images; i++) {
            double want = r->ig_check[b][i][1], got = r->ig_check[b][i][0];
            double e = fabs(got - want) / fmax(fabs(want), 1e-12);
            worst = e > worst ? e : worst;
        }
    snprintf(cap, sizeof cap,
             "Integrated Gradients (Sundararajan et al. 2017) of the predicted class score from "
             "two baselines: the black image and the image blurred by a Gaussian of σ = %.0f "
             "pixels. Completeness: each image's attributions sum to score(x) − score(x′) to "
             "within %.2g %% here (analysis.h5 has both numbers).",
             r->attr.blur_sigma, 100.0 * worst);
    method_figure mf = {"plots/integrated_gradients", "Integrated Gradients", sub, cap, 2,
                        {VIZ_IG_BLACK, VIZ_IG_BLUR}, 0};
    return method_rows(o, r, &mf, err);
}

int viz_fig_smoothgrad(viz_out *o, const viz_run *r, cfx_error *err)
{
    char sub[200], cap[400];
    snprintf(sub, sizeof sub,
             "mean gradient over %d copies with noise σ = %.2f × (max − min), beside plain saliency",
             r->attr.sg_samples, r->attr.sg_noise);
    snprintf(cap, sizeof cap,
             "SmoothGrad (Smilkov et al. 2017): the gradient of the predicted class score "
             "averaged over %d noisy copies of the image (Gaussian noise of %.0f %% of its "
             "range), maximum over the colour channels of its absolute value.",
             r->attr.sg_samples, 100.0 * r->attr.sg_noise);
    method_figure mf = {"plots/smoothgrad", "SmoothGrad", sub, cap, 2,
                        {VIZ_SALIENCY, VIZ_SMOOTHGRAD}, 0};
    return method_rows(o, r, &mf, err);
}

int viz_fig_occlusion(viz_out *o, const viz_run *r, cfx_error *err)
{
    char sub[200], cap[400];
    snprintf(sub, sizeof sub,
             "drop of the class score when a %d × %d square (stride %d) is set to the mean colour",
             r->attr.occ_patch, r->attr.occ_patch, r->attr.occ_stride);
    snprintf(cap, sizeof cap,
             "Occlusion sensitivity (Zeiler & Fergus 2014): how much the predicted class score "
             "falls when a %d × %d square is set to the dataset's mean colour, averaged over the "
             "squares covering each pixel; squares that raised the score show as 0.",
             r->attr.occ_patch, r->attr.occ_patch);
    method_figure mf = {"plots/occlusion", "Occlusion sensitivity", sub, cap, 1,
                        {VIZ_OCCLUSION}, 0};
    return method_rows(o, r, &mf, err);
}

int viz_fig_guided_backprop(viz_out *o, const viz_run *r, cfx_error *err)
{
    method_figure mf = {
        "plots/guided_backprop", "Guided Backpropagation",
        "the gradient with only positive gradients passed back through ReLU / GELU",
        "Guided Backpropagation (Springenberg et al. 2015): the input gradient of the predicted "
        "class score where every ReLU (and GELU) passes back only positive gradients of "
        "positive inputs; maximum over the colour channels of its absolute value.",
        2, {VIZ_SALIENCY, VIZ_GUIDED_BP}, 0};
    return method_rows(o, r, &mf, err);
}

int viz_fig_guided_gradcam(viz_out *o, const viz_run *r, cfx_error *err)
{
    method_figure mf = {
        "plots/guided_gradcam", "Guided Grad-CAM",
        "Guided Backpropagation × Grad-CAM resized to the image",
        "Guided Grad-CAM (Selvaraju et al. 2017): the guided gradient multiplied by the Grad-CAM "
        "map resized to 32 × 32: fine detail where the class evidence lies.",
        3, {VIZ_GUIDED_BP, VIZ_GRADCAM, VIZ_GUIDED_GRADCAM}, 0};
    return method_rows(o, r, &mf, err);
}

/* ---- per-class metrics ------------------------------------------------ */

static int write_csv(const viz_run *r, const char *dir, cfx_error *err)
{
    char path[CFX_PATH_LEN + 32];
    snprintf(path, sizeof path, "%s/per_class.csv", dir);
    FILE *fp = fopen(path, "w");
    if (!fp)
        return cfx_fail(err, "%s: cannot write: %s", path, strerror(errno));
    fprintf(fp, "class,precision,recall,f1,support\n");
    for (int k = 0; k < K; k++) {
        const viz_class_metrics *m = &r->per_class[k];
        fprintf(fp, "%s,%.4f,%.4f,%.4f,%ld\n", class_name(k), m->precision, m->recall, m->f1,
                m->support);
    }
    if (fclose(fp) != 0)
        return cfx_fail(err, "%s: write failed: %s", path, strerror(errno));
    return 0;
}

int viz_fig_per_class(viz_out *o, const viz_run *r, cfx_error *err)
{
    if (write_csv(r, o->dir, err) != 0)
        return -1;
    char acc[64];
    snprintf(acc, sizeof acc, "accuracy (%.3f)", r->test_accuracy);
    viz_legend_entry e[4] = {{"precision", VIZ_BLUE, -1, 0, NULL},
                             {"recall", VIZ_ORANGE, -1, 0, NULL},
                             {"F1", VIZ_GREEN, -1, 0, NULL},
                             {acc, VIZ_GREY, VIZ_DASHED, 0, NULL}};
    viz_fig f;
    viz_fig_init(&f, 960, 520);
    double lw, lh;
    viz_legend_size(&f, e, 4, &lw, &lh);
    viz_axes ax = {0};
    const char *names[K];
    for (int k = 0; k < K; k++)
        names[k] = class_name(k);
    ax.xcat = names, ax.n_xcat = K, ax.xcat_angle = 30.0;
    const char *title = "Per-class precision, recall and F1 (test set)";
    viz_axes_layout(&ax, &f, 0, 0, f.width - lw - 16.0, f.height, -0.6, K - 0.4, 0.0, 1.0, 0, title,
                    NULL, "score");
    viz_axes_draw(&ax, title, NULL, "score");
    viz_color cols[3] = {VIZ_BLUE, VIZ_ORANGE, VIZ_GREEN};
    for (int k = 0; k < K; k++) {
        const viz_class_metrics *m = &r->per_class[k];
        double v[3] = {m->precision, m->recall, m->f1};
        for (int j = 0; j < 3; j++)
            viz_axes_bar(&ax, k + (j - 1) * 0.27, 0.25, v[j], cols[j]);
    }
    viz_axes_hline(&ax, r->test_accuracy, VIZ_GREY, 1.5, VIZ_DASHED);
    viz_legend_draw(&f, e, 4, ax.x + ax.w + 10.0, ax.y);
    int rc = viz_out_save(o, &f, "plots/per_class", VIZ_SEC_TEST, title,
                          "Precision (correct among predicted as the class), recall (correct "
                          "among the class's images) and their harmonic mean F1; numbers in "
                          "per_class.csv and the table below.",
                          err);
    viz_fig_free(&f);
    return rc;
}

/* ---- most confused pairs ---------------------------------------------- */

int viz_fig_confusion_pairs(viz_out *o, const viz_run *r, cfx_error *err)
{
    enum { PER_DIR = 3, EX = 2 * PER_DIR };
    const double size = 96.0, tile_w = 166.0, left = 220.0, row_h = size + 5.0 + 2 * 15.0 + 22.0;
    int rows = r->n_pairs ? r->n_pairs : 1;
    viz_fig f;
    viz_fig_init(&f, left + EX * tile_w + 16.0, 74.0 + rows * row_h);
    const char *title = "The most confused class pairs";
    viz_title_block(&f, f.width / 2, 12.0, title,
                "errors in both directions; examples: the most confident errors of each "
                "direction",
                0);
    for (int p = 0; p < r->n_pairs; p++) {
        const viz_pair *q = &r->pairs[p];
        double y = 74.0 + p * row_h;
        char head[96], detail[200];
        snprintf(head, sizeof head, "%d. %s ↔ %s", p + 1, class_name(q->a), class_name(q->b));
        snprintf(detail, sizeof detail, "%ld errors\n%s → %s: %ld\n%s → %s: %ld", q->ab + q->ba,
                 class_name(q->a), class_name(q->b), q->ab, class_name(q->b), class_name(q->a),
                 q->ba);
        viz_text(&f, 20.0, y + 6.0, head, VIZ_FONT_LABEL, 0.0, 0.0, 0, VIZ_BOLD, VIZ_TEXT);
        viz_text(&f, 20.0, y + 30.0, detail, VIZ_FONT, 0.0, 0.0, 0, 0, VIZ_TEXT);
        int ex[EX], n1, n2;
        n1 = confident_errors(r, q->a, q->b, ex, PER_DIR);
        n2 = confident_errors(r, q->b, q->a, ex + n1, PER_DIR);
        for (int j = 0; j < n1 + n2; j++) {
            int i = ex[j];
            uint8_t rgb[CFX_IMAGE_PIXELS];
            viz_test_rgb(r, i, rgb);
            char cap[128];
            true_pred(cap, sizeof cap, r->labels[i], r->preds[i],
                      r->probs[(size_t)i * K + r->preds[i]]);
            captioned_image(&f, rgb, left + (j + 0.5) * tile_w, y, size, cap, VIZ_RED);
        }
        if (p + 1 < r->n_pairs) {
            cairo_set_source_rgb(f.cr, 0.85, 0.85, 0.85);
            cairo_set_line_width(f.cr, 1.0);
            cairo_move_to(f.cr, 20.0, y + row_h - 9.5);
            cairo_line_to(f.cr, f.width - 16.0, y + row_h - 9.5);
            cairo_stroke(f.cr);
        }
    }
    if (r->n_pairs == 0)
        viz_text(&f, f.width / 2, 100.0, "no errors on the test set", VIZ_FONT, 0.5, 0.0, 0, 0,
                 VIZ_GREY);
    int rc = viz_out_save(o, &f, "plots/confusion_pairs", VIZ_SEC_TEST, title,
                          "The five class pairs with the most test errors in either direction, "
                          "with the most confident mistakes of each direction.",
                          err);
    viz_fig_free(&f);
    return rc;
}

/* ---- sanity check ----------------------------------------------------- */

void viz_sanity_step_label(const viz_run *r, int s, char *buf, size_t len)
{
    if (s == 0) {
        snprintf(buf, len, "trained");
        return;
    }
    int l = r->sanity.layer[s];
    const cfx_layer *L = &r->model.layers[l];
    if (L->spec.name[0])
        snprintf(buf, len, "%s %s", L->key, L->kind->torch_name);
    else
        snprintf(buf, len, "%d %s", l, L->kind->torch_name);
}

/* "15 Conv2d": short enough for a chart's category axis. */
static void sanity_step_short(const viz_run *r, int s, char *buf, size_t len)
{
    int l = r->sanity.layer[s];
    if (s == 0)
        snprintf(buf, len, "trained");
    else
        snprintf(buf, len, "%d %s", l, r->model.layers[l].kind->torch_name);
}

/* A column heading: the layer's name broken after dots into lines of at
 * most about 12 characters, then its type ("layer2.0.\ndownsample.1\nConv2d"). */
static void sanity_step_heading(const viz_run *r, int s, char *buf, size_t len)
{
    int l = r->sanity.layer[s];
    const cfx_layer *L = &r->model.layers[l];
    if (s == 0 || !L->spec.name[0]) {
        viz_sanity_step_label(r, s, buf, len);
        return;
    }
    size_t used = 0, line = 0;
    for (const char *p = L->key; *p && used + 2 < len; p++) {
        buf[used++] = *p, line++;
        if (*p == '.' && line >= 6 && strchr(p + 1, '.') != p + 1) {
            const char *next = strchr(p + 1, '.');
            size_t rest = next ? (size_t)(next - p) : strlen(p + 1);
            if (line + rest > 12)
                buf[used++] = '\n', line = 0;
        }
    }
    snprintf(buf + used, len - used, "\n%s", L->kind->torch_name);
}

static void rho_text(char *buf, size_t len, double rho)
{
    if (isnan(rho))
        snprintf(buf, len, "ρ undefined");
    else
        snprintf(buf, len, "ρ = %s%.2f", lround(rho * 100) < 0 ? "−" : "", fabs(rho));
}

/* The sanity chart's line of each method (matplotlib's tab10 colours). */
static const viz_color SANITY_COLORS[VIZ_N_METHODS] = {
    {0x1f / 255.0, 0x77 / 255.0, 0xb4 / 255.0}, {0xff / 255.0, 0x7f / 255.0, 0x0e / 255.0},
    {0x2c / 255.0, 0xa0 / 255.0, 0x2c / 255.0}, {0xd6 / 255.0, 0x27 / 255.0, 0x28 / 255.0},
    {0x94 / 255.0, 0x67 / 255.0, 0xbd / 255.0}, {0x8c / 255.0, 0x56 / 255.0, 0x4b / 255.0},
    {0xe3 / 255.0, 0x77 / 255.0, 0xc2 / 255.0}, {0x7f / 255.0, 0x7f / 255.0, 0x7f / 255.0}};
static const int SANITY_DASHES[VIZ_N_METHODS] = {VIZ_SOLID,  VIZ_SOLID,  VIZ_DASHED, VIZ_DASHED,
                                                 VIZ_DOTTED, VIZ_DOTTED, VIZ_SOLID,  VIZ_DASHED};

/* The sanity figure's geometry, in points: a grid of maps above a chart. */
typedef struct {
    double tile, gap, cap_h, left; /* a map, the space between, its caption, the row labels */
    double head, row_h, grid_h, chart_h, width;
    int heading_lines; /* of the tallest column heading */
} sanity_layout;

static sanity_layout sanity_layout_of(const viz_run *r)
{
    const viz_sanity *sa = &r->sanity;
    sanity_layout g = {.tile = 84.0, .gap = 12.0, .cap_h = 18.0, .left = 150.0, .chart_h = 330.0};
    g.heading_lines = 1;
    for (int s = 0; s < sa->n_steps; s++) {
        char h[96];
        sanity_step_heading(r, s, h, sizeof h);
        int k = 1;
        for (const char *p = h; *p; p++)
            k += *p == '\n';
        g.heading_lines = k > g.heading_lines ? k : g.heading_lines;
    }
    g.head = 124.0 + (g.heading_lines - 1) * 15.0;
    g.row_h = g.tile + g.cap_h + g.gap;
    g.grid_h = 2 * sa->n_images * g.row_h + (sa->n_images - 1) * 8.0;
    g.width = fmax(g.left + (sa->n_steps + 1) * (g.tile + g.gap) + 20.0, 760.0);
    return g;
}

/* The column headings: the image, then the layer each step re-initialised down to. */
static void sanity_headings(viz_fig *f, const viz_run *r, const sanity_layout *g)
{
    int steps = r->sanity.n_steps;
    char lab[96];
    for (int s = 0; s <= steps; s++) {
        double cx = g->left + s * (g->tile + g->gap) + g->tile / 2;
        if (s == 0)
            snprintf(lab, sizeof lab, "image");
        else
            sanity_step_heading(r, s - 1, lab, sizeof lab);
        viz_text(f, cx, g->head - 8.0, lab, FONT_CAPTION, 0.5, 1.0, 0, s == 1 ? VIZ_BOLD : 0,
                 VIZ_TEXT);
    }
    if (steps > 1) /* over the columns of the re-initialised models, 2..steps */
        viz_text(f, g->left + (2 + steps) / 2.0 * (g->tile + g->gap) + g->tile / 2,
                 g->head - 8.0 - g->heading_lines * 15.0, "re-initialised down to layer",
                 FONT_CAPTION, 0.5, 1.0, 0, 0, VIZ_GREY);
}

/* Row m (0 saliency, 1 Grad-CAM) of image i: its map at every step with ρ under it. */
static void sanity_row(viz_fig *f, const viz_run *r, const sanity_layout *g, int i, int m, double y)
{
    const viz_sanity *sa = &r->sanity;
    int n = sa->n_images, method = m == 0 ? VIZ_SALIENCY : VIZ_GRADCAM;
    int mh = m == 0 ? S : r->cam_h, mw = m == 0 ? S : r->cam_w;
    char rl[96];
    snprintf(rl, sizeof rl, "test #%d\n%s of\n“%s”", r->images[i], m == 0 ? "saliency" : "Grad-CAM",
             class_name(r->img_pred[i]));
    viz_text(f, g->left - 12.0, y + g->tile / 2, rl, VIZ_FONT, 1.0, 0.5, 0, 0, VIZ_TEXT);
    if (m == 0) {
        viz_image_rgb(f, r->img_rgb[i], S, S, g->left, y, g->tile, g->tile);
        viz_frame(f, g->left, y, g->tile, g->tile, VIZ_GREY, 1.0);
    }
    for (int s = 0; s < sa->n_steps; s++) {
        double x = g->left + (s + 1) * (g->tile + g->gap);
        const float *map = sa->maps[method] + ((size_t)s * n + i) * sa->size[method];
        float lo, hi;
        min_max(map, (size_t)mh * mw, &lo, &hi);
        viz_image_map(f, map, mh, mw, 0.0, hi > 0 ? hi : 1.0, x, y, g->tile, g->tile, 1.0, 0);
        viz_frame(f, x, y, g->tile, g->tile, VIZ_GREY, 1.0);
        char rt[32];
        rho_text(rt, sizeof rt, sa->rho[method][s * n + i]);
        viz_text(f, x + g->tile / 2, y + g->tile + 3.0, rt, FONT_CAPTION, 0.5, 0.0, 0, 0, VIZ_TEXT);
    }
}

/* The lowest correlation the chart shows: of the means, and of saliency's and
 * Grad-CAM's per-image lines. */
static double sanity_lowest(const viz_sanity *sa)
{
    int n = sa->n_images;
    double lo = 0.0;
    for (int k = 0; k < VIZ_N_METHODS; k++)
        for (int s = 0; s < sa->n_steps; s++) {
            double mean = viz_nanmean(sa->rho[k] + s * n, n);
            lo = isnan(mean) ? lo : fmin(lo, mean);
            for (int i = 0; k <= VIZ_GRADCAM && i < n; i++)
                lo = isnan(sa->rho[k][s * n + i]) ? lo : fmin(lo, sa->rho[k][s * n + i]);
        }
    return lo;
}

/* The chart: every method's mean correlation per step, with thin lines per
 * image for the methods of the grid (a NaN is drawn as 0). */
static void sanity_chart(viz_fig *f, const viz_run *r, const sanity_layout *g)
{
    const viz_sanity *sa = &r->sanity;
    int steps = sa->n_steps, n = sa->n_images;
    const char **names = cfx_malloc((size_t)steps * sizeof *names);
    char(*labels)[64] = cfx_malloc((size_t)steps * sizeof *labels);
    for (int s = 0; s < steps; s++) {
        sanity_step_short(r, s, labels[s], sizeof labels[s]);
        names[s] = labels[s];
    }
    viz_axes ax = {0};
    ax.xcat = names, ax.n_xcat = steps;
    const char *ct = "Rank correlation with the trained model's map";
    double lo = sanity_lowest(sa);
    viz_legend_entry e[VIZ_N_METHODS];
    for (int k = 0; k < VIZ_N_METHODS; k++)
        e[k] = (viz_legend_entry){VIZ_METHOD_LABEL[k], SANITY_COLORS[k], SANITY_DASHES[k],
                                  VIZ_CIRCLE, NULL};
    double lw, lh; /* the legend right of the chart: eight lines would hide the curves */
    viz_legend_size(f, e, VIZ_N_METHODS, &lw, &lh);
    viz_axes_layout(&ax, f, 40.0, g->head + g->grid_h + 16.0, g->width - 80.0 - lw - 16.0,
                    g->chart_h - 6.0, -0.3, steps - 0.7, lo - 0.05 * (1.0 - lo),
                    1.0 + 0.05 * (1.0 - lo), 0, ct, "re-initialised down to layer", "Spearman ρ");
    viz_axes_draw(&ax, ct, "re-initialised down to layer", "Spearman ρ");
    viz_axes_hline(&ax, 0.0, VIZ_GREY, 1.0, VIZ_SOLID);
    double *xs = cfx_malloc((size_t)steps * sizeof *xs),
           *ys = cfx_malloc((size_t)steps * sizeof *ys);
    for (int k = 0; k < VIZ_N_METHODS; k++) {
        const double *rho = sa->rho[k];
        viz_color c = SANITY_COLORS[k];
        for (int i = 0; k <= VIZ_GRADCAM && i < n; i++) {
            for (int s = 0; s < steps; s++)
                xs[s] = s, ys[s] = isnan(rho[s * n + i]) ? 0.0 : rho[s * n + i];
            viz_color light = {0.6 + 0.4 * c.r, 0.6 + 0.4 * c.g, 0.6 + 0.4 * c.b};
            viz_axes_line(&ax, xs, ys, steps, light, 1.0, VIZ_SOLID, VIZ_NO_MARKER);
        }
        for (int s = 0; s < steps; s++) {
            double mean = viz_nanmean(rho + s * n, n);
            xs[s] = s, ys[s] = isnan(mean) ? 0.0 : mean;
        }
        viz_axes_line(&ax, xs, ys, steps, c, 2.5, SANITY_DASHES[k], VIZ_CIRCLE);
    }
    viz_legend_draw(f, e, VIZ_N_METHODS, ax.x + ax.w + 16.0, ax.y + 10.0);
    free(xs), free(ys), free(names), free(labels);
}

int viz_fig_sanity(viz_out *o, const viz_run *r, cfx_error *err)
{
    sanity_layout g = sanity_layout_of(r);
    viz_fig f;
    viz_fig_init(&f, g.width, g.head + g.grid_h + 16.0 + g.chart_h);
    const char *title = "Sanity check: cascading model randomisation";
    viz_title_block(&f, g.width / 2, 10.0, title,
                    "parameter layers re-initialised from the output down, one more per column;\n"
                    "ρ: Spearman rank correlation with the trained model's map",
                    0);
    sanity_headings(&f, r, &g);
    for (int i = 0; i < r->sanity.n_images; i++)
        for (int m = 0; m < 2; m++)
            sanity_row(&f, r, &g, i, m, g.head + (2 * i + m) * g.row_h + i * 8.0);
    sanity_chart(&f, r, &g);
    int rc = viz_out_save(o, &f, "plots/sanity_randomization", VIZ_SEC_SANITY, title,
                          "Model randomisation test (Adebayo et al., 2018): parameter layers are "
                          "re-initialised from the output layer down, cumulatively. A method "
                          "that explains the model must change when its weights do: the rank "
                          "correlation with the trained model's map should fall. Undefined "
                          "correlations (a constant map) count as 0 in the chart.",
                          err);
    viz_fig_free(&f);
    return rc;
}
