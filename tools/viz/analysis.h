/* The analyses behind cfx-viz's figures, free of files and drawing:
 * saliency and Grad-CAM through libcfx's own backward pass, the confusion
 * matrix and per-class metrics, Spearman rank correlation, and the model
 * randomisation sanity check (Adebayo et al., 2018) of every method of
 * attribution.h. */
#ifndef CFX_VIZ_ANALYSIS_H
#define CFX_VIZ_ANALYSIS_H

#include <stdint.h>

#include "attribution.h" /* defines: viz_method, viz_attr_opts, VIZ_N_METHODS */
#include "cfx/common.h"  /* defines: cfx_error */
#include "cfx/nn.h"     /* defines: cfx_model */

/* ---- explanations ----------------------------------------------------- */

/* Forward pass of the n images in m->acts[0] ([C][n][H][W]), then the
 * backward pass of the score (logit) of classes[i] for image i, i.e. with
 * dacts[n_layers] = one-hot. Images do not interact, so one pass serves all. */
void viz_class_score_backward(cfx_model *m, int n, const int *classes);

/* After viz_class_score_backward on a model created with CFX_MODEL_INPUT_GRAD:
 * maps[i][y][x] = max over channels c of |d score_i / d input[c][i][y][x]|. */
void viz_saliency(const cfx_model *m, int n, float *maps);

/* The default Grad-CAM layer: the last convolution (a layer with a 4-D
 * weight), or, when it lies inside a block ("layer4.1.conv2"), the block's
 * output ("layer4.1"); -1 if there is no convolution. */
int viz_last_conv(const cfx_model *m);
/* Index of the first convolution, -1 if there is none. */
int viz_first_conv(const cfx_model *m);

/* After viz_class_score_backward on a model created with
 * CFX_MODEL_KEEP_ACTIVATIONS (so a conv2d's output is not overwritten by a
 * fused ReLU): Grad-CAM of layer `layer` (a spatial layer; A = its output
 * [K][n][h][w]):
 *   cams[i][y][x] = ReLU(sum_k alpha_k A_k[i][y][x]),
 *   alpha_k = mean over (y, x) of d score_i / d A_k[i][y][x]. */
void viz_gradcam(const cfx_model *m, int layer, int n, float *cams);

/* Bilinear resize in[h][w] -> out[H][W] with half-pixel centres
 * (torch's interpolate(mode="bilinear", align_corners=False)). */
void viz_resize_bilinear(const float *in, int h, int w, float *out, int H, int W);

/* Image i of a normalised batch x[3][n][32*32] back to bytes rgb[32][32][3]
 * (the inverse of the per-channel normalisation in data.h). */
void viz_denormalize(const float *x, int n, int i, uint8_t *rgb);

/* ---- statistics ------------------------------------------------------- */

/* Spearman rank correlation of a[0..n) and b[0..n): the Pearson correlation
 * of their ranks, tied values sharing their average rank. NAN if either is
 * constant (the correlation is undefined). */
double viz_spearman(const float *a, const float *b, int n);

/* cm[t][p] = number of images with label t predicted as p (K x K). */
void viz_confusion(const int *labels, const int *preds, int n, int K, long *cm);

typedef struct {
    double precision, recall, f1; /* 0 when undefined (no predictions / no images) */
    long support;                 /* images of the class */
} viz_class_metrics;

void viz_per_class(const long *cm, int K, viz_class_metrics *out);

/* An unordered pair of classes and its errors in both directions. */
typedef struct {
    int a, b; /* a < b */
    long ab;  /* true a predicted b */
    long ba;  /* true b predicted a */
} viz_pair;

/* The (up to) max_pairs pairs with the most errors ab + ba, most first
 * (ties: lower a, then lower b); pairs without errors are left out.
 * Returns how many were written. */
int viz_confused_pairs(const long *cm, int K, viz_pair *pairs, int max_pairs);

/* ---- model randomisation sanity check --------------------------------- */

/* Layers with parameters, bottom up; returns their number. */
int viz_param_layers(const cfx_model *m, int *layers);

/* Copies layer `layer`'s weights and bias from src (a parameter buffer of
 * the same model layout) into m->params. */
void viz_copy_layer_params(cfx_model *m, const float *src, int layer);

/* Cascading randomisation: step 0 is the trained model; step s > 0 has the
 * top s parameter layers re-initialised (cfx_model_init_params with seed),
 * from the output layer down. At every step every method's map of each
 * image for its class is computed (viz_explain_all) and compared with step 0
 * by Spearman rank correlation. */
typedef struct {
    int n_steps; /* 1 + parameter layers */
    int n_images;
    int layer[CFX_MAX_LAYERS + 1]; /* step s > 0: the layer re-initialised last (-1 at 0) */
    int size[VIZ_N_METHODS];       /* floats per map of each method */
    float *maps[VIZ_N_METHODS];    /* [n_steps][n_images][size]; step 0: the trained model */
    double *rho[VIZ_N_METHODS];    /* [n_steps][n_images]; 1 at step 0, NAN where undefined */
} viz_sanity;

/* Runs the check on the n images x ([C][n][H][W]; m created with
 * CFX_MODEL_INPUT_GRAD | CFX_MODEL_KEEP_ACTIVATIONS and max_batch >= n);
 * m->params are restored afterwards. */
int viz_sanity_run(cfx_model *m, int n, const int *classes, const float *x, int cam_layer,
                   const viz_attr_opts *o, uint64_t seed, viz_sanity *out, cfx_error *err);
void viz_sanity_free(viz_sanity *s);

/* Method k's mean correlation at step s over the images, "%.3f" or "n/a". */
void viz_sanity_mean_text(const viz_sanity *sa, int k, int s, char *buf, size_t len);

/* Mean of the defined (non-NAN) values of v[0..n); NAN if none. */
double viz_nanmean(const double *v, int n);

#endif
