/* cfx-viz's session: load a run directory, evaluate, compute the analyses. */
#include "run.h" /* defines: viz_run, viz_run_load, viz_run_compute */

#include <ctype.h>
#include <errno.h>
#include <hdf5.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cfx/config.h" /* defines: cfx_parse_layers */
#include "cfx/train.h"  /* defines: cfx_evaluate */

const char *viz_run_meta(const viz_run *r, const char *name)
{
    for (int i = 0; i < r->n_meta; i++)
        if (!strcmp(r->meta[i].name, name))
            return r->meta[i].value;
    return "";
}

/* ---- files ------------------------------------------------------------ */

static int is_dir(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

static int need_file(const char *path, const char *what, cfx_error *err)
{
    struct stat st;
    if (stat(path, &st) != 0)
        return cfx_fail(err, "%s: %s (%s)", path, strerror(errno), what);
    if (!S_ISREG(st.st_mode))
        return cfx_fail(err, "%s: not a regular file (%s)", path, what);
    return 0;
}

/* One root attribute as text, for the report's metadata table. */
static herr_t meta_cb(hid_t loc, const char *name, const H5A_info_t *info, void *data)
{
    (void)info;
    viz_run *r = data;
    if (r->n_meta >= VIZ_MAX_META)
        return 0;
    hid_t a = H5Aopen(loc, name, H5P_DEFAULT);
    if (a < 0)
        return 0;
    hid_t t = H5Aget_type(a), sp = H5Aget_space(a);
    char *val = NULL, num[64];
    if (H5Sget_simple_extent_type(sp) == H5S_SCALAR) {
        H5T_class_t cls = H5Tget_class(t);
        if (cls == H5T_STRING && H5Tis_variable_str(t) > 0) {
            hid_t mt = H5Tcopy(H5T_C_S1);
            H5Tset_size(mt, H5T_VARIABLE);
            char *s = NULL;
            if (H5Aread(a, mt, &s) >= 0 && s) {
                val = strdup(s);
                H5free_memory(s);
            }
            H5Tclose(mt);
        } else if (cls == H5T_STRING) {
            size_t n = H5Tget_size(t);
            hid_t mt = H5Tcopy(H5T_C_S1);
            H5Tset_size(mt, n + 1);
            val = calloc(n + 2, 1);
            if (H5Aread(a, mt, val) < 0)
                val[0] = '\0';
            H5Tclose(mt);
        } else if (cls == H5T_INTEGER) {
            long long v = 0;
            if (H5Aread(a, H5T_NATIVE_LLONG, &v) >= 0) {
                snprintf(num, sizeof num, "%lld", v);
                val = strdup(num);
            }
        } else if (cls == H5T_FLOAT) {
            double v = 0;
            if (H5Aread(a, H5T_NATIVE_DOUBLE, &v) >= 0) {
                snprintf(num, sizeof num, "%.6g", v);
                val = strdup(num);
            }
        }
    }
    if (val) {
        snprintf(r->meta[r->n_meta].name, sizeof r->meta[r->n_meta].name, "%s", name);
        r->meta[r->n_meta++].value = val;
    }
    H5Sclose(sp);
    H5Tclose(t);
    H5Aclose(a);
    return 0;
}

static int read_meta(viz_run *r, cfx_error *err)
{
    hid_t f = H5Fopen(r->ckpt_path, H5F_ACC_RDONLY, H5P_DEFAULT);
    if (f < 0)
        return cfx_fail(err, "%s: cannot open as HDF5", r->ckpt_path);
    hsize_t idx = 0;
    H5Aiterate2(f, H5_INDEX_NAME, H5_ITER_INC, &idx, meta_cb, r);
    H5Fclose(f);
    return 0;
}

/* Root attributes test_loss and test_accuracy of the metrics log, if set. */
static void read_log_test(viz_run *r)
{
    hid_t f = H5Fopen(r->metrics_path, H5F_ACC_RDONLY, H5P_DEFAULT);
    if (f < 0)
        return;
    if (H5Aexists(f, "test_accuracy") > 0 && H5Aexists(f, "test_loss") > 0) {
        hid_t a = H5Aopen(f, "test_accuracy", H5P_DEFAULT),
              b = H5Aopen(f, "test_loss", H5P_DEFAULT);
        r->has_log_test = H5Aread(a, H5T_NATIVE_DOUBLE, &r->log_test_accuracy) >= 0 &&
                          H5Aread(b, H5T_NATIVE_DOUBLE, &r->log_test_loss) >= 0;
        H5Aclose(a);
        H5Aclose(b);
    }
    H5Fclose(f);
}

/* Value of key in [section] of INI text into out; 0 if found. */
static int ini_get(const char *text, const char *section, const char *key, char *out, size_t len)
{
    char sec[64] = "";
    const char *p = text;
    while (p && *p) {
        const char *e = strchr(p, '\n');
        size_t n = e ? (size_t)(e - p) : strlen(p);
        char line[CFX_PATH_LEN + 64];
        if (n >= sizeof line)
            n = sizeof line - 1;
        memcpy(line, p, n);
        line[n] = '\0';
        p = e ? e + 1 : NULL;
        char *s = line;
        while (isspace((unsigned char)*s))
            s++;
        if (*s == '[') {
            char *close = strchr(s, ']');
            if (close) {
                *close = '\0';
                snprintf(sec, sizeof sec, "%s", s + 1);
            }
            continue;
        }
        char *eq = strchr(s, '=');
        if (!eq || strcmp(sec, section) != 0 || s != line)
            continue; /* continuation lines are indented */
        char *k = s, *ke = eq;
        while (ke > k && isspace((unsigned char)ke[-1]))
            ke--;
        if ((size_t)(ke - k) != strlen(key) || strncmp(k, key, strlen(key)) != 0)
            continue;
        char *v = eq + 1;
        while (isspace((unsigned char)*v))
            v++;
        char *ve = v + strlen(v);
        while (ve > v && isspace((unsigned char)ve[-1]))
            ve--;
        *ve = '\0';
        snprintf(out, len, "%s", v);
        return 0;
    }
    return -1;
}

/* The test set's directory: --data, else data.dir of the checkpoint's
 * config, taken relative to the directory training ran in (the current
 * one, or the one that output.dir was relative to). */
static int resolve_data_dir(viz_run *r, const char *given, cfx_error *err)
{
    if (given) {
        snprintf(r->data_dir, sizeof r->data_dir, "%s", given);
        return 0;
    }
    char dir[CFX_PATH_LEN], out[CFX_PATH_LEN];
    if (ini_get(r->config_text, "data", "dir", dir, sizeof dir) != 0 || !dir[0])
        return cfx_fail(err, "%s: the config attribute has no data.dir; pass --data DIR",
                        r->ckpt_path);
    snprintf(r->data_dir, sizeof r->data_dir, "%s", dir);
    if (dir[0] == '/' || is_dir(dir))
        return 0;
    if (ini_get(r->config_text, "output", "dir", out, sizeof out) == 0 && out[0] != '/') {
        size_t lr = strlen(r->run_dir), lo = strlen(out);
        while (lo > 0 && out[lo - 1] == '/')
            out[--lo] = '\0';
        if (lo > 0 && lr > lo && !strcmp(r->run_dir + lr - lo, out) &&
            r->run_dir[lr - lo - 1] == '/') {
            char cand[2 * CFX_PATH_LEN];
            snprintf(cand, sizeof cand, "%.*s%s", (int)(lr - lo), r->run_dir, dir);
            size_t lc = strlen(cand);
            if (is_dir(cand) && lc < sizeof r->data_dir)
                memcpy(r->data_dir, cand, lc + 1);
        }
    }
    return 0;
}

/* best.h5 must be the best epoch of the logged run: its epoch appears in
 * metrics.h5 with the same validation accuracy. */
static int check_pair(const viz_run *r, cfx_error *err)
{
    int epoch = r->state.best_epoch;
    for (int i = 0; i < r->n_rows; i++) {
        if (r->rows[i].epoch != epoch)
            continue;
        double a = r->rows[i].validation_accuracy, b = r->state.best_validation_accuracy;
        if (fabs(a - b) > 1e-9)
            return cfx_fail(err,
                            "%s (best epoch %d, validation accuracy %.4f) does not match %s "
                            "(epoch %d: %.4f): files of different runs?",
                            r->ckpt_path, epoch, b, r->metrics_path, epoch, a);
        return 0;
    }
    return cfx_fail(err,
                    "%s: best epoch %d of %s is not in the log (%d epochs): files of "
                    "different runs?",
                    r->metrics_path, epoch, r->ckpt_path, r->n_rows);
}

int viz_run_load(viz_run *r, const char *run_dir, const char *data_dir, cfx_error *err)
{
    double t0 = cfx_now();
    memset(r, 0, sizeof *r);
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
    size_t len = strlen(run_dir);
    while (len > 1 && run_dir[len - 1] == '/')
        len--;
    if (len == 0 || len >= sizeof r->run_dir)
        return cfx_fail(err, "--run: invalid directory '%s'", run_dir);
    memcpy(r->run_dir, run_dir, len);
    r->run_dir[len] = '\0';
    if (!is_dir(r->run_dir))
        return cfx_fail(err, "%s: no such run directory", r->run_dir);
    snprintf(r->ckpt_path, sizeof r->ckpt_path, "%s/checkpoints/best.h5", r->run_dir);
    snprintf(r->metrics_path, sizeof r->metrics_path, "%s/logs/metrics.h5", r->run_dir);
    if (need_file(r->ckpt_path, "is this a cfx-train output directory?", err) != 0 ||
        need_file(r->metrics_path, "is this a cfx-train output directory?", err) != 0)
        return -1;

    if (cfx_checkpoint_read_attr(r->ckpt_path, "layers", &r->layers_text, err) != 0 ||
        cfx_checkpoint_read_attr(r->ckpt_path, "config", &r->config_text, err) != 0)
        return -1;
    cfx_error perr;
    if (cfx_parse_layers(r->layers_text, r->specs, &r->n_specs, &perr) != 0)
        return cfx_fail(err, "%s: layers attribute: %s", r->ckpt_path, perr.msg);
    if (cfx_model_create(&r->model, r->specs, r->n_specs, CFX_IMAGE_CHANNELS, CFX_IMAGE_SIZE,
                         CFX_IMAGE_SIZE, VIZ_EVAL_BATCH, 0, &perr) != 0)
        return cfx_fail(err, "%s: %s", r->ckpt_path, perr.msg);
    if (r->model.n_classes != CFX_NUM_CLASSES)
        return cfx_fail(err, "%s: the model has %d outputs, CIFAR-10 has %d classes", r->ckpt_path,
                        r->model.n_classes, CFX_NUM_CLASSES);
    if (cfx_checkpoint_read(r->ckpt_path, &r->model, NULL, &r->state, err) != 0)
        return -1;
    cfx_model_set_training(&r->model, 0); /* everything cfx-viz shows is in eval mode */
    if (read_meta(r, err) != 0)
        return -1;
    if (cfx_metrics_read(r->metrics_path, &r->rows, &r->n_rows, err) != 0)
        return -1;
    if (r->n_rows == 0)
        return cfx_fail(err, "%s: the metrics log has no epochs", r->metrics_path);
    if (check_pair(r, err) != 0)
        return -1;
    read_log_test(r);

    if (resolve_data_dir(r, data_dir, err) != 0)
        return -1;
    if (cfx_cifar10_open_test(&r->test, r->data_dir, &perr) != 0)
        return cfx_fail(err, "%s%s", perr.msg,
                        data_dir ? "" : " (data.dir of the checkpoint; pass --data DIR)");
    r->t_load = cfx_now() - t0;
    return 0;
}

int viz_run_choose_images(viz_run *r, const char *list, cfx_error *err)
{
    r->n_images = 0;
    if (!list) {
        int seen[CFX_NUM_CLASSES] = {0};
        for (int i = 0; i < r->test.n && r->n_images < VIZ_DEFAULT_IMAGES; i++) {
            int y = cfx_dataset_label(&r->test, i);
            if (!seen[y]) {
                seen[y] = 1;
                r->images[r->n_images++] = i;
            }
        }
        return 0;
    }
    const char *p = list;
    while (*p) {
        char *end;
        errno = 0;
        long v = strtol(p, &end, 10);
        if (end == p || errno || (*end && *end != ','))
            return cfx_fail(err, "--images: '%s' is not a comma-separated list of test indices",
                            list);
        if (v < 0 || v >= r->test.n)
            return cfx_fail(err,
                            "--images: index %ld out of range (the test set has %d images: "
                            "0..%d)",
                            v, r->test.n, r->test.n - 1);
        if (r->n_images == VIZ_MAX_IMAGES)
            return cfx_fail(err, "--images: at most %d images", VIZ_MAX_IMAGES);
        r->images[r->n_images++] = (int)v;
        p = *end ? end + 1 : end;
    }
    if (r->n_images == 0)
        return cfx_fail(err, "--images: empty list");
    return 0;
}

/* The chosen images: their pixels, predictions and feature maps (their
 * attribution maps are step 0 of the sanity check). */
static int explain(viz_run *r, cfx_error *err)
{
    int n = r->n_images;
    cfx_model *g = &r->gmodel;
    if (cfx_model_create(
            g, r->specs, r->n_specs, CFX_IMAGE_CHANNELS, CFX_IMAGE_SIZE, CFX_IMAGE_SIZE,
            VIZ_SAMPLES_PER_PASS * n,
            CFX_MODEL_INPUT_GRAD | CFX_MODEL_KEEP_ACTIVATIONS | CFX_MODEL_NO_PARAM_GRAD, err) != 0)
        return -1;
    memcpy(g->state, r->model.state, r->model.state_bytes); /* parameters and buffers */
    cfx_model_set_training(g, 0);
    r->cam_layer = r->cam_request[0] ? cfx_model_find_layer(g, r->cam_request) : viz_last_conv(g);
    if (r->cam_request[0] && (r->cam_layer < 0 || g->layers[r->cam_layer].flat_out))
        return cfx_fail(err, "--layer %s: %s", r->cam_request,
                        r->cam_layer < 0 ? "the model has no layer of that name or index"
                                         : "that layer's output is flat (no spatial map)");
    if (r->cam_layer < 0)
        return cfx_fail(err, "%s: the model has no conv2d layer for Grad-CAM", r->ckpt_path);
    int labels[VIZ_MAX_IMAGES];
    cfx_batch_fill(g->acts[0], labels, &r->test, r->images, n, NULL);
    for (int i = 0; i < n; i++) {
        viz_denormalize(g->acts[0], n, i, r->img_rgb[i]);
        r->img_label[i] = labels[i];
        r->img_pred[i] = r->preds[r->images[i]];
        r->img_prob[i] = r->probs[(size_t)r->images[i] * CFX_NUM_CLASSES + r->img_pred[i]];
    }
    const int HW = CFX_IMAGE_SIZE * CFX_IMAGE_SIZE;
    size_t len = (size_t)CFX_IMAGE_CHANNELS * n * HW;
    r->inputs = cfx_malloc(len * sizeof(float));
    memcpy(r->inputs, g->acts[0], len * sizeof(float));
    cfx_model_forward(g, n);
    /* feature maps of the first image: its planes of every spatial output */
    r->features = cfx_calloc((size_t)g->n_layers, sizeof *r->features);
    for (int l = 0; l < g->n_layers; l++) {
        const cfx_layer *L = &g->layers[l];
        if (L->flat_out)
            continue;
        size_t hw = (size_t)L->out_h * L->out_w;
        r->features[l] = cfx_malloc((size_t)L->out_c * hw * sizeof(float));
        for (int c = 0; c < L->out_c; c++)
            memcpy(r->features[l] + c * hw, g->acts[l + 1] + (size_t)c * n * hw,
                   hw * sizeof(float));
    }
    return 0;
}

/* A progress bar on stderr when it is a terminal, once a phase has run 2 s. */
typedef struct {
    const char *phase;
    double t0;
    int shown;
} progress_bar;

static void progress_update(void *ctx, int done, int total)
{
    progress_bar *p = ctx;
    if (!isatty(STDERR_FILENO) || (!p->shown && cfx_now() - p->t0 < 2.0))
        return;
    enum { WIDTH = 30 };
    int fill = total > 0 ? WIDTH * done / total : WIDTH;
    fprintf(stderr, "\r%-28s [%.*s%*s] %d/%d, %.0f s", p->phase, fill,
            "##############################", WIDTH - fill, "", done, total, cfx_now() - p->t0);
    p->shown = 1;
    if (done >= total)
        fputc('\n', stderr);
    fflush(stderr);
}

/* The test pass's observer: the channel statistics, then the progress bar. */
typedef struct {
    viz_channels *channels;
    progress_bar bar;
    int total;
} test_pass;

static void observe_test_pass(void *ctx, const cfx_model *m, int start, int count)
{
    test_pass *t = ctx;
    viz_channels_observe(t->channels, m, start, count);
    progress_update(&t->bar, start + count, t->total);
}

/* An input per class that excites its logit, all ten in one batch of a
 * model of their own. */
static int activation_maximisation(viz_run *r, cfx_error *err)
{
    double t0 = cfx_now();
    cfx_model am;
    if (cfx_model_create(&am, r->specs, r->n_specs, CFX_IMAGE_CHANNELS, CFX_IMAGE_SIZE,
                         CFX_IMAGE_SIZE, CFX_NUM_CLASSES,
                         CFX_MODEL_INPUT_GRAD | CFX_MODEL_NO_PARAM_GRAD, err) != 0)
        return -1;
    memcpy(am.state, r->model.state, r->model.state_bytes);
    cfx_model_set_training(&am, 0);
    int classes[CFX_NUM_CLASSES];
    for (int k = 0; k < CFX_NUM_CLASSES; k++)
        classes[k] = k;
    r->actmax = cfx_malloc((size_t)CFX_IMAGE_CHANNELS * CFX_NUM_CLASSES * CFX_IMAGE_SIZE *
                           CFX_IMAGE_SIZE * sizeof(float));
    viz_activation_maximisation(&am, CFX_NUM_CLASSES, classes, r->actmax_steps, r->state.seed,
                                r->actmax);
    cfx_model_free(&am);
    r->t_actmax = cfx_now() - t0;
    return 0;
}

/* Integrated Gradients' signed attributions from both baselines and their
 * completeness: the sum of each image's attributions against the change of
 * its score from the baseline to the image. */
static void integrated_gradients_check(viz_run *r)
{
    cfx_model *g = &r->gmodel;
    int n = r->n_images;
    size_t len = (size_t)CFX_IMAGE_CHANNELS * n * CFX_IMAGE_SIZE * CFX_IMAGE_SIZE;
    size_t hw = (size_t)CFX_IMAGE_SIZE * CFX_IMAGE_SIZE;
    float *b = cfx_malloc(len * sizeof(float));
    double fx[VIZ_MAX_IMAGES], fb[VIZ_MAX_IMAGES];
    viz_class_scores(g, n, r->img_pred, r->inputs, fx);
    for (int k = 0; k < 2; k++) {
        if (k == 0)
            viz_black_image(g, n, b);
        else
            viz_blur(r->inputs, CFX_IMAGE_CHANNELS, n, CFX_IMAGE_SIZE, CFX_IMAGE_SIZE,
                     r->attr.blur_sigma, b);
        r->ig_attr[k] = cfx_malloc(len * sizeof(float));
        viz_integrated_gradients(g, n, r->img_pred, r->inputs, b, r->attr.ig_steps, r->ig_attr[k]);
        viz_class_scores(g, n, r->img_pred, b, fb);
        for (int i = 0; i < n; i++) {
            double sum = 0.0;
            for (int c = 0; c < CFX_IMAGE_CHANNELS; c++)
                for (size_t p = 0; p < hw; p++)
                    sum += r->ig_attr[k][((size_t)c * n + i) * hw + p];
            r->ig_check[k][i][0] = sum;
            r->ig_check[k][i][1] = fx[i] - fb[i];
        }
    }
    free(b);
}

int viz_run_compute(viz_run *r, cfx_error *err)
{
    double t0 = cfx_now();
    int n = r->test.n;
    r->n_test = n;
    r->labels = cfx_malloc((size_t)n * sizeof(int));
    r->preds = cfx_malloc((size_t)n * sizeof(int));
    r->probs = cfx_malloc((size_t)n * CFX_NUM_CLASSES * sizeof(float));
    int *all = cfx_malloc((size_t)n * sizeof(int));
    for (int i = 0; i < n; i++) {
        all[i] = i;
        r->labels[i] = cfx_dataset_label(&r->test, i);
    }
    int layers[CFX_MAX_LAYERS];
    int n_layers = viz_channel_layers(&r->model, r->layers_request[0] ? r->layers_request : NULL,
                                      layers, err);
    if (n_layers < 0 || viz_channels_init(&r->channels, &r->model, layers, n_layers,
                                          r->channel_max, n, err) != 0) {
        free(all);
        return -1;
    }
    cfx_eval_result res;
    test_pass pass = {&r->channels, {"test set", cfx_now(), 0}, n};
    cfx_evaluate_observed(&r->model, &r->test, all, n, &res, r->preds, r->probs,
                          observe_test_pass, &pass);
    free(all);
    r->test_loss = res.loss;
    r->test_accuracy = res.accuracy;
    viz_confusion(r->labels, r->preds, n, CFX_NUM_CLASSES, r->cm);
    viz_per_class(r->cm, CFX_NUM_CLASSES, r->per_class);
    r->n_pairs = viz_confused_pairs(r->cm, CFX_NUM_CLASSES, r->pairs, VIZ_N_PAIRS);
    double t1 = cfx_now();
    r->t_eval = t1 - t0;

    if (explain(r, err) != 0)
        return -1;
    double t2 = cfx_now();
    r->t_explain = t2 - t1;
    /* re-initialised weights come from another seed than training's */
    r->sanity_seed = r->state.seed + 1;
    progress_bar bar = {"sanity check, every method", cfx_now(), 0};
    viz_attr_opts opts = r->attr;
    opts.progress = progress_update, opts.progress_ctx = &bar;
    if (viz_sanity_run(&r->gmodel, r->n_images, r->img_pred, r->inputs, r->cam_layer, &opts,
                       r->sanity_seed, &r->sanity, err) != 0)
        return -1;
    r->t_sanity = cfx_now() - t2;
    const cfx_layer *C = &r->gmodel.layers[r->cam_layer];
    r->cam_h = C->out_h, r->cam_w = C->out_w;
    const int HW = CFX_IMAGE_SIZE * CFX_IMAGE_SIZE;
    r->gradcam_up = cfx_malloc((size_t)r->n_images * HW * sizeof(float));
    for (int i = 0; i < r->n_images; i++)
        viz_resize_bilinear(viz_run_map(r, VIZ_GRADCAM) + (size_t)i * r->cam_h * r->cam_w,
                            r->cam_h, r->cam_w, r->gradcam_up + (size_t)i * HW, CFX_IMAGE_SIZE,
                            CFX_IMAGE_SIZE);
    double t3 = cfx_now();
    integrated_gradients_check(r);
    double t4 = cfx_now();
    r->t_explain += t4 - t3;
    r->embedding = cfx_malloc((size_t)n * 2 * sizeof(float));
    /* on one BLAS thread, as every OpenBLAS call here (main.c, set_threads) */
    int pca = viz_pca_2d(r->channels.features, n, r->channels.F, r->embedding, r->explained, err);
    if (pca != 0)
        return -1;
    double t5 = cfx_now();
    r->t_embedding = t5 - t4;
    return activation_maximisation(r, err);
}

void viz_run_free(viz_run *r)
{
    free(r->config_text);
    free(r->layers_text);
    for (int i = 0; i < r->n_meta; i++)
        free(r->meta[i].value);
    free(r->rows);
    if (r->test.n)
        cfx_dataset_close(&r->test);
    for (int l = 0; r->features && l < r->model.n_layers; l++)
        free(r->features[l]);
    free(r->features);
    cfx_model_free(&r->model);
    cfx_model_free(&r->gmodel);
    free(r->labels);
    free(r->preds);
    free(r->probs);
    free(r->inputs);
    free(r->gradcam_up);
    free(r->ig_attr[0]);
    free(r->ig_attr[1]);
    viz_channels_free(&r->channels);
    free(r->embedding);
    free(r->actmax);
    viz_sanity_free(&r->sanity);
    memset(r, 0, sizeof *r);
}
