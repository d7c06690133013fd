/* explorer.html and the data files it loads (see explorer.h). The page
 * itself is tools/viz/explorer.html, built into cfx-viz as a string. */
#include "explorer.h" /* defines: viz_write_explorer, VIZ_EXPLORER_* */

#include <cairo.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "attribution.h" /* defines: viz_explain_all, VIZ_METHOD_KEY */
#include "cfx/layers.h"  /* defines: cfx_layer_kind */
#include "figures.h"     /* defines: viz_test_rgb */
#include "plot.h"        /* defines: viz_viridis, viz_write_file */
#include "store.h"       /* defines: viz_put_base64, viz_json_string */

extern const unsigned char viz_explorer_page[]; /* explorer.html, generated at build time */
extern const size_t viz_explorer_page_len;

#define K CFX_NUM_CLASSES
#define S CFX_IMAGE_SIZE
#define DETAIL_BATCH 16

static int cmp_int(const void *a, const void *b)
{
    return (*(const int *)a > *(const int *)b) - (*(const int *)a < *(const int *)b);
}

int viz_explorer_choose(viz_run *const runs[], int n_runs, int n_details, int *idx)
{
    const viz_run *r0 = runs[0];
    int n_test = r0->n_test, n = 0, groups = K << n_runs;
    char *taken = cfx_calloc((size_t)n_test, 1);
    for (int s = 0; s < n_runs; s++)
        for (int i = 0; i < runs[s]->n_images; i++)
            if (!taken[runs[s]->images[i]])
                taken[runs[s]->images[i]] = 1, idx[n++] = runs[s]->images[i];
    /* next[g]: where group g's search goes on */
    int *next = cfx_calloc((size_t)groups, sizeof(int));
    for (int found = 1; found && n < n_details;) {
        found = 0;
        for (int g = 0; g < groups && n < n_details; g++) {
            int i = next[g];
            for (; i < n_test; i++) {
                int pattern = 0;
                for (int s = 0; s < n_runs; s++)
                    pattern |= (runs[s]->preds[i] == r0->labels[i]) << s;
                if (!taken[i] && r0->labels[i] * (1 << n_runs) + pattern == g)
                    break;
            }
            next[g] = i + 1;
            if (i < n_test)
                taken[i] = 1, idx[n++] = i, found = 1;
        }
    }
    free(next);
    free(taken);
    qsort(idx, (size_t)n, sizeof(int), cmp_int);
    return n;
}

/* ---- plumbing: JSON numbers and arrays -------------------------------- */

static void put_ints(FILE *fp, const char *name, const int *v, size_t n)
{
    fprintf(fp, "\"%s\":[", name);
    for (size_t i = 0; i < n; i++)
        fprintf(fp, "%s%d", i ? "," : "", v[i]);
    fputs("],", fp);
}

/* Floats with `digits` decimals, trailing zeros dropped (JSON has no NaN: null). */
static void put_floats(FILE *fp, const char *name, const float *v, size_t n, int digits)
{
    fprintf(fp, "\"%s\":[", name);
    for (size_t i = 0; i < n; i++) {
        char t[32];
        if (!isfinite(v[i])) {
            snprintf(t, sizeof t, "null");
        } else {
            snprintf(t, sizeof t, "%.*f", digits, v[i]);
            char *e = t + strlen(t) - 1;
            while (e > t && *e == '0')
                *e-- = '\0';
            if (*e == '.')
                *e = '\0';
            if (!strcmp(t, "-0"))
                snprintf(t, sizeof t, "0");
        }
        fprintf(fp, "%s%s", i ? "," : "", t);
    }
    fputs("],", fp);
}

/* v[0..n) as bytes 0..255 from its minimum to its maximum, base64: "q";
 * the range as "lo" and "hi". */
static void put_quantised(FILE *fp, const float *v, size_t n, unsigned char *buf)
{
    float lo = INFINITY, hi = -INFINITY;
    for (size_t i = 0; i < n; i++)
        lo = v[i] < lo ? v[i] : lo, hi = v[i] > hi ? v[i] : hi;
    float scale = hi > lo ? 255.0f / (hi - lo) : 0.0f;
    for (size_t i = 0; i < n; i++)
        buf[i] = (unsigned char)lrintf((v[i] - lo) * scale);
    fprintf(fp, "{\"lo\":%.6g,\"hi\":%.6g,\"q\":\"", lo, hi);
    viz_put_base64(fp, buf, n);
    fputs("\"}", fp);
}

/* ---- the test images, 500 per PNG sprite sheet -------------------------- */

