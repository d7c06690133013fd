/* cfx-viz's figures: each function draws one figure (or one family, the
 * feature maps) of a computed viz_run and saves it through a viz_out, which
 * writes the file and keeps its bytes for report.html. */
#ifndef CFX_VIZ_FIGURES_H
#define CFX_VIZ_FIGURES_H

#include "plot.h" /* defines: viz_fig, viz_format */
#include "run.h"  /* defines: viz_run */

enum {
    VIZ_SEC_TRAINING,
    VIZ_SEC_TEST,
    VIZ_SEC_EXPLAIN,
    VIZ_SEC_SANITY,
    VIZ_SEC_CHANNELS,
    VIZ_SEC_FEATURES,
    VIZ_N_SECTIONS
};

typedef struct {
    char rel[128]; /* path relative to the run directory ("plots/saliency.png") */
    char title[160];
    char *caption; /* plain text, malloc'd */
    int section;
    int width, height;   /* figure size in pixels (PNG) */
    unsigned char *data; /* the image report.html embeds (PNG or SVG) */
    size_t len;
    const char *mime;
} viz_item;

#define VIZ_MAX_ITEMS 192 /* a ResNet-18: 15 plots, 21 channel grids, ~70 feature maps */

typedef struct {
    const char *dir; /* the run directory */
    viz_format fmt;
    int n;
    viz_item items[VIZ_MAX_ITEMS];
} viz_out;

/* Writes f to dir/name.<ext> and records it for the report. */
int viz_out_save(viz_out *o, viz_fig *f, const char *name, int section, const char *title,
                 const char *caption, cfx_error *err);
void viz_out_free(viz_out *o);

int viz_fig_loss_curves(viz_out *o, const viz_run *r, cfx_error *err);
int viz_fig_accuracies(viz_out *o, const viz_run *r, cfx_error *err);
int viz_fig_confusion(viz_out *o, const viz_run *r, cfx_error *err);
int viz_fig_misclassified(viz_out *o, const viz_run *r, cfx_error *err);
int viz_fig_featuremaps(viz_out *o, const viz_run *r, cfx_error *err);
int viz_fig_conv1_filters(viz_out *o, const viz_run *r, cfx_error *err);
int viz_fig_saliency(viz_out *o, const viz_run *r, cfx_error *err);
int viz_fig_gradcam(viz_out *o, const viz_run *r, cfx_error *err);
int viz_fig_integrated_gradients(viz_out *o, const viz_run *r, cfx_error *err);
int viz_fig_smoothgrad(viz_out *o, const viz_run *r, cfx_error *err);
int viz_fig_occlusion(viz_out *o, const viz_run *r, cfx_error *err);
int viz_fig_guided_backprop(viz_out *o, const viz_run *r, cfx_error *err);
int viz_fig_guided_gradcam(viz_out *o, const viz_run *r, cfx_error *err);
/* The RGB bytes [32][32][3] of test image i. */
void viz_test_rgb(const viz_run *r, int i, uint8_t *rgb);

/* A bold title centred at cx and an optional grey subtitle under it; returns the height used. */
double viz_title_block(viz_fig *f, double cx, double y, const char *title, const char *subtitle,
                       int sub_flags);

/* featfigs.c: what the network learned */
int viz_fig_channels(viz_out *o, const viz_run *r, cfx_error *err);
int viz_fig_activation_maximization(viz_out *o, const viz_run *r, cfx_error *err);
int viz_fig_embedding(viz_out *o, const viz_run *r, cfx_error *err);
/* Also writes per_class.csv. */
int viz_fig_per_class(viz_out *o, const viz_run *r, cfx_error *err);
int viz_fig_confusion_pairs(viz_out *o, const viz_run *r, cfx_error *err);
int viz_fig_sanity(viz_out *o, const viz_run *r, cfx_error *err);

/* Short label of sanity step s ("trained", "+ Linear (layer 10)"). */
void viz_sanity_step_label(const viz_run *r, int s, char *buf, size_t len);

#endif
