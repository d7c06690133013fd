/* The data-parallel training loop.
 *
 * Every rank holds a full replica. Each epoch has one global permutation of
 * the training split (seeded by train.seed and the epoch); each global batch
 * is cut into contiguous per-rank slices; each rank's gradient is the sum of
 * its per-image gradients divided by the global batch size, so one
 * MPI_Allreduce(SUM) of the flat gradient buffer yields the batch mean and
 * the math does not depend on the number of ranks. */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cfx/optim.h" /* defines: cfx_optim */
#include "cfx/rng.h"   /* defines: cfx_rng, cfx_shuffle, cfx_hash3 */
#include "cfx/train.h" /* defines: cfx_train, cfx_evaluate */

/* Per-step statistics ride along in the gradient allreduce, in the spare
 * floats after the gradients (CFX_GRAD_TAIL). */
enum { TAIL_LOSS, TAIL_CORRECT, TAIL_ABORT };

typedef struct {
    FILE *csv;
    char path[CFX_PATH_LEN + 32];
} metrics_log;

static int metrics_open(metrics_log *log, const char *output_dir, cfx_error *err)
{
    char dir[CFX_PATH_LEN + 16];
    snprintf(dir, sizeof dir, "%s/logs", output_dir);
    if (cfx_mkdir_p(dir, err) != 0)
        return -1;
    snprintf(log->path, sizeof log->path, "%s/metrics.csv", dir);
    log->csv = fopen(log->path, "w");
    if (!log->csv)
        return cfx_fail(err, "%s: cannot create: %s", log->path, strerror(errno));
    fprintf(log->csv, "epoch,train_loss,train_accuracy,validation_loss,validation_accuracy,"
                      "learning_rate,images_per_second,epoch_seconds\n");
    if (fflush(log->csv) != 0)
        return cfx_fail(err, "%s: write failed: %s", log->path, strerror(errno));
    return 0;
}

static int metrics_append(metrics_log *log, int epoch, double train_loss, double train_acc,
                          const cfx_eval_result *val, double lr, double ips, double seconds,
                          cfx_error *err)
{
    fprintf(log->csv, "%d,%.8f,%.6f,%.8f,%.6f,%g,%.1f,%.3f\n", epoch, train_loss, train_acc,
            val->loss, val->accuracy, lr, ips, seconds);
    if (fflush(log->csv) != 0 || ferror(log->csv))
        return cfx_fail(err, "%s: write failed: %s", log->path, strerror(errno));
    return 0;
}

static int metrics_close(metrics_log *log, cfx_error *err)
{
    if (log->csv && fclose(log->csv) != 0) {
        log->csv = NULL;
        return cfx_fail(err, "%s: close failed: %s", log->path, strerror(errno));
    }
    log->csv = NULL;
    return 0;
}

