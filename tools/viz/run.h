/* One cfx-viz session: loads a run directory (checkpoint, metrics log, test
 * set), evaluates the model and computes everything the figures show. */
#ifndef CFX_VIZ_RUN_H
#define CFX_VIZ_RUN_H

#include <stdint.h>

#include "analysis.h"       /* defines: viz_class_metrics, viz_pair, viz_sanity */
#include "cfx/checkpoint.h" /* defines: cfx_train_state, cfx_epoch_metrics */
#include "cfx/data.h"       /* defines: cfx_dataset, CFX_NUM_CLASSES, CFX_IMAGE_PIXELS */
#include "cfx/nn.h"         /* defines: cfx_model */
#include "featvis.h"       /* defines: viz_channels */

#define VIZ_MAX_IMAGES 8
#define VIZ_DEFAULT_IMAGES 4
#define VIZ_N_PAIRS 5
#define VIZ_MAX_META 32
#define VIZ_EVAL_BATCH 250

typedef struct {
    char name[64];
    char *value; /* malloc'd */
} viz_meta_item;

typedef struct {
    /* where things are */
    char run_dir[CFX_PATH_LEN];
    char ckpt_path[CFX_PATH_LEN + 32];
    char metrics_path[CFX_PATH_LEN + 32];
    char data_dir[CFX_PATH_LEN];

    /* what the files hold */
    char *config_text, *layers_text;  /* root attributes of the checkpoint */
    viz_meta_item meta[VIZ_MAX_META]; /* every root attribute, as text */
    int n_meta;
    cfx_layer_spec specs[CFX_MAX_LAYERS];
    int n_specs;
    cfx_train_state state;
    cfx_epoch_metrics *rows;
    int n_rows;
    int has_log_test; /* metrics.h5 has test_loss/test_accuracy */
    double log_test_loss, log_test_accuracy;
    cfx_dataset test;
    cfx_model model;  /* evaluation, VIZ_EVAL_BATCH images */
    cfx_model gmodel; /* with input gradients, n_images images */

    /* the chosen test images */
    int n_images;
    int images[VIZ_MAX_IMAGES];
    int img_label[VIZ_MAX_IMAGES], img_pred[VIZ_MAX_IMAGES];
    float img_prob[VIZ_MAX_IMAGES];                    /* probability of the predicted class */
    uint8_t img_rgb[VIZ_MAX_IMAGES][CFX_IMAGE_PIXELS]; /* denormalised, [32][32][3] */

    /* results */
    int n_test;
    int *labels, *preds;
    float *probs; /* [n_test][10] */
    double test_loss, test_accuracy;
    long cm[CFX_NUM_CLASSES * CFX_NUM_CLASSES];
    viz_class_metrics per_class[CFX_NUM_CLASSES];
    viz_pair pairs[VIZ_N_PAIRS];
    int n_pairs;
    float *inputs; /* the chosen images, normalised: [3][n_images][32*32] */
    viz_attr_opts attr;  /* the attribution methods' settings (flags) */
    int cam_layer, cam_h, cam_w;
    float *gradcam_up; /* [n_images][32*32], Grad-CAM resized bilinearly */
    float *ig_attr[2]; /* Integrated Gradients, black and blurred baseline: [3][n][32*32] */
    double ig_check[2][VIZ_MAX_IMAGES][2]; /* sum of attributions, score(x) - score(baseline) */
    float **features; /* per layer, spatial ones only: output for images[0], [C][H][W] */
    char cam_request[CFX_NAME_LEN]; /* --layer: the Grad-CAM layer ("" = default) */
    uint64_t sanity_seed;
    viz_sanity sanity; /* step 0 holds every method's maps of the trained model */
    char layers_request[1024]; /* --layers ("" = every conv2d) */
    int channel_max;           /* --channel-stat max (else mean) */
    viz_channels channels;     /* top images per channel, penultimate features */
    float *embedding;          /* [n_test][2]: PCA of the penultimate features */
    double explained[2];       /* variance share of the two components */
    int actmax_steps;          /* --actmax-steps */
    float *actmax;             /* [3][10][32*32]: an input per class, normalised */

    double t_load, t_eval, t_explain, t_sanity; /* seconds: t_eval includes the channel
                                                   statistics, t_explain the feature maps and
                                                   IG check, t_sanity every method at every
                                                   step */
    double t_embedding, t_actmax;
} viz_run;

/* Reads run_dir/checkpoints/best.h5 and run_dir/logs/metrics.h5, checks
 * they belong together, builds the model and opens the test set from
 * data_dir (NULL: data.dir of the checkpoint's config). */
int viz_run_load(viz_run *r, const char *run_dir, const char *data_dir, cfx_error *err);

/* Chooses the images to explain: a comma-separated list of test indices,
 * or NULL for the first VIZ_DEFAULT_IMAGES test images of distinct classes. */
int viz_run_choose_images(viz_run *r, const char *list, cfx_error *err);

/* Evaluates the test set and computes every analysis. */
int viz_run_compute(viz_run *r, cfx_error *err);

void viz_run_free(viz_run *r);

/* Method k's maps of the trained model: [n_images][r->sanity.size[k]]. */
static inline const float *viz_run_map(const viz_run *r, viz_method k)
{
    return r->sanity.maps[k];
}

/* Value of a root attribute as text ("" if absent). */
const char *viz_run_meta(const viz_run *r, const char *name);

#endif