static int write_sheets(const viz_run *r, const char *dir, int *n_sheets, cfx_error *err)
{
    const int per = VIZ_EXPLORER_PER_SHEET, cols = VIZ_EXPLORER_SHEET_COLS;
    *n_sheets = (r->n_test + per - 1) / per;
    for (int s = 0; s < *n_sheets; s++) {
        cairo_surface_t *sf =
            cairo_image_surface_create(CAIRO_FORMAT_RGB24, cols * S, per / cols * S);
        unsigned char *px = cairo_image_surface_get_data(sf);
        int stride = cairo_image_surface_get_stride(sf);
        cairo_surface_flush(sf);
        for (int j = 0; j < per && s * per + j < r->n_test; j++) {
            uint8_t rgb[CFX_IMAGE_PIXELS];
            viz_test_rgb(r, s * per + j, rgb);
            for (int y = 0; y < S; y++)
                for (int x = 0; x < S; x++) {
                    const uint8_t *p = rgb + (y * S + x) * 3;
                    uint32_t *q = (uint32_t *)(px + (size_t)((j / cols) * S + y) * stride) +
                                  (j % cols) * S + x;
                    *q = (uint32_t)p[0] << 16 | (uint32_t)p[1] << 8 | p[2];
                }
        }
        cairo_surface_mark_dirty(sf);
        char path[CFX_PATH_LEN + 64];
        snprintf(path, sizeof path, "%s/thumbs_%02d.png", dir, s);
        cairo_status_t st = cairo_surface_write_to_png(sf, path);
        cairo_surface_destroy(sf);
        if (st != CAIRO_STATUS_SUCCESS)
            return cfx_fail(err, "%s: cannot write: %s", path, cairo_status_to_string(st));
    }
    return 0;
}

/* ---- explorer/index.js ------------------------------------------------- */

/* The layers whose channels have top images (--layers): shape, receptive
 * field, each channel's VIZ_TOP images and the position of its maximum. */
static void put_layers(FILE *fp, const viz_run *r)
{
    fputs("\"layers\":[", fp);
    for (int k = 0; k < r->channels.n_layers; k++) {
        const viz_channel_top *t = &r->channels.top[k];
        const cfx_layer *L = &r->model.layers[t->layer];
        fprintf(fp, "%s{\"index\":%d,\"key\":", k ? "," : "", t->layer);
        viz_json_string(fp, L->key);
        fprintf(fp, ",\"type\":\"%s\",\"C\":%d,\"H\":%d,\"W\":%d,\"field\":[%d,%d,%d],",
                L->kind->torch_name, t->C, t->H, t->W, t->field.size, t->field.jump,
                t->field.offset);
        put_ints(fp, "top", t->image, (size_t)t->C * VIZ_TOP);
        put_ints(fp, "pos", t->pos, (size_t)t->C * VIZ_TOP);
        put_floats(fp, "value", t->value, (size_t)t->C * VIZ_TOP, 4);
        fputs("\"end\":0}", fp);
    }
    fputs("],", fp);
}

static void put_run(FILE *fp, const viz_run *r, int slot)
{
    const char *base = strrchr(r->run_dir, '/');
    fprintf(fp, "{\"slot\":\"%c\",\"name\":", 'a' + slot);
    viz_json_string(fp, base ? base + 1 : r->run_dir);
    fputs(",\"dir\":", fp);
    viz_json_string(fp, r->run_dir);
    fprintf(fp,
            ",\"test_accuracy\":%.6f,\"test_loss\":%.6f,\"best_epoch\":%d,"
            "\"val_accuracy\":%.6f,\"params\":%zu,\"n_layers\":%d,\"cam_layer\":",
            r->test_accuracy, r->test_loss, r->state.best_epoch, r->state.best_validation_accuracy,
            r->model.n_params, r->model.n_layers);
    viz_json_string(fp, r->model.layers[r->cam_layer].key);
    fputs(",", fp);
    put_ints(fp, "preds", r->preds, (size_t)r->n_test);
    put_floats(fp, "probs", r->probs, (size_t)r->n_test * K, 5);
    put_layers(fp, r);
    put_floats(fp, "pca", r->embedding, (size_t)r->n_test * 2, 4);
    fprintf(fp, "\"explained\":[%.4f,%.4f]}", r->explained[0], r->explained[1]);
}

