/* analysis.h5: the numbers behind every cfx-viz figure, for h5dump/h5py. */
#include "store.h" /* defines: viz_store_analysis */

#include <hdf5.h>
#include <hdf5_hl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "figures.h" /* defines: viz_sanity_step_label */

#define K CFX_NUM_CLASSES

typedef struct {
    int failed;
    char what[128];
} status;

static void check(status *st, herr_t rc, const char *what)
{
    if (rc < 0 && !st->failed) {
        st->failed = 1;
        snprintf(st->what, sizeof st->what, "%s", what);
    }
}

static hid_t group(status *st, hid_t f, const char *name)
{
    hid_t g = H5Gcreate2(f, name, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    check(st, g, name);
    return g;
}

static void put(status *st, hid_t loc, const char *name, int rank, const hsize_t *dims, hid_t type,
                const void *data)
{
    check(st, H5LTmake_dataset(loc, name, rank, dims, type, data), name);
}

static void put_attr_str(status *st, hid_t loc, const char *obj, const char *name, const char *v)
{
    check(st, H5LTset_attribute_string(loc, obj, name, v ? v : ""), name);
}

static void put_attr_f64(status *st, hid_t loc, const char *obj, const char *name, double v)
{
    check(st, H5LTset_attribute_double(loc, obj, name, &v, 1), name);
}

static void put_attr_i64(status *st, hid_t loc, const char *obj, const char *name, long long v)
{
    check(st, H5LTset_attribute_long_long(loc, obj, name, &v, 1), name);
}

/* What each method's map in /images is. */
static const char *const METHOD_DEFINITION[VIZ_N_METHODS] = {
    "max over channels of |d logit[predicted] / d input|",
    "ReLU(sum_k alpha_k A_k), alpha_k = spatial mean of d logit[predicted] / d A_k",
    "Integrated Gradients from the black image (midpoint rule, ig_steps points): sum over "
    "channels of |attribution|",
    "Integrated Gradients from the image blurred (Gaussian, blur_sigma pixels): sum over "
    "channels of |attribution|",
    "SmoothGrad: max over channels of |mean gradient| over smoothgrad_samples noisy copies, "
    "noise sigma = smoothgrad_noise x (max - min of the image)",
    "occlusion: drop of logit[predicted] when an occlusion_patch square (stride "
    "occlusion_stride) is set to the mean colour, averaged over the squares covering the pixel",
    "Guided Backpropagation: max over channels of |gradient| with only positive gradients "
    "passed back through ReLU / GELU",
    "Guided Grad-CAM: max over channels of |guided gradient x Grad-CAM resized to the input|",
};

static void put_method_settings(status *st, hid_t g, const viz_attr_opts *o)
{
    put_attr_i64(st, g, ".", "ig_steps", o->ig_steps);
    put_attr_f64(st, g, ".", "blur_sigma", o->blur_sigma);
    put_attr_f64(st, g, ".", "smoothgrad_noise", o->sg_noise);
    put_attr_i64(st, g, ".", "smoothgrad_samples", o->sg_samples);
    put_attr_i64(st, g, ".", "occlusion_patch", o->occ_patch);
    put_attr_i64(st, g, ".", "occlusion_stride", o->occ_stride);
    put_attr_i64(st, g, ".", "smoothgrad_seed", (long long)o->seed);
}

/* [C][n][H*W] (libcfx's layout) as [n][C][H][W] (PyTorch's), malloc'd. */
static float *to_nchw(const float *x, int n)
{
    enum { C = CFX_IMAGE_CHANNELS, HW = CFX_IMAGE_SIZE * CFX_IMAGE_SIZE };
    float *out = cfx_malloc((size_t)n * C * HW * sizeof(float));
    for (int c = 0; c < C; c++)
        for (int i = 0; i < n; i++)
            memcpy(out + ((size_t)i * C + c) * HW, x + ((size_t)c * n + i) * HW, HW * sizeof(float));
    return out;
}

static void put_strings(status *st, hid_t loc, const char *name, const char *const *s, int n)
{
    hid_t t = H5Tcopy(H5T_C_S1);
    H5Tset_size(t, H5T_VARIABLE);
    H5Tset_cset(t, H5T_CSET_UTF8);
    hsize_t d = (hsize_t)n;
    hid_t sp = H5Screate_simple(1, &d, NULL);
    hid_t ds = H5Dcreate2(loc, name, t, sp, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    check(st, ds, name);
    if (ds >= 0) {
        check(st, H5Dwrite(ds, t, H5S_ALL, H5S_ALL, H5P_DEFAULT, s), name);
        H5Dclose(ds);
    }
    H5Sclose(sp);
    H5Tclose(t);
}

/* /test: labels, predictions, probabilities; the confusion matrix, per-class metrics and the most
 * confused pairs */
static void store_test_set(status *st, hid_t f, const viz_run *r)
{
    hid_t g = group(st, f, "test");
    if (g >= 0) {
        hsize_t d1[1] = {(hsize_t)r->n_test}, d2[2] = {(hsize_t)r->n_test, K};
        put(st, g, "labels", 1, d1, H5T_NATIVE_INT, r->labels);
        put(st, g, "predictions", 1, d1, H5T_NATIVE_INT, r->preds);
        put(st, g, "probabilities", 2, d2, H5T_NATIVE_FLOAT, r->probs);
        put_attr_f64(st, g, ".", "loss", r->test_loss);
        put_attr_f64(st, g, ".", "accuracy", r->test_accuracy);
        put_attr_i64(st, g, ".", "n_images", r->n_test);
        H5Gclose(g);
    }
    hsize_t dcm[2] = {K, K};
    put(st, f, "confusion_matrix", 2, dcm, H5T_NATIVE_LONG, r->cm);
    put_attr_str(st, f, "confusion_matrix", "rows", "true class");
    put_attr_str(st, f, "confusion_matrix", "columns", "predicted class");

    g = group(st, f, "per_class");
    if (g >= 0) {
        double p[K], rc[K], f1[K];
        long sup[K];
        for (int k = 0; k < K; k++) {
            p[k] = r->per_class[k].precision, rc[k] = r->per_class[k].recall;
            f1[k] = r->per_class[k].f1, sup[k] = r->per_class[k].support;
        }
        hsize_t d[1] = {K};
        put(st, g, "precision", 1, d, H5T_NATIVE_DOUBLE, p);
        put(st, g, "recall", 1, d, H5T_NATIVE_DOUBLE, rc);
        put(st, g, "f1", 1, d, H5T_NATIVE_DOUBLE, f1);
        put(st, g, "support", 1, d, H5T_NATIVE_LONG, sup);
        H5Gclose(g);
    }
    if (r->n_pairs > 0) {
        long pairs[VIZ_N_PAIRS][4];
        for (int i = 0; i < r->n_pairs; i++) {
            pairs[i][0] = r->pairs[i].a, pairs[i][1] = r->pairs[i].b;
            pairs[i][2] = r->pairs[i].ab, pairs[i][3] = r->pairs[i].ba;
        }
        hsize_t d[2] = {(hsize_t)r->n_pairs, 4};
        put(st, f, "confused_pairs", 2, d, H5T_NATIVE_LONG, pairs);
        put_attr_str(st, f, "confused_pairs", "columns",
                     "class a, class b, true a predicted b, true b predicted a");
    }
}

/* /images: the explained test images and every method's map of them */
static void store_images(status *st, hid_t f, const viz_run *r)
{
    int n = r->n_images;
    hid_t g = group(st, f, "images");
    if (g >= 0) {
        hsize_t d1[1] = {(hsize_t)n};
        hsize_t ds[3] = {(hsize_t)n, CFX_IMAGE_SIZE, CFX_IMAGE_SIZE};
        hsize_t dc[3] = {(hsize_t)n, (hsize_t)r->cam_h, (hsize_t)r->cam_w};
        put(st, g, "indices", 1, d1, H5T_NATIVE_INT, r->images);
        put(st, g, "labels", 1, d1, H5T_NATIVE_INT, r->img_label);
        put(st, g, "predictions", 1, d1, H5T_NATIVE_INT, r->img_pred);
        put(st, g, "probability", 1, d1, H5T_NATIVE_FLOAT, r->img_prob);
        for (int k = 0; k < VIZ_N_METHODS; k++) {
            put(st, g, VIZ_METHOD_KEY[k], 3, k == VIZ_GRADCAM ? dc : ds, H5T_NATIVE_FLOAT,
                viz_run_map(r, (viz_method)k));
            put_attr_str(st, g, VIZ_METHOD_KEY[k], "definition", METHOD_DEFINITION[k]);
        }
        put_attr_i64(st, g, "gradcam", "layer", r->cam_layer);
        put_method_settings(st, g, &r->attr);
        hsize_t da[4] = {(hsize_t)n, CFX_IMAGE_CHANNELS, CFX_IMAGE_SIZE, CFX_IMAGE_SIZE};
        hsize_t dk[2] = {(hsize_t)n, 2};
        for (int b = 0; b < 2; b++) {
            char name[96];
            snprintf(name, sizeof name, "%s_attributions", VIZ_METHOD_KEY[VIZ_IG_BLACK + b]);
            float *a = to_nchw(r->ig_attr[b], n);
            put(st, g, name, 4, da, H5T_NATIVE_FLOAT, a);
            free(a);
            snprintf(name, sizeof name, "%s_completeness", VIZ_METHOD_KEY[VIZ_IG_BLACK + b]);
            put(st, g, name, 2, dk, H5T_NATIVE_DOUBLE, r->ig_check[b]);
            put_attr_str(st, g, name, "columns",
                         "sum of the attributions, score(image) - score(baseline)");
        }
        H5Gclose(g);
    }
}

/* /channels, /embedding and /activation_maximization */
static void store_features(status *st, hid_t f, const viz_run *r)
{
    hid_t g = group(st, f, "channels");
    for (int k = 0; g >= 0 && k < r->channels.n_layers; k++) {
        const viz_channel_top *t = &r->channels.top[k];
        hid_t lg = group(st, g, r->model.layers[t->layer].key);
        if (lg < 0)
            break;
        hsize_t d2[2] = {(hsize_t)t->C, VIZ_TOP}, d3[3] = {(hsize_t)t->C, VIZ_TOP, 2};
        int *yx = cfx_malloc((size_t)t->C * VIZ_TOP * 2 * sizeof(int));
        for (int j = 0; j < t->C * VIZ_TOP; j++)
            yx[2 * j] = t->pos[j] / t->W, yx[2 * j + 1] = t->pos[j] % t->W;
        put(st, lg, "top_images", 2, d2, H5T_NATIVE_INT, t->image);
        put(st, lg, "top_values", 2, d2, H5T_NATIVE_FLOAT, t->value);
        put(st, lg, "top_positions", 3, d3, H5T_NATIVE_INT, yx);
        free(yx);
        put_attr_i64(st, lg, ".", "layer", t->layer);
        put_attr_str(st, lg, ".", "statistic", r->channel_max ? "max" : "mean");
        put_attr_i64(st, lg, ".", "field_size", t->field.size);
        put_attr_i64(st, lg, ".", "field_stride", t->field.jump);
        put_attr_i64(st, lg, ".", "field_offset", t->field.offset);
        H5Gclose(lg);
    }
    if (g >= 0)
        H5Gclose(g);
    g = group(st, f, "embedding");
    if (g >= 0) {
        hsize_t d[2] = {(hsize_t)r->n_test, 2}, de[1] = {2};
        put(st, g, "pca", 2, d, H5T_NATIVE_FLOAT, r->embedding);
        put(st, g, "explained_variance", 1, de, H5T_NATIVE_DOUBLE, r->explained);
        put_attr_i64(st, g, ".", "feature_layer", r->channels.feature_layer);
        put_attr_i64(st, g, ".", "features", r->channels.F);
        H5Gclose(g);
    }
    g = group(st, f, "activation_maximization");
    if (g >= 0) {
        hsize_t d[4] = {CFX_NUM_CLASSES, CFX_IMAGE_CHANNELS, CFX_IMAGE_SIZE, CFX_IMAGE_SIZE};
        float *a = to_nchw(r->actmax, CFX_NUM_CLASSES);
        put(st, g, "images", 4, d, H5T_NATIVE_FLOAT, a);
        free(a);
        put_attr_i64(st, g, ".", "steps", r->actmax_steps);
        put_attr_str(st, g, ".", "layout",
                     "class, channel, y, x; normalised as the network's input");
        H5Gclose(g);
    }
}

/* /sanity: the cascading-randomisation check of every method */
static void store_sanity(status *st, hid_t f, const viz_run *r)
{
    const viz_sanity *sa = &r->sanity;
    int n = r->n_images;
    hid_t g = group(st, f, "sanity");
    if (g >= 0 && sa->n_steps > 0) {
        int steps = sa->n_steps;
        char(*labels)[64] = cfx_malloc((size_t)steps * sizeof *labels);
        const char **lp = cfx_malloc((size_t)steps * sizeof *lp);
        for (int s = 0; s < steps; s++) {
            viz_sanity_step_label(r, s, labels[s], sizeof labels[s]);
            lp[s] = labels[s];
        }
        hsize_t d1[1] = {(hsize_t)steps}, d2[2] = {(hsize_t)steps, (hsize_t)n};
        hsize_t dm[4] = {(hsize_t)steps, (hsize_t)n, CFX_IMAGE_SIZE, CFX_IMAGE_SIZE};
        hsize_t dc[4] = {(hsize_t)steps, (hsize_t)n, (hsize_t)r->cam_h, (hsize_t)r->cam_w};
        put(st, g, "reinitialised_layer", 1, d1, H5T_NATIVE_INT, sa->layer);
        put_strings(st, g, "step_labels", lp, steps);
        for (int k = 0; k < VIZ_N_METHODS; k++) {
            char name[96];
            snprintf(name, sizeof name, "%s_spearman", VIZ_METHOD_KEY[k]);
            put(st, g, name, 2, d2, H5T_NATIVE_DOUBLE, sa->rho[k]);
            snprintf(name, sizeof name, "%s_maps", VIZ_METHOD_KEY[k]);
            put(st, g, name, 4, k == VIZ_GRADCAM ? dc : dm, H5T_NATIVE_FLOAT, sa->maps[k]);
        }
        put_attr_i64(st, g, ".", "seed", (long long)r->sanity_seed);
        put_attr_str(st, g, ".", "method",
                     "cascading randomisation (Adebayo et al. 2018): step s re-initialises the "
                     "top s parameter layers; Spearman rank correlation with step 0, NaN when "
                     "a map is constant");
        free(labels);
        free(lp);
    }
    if (g >= 0)
        H5Gclose(g);
}

int viz_store_analysis(const viz_run *r, const char *path, cfx_error *err)
{
    char tmp[CFX_PATH_LEN + 64];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    hid_t f = H5Fcreate(tmp, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    if (f < 0)
        return cfx_fail(err, "%s: cannot create", tmp);
    status st = {0};

    put_attr_str(&st, f, "/", "checkpoint", r->ckpt_path);
    put_attr_str(&st, f, "/", "metrics", r->metrics_path);
    put_attr_str(&st, f, "/", "data_dir", r->data_dir);
    put_attr_str(&st, f, "/", "cfx_version", viz_run_meta(r, "cfx_version"));
    put_attr_str(&st, f, "/", "git_commit", viz_run_meta(r, "git_commit"));
    put_attr_i64(&st, f, "/", "best_epoch", r->state.best_epoch);
    put_attr_f64(&st, f, "/", "best_validation_accuracy", r->state.best_validation_accuracy);
    put_strings(&st, f, "class_names", (const char *const *)CFX_CIFAR10_CLASSES, K);

    store_test_set(&st, f, r);
    store_images(&st, f, r);
    store_features(&st, f, r);
    store_sanity(&st, f, r);

    if (H5Fclose(f) < 0)
        check(&st, -1, "closing the file");
    if (st.failed) {
        unlink(tmp);
        return cfx_fail(err, "%s: cannot write %s", path, st.what);
    }
    if (rename(tmp, path) != 0) {
        unlink(tmp);
        return cfx_fail(err, "%s: cannot rename %s into place", path, tmp);
    }
    return 0;
}
