/* Attribution methods of cfx-viz beyond saliency and Grad-CAM, through
 * libcfx's own forward and backward passes: Integrated Gradients (Sundararajan
 * et al. 2017), SmoothGrad (Smilkov et al. 2017), occlusion sensitivity
 * (Zeiler & Fergus 2014), Guided Backpropagation (Springenberg et al. 2015)
 * and Guided Grad-CAM (Selvaraju et al. 2017). Every map is of the class
 * score (logit) classes[i] of image i; images are [C][n][H][W] as in nn.h. */
#ifndef CFX_VIZ_ATTRIBUTION_H
#define CFX_VIZ_ATTRIBUTION_H

#include <stdint.h>

#include "cfx/nn.h" /* defines: cfx_model */

/* Every method cfx-viz draws, in the order of its figures; the names are
 * those of the figures (plots/<name>.png) and of analysis.h5's datasets. */
typedef enum {
    VIZ_SALIENCY,
    VIZ_GRADCAM,
    VIZ_IG_BLACK, /* Integrated Gradients from a black image */
    VIZ_IG_BLUR,  /* ... from the image blurred */
    VIZ_SMOOTHGRAD,
    VIZ_OCCLUSION,
    VIZ_GUIDED_BP,
    VIZ_GUIDED_GRADCAM,
    VIZ_N_METHODS
} viz_method;

extern const char *const VIZ_METHOD_KEY[VIZ_N_METHODS];   /* "saliency", ... */
extern const char *const VIZ_METHOD_LABEL[VIZ_N_METHODS]; /* "Integrated Gradients (black)" */
extern const char *const VIZ_METHOD_SHORT[VIZ_N_METHODS]; /* "IG black": table columns */

#define VIZ_EXPLORER_DETAILS 100 /* default --explorer-images */

/* The methods' settings (cfx-viz flags). */
typedef struct {
    int ig_steps;        /* --ig-steps: points of the path integral (midpoint rule) */
    double blur_sigma;   /* the blurred baseline's Gaussian, in pixels */
    double sg_noise;     /* --smoothgrad-noise: sigma / (max - min of the image) */
    int sg_samples;      /* --smoothgrad-samples */
    int occ_patch;       /* --occlusion-patch: side of the grey square, pixels */
    int occ_stride;      /* --occlusion-stride */
    uint64_t seed;       /* SmoothGrad's noise */
    int actmax_steps;    /* --actmax-steps: activation maximisation (featvis.h) */
    int explorer_images; /* --explorer-images: detail images of explorer.html (explorer.h) */
    /* called after each step of the sanity check (NULL: nothing) */
    void (*progress)(void *ctx, int done, int total);
    void *progress_ctx;
} viz_attr_opts;

void viz_attr_defaults(viz_attr_opts *o);

/* The class scores of the n images x (forward pass only). */
void viz_class_scores(cfx_model *m, int n, const int *classes, const float *x, double *scores);

/* d score_i / d x for the n images x into grad (same layout); m needs
 * CFX_MODEL_INPUT_GRAD. */
void viz_input_gradient(cfx_model *m, int n, const int *classes, const float *x, float *grad);

/* Integrated Gradients and SmoothGrad run as many of their samples in one
 * pass as m's max_batch holds (at least one): a model made for explaining n
 * images holds VIZ_SAMPLES_PER_PASS * n, so the passes are wide enough to
 * keep every thread busy. */
#define VIZ_SAMPLES_PER_PASS 8

/* Integrated Gradients from baseline b: attr = (x - b) * mean over the
 * ig_steps midpoints a_k = (k + 1/2) / steps of d score / d input at
 * b + a_k (x - b). By completeness sum(attr_i) ~ score_i(x) - score_i(b). */
void viz_integrated_gradients(cfx_model *m, int n, const int *classes, const float *x,
                              const float *b, int steps, float *attr);

/* The black image after normalisation (-mean / std in every channel), n
 * times: Integrated Gradients' black baseline. */
void viz_black_image(const cfx_model *m, int n, float *b);

/* Each channel of the n images blurred by a Gaussian of sigma pixels
 * (reflected edges): the blurred baseline of Integrated Gradients. */
void viz_blur(const float *x, int C, int n, int H, int W, double sigma, float *out);

/* SmoothGrad: the mean gradient over `samples` copies of x with Gaussian
 * noise of sigma = noise * (max - min of each image); grad as x. */
void viz_smoothgrad(cfx_model *m, int n, const int *classes, const float *x, double noise,
                    int samples, uint64_t seed, float *grad);

/* Occlusion: the score's drop when a patch x patch square is set to 0 (the
 * dataset mean colour after normalisation), at every stride-th position
 * (the last one flush with the edge), averaged over the squares covering
 * each pixel: maps[i][y][x]. */
void viz_occlusion(cfx_model *m, int n, const int *classes, const float *x, int patch,
                   int stride, float *maps);

/* Guided Backpropagation's gradient (m->guided during the backward pass). */
void viz_guided_backprop(cfx_model *m, int n, const int *classes, const float *x, float *grad);

/* maps[i][y][x] = max over channels of |g[c][i][y][x]|. */
void viz_channel_max_abs(const float *g, int C, int n, int HW, float *maps);
/* maps[i][y][x] = sum over channels of |g[c][i][y][x]| (Integrated Gradients' map). */
void viz_channel_sum_abs(const float *g, int C, int n, int HW, float *maps);

/* Floats per image of a method's map: H x W of the input, Grad-CAM's
 * h x w of the layer cam_layer. */
int viz_method_size(const cfx_model *m, int cam_layer, viz_method k);

/* Every method's map of the n images x: maps[k] holds [n][viz_method_size].
 * m needs CFX_MODEL_INPUT_GRAD | CFX_MODEL_KEEP_ACTIVATIONS and a batch of n. */
void viz_explain_all(cfx_model *m, int n, const int *classes, const float *x, int cam_layer,
                     const viz_attr_opts *o, float *const maps[VIZ_N_METHODS]);

#endif