static int write_index(viz_run *const runs[], int n_runs, const int *idx, int n_idx, int n_sheets,
                       const char *path, cfx_error *err)
{
    FILE *fp = fopen(path, "w");
    if (!fp)
        return cfx_fail(err, "%s: cannot write", path);
    fputs("CFX_INDEX({\"classes\":[", fp);
    for (int c = 0; c < K; c++)
        fprintf(fp, "%s\"%s\"", c ? "," : "", CFX_CIFAR10_CLASSES[c]);
    fprintf(fp, "],\"n\":%d,", runs[0]->n_test);
    put_ints(fp, "labels", runs[0]->labels, (size_t)runs[0]->n_test);
    put_ints(fp, "details", idx, (size_t)n_idx);
    fprintf(fp, "\"sheet\":{\"per\":%d,\"cols\":%d,\"size\":%d,\"count\":%d},",
            VIZ_EXPLORER_PER_SHEET, VIZ_EXPLORER_SHEET_COLS, S, n_sheets);
    int lut[256 * 3];
    for (int i = 0; i < 256; i++) {
        viz_color c = viz_viridis(i / 255.0);
        lut[i * 3] = (int)lrint(c.r * 255), lut[i * 3 + 1] = (int)lrint(c.g * 255);
        lut[i * 3 + 2] = (int)lrint(c.b * 255);
    }
    put_ints(fp, "viridis", lut, 256 * 3);
    fputs("\"methods\":[", fp);
    for (int k = 0; k < VIZ_N_METHODS; k++)
        fprintf(fp, "%s{\"key\":\"%s\",\"label\":\"%s\"}", k ? "," : "", VIZ_METHOD_KEY[k],
                VIZ_METHOD_LABEL[k]);
    fputs("],\"runs\":[", fp);
    for (int s = 0; s < n_runs; s++) {
        if (s)
            fputc(',', fp);
        put_run(fp, runs[s], s);
    }
    fputs("]});\n", fp);
    int bad = ferror(fp);
    if (fclose(fp) != 0 || bad)
        return cfx_fail(err, "%s: write failed", path);
    return 0;
}

/* ---- explorer/<slot>/<index>.js: one detail image ---------------------- */

typedef struct {
    cfx_model m;
    float *x;                   /* the batch's inputs [3][n][32*32] */
    float *maps[VIZ_N_METHODS]; /* [n][viz_method_size] */
    unsigned char *q;           /* quantisation buffer */
    const viz_run *r;
} detail_batch;

/* The image's VIZ_EXPLORER_CHANNELS most active channels of layer k, each
 * quantised over its own range. */
static void put_feature_maps(FILE *fp, detail_batch *d, int k, int i, int n)
{
    const viz_channel_top *t = &d->r->channels.top[k];
    size_t hw = (size_t)t->H * t->W;
    const float *out = d->m.acts[t->layer + 1];
    int ch[VIZ_EXPLORER_CHANNELS], shown = 0;
    float mean[VIZ_EXPLORER_CHANNELS];
    for (int c = 0; c < t->C; c++) { /* insertion into the top list, strongest first */
        const float *p = out + ((size_t)c * n + i) * hw;
        double s = 0.0;
        for (size_t j = 0; j < hw; j++)
            s += p[j];
        float v = (float)(s / (double)hw);
        int at = shown < VIZ_EXPLORER_CHANNELS ? shown++ : VIZ_EXPLORER_CHANNELS;
        for (; at > 0 && mean[at - 1] < v; at--)
            if (at < VIZ_EXPLORER_CHANNELS)
                ch[at] = ch[at - 1], mean[at] = mean[at - 1];
        if (at < VIZ_EXPLORER_CHANNELS)
            ch[at] = c, mean[at] = v;
    }
    fputs("{", fp);
    put_ints(fp, "ch", ch, (size_t)shown);
    put_floats(fp, "mean", mean, (size_t)shown, 5);
    fputs("\"maps\":[", fp);
    for (int c = 0; c < shown; c++) {
        fputs(c ? "," : "", fp);
        put_quantised(fp, out + ((size_t)ch[c] * n + i) * hw, hw, d->q);
    }
    fputs("]}", fp);
}

static int write_detail(detail_batch *d, const char *dir, int slot, int index, int i, int n,
                        cfx_error *err)
{
    char path[CFX_PATH_LEN + 64];
    snprintf(path, sizeof path, "%s/%05d.js", dir, index);
    FILE *fp = fopen(path, "w");
    if (!fp)
        return cfx_fail(err, "%s: cannot write", path);
    fprintf(fp, "CFX_DETAIL(\"%c\",%d,{\"maps\":[", 'a' + slot, index);
    for (int k = 0; k < VIZ_N_METHODS; k++) {
        int size = viz_method_size(&d->m, d->r->cam_layer, k);
        const cfx_layer *C = &d->m.layers[d->r->cam_layer];
        int h = k == VIZ_GRADCAM ? C->out_h : S, w = size / h; /* Grad-CAM: the layer's map */
        fprintf(fp, "%s{\"h\":%d,\"w\":%d,\"v\":", k ? "," : "", h, w);
        put_quantised(fp, d->maps[k] + (size_t)i * size, (size_t)size, d->q);
        fputs("}", fp);
    }
    fputs("],\"layers\":[", fp);
    for (int k = 0; k < d->r->channels.n_layers; k++) {
        fputs(k ? "," : "", fp);
        put_feature_maps(fp, d, k, i, n);
    }
    fputs("]});\n", fp);
    int bad = ferror(fp);
    if (fclose(fp) != 0 || bad)
        return cfx_fail(err, "%s: write failed", path);
    return 0;
}

