/* cfx-viz's figures of what the network learned (featvis.h): the top test
 * images of every channel of chosen layers, activation maximisation of the
 * class logits and the PCA map of the penultimate features. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "figures.h" /* defines: viz_out, viz_title_block, viz_fig_channels, ... */

#define S CFX_IMAGE_SIZE

/* matplotlib's tab10, one colour per class */
static const viz_color CLASS_COLORS[CFX_NUM_CLASSES] = {
    {0x1f / 255.0, 0x77 / 255.0, 0xb4 / 255.0}, {0xff / 255.0, 0x7f / 255.0, 0x0e / 255.0},
    {0x2c / 255.0, 0xa0 / 255.0, 0x2c / 255.0}, {0xd6 / 255.0, 0x27 / 255.0, 0x28 / 255.0},
    {0x94 / 255.0, 0x67 / 255.0, 0xbd / 255.0}, {0x8c / 255.0, 0x56 / 255.0, 0x4b / 255.0},
    {0xe3 / 255.0, 0x77 / 255.0, 0xc2 / 255.0}, {0x7f / 255.0, 0x7f / 255.0, 0x7f / 255.0},
    {0xbc / 255.0, 0xbd / 255.0, 0x22 / 255.0}, {0x17 / 255.0, 0xbe / 255.0, 0xcf / 255.0}};

/* The receptive field of position pos, clipped to the image, in thumbnail units. */
static void field_box(const viz_channel_top *t, int pos, double scale, double *x, double *y,
                      double *w, double *h)
{
    int py = pos / t->W, px = pos % t->W;
    int y0 = py * t->field.jump + t->field.offset, x0 = px * t->field.jump + t->field.offset;
    int y1 = y0 + t->field.size, x1 = x0 + t->field.size;
    y0 = y0 < 0 ? 0 : y0, x0 = x0 < 0 ? 0 : x0;
    y1 = y1 > S ? S : y1, x1 = x1 > S ? S : x1;
    *x = x0 * scale, *y = y0 * scale, *w = (x1 - x0) * scale, *h = (y1 - y0) * scale;
}

static int channel_grid(viz_out *o, const viz_run *r, const viz_channel_top *t, cfx_error *err)
{
    const double thumb = 36.0, pad = 2.0, cell = 3 * thumb + 2 * pad, gap = 14.0, lab_h = 16.0;
    const double head = 84.0, margin = 16.0;
    int cols = (int)ceil(sqrt((double)t->C));
    cols = cols < 4 ? (t->C < 4 ? t->C : 4) : cols;
    int rows = (t->C + cols - 1) / cols;
    double width = fmax(2 * margin + cols * (cell + gap) - gap, 640.0);
    viz_fig f;
    viz_fig_init(&f, width, head + rows * (cell + lab_h + gap) + margin);
    const cfx_layer *L = &r->model.layers[t->layer];
    char title[200], sub[300];
    char idx[16];
    snprintf(idx, sizeof idx, "%d", t->layer);
    snprintf(title, sizeof title, "What each channel of layer %d%s%s (%s) responds to", t->layer,
             strcmp(L->key, idx) ? " " : "", strcmp(L->key, idx) ? L->key : "", L->kind->torch_name);
    snprintf(sub, sizeof sub,
             "the %d test images with the highest %s activation per channel, strongest first;\n"
             "red: the receptive field (%d × %d px) of the strongest position",
             VIZ_TOP, r->channel_max ? "maximum" : "mean", t->field.size, t->field.size);
    viz_title_block(&f, width / 2, 10.0, title, sub, 0);
    double x0 = (width - (cols * (cell + gap) - gap)) / 2;
    const viz_color box = {0.9, 0.1, 0.1};
    for (int c = 0; c < t->C; c++) {
        double cx = x0 + (c % cols) * (cell + gap), cy = head + (c / cols) * (cell + lab_h + gap);
        char lab[32];
        snprintf(lab, sizeof lab, "channel %d", c);
        viz_text(&f, cx + cell / 2, cy, lab, 11.0, 0.5, 0.0, 0, 0, VIZ_TEXT);
        for (int k = 0; k < VIZ_TOP; k++) {
            int img = t->image[(size_t)c * VIZ_TOP + k];
            if (img < 0)
                continue;
            double tx = cx + (k % 3) * (thumb + pad), ty = cy + lab_h + (k / 3) * (thumb + pad);
            uint8_t rgb[CFX_IMAGE_PIXELS];
            viz_test_rgb(r, img, rgb);
            viz_image_rgb(&f, rgb, S, S, tx, ty, thumb, thumb);
            double bx, by, bw, bh;
            field_box(t, t->pos[(size_t)c * VIZ_TOP + k], thumb / S, &bx, &by, &bw, &bh);
            if (bw < thumb || bh < thumb)
                viz_frame(&f, tx + bx, ty + by, bw, bh, box, 1.2);
        }
    }
    char name[CFX_NAME_LEN + 32], cap[400];
    snprintf(name, sizeof name, "plots/channels_%s", L->key);
    snprintf(cap, sizeof cap,
             "Top images per channel (Zeiler & Fergus 2014) of layer %d, %s: for each of its %d "
             "channels the %d test images whose %s activation is highest, ranked over all %d test "
             "images; the red box is the receptive field of the position where the channel fired "
             "most.",
             t->layer, L->key, t->C, VIZ_TOP, r->channel_max ? "maximum" : "mean", r->n_test);
    int rc = viz_out_save(o, &f, name, VIZ_SEC_CHANNELS, title, cap, err);
    viz_fig_free(&f);
    return rc;
}

int viz_fig_channels(viz_out *o, const viz_run *r, cfx_error *err)
{
    for (int k = 0; k < r->channels.n_layers; k++)
        if (channel_grid(o, r, &r->channels.top[k], err) != 0)
            return -1;
    return 0;
}

