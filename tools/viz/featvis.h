/* What the network learned, beyond single images: the test images that
 * excite each channel most (Zeiler & Fergus 2014) with the receptive field
 * of the strongest position, inputs optimised to excite each class logit
 * (activation maximisation, Olah et al. 2017), and a 2-D PCA map of the
 * penultimate features of the test set. Images are [C][n][H][W] (nn.h). */
#ifndef CFX_VIZ_FEATVIS_H
#define CFX_VIZ_FEATVIS_H

#include <stdint.h>

#include "cfx/common.h" /* defines: cfx_error */
#include "cfx/nn.h"     /* defines: cfx_model */

#define VIZ_TOP 9 /* images per channel */

/* The receptive field of layer `layer`'s output position (y, x) along its
 * first inputs: rows y * jump + offset .. + size - 1 of the input (the same
 * for columns), unclipped. Global pools cover the whole input. */
typedef struct {
    int size, jump, offset;
} viz_field;

viz_field viz_receptive_field(const cfx_model *m, int layer);

/* The VIZ_TOP test images of each channel of one layer, by the channel's
 * mean (or max) over positions, strongest first. */
typedef struct {
    int layer; /* index in the model */
    int C, H, W;
    viz_field field;
    float *value; /* [C][VIZ_TOP], descending; -INFINITY where unfilled */
    int *image;   /* [C][VIZ_TOP] test index, -1 where unfilled */
    int *pos;     /* [C][VIZ_TOP] y * W + x of the channel's maximum in that image */
} viz_channel_top;

/* Everything gathered during the pass over the test set. */
typedef struct {
    int use_max; /* rank channels by their max (1) or mean (0) activation */
    int n_layers;
    viz_channel_top *top;
    int feature_layer; /* the head's input: the penultimate features */
    int F;             /* features per image */
    int n_images;
    float *features; /* [n_images][F] */
} viz_channels;

/* Prepares the statistics of the given layers (spatial outputs) and the
 * penultimate features of n_images test images. */
int viz_channels_init(viz_channels *ch, const cfx_model *m, const int *layers, int n_layers,
                      int use_max, int n_images, cfx_error *err);
/* cfx_eval_observer: folds in the images [start, start + count). */
void viz_channels_observe(void *ctx, const cfx_model *m, int start, int count);
void viz_channels_free(viz_channels *ch);

/* Layers for --layers "a,b,..." (names or indices; NULL: every conv2d);
 * returns their number or -1 with err set. */
int viz_channel_layers(const cfx_model *m, const char *list, int *layers, cfx_error *err);

/* The first two principal components of the n x F features: coords[n][2]
 * (projections, the sign fixed so that the largest loading is positive) and
 * the share of the variance each explains. */
int viz_pca_2d(const float *features, int n, int F, float *coords, double explained[2],
               cfx_error *err);

/* Activation maximisation: n inputs, image i optimised to raise the logit
 * classes[i] by gradient ascent with random jitter (shifts of up to 2
 * pixels), a Gaussian blur of the image every few steps and the image kept
 * within the valid pixel range; starts from small noise (seed), so the
 * result is deterministic. x [C][n][H][W] receives the images. */
void viz_activation_maximisation(cfx_model *m, int n, const int *classes, int steps,
                                 uint64_t seed, float *x);

#endif