int cfx_train(const cfx_config *cfg, cfx_dist *d, const cfx_train_options *opt, cfx_error *err)
{
    const int root = d->rank == 0, verbose = root && !opt->quiet;
    cfx_dataset train_ds = {0}, test_ds = {0};
    cfx_split split = {0};
    cfx_model model = {0};
    cfx_optim optim = {0};
    metrics_log log = {0};
    float *best_params = NULL;
    int *perm = NULL, *labels = NULL;
    int rc = -1;

    /* Data, split and model: identical on every rank, so failures are too;
     * cfx_dist_all_ok keeps ranks in step if one fails alone. */
    int ok = cfx_cifar10_open_train(&train_ds, cfg->data_dir, err) == 0 &&
             cfx_split_make(&split, train_ds.n, cfg->val_size, cfg->split_seed, cfg->train_limit,
                            cfg->val_limit, err) == 0;
    if (ok && split.n_train < d->size)
        ok = cfx_fail(err, "data.train_limit: %d training images for %d ranks (need at least "
                           "one per rank)", split.n_train, d->size) == 0;
    int local_max = (cfg->batch_size + d->size - 1) / d->size;
    int max_batch = root && cfg->eval_batch_size > local_max ? cfg->eval_batch_size : local_max;
    ok = ok && cfx_model_create(&model, cfg->layers, cfg->n_layers, CFX_IMAGE_CHANNELS,
                                CFX_IMAGE_SIZE, CFX_IMAGE_SIZE, max_batch, 0, err) == 0;
    if (ok && model.n_classes != CFX_NUM_CLASSES)
        ok = cfx_fail(err, "model.layers: the last layer has %d outputs, CIFAR-10 has %d classes",
                      model.n_classes, CFX_NUM_CLASSES) == 0;
    ok = ok && cfx_optim_create(&optim, cfg, model.n_params, err) == 0;
    if (ok && root)
        ok = metrics_open(&log, cfg->output_dir, err) == 0;
    if (!cfx_dist_all_ok(ok)) {
        if (ok)
            cfx_fail(err, "another rank failed to start");
        goto done;
    }

    if (verbose) {
        cfx_model_print(&model, stdout);
        printf("data: %d training, %d validation images from %s\n", split.n_train, split.n_val,
               cfg->data_dir);
    }
    if (root)
        cfx_model_init_params(&model, cfg->seed);
    cfx_dist_bcast(model.params, model.n_params * sizeof(float));

    const int B = cfg->batch_size, n_train = split.n_train;
    const int steps_per_epoch = (n_train + B - 1) / B;
    float *tail = model.grads + model.n_params;
    int root_failed = 0; /* rank 0's logging failed: every rank stops at the next step */
    perm = cfx_malloc((size_t)n_train * sizeof *perm);
    labels = cfx_malloc((size_t)local_max * sizeof *labels);
    best_params = root ? cfx_malloc(model.n_params * sizeof(float)) : NULL;
    double best_acc = -1.0;
    int best_epoch = 0;

    for (int epoch = 1; epoch <= cfg->epochs; epoch++) {
        double t_epoch = cfx_now(), loss_sum = 0.0, correct = 0.0;
        for (int i = 0; i < n_train; i++)
            perm[i] = split.train[i];
        cfx_rng rng;
        cfx_rng_seed(&rng, cfx_hash3(cfg->seed, 0x45504F4348ULL /* "EPOCH" */, (uint64_t)epoch));
        cfx_shuffle(perm, n_train, &rng);
        cfx_augment aug = {cfg->augment, cfg->seed, epoch};

        for (int step = 0; step < steps_per_epoch; step++) {
            int gstart = step * B, glen = n_train - gstart < B ? n_train - gstart : B;
            int start, count;
            cfx_dist_slice(glen, d->rank, d->size, &start, &count);
            cfx_batch_fill(model.acts[0], labels, &train_ds, perm + gstart + start, count, &aug);
            const float *logits = cfx_model_forward(&model, count);
            double step_loss = 0.0;
            long step_correct = 0;
            cfx_softmax_xent(logits, labels, count, model.n_classes, 1.0f / (float)glen,
                             model.dacts[model.n_layers], &step_loss, &step_correct);
            cfx_model_backward(&model, count);
            tail[TAIL_LOSS] = (float)step_loss;
            tail[TAIL_CORRECT] = (float)step_correct;
            tail[TAIL_ABORT] = (float)root_failed;
            cfx_dist_allreduce_sum(d, model.grads, model.n_params + CFX_GRAD_TAIL);
            if (tail[TAIL_ABORT] != 0.0f) {
                if (!root)
                    cfx_fail(err, "rank 0 failed; stopping");
                goto done;
            }
            if (!isfinite(tail[TAIL_LOSS])) {
                cfx_fail(err, "training diverged at epoch %d, step %d: the loss is %g", epoch,
                         step + 1, (double)tail[TAIL_LOSS]);
                goto done;
            }
            loss_sum += tail[TAIL_LOSS];
            correct += tail[TAIL_CORRECT];
            cfx_optim_step(&optim, model.params, model.grads);
        }
        double train_seconds = cfx_now() - t_epoch;
        double train_loss = loss_sum / n_train, train_acc = correct / n_train;

        if (root && !root_failed) {
            cfx_eval_result val;
            cfx_evaluate(&model, &train_ds, split.val, split.n_val, &val, NULL, NULL);
            double seconds = cfx_now() - t_epoch, ips = n_train / train_seconds;
            if (val.accuracy > best_acc) {
                best_acc = val.accuracy;
                best_epoch = epoch;
                memcpy(best_params, model.params, model.n_params * sizeof(float));
            }
            if (verbose) {
                printf("epoch %3d/%d  train loss %.4f acc %.4f  val loss %.4f acc %.4f%s  "
                       "%6.0f img/s  %5.1f s\n",
                       epoch, cfg->epochs, train_loss, train_acc, val.loss, val.accuracy,
                       best_epoch == epoch ? " *" : "  ", ips, seconds);
                fflush(stdout);
            }
            if (metrics_append(&log, epoch, train_loss, train_acc, &val, cfg->lr, ips, seconds,
                               err) != 0)
                root_failed = 1;
        }
    }
    if (root_failed)
        goto done;

    if (root) {
        if (metrics_close(&log, err) != 0)
            goto done;
        if (cfx_cifar10_open_test(&test_ds, cfg->data_dir, err) != 0)
            goto done;
        memcpy(model.params, best_params, model.n_params * sizeof(float));
        int *all = cfx_malloc((size_t)test_ds.n * sizeof *all);
        for (int i = 0; i < test_ds.n; i++)
            all[i] = i;
        cfx_eval_result test;
        cfx_evaluate(&model, &test_ds, all, test_ds.n, &test, NULL, NULL);
        free(all);
        if (verbose)
            printf("best validation accuracy %.4f at epoch %d; test loss %.4f, test accuracy "
                   "%.4f (%d images)\n",
                   best_acc, best_epoch, test.loss, test.accuracy, test.n);
    }
    rc = 0;

done:
    if (log.csv)
        fclose(log.csv);
    free(best_params);
    free(perm);
    free(labels);
    cfx_optim_free(&optim);
    cfx_model_free(&model);
    cfx_split_free(&split);
    cfx_dataset_close(&train_ds);
    if (test_ds.n)
        cfx_dataset_close(&test_ds);
    return rc;
}
