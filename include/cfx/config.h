/* The run configuration: an INI file plus --set overrides.
 *
 * Every key is declared once in a table in src/config/config.c with its type,
 * range, default and meaning; the reader, the validation, the effective
 * config text written into checkpoints and `--help-config` all come from it. */
#ifndef CFX_CONFIG_H
#define CFX_CONFIG_H

#include <stdint.h>

#include "cfx/common.h" /* defines: cfx_error */
#include "cfx/layers.h" /* defines: cfx_layer_spec, CFX_MAX_LAYERS, cfx_parse_layers */

#define CFX_PATH_LEN 1024

typedef struct {
    /* [data] */
    char data_dir[CFX_PATH_LEN];
    long train_limit;  /* first K images of the 45k split, 0 = all */
    long val_limit;    /* first K images of the 5k split, 0 = all */
    long test_limit;   /* first K test images for the final test pass, 0 = all */
    long val_size;     /* images held out of the 50k for validation */
    uint64_t split_seed;
    int augment;       /* random crop + flip on training images */
    int crop_padding;  /* translation range of the crop, pixels each way */
    char pad_mode[16]; /* zero | reflect */
    char flip[16];     /* random | alternating | none */
    /* [train] */
    int epochs;
    int batch_size;    /* global batch, summed over ranks */
    uint64_t seed;
    int eval_batch_size;
    double label_smoothing; /* training loss target (1 - e) onehot + e / classes */
    double max_loss;        /* a step's mean loss above this stops training */
    char tta[16];           /* test-time augmentation of validation and test */
    int validation_tta;     /* 0: validation without train.tta (test and --eval keep it) */
    /* [optim] */
    char optim_name[16]; /* adam | sgd */
    double lr, beta1, beta2, eps, momentum, weight_decay;
    int nesterov;
    int decoupled_weight_decay; /* AdamW-style: params shrink by lr x weight_decay */
    char schedule[16];      /* constant | linear | cosine | step | onecycle */
    long warmup_steps;      /* linear warm-up (onecycle: the rising phase) */
    double warmup_start_factor; /* the warm-up rises from this fraction of lr */
    double final_lr_factor; /* linear, cosine: the last step's lr / optim.lr */
    double step_epochs;     /* step: decay every this many epochs ... */
    double step_gamma;      /* ... by this factor */
    long lookahead_steps;   /* weight averaging every this many steps, 0 = off */
    double lookahead_decay; /* per step, ramped by (step / total)^3 */
    /* [model] */
    int n_layers;
    cfx_layer_spec layers[CFX_MAX_LAYERS];
    /* [output] */
    char output_dir[CFX_PATH_LEN];
    /* [dist] */
    int chunk;            /* images per gradient chunk (exact reduction) */
    char reduction[16];   /* exact | float */
    int overlap;          /* exact reduction in buckets during the backward pass */
    double bucket_mb;     /* gradient MB per bucket (overlap) */
    /* [runtime] */
    int blas_threads; /* per rank, 0 = cores of the node / ranks on the node */
} cfx_config;

/* Fills every key with its default (required keys stay unset). */
void cfx_config_defaults(cfx_config *cfg);

/* Reads an INI file over the defaults, applies "section.key=value"
 * overrides in order, then checks that every required key was given. */
int cfx_config_load(cfx_config *cfg, const char *path, int n_overrides,
                    const char *const *overrides, cfx_error *err);

/* Sets one key from its text value ("optim.lr", "3e-4"). */
int cfx_config_set(cfx_config *cfg, const char *dotted_key, const char *value, cfx_error *err);

/* The effective configuration as INI text (malloc'd; caller frees). */
char *cfx_config_to_ini(const cfx_config *cfg);

/* Every key with its default and meaning, as a commented INI file (malloc'd). */
char *cfx_config_reference(void);

#endif