int viz_fig_activation_maximization(viz_out *o, const viz_run *r, cfx_error *err)
{
    const double tile = 128.0, gap = 18.0, lab_h = 22.0, head = 66.0, margin = 20.0;
    const int cols = 5, rows = 2;
    double width = 2 * margin + cols * (tile + gap) - gap;
    viz_fig f;
    viz_fig_init(&f, width, head + rows * (tile + lab_h + gap) + margin);
    const char *title = "Activation maximisation: an input for each class";
    char sub[200];
    snprintf(sub, sizeof sub,
             "%d steps of gradient ascent on the class logit with jitter and blur, from noise",
             r->actmax_steps);
    viz_title_block(&f, width / 2, 10.0, title, sub, 0);
    for (int k = 0; k < CFX_NUM_CLASSES; k++) {
        double x = margin + (k % cols) * (tile + gap), y = head + (k / cols) * (tile + lab_h + gap);
        uint8_t rgb[CFX_IMAGE_PIXELS];
        viz_denormalize(r->actmax, CFX_NUM_CLASSES, k, rgb);
        viz_image_rgb(&f, rgb, S, S, x, y, tile, tile);
        viz_frame(&f, x, y, tile, tile, VIZ_GREY, 1.0);
        viz_text(&f, x + tile / 2, y + tile + 4.0, CFX_CIFAR10_CLASSES[k], VIZ_FONT, 0.5, 0.0, 0,
                 0, VIZ_TEXT);
    }
    int rc = viz_out_save(
        o, &f, "plots/activation_maximization", VIZ_SEC_CHANNELS, title,
        "Activation maximisation (Olah et al. 2017, Feature Visualization): each image starts as "
        "faint noise and climbs the gradient of one class logit, shifted by up to 2 pixels at "
        "every step (jitter) and blurred every 4 steps, within the valid pixel range; the seed "
        "of the run fixes the result.",
        err);
    viz_fig_free(&f);
    return rc;
}

int viz_fig_embedding(viz_out *o, const viz_run *r, cfx_error *err)
{
    const int n = r->n_test;
    float lo[2] = {INFINITY, INFINITY}, hi[2] = {-INFINITY, -INFINITY};
    for (int i = 0; i < n; i++)
        for (int k = 0; k < 2; k++) {
            float v = r->embedding[2 * i + k];
            lo[k] = v < lo[k] ? v : lo[k], hi[k] = v > hi[k] ? v : hi[k];
        }
    viz_fig f;
    viz_fig_init(&f, 900, 640);
    const cfx_layer *F = &r->model.layers[r->channels.feature_layer];
    char title[160], xl[64], yl[64];
    snprintf(title, sizeof title, "Penultimate features of the %d test images (PCA)", n);
    snprintf(xl, sizeof xl, "PC 1 (%.1f %% of the variance)", 100 * r->explained[0]);
    snprintf(yl, sizeof yl, "PC 2 (%.1f %% of the variance)", 100 * r->explained[1]);
    viz_legend_entry e[CFX_NUM_CLASSES + 1];
    for (int k = 0; k < CFX_NUM_CLASSES; k++)
        e[k] = (viz_legend_entry){CFX_CIFAR10_CLASSES[k], CLASS_COLORS[k], -1, 0, NULL};
    e[CFX_NUM_CLASSES] = (viz_legend_entry){"misclassified (ring)", VIZ_BLACK, VIZ_SOLID, 0, NULL};
    double lw, lh;
    viz_legend_size(&f, e, CFX_NUM_CLASSES + 1, &lw, &lh);
    double mx = 0.03 * (hi[0] - lo[0]) + 1e-9, my = 0.03 * (hi[1] - lo[1]) + 1e-9;
    viz_axes ax = {0};
    viz_axes_layout(&ax, &f, 10, 10, 900 - 30 - lw, 620, lo[0] - mx, hi[0] + mx, lo[1] - my,
                    hi[1] + my, 0, title, xl, yl);
    viz_axes_draw(&ax, title, xl, yl);
    float *xy = cfx_malloc((size_t)n * 2 * sizeof(float));
    for (int wrong = 0; wrong < 2; wrong++)
        for (int k = 0; k < CFX_NUM_CLASSES; k++) {
            int m = 0;
            for (int i = 0; i < n; i++)
                if (r->labels[i] == k && (r->preds[i] != r->labels[i]) == wrong) {
                    xy[2 * m] = r->embedding[2 * i], xy[2 * m + 1] = r->embedding[2 * i + 1];
                    m++;
                }
            viz_axes_dots(&ax, xy, m, wrong ? 2.0 : 1.8, CLASS_COLORS[k], wrong ? 0.8 : 0.5, 0);
            if (wrong) {
                const viz_color ring = {0.1, 0.1, 0.1};
                viz_axes_dots(&ax, xy, m, 2.8, ring, 0.35, 1);
            }
        }
    free(xy);
    viz_legend_draw(&f, e, CFX_NUM_CLASSES + 1, ax.x + ax.w + 14.0, ax.y + 6.0);
    char cap[400];
    snprintf(cap, sizeof cap,
             "The %d features that enter the head (layer %d, %s) of every test image projected on "
             "their first two principal components (LAPACK dsyevr), coloured by the true class; "
             "misclassified images carry a dark ring. t-SNE and UMAP have no maintained C library "
             "in Debian, so PCA it is.",
             r->channels.F, r->channels.feature_layer, F->key);
    int rc = viz_out_save(o, &f, "plots/embedding", VIZ_SEC_CHANNELS, title, cap, err);
    viz_fig_free(&f);
    return rc;
}
