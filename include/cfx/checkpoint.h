/* HDF5 checkpoints and the metrics log, readable with h5dump and h5py.
 *
 * Checkpoint layout (one file, written atomically):
 *   /                 attributes: format_version, config (INI text), layers,
 *                     cfx_version, git_commit, ranks, blas_core, blas_threads,
 *                     seed, host, start_time
 *   /model/<key>      parameters and buffers under their PyTorch state_dict
 *                     keys ("0.weight" [16,3,3,3], ..., "10.bias" [10];
 *                     "bn1.running_mean", "bn1.num_batches_tracked" int64),
 *                     C order, attributes describing the layer (layer_type
 *                     and its torch.nn arguments: in_channels, out_channels,
 *                     kernel_size, stride, padding, ... from the layer table)
 *   /optimizer        attributes: name, lr, beta1, beta2, eps, momentum,
 *                     weight_decay, nesterov, step
 *   /optimizer/<key>/exp_avg, exp_avg_sq   (Adam)
 *   /optimizer/<key>/momentum_buffer       (SGD)
 *   /optimizer/<key>/fast_weights          (optim.lookahead_steps > 0: the
 *                     weights being trained, for every parameter and buffer;
 *                     /model then holds their lookahead average; attribute
 *                     /optimizer lookahead_steps)
 *   /train_state      attributes: epoch, global_step, step_in_epoch,
 *                     best_validation_accuracy, best_epoch, epoch_loss_sum,
 *                     epoch_correct, seed, split_seed, rng
 * Every dataset is chunked with the fletcher32 checksum filter, so damage is
 * detected on load. */
#ifndef CFX_CHECKPOINT_H
#define CFX_CHECKPOINT_H

#include <stdint.h>

#include "cfx/common.h" /* defines: cfx_error */
#include "cfx/nn.h"     /* defines: cfx_model */
#include "cfx/optim.h"  /* defines: cfx_optim */

/* Where training stands. Random numbers in cfx are pure functions of
 * (seed, epoch, index), so the seeds and the position are the whole RNG state. */
typedef struct {
    int epoch;                /* epochs fully completed */
    long global_step;         /* optimizer steps done in total */
    int step_in_epoch;        /* steps done in epoch + 1 (0 = at an epoch boundary) */
    double best_validation_accuracy;
    int best_epoch;
    double epoch_loss_sum;    /* partial sums of the interrupted epoch */
    double epoch_correct;
    uint64_t seed;
    uint64_t split_seed;
} cfx_train_state;

/* Who wrote the checkpoint, with what; strings may be NULL. */
typedef struct {
    const char *config_text;
    const char *layers_text;
    const char *cfx_version;
    const char *git_commit;
    int ranks;
    const char *blas_core;
    int blas_threads;
    uint64_t seed;
    const char *host;
    const char *start_time; /* ISO 8601 */
} cfx_run_meta;

/* Writes path atomically: path.tmp, close, fsync, rename, fsync of the
 * directory. On failure the previous file at path is untouched. */
int cfx_checkpoint_write(const char *path, const cfx_model *model, const cfx_optim *optim,
                         const cfx_train_state *state, const cfx_run_meta *meta, cfx_error *err);

/* Loads parameters into a model created from the same layer list; fails
 * naming the first parameter whose name or shape differs. optim and state
 * may be NULL (not loaded); optim must have been created for the model.
 * Only the optimizer's step and buffers are loaded: its hyperparameters
 * (lr, ...) stay as configured. With lookahead (optim->lookahead set up by
 * cfx_lookahead_start) the fast weights go to optim->lookahead and the model
 * holds the average (optim->model_has_average). On failure nothing is
 * changed. */
int cfx_checkpoint_read(const char *path, cfx_model *model, cfx_optim *optim,
                        cfx_train_state *state, cfx_error *err);

/* Reads a string attribute of the root group (e.g. "config", "layers")
 * into a malloc'd string. */
int cfx_checkpoint_read_attr(const char *path, const char *name, char **value, cfx_error *err);

/* One row of the metrics log. */
typedef struct {
    int epoch;
    double train_loss, train_accuracy;
    double validation_loss, validation_accuracy;
    double learning_rate;
    double images_per_second;
    double epoch_seconds;
    double allreduce_seconds;
} cfx_epoch_metrics;

/* logs/metrics.h5: one chunked, extendible 1-D dataset per field of
 * cfx_epoch_metrics, named like the field. Each call opens, appends or
 * updates, and closes the file, so h5dump can read it between epochs.
 * Appending a row whose epoch already exists first drops that row and every
 * later one (a resumed run continues without duplicates). */
int cfx_metrics_append(const char *path, const cfx_epoch_metrics *row, cfx_error *err);
/* Keeps only rows with epoch <= last_epoch (no log yet: nothing to do). */
int cfx_metrics_truncate(const char *path, int last_epoch, cfx_error *err);
/* Root attributes test_loss, test_accuracy and tta (the test-time
 * augmentation of validation and test, train.tta; NULL = "none"). */
int cfx_metrics_set_test(const char *path, double test_loss, double test_accuracy,
                         const char *tta, cfx_error *err);
/* All rows (malloc'd array). */
int cfx_metrics_read(const char *path, cfx_epoch_metrics **rows, int *n_rows, cfx_error *err);

#endif