/* Every detail image of run r, DETAIL_BATCH at a time: a forward pass for
 * the feature maps, then every attribution method of its predicted class. */
static int write_details(const viz_run *r, int slot, const int *idx, int n_idx, const char *dir,
                         cfx_error *err)
{
    detail_batch d = {.r = r};
    int B = n_idx < DETAIL_BATCH ? n_idx : DETAIL_BATCH;
    if (cfx_model_create(
            &d.m, r->specs, r->n_specs, CFX_IMAGE_CHANNELS, S, S, VIZ_SAMPLES_PER_PASS * B,
            CFX_MODEL_INPUT_GRAD | CFX_MODEL_KEEP_ACTIVATIONS | CFX_MODEL_NO_PARAM_GRAD, err) != 0)
        return -1;
    memcpy(d.m.state, r->model.state, r->model.state_bytes);
    cfx_model_set_training(&d.m, 0);
    size_t biggest = (size_t)S * S * CFX_IMAGE_CHANNELS;
    for (int k = 0; k < r->channels.n_layers; k++) {
        size_t hw = (size_t)r->channels.top[k].H * r->channels.top[k].W;
        biggest = hw > biggest ? hw : biggest;
    }
    d.q = cfx_malloc(biggest);
    d.x = cfx_malloc((size_t)CFX_IMAGE_CHANNELS * B * S * S * sizeof(float));
    for (int k = 0; k < VIZ_N_METHODS; k++)
        d.maps[k] = cfx_malloc((size_t)B * viz_method_size(&d.m, r->cam_layer, k) * sizeof(float));
    int rc = 0;
    for (int b0 = 0; b0 < n_idx && rc == 0; b0 += B) {
        int n = n_idx - b0 < B ? n_idx - b0 : B, labels[DETAIL_BATCH], preds[DETAIL_BATCH];
        cfx_batch_fill(d.x, labels, &r->test, idx + b0, n, NULL);
        for (int i = 0; i < n; i++)
            preds[i] = r->preds[idx[b0 + i]];
        viz_explain_all(&d.m, n, preds, d.x, r->cam_layer, &r->attr, d.maps);
        memcpy(d.m.acts[0], d.x, (size_t)CFX_IMAGE_CHANNELS * n * S * S * sizeof(float));
        cfx_model_forward(&d.m, n); /* the feature maps of the images themselves */
        for (int i = 0; i < n && rc == 0; i++)
            rc = write_detail(&d, dir, slot, idx[b0 + i], i, n, err);
    }
    for (int k = 0; k < VIZ_N_METHODS; k++)
        free(d.maps[k]);
    free(d.x);
    free(d.q);
    cfx_model_free(&d.m);
    return rc;
}

int viz_write_explorer(viz_run *const runs[], int n_runs, const char *out_dir, int n_details,
                       cfx_error *err)
{
    char dir[CFX_PATH_LEN + 32], sub[CFX_PATH_LEN + 40], path[CFX_PATH_LEN + 48];
    snprintf(dir, sizeof dir, "%s/explorer", out_dir);
    int *idx = cfx_malloc((size_t)(n_details + 2 * VIZ_MAX_IMAGES) * sizeof(int));
    int n_idx = viz_explorer_choose(runs, n_runs, n_details, idx), n_sheets = 0, rc = 0;
    rc = cfx_mkdir_p(dir, err) != 0 || write_sheets(runs[0], dir, &n_sheets, err) != 0;
    for (int s = 0; s < n_runs && rc == 0; s++) {
        snprintf(sub, sizeof sub, "%s/%c", dir, 'a' + s);
        rc = cfx_mkdir_p(sub, err) != 0 || write_details(runs[s], s, idx, n_idx, sub, err) != 0;
    }
    snprintf(path, sizeof path, "%s/index.js", dir);
    if (rc == 0)
        rc = write_index(runs, n_runs, idx, n_idx, n_sheets, path, err);
    snprintf(path, sizeof path, "%s/explorer.html", out_dir);
    if (rc == 0)
        rc = cfx_write_file_atomic(path, viz_explorer_page, viz_explorer_page_len, err);
    free(idx);
    return rc ? -1 : 0;
}
