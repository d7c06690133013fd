/* The data-parallel training loop, with checkpoints, resume and clean stops.
 *
 * Every rank holds a full replica. Each epoch has one global permutation of
 * the training split (seeded by train.seed and the epoch); each global batch
 * is cut into contiguous per-rank slices; each rank's gradient is the sum of
 * its per-image gradients divided by the global batch size, so one
 * MPI_Allreduce(SUM) of the flat gradient buffer yields the batch mean and
 * the math does not depend on the number of ranks.
 *
 * Rank 0 alone validates, writes logs/metrics.{h5,csv} and
 * checkpoints/{best,last}.h5. A stop signal or a failure of rank 0 travels to
 * every rank in the statistics tail of the next gradient allreduce, so all
 * ranks leave the loop after the same step. */
#include "cfx_build_info.h" /* defines: CFX_GIT_COMMIT (generated at build time) */
#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cfx/checkpoint.h" /* defines: cfx_checkpoint_write/read, cfx_metrics_append */
#include "cfx/optim.h"      /* defines: cfx_optim */
#include "cfx/rng.h"        /* defines: cfx_rng, cfx_shuffle, cfx_hash3 */
#include "cfx/train.h"      /* defines: cfx_train, cfx_evaluate, cfx_phase_times */

#ifndef CFX_VERSION
#define CFX_VERSION "0.0.0"
#endif

/* The statistics tail after the gradients (CFX_GRAD_TAIL floats). */
enum { TAIL_LOSS, TAIL_CORRECT, TAIL_STOP, TAIL_ABORT };

static volatile sig_atomic_t stop_requested = 0;

static void on_stop_signal(int sig)
{
    (void)sig;
    stop_requested = 1;
}

static void set_stop_handlers(void (*handler)(int))
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = handler;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGUSR1, &sa, NULL);
}

void cfx_install_stop_handlers(void) { set_stop_handlers(on_stop_signal); }

/* Fault injection for tests: CFX_FAULT_STEP=N makes rank CFX_FAULT_RANK
 * (default 0) raise CFX_FAULT_SIGNAL (TERM, INT, USR1 or KILL; default TERM)
 * right after global step N. */
typedef struct {
    long step;
    int rank, sig;
} fault_plan;

static fault_plan fault_plan_from_env(void)
{
    fault_plan f = {-1, 0, SIGTERM};
    const char *step = getenv("CFX_FAULT_STEP"), *rank = getenv("CFX_FAULT_RANK");
    const char *sig = getenv("CFX_FAULT_SIGNAL");
    if (!step)
        return f;
    f.step = atol(step);
    f.rank = rank ? atoi(rank) : 0;
    if (sig && !strcmp(sig, "KILL"))
        f.sig = SIGKILL;
    else if (sig && !strcmp(sig, "INT"))
        f.sig = SIGINT;
    else if (sig && !strcmp(sig, "USR1"))
        f.sig = SIGUSR1;
    return f;
}

/* Everything rank 0 writes, and the names of the files. */
typedef struct {
    char ckpt_dir[CFX_PATH_LEN + 16];
    char best[CFX_PATH_LEN + 32], last[CFX_PATH_LEN + 32];
    char metrics_h5[CFX_PATH_LEN + 32], metrics_csv[CFX_PATH_LEN + 32];
    char host[256], start_time[64], layers[2048];
    cfx_run_meta meta;
} run_files;

/* <output.dir>/config.ini: the effective config of the run, written whole
 * (temporary file and rename) at every start, so the run directory says how
 * it was made. */
static int write_config_copy(const char *dir, const char *text, cfx_error *err)
{
    char path[CFX_PATH_LEN + 32], tmp[CFX_PATH_LEN + 48];
    snprintf(path, sizeof path, "%s/config.ini", dir);
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    FILE *f = fopen(tmp, "w");
    if (!f)
        return cfx_fail(err, "%s: cannot create: %s", tmp, strerror(errno));
    fputs("# The effective configuration of this run (written by cfx-train).\n", f);
    fputs(text, f);
    int bad = ferror(f);
    if (fclose(f) != 0 || bad) {
        unlink(tmp);
        return cfx_fail(err, "%s: write failed: %s", tmp, strerror(errno));
    }
    if (rename(tmp, path) != 0) {
        unlink(tmp);
        return cfx_fail(err, "%s: cannot rename into place: %s", path, strerror(errno));
    }
    return 0;
}

static int run_files_init(run_files *f, const cfx_config *cfg, const cfx_dist *d,
                          const char *config_text, int threads, cfx_error *err)
{
    char logs[CFX_PATH_LEN + 16];
    snprintf(logs, sizeof logs, "%s/logs", cfg->output_dir);
    snprintf(f->ckpt_dir, sizeof f->ckpt_dir, "%s/checkpoints", cfg->output_dir);
    if (cfx_mkdir_p(logs, err) != 0 || cfx_mkdir_p(f->ckpt_dir, err) != 0)
        return -1;
    if (access(logs, W_OK) != 0 || access(f->ckpt_dir, W_OK) != 0)
        return cfx_fail(err, "%s: output directory is not writable", cfg->output_dir);
    if (config_text && write_config_copy(cfg->output_dir, config_text, err) != 0)
        return -1;
    snprintf(f->best, sizeof f->best, "%s/best.h5", f->ckpt_dir);
    snprintf(f->last, sizeof f->last, "%s/last.h5", f->ckpt_dir);
    snprintf(f->metrics_h5, sizeof f->metrics_h5, "%s/metrics.h5", logs);
    snprintf(f->metrics_csv, sizeof f->metrics_csv, "%s/metrics.csv", logs);
    if (gethostname(f->host, sizeof f->host) != 0)
        snprintf(f->host, sizeof f->host, "unknown");
    time_t now = time(NULL);
    struct tm tm;
    gmtime_r(&now, &tm);
    strftime(f->start_time, sizeof f->start_time, "%Y-%m-%dT%H:%M:%SZ", &tm);
    size_t len = 0;
    f->layers[0] = '\0';
    for (int i = 0; i < cfg->n_layers; i++) {
        char one[128];
        cfx_layer_spec_format(&cfg->layers[i], one, sizeof one);
        len += (size_t)snprintf(f->layers + len, sizeof f->layers - len, "%s%s", i ? "\n" : "",
                                one);
        if (len >= sizeof f->layers)
            break;
    }
    f->meta = (cfx_run_meta){.config_text = config_text,
                             .layers_text = f->layers,
                             .cfx_version = CFX_VERSION,
                             .git_commit = CFX_GIT_COMMIT,
                             .ranks = d->size,
                             .blas_core = cfx_blas_core(),
                             .blas_threads = threads,
                             .seed = cfg->seed,
                             .host = f->host,
                             .start_time = f->start_time};
    return 0;
}

/* logs/metrics.csv mirrors logs/metrics.h5; rewritten whole (via a temporary
 * file and rename) so a resumed run never duplicates rows. */
static int write_metrics_csv(const run_files *f, cfx_error *err)
{
    cfx_epoch_metrics *rows = NULL;
    int n = 0;
    if (cfx_metrics_read(f->metrics_h5, &rows, &n, err) != 0)
        return -1;
    char tmp[CFX_PATH_LEN + 48];
    snprintf(tmp, sizeof tmp, "%s.tmp", f->metrics_csv);
    FILE *csv = fopen(tmp, "w");
    if (!csv) {
        free(rows);
        return cfx_fail(err, "%s: cannot create: %s", tmp, strerror(errno));
    }
    fprintf(csv, "epoch,train_loss,train_accuracy,validation_loss,validation_accuracy,"
                 "learning_rate,images_per_second,epoch_seconds,allreduce_seconds\n");
    for (int i = 0; i < n; i++) {
        const cfx_epoch_metrics *r = &rows[i];
        fprintf(csv, "%d,%.8f,%.6f,%.8f,%.6f,%g,%.1f,%.3f,%.3f\n", r->epoch, r->train_loss,
                r->train_accuracy, r->validation_loss, r->validation_accuracy, r->learning_rate,
                r->images_per_second, r->epoch_seconds, r->allreduce_seconds);
    }
    free(rows);
    int bad = ferror(csv);
    if (fclose(csv) != 0 || bad) {
        unlink(tmp);
        return cfx_fail(err, "%s: write failed: %s", tmp, strerror(errno));
    }
    if (rename(tmp, f->metrics_csv) != 0) {
        unlink(tmp);
        return cfx_fail(err, "%s: cannot rename into place: %s", f->metrics_csv,
                        strerror(errno));
    }
    return 0;
}

/* The progress bar of rank 0 on a terminal: one line of the current epoch,
 * redrawn in place with '\r' at most ten times a second and erased before the
 * epoch's summary line. */
typedef struct {
    int on;      /* draw at all */
    int drawn;   /* a bar is on the current line */
    double last; /* time of the last redraw */
} progress_bar;

static void progress_draw(progress_bar *p, int epoch, int epochs, long done, long total,
                          long images, double seconds, int force)
{
    double now = cfx_now();
    if (!p->on || (!force && now - p->last < 0.1))
        return;
    p->last = now;
    char bar[21];
    int full = total > 0 ? (int)(20 * done / total) : 20;
    for (int i = 0; i < 20; i++)
        bar[i] = i < full ? '#' : '.';
    bar[20] = '\0';
    double rate = seconds > 0 ? images / seconds : 0.0;
    long eta = rate > 0 ? (long)((double)(total - done) / rate + 0.5) : 0;
    char eta_text[32];
    if (eta >= 3600)
        snprintf(eta_text, sizeof eta_text, "%ld:%02ld:%02ld", eta / 3600, eta / 60 % 60, eta % 60);
    else
        snprintf(eta_text, sizeof eta_text, "%ld:%02ld", eta / 60, eta % 60);
    printf("\repoch %3d/%d [%s] %3d%%  %ld/%ld  %.0f img/s  ETA %s\033[K", epoch, epochs, bar,
           total > 0 ? (int)(100 * done / total) : 100, done, total, rate, eta_text);
    fflush(stdout);
    p->drawn = 1;
}

static void progress_clear(progress_bar *p)
{
    if (p->drawn) {
        printf("\r\033[K");
        fflush(stdout);
        p->drawn = 0;
    }
}

/* Loss and accuracy over ds[indices[0..n)], computed by all ranks together:
 * each evaluates a contiguous slice and one allreduce adds up the sums, so
 * no rank idles while another validates. */
static cfx_eval_result evaluate_shared(cfx_model *m, const cfx_dataset *ds, const int *indices,
                                       int n, const cfx_dist *d)
{
    int start, count;
    cfx_dist_slice(n, d->rank, d->size, &start, &count);
    cfx_eval_result part;
    cfx_evaluate(m, ds, indices + start, count, &part, NULL, NULL);
    double sums[2] = {part.loss * part.n, (double)llround(part.accuracy * part.n)};
    cfx_dist_allreduce_sum_double(sums, 2);
    return (cfx_eval_result){.n = n, .loss = n ? sums[0] / n : 0.0,
                             .accuracy = n ? sums[1] / n : 0.0};
}

/* Reads a "Key:   N kB" line of a /proc file, in MB (0 if absent). */
static double proc_mb(const char *path, const char *key)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return 0.0;
    char line[256];
    size_t len = strlen(key);
    double mb = 0.0;
    while (fgets(line, sizeof line, f))
        if (!strncmp(line, key, len) && line[len] == ':') {
            mb = atof(line + len + 1) / 1024.0;
            break;
        }
    fclose(f);
    return mb;
}

/* Rank 0 prints every rank's peak resident memory and what it is made of:
 * private memory, and the memory-mapped dataset that ranks of a node share
 * through the page cache (PSS counts each shared page once per node). */
static void report_memory(const cfx_dist *d, int verbose)
{
    double mine[4] = {proc_mb("/proc/self/status", "VmHWM"),
                      proc_mb("/proc/self/status", "RssAnon"),
                      proc_mb("/proc/self/status", "RssFile"),
                      proc_mb("/proc/self/smaps_rollup", "Pss")};
    double *all = d->rank == 0 ? cfx_malloc((size_t)d->size * sizeof mine) : NULL;
    cfx_dist_gather_double(mine, 4, all);
    if (verbose)
        for (int r = 0; r < d->size; r++)
            printf("memory: rank %d peak RSS %.0f MB (at the end: private %.0f MB, mapped files "
                   "%.0f MB, proportional share %.0f MB)\n",
                   r, all[4 * r], all[4 * r + 1], all[4 * r + 2], all[4 * r + 3]);
    free(all);
}

/* Broadcasts what rank 0 read from a checkpoint to every rank. */
static void bcast_resume_state(cfx_model *m, cfx_optim *o, cfx_train_state *st)
{
    cfx_dist_bcast(m->params, m->n_params * sizeof(float));
    cfx_dist_bcast(o->m, o->n * sizeof(float));
    if (o->v)
        cfx_dist_bcast(o->v, o->n * sizeof(float));
    cfx_dist_bcast(&o->step, sizeof o->step);
    cfx_dist_bcast(st, sizeof *st);
}

int cfx_train(const cfx_config *cfg, cfx_dist *d, const cfx_train_options *opt, cfx_error *err)
{
    const int root = d->rank == 0, verbose = root && !opt->quiet;
    cfx_dataset train_ds = {0}, test_ds = {0};
    cfx_split split = {0};
    cfx_model model = {0};
    cfx_optim optim = {0};
    cfx_train_state state = {.seed = cfg->seed, .split_seed = cfg->split_seed,
                             .best_validation_accuracy = -1.0};
    run_files files;
    progress_bar bar = {.on = verbose && opt->progress};
    float *best_params = NULL;
    int *perm = NULL, *labels = NULL;
    int rc = -1;

    /* Data, split and model are identical on every rank, and so are their
     * failures; cfx_dist_all_ok keeps ranks in step if one fails alone. */
    int ok = cfx_cifar10_open_train(&train_ds, cfg->data_dir, err) == 0 &&
             cfx_split_make(&split, train_ds.n, cfg->val_size, cfg->split_seed, cfg->train_limit,
                            cfg->val_limit, err) == 0;
    if (ok && split.n_train < d->size)
        ok = cfx_fail(err, "data.train_limit: %d training images for %d ranks (need at least "
                           "one per rank)", split.n_train, d->size) == 0;
    int local_max = (cfg->batch_size + d->size - 1) / d->size;
    int max_batch = cfg->eval_batch_size > local_max ? cfg->eval_batch_size : local_max;
    ok = ok && cfx_model_create(&model, cfg->layers, cfg->n_layers, CFX_IMAGE_CHANNELS,
                                CFX_IMAGE_SIZE, CFX_IMAGE_SIZE, max_batch, 0, err) == 0;
    if (ok && model.n_classes != CFX_NUM_CLASSES)
        ok = cfx_fail(err, "model.layers: the last layer has %d outputs, CIFAR-10 has %d classes",
                      model.n_classes, CFX_NUM_CLASSES) == 0;
    ok = ok && cfx_optim_create(&optim, cfg, model.n_params, err) == 0;
    if (ok && root)
        ok = run_files_init(&files, cfg, d, opt->config_text, cfx_blas_threads(), err) == 0;
    if (!cfx_dist_all_ok(ok)) {
        if (ok)
            err->msg[0] = '\0'; /* another rank failed and reports why */
        goto done;
    }
    if (root)
        best_params = cfx_malloc(model.n_params * sizeof(float));

    /* Initial state: fresh weights from rank 0, or a checkpoint. */
    if (opt->resume_path) {
        if (root) {
            ok = cfx_checkpoint_read(opt->resume_path, &model, &optim, &state, err) == 0;
            if (ok && state.seed != cfg->seed)
                ok = cfx_fail(err, "%s: written with train.seed=%llu, the config has %llu",
                              opt->resume_path, (unsigned long long)state.seed,
                              (unsigned long long)cfg->seed) == 0;
            if (ok && state.epoch >= cfg->epochs && state.step_in_epoch == 0)
                ok = cfx_fail(err, "%s: already trained %d of train.epochs=%d epochs",
                              opt->resume_path, state.epoch, cfg->epochs) == 0;
            /* The best weights so far come from best.h5 of the run directory. */
            memcpy(best_params, model.params, model.n_params * sizeof(float));
            if (ok && access(files.best, R_OK) == 0) {
                cfx_model best = {0};
                ok = cfx_model_create(&best, cfg->layers, cfg->n_layers, CFX_IMAGE_CHANNELS,
                                      CFX_IMAGE_SIZE, CFX_IMAGE_SIZE, 1, 0, err) == 0 &&
                     cfx_checkpoint_read(files.best, &best, NULL, NULL, err) == 0;
                if (ok)
                    memcpy(best_params, best.params, model.n_params * sizeof(float));
                cfx_model_free(&best);
            }
            if (ok)
                ok = cfx_metrics_truncate(files.metrics_h5, state.epoch, err) == 0 &&
                     /* a resume into a new output.dir has no log yet */
                     (access(files.metrics_h5, F_OK) != 0 || write_metrics_csv(&files, err) == 0);
        }
        if (!cfx_dist_all_ok(ok)) {
            if (ok)
                err->msg[0] = '\0'; /* rank 0 reports why */
            goto done;
        }
        bcast_resume_state(&model, &optim, &state);
        if (verbose)
            printf("resumed from %s: epoch %d, step %d of the next epoch, global step %ld\n",
                   opt->resume_path, state.epoch, state.step_in_epoch, state.global_step);
    } else {
        if (root)
            cfx_model_init_params(&model, cfg->seed);
        cfx_dist_bcast(model.params, model.n_params * sizeof(float));
    }

    if (verbose) {
        cfx_model_print(&model, stdout);
        printf("data: %d training, %d validation images from %s\n", split.n_train, split.n_val,
               cfg->data_dir);
        fflush(stdout);
    }

    const int B = cfg->batch_size, n_train = split.n_train;
    const int steps_per_epoch = (n_train + B - 1) / B;
    float *tail = model.grads + model.n_params;
    int root_failed = 0, stopped = 0;
    const fault_plan fault = fault_plan_from_env();
    perm = cfx_malloc((size_t)n_train * sizeof *perm);
    labels = cfx_malloc((size_t)local_max * sizeof *labels);

    for (int epoch = state.epoch + 1; epoch <= cfg->epochs && !stopped; epoch++) {
        cfx_phase_times pt = {0};
        double t_epoch = cfx_now(), t;
        double reduce_before = d->allreduce_seconds;
        /* A resumed run may start inside this epoch. */
        int first_step = state.step_in_epoch;
        double loss_sum = first_step ? state.epoch_loss_sum : 0.0;
        double correct = first_step ? state.epoch_correct : 0.0;
        state.step_in_epoch = 0;
        for (int i = 0; i < n_train; i++)
            perm[i] = split.train[i];
        cfx_rng rng;
        cfx_rng_seed(&rng, cfx_hash3(cfg->seed, 0x45504F4348ULL /* "EPOCH" */, (uint64_t)epoch));
        cfx_shuffle(perm, n_train, &rng);
        cfx_augment aug = {cfg->augment, cfg->seed, epoch};

        for (int step = first_step; step < steps_per_epoch; step++) {
            int gstart = step * B, glen = n_train - gstart < B ? n_train - gstart : B;
            int start, count;
            cfx_dist_slice(glen, d->rank, d->size, &start, &count);
            t = cfx_now();
            cfx_batch_fill(model.acts[0], labels, &train_ds, perm + gstart + start, count, &aug);
            pt.data += cfx_now() - t;
            t = cfx_now();
            const float *logits = cfx_model_forward(&model, count);
            double step_loss = 0.0;
            long step_correct = 0;
            cfx_softmax_xent(logits, labels, count, model.n_classes, 1.0f / (float)glen,
                             model.dacts[model.n_layers], &step_loss, &step_correct);
            pt.forward += cfx_now() - t;
            t = cfx_now();
            cfx_model_backward(&model, count);
            pt.backward += cfx_now() - t;
            tail[TAIL_LOSS] = (float)step_loss;
            tail[TAIL_CORRECT] = (float)step_correct;
            tail[TAIL_STOP] = stop_requested ? 1.0f : 0.0f;
            tail[TAIL_ABORT] = (float)root_failed;
            t = cfx_now();
            cfx_dist_allreduce_sum(d, model.grads, model.n_params + CFX_GRAD_TAIL);
            pt.allreduce += cfx_now() - t;
            if (tail[TAIL_ABORT] != 0.0f) {
                if (!root)
                    err->msg[0] = '\0'; /* rank 0 failed and reports why */
                goto done;
            }
            if (!isfinite(tail[TAIL_LOSS])) {
                cfx_fail(err, "training diverged at epoch %d, step %d: the loss is %g; "
                              "the last good checkpoint is kept",
                         epoch, step + 1, (double)tail[TAIL_LOSS]);
                goto done;
            }
            /* NaN or inf iff some summed gradient is: a double sum of floats
             * cannot overflow. Every rank holds the same sum and stops alike. */
            double grad_sum = cfx_sum(model.grads, model.n_params);
            if (!isfinite(grad_sum)) {
                cfx_fail(err, "training diverged at epoch %d, step %d: a gradient is not "
                              "finite (their sum is %g); the last good checkpoint is kept",
                         epoch, step + 1, grad_sum);
                goto done;
            }
            loss_sum += tail[TAIL_LOSS];
            correct += tail[TAIL_CORRECT];
            t = cfx_now();
            cfx_optim_step(&optim, model.params, model.grads);
            pt.optimizer += cfx_now() - t;
            state.global_step++;
            if (bar.on) {
                long done = (long)(step + 1) * B < n_train ? (long)(step + 1) * B : n_train;
                progress_draw(&bar, epoch, cfg->epochs, done, n_train, done - (long)first_step * B,
                              cfx_now() - t_epoch, step + 1 == steps_per_epoch);
            }
            if (state.global_step == fault.step && d->rank == fault.rank)
                raise(fault.sig);
            if (tail[TAIL_STOP] != 0.0f) {
                /* Every rank saw the same flag after the same step. */
                stopped = 1;
                if (step + 1 < steps_per_epoch) {
                    state.step_in_epoch = step + 1;
                    state.epoch_loss_sum = loss_sum;
                    state.epoch_correct = correct;
                    break;
                } /* at the last step: finish the epoch, then stop */
            }
        }
        if (state.step_in_epoch)
            break; /* stopped inside the epoch: rank 0 writes last.h5 below */
        state.epoch = epoch;
        state.epoch_loss_sum = state.epoch_correct = 0.0;
        double train_seconds = cfx_now() - t_epoch;
        int images = n_train - first_step * B > 0 ? n_train - first_step * B : 0;

        t = cfx_now();
        cfx_eval_result val = evaluate_shared(&model, &train_ds, split.val, split.n_val, d);
        pt.validation = cfx_now() - t;
        if (root && !root_failed) {
            int improved = val.accuracy > state.best_validation_accuracy;
            if (improved) {
                state.best_validation_accuracy = val.accuracy;
                state.best_epoch = epoch;
                memcpy(best_params, model.params, model.n_params * sizeof(float));
            }
            cfx_epoch_metrics row = {
                .epoch = epoch,
                .train_loss = loss_sum / n_train,
                .train_accuracy = correct / n_train,
                .validation_loss = val.loss,
                .validation_accuracy = val.accuracy,
                .learning_rate = cfg->lr,
                .images_per_second = images / train_seconds,
                .epoch_seconds = 0.0,
                .allreduce_seconds = d->allreduce_seconds - reduce_before,
            };
            t = cfx_now();
            if (cfx_checkpoint_write(files.last, &model, &optim, &state, &files.meta, err) != 0 ||
                (improved &&
                 cfx_checkpoint_write(files.best, &model, &optim, &state, &files.meta, err) != 0))
                root_failed = 1;
            pt.checkpoint = cfx_now() - t;
            row.epoch_seconds = cfx_now() - t_epoch;
            if (!root_failed && (cfx_metrics_append(files.metrics_h5, &row, err) != 0 ||
                                 write_metrics_csv(&files, err) != 0))
                root_failed = 1;
            if (verbose) {
                progress_clear(&bar);
                printf("epoch %3d/%d  train loss %.4f acc %.4f  val loss %.4f acc %.4f%s  "
                       "%6.0f img/s  %5.1f s\n",
                       epoch, cfg->epochs, row.train_loss, row.train_accuracy, val.loss,
                       val.accuracy, improved ? " *" : "  ", row.images_per_second,
                       row.epoch_seconds);
                if (getenv("CFX_PHASE_TIMES"))
                    printf("  phases: data %.2f s, forward %.2f s, backward %.2f s, allreduce "
                           "%.2f s, optimizer %.2f s, validation %.2f s, checkpoint %.2f s\n",
                           pt.data, pt.forward, pt.backward, pt.allreduce, pt.optimizer,
                           pt.validation, pt.checkpoint);
                fflush(stdout);
            }
        }
    }
    if (root_failed)
        goto done;

    if (stopped && (state.step_in_epoch || state.epoch < cfg->epochs)) {
        if (root) {
            if (state.step_in_epoch &&
                cfx_checkpoint_write(files.last, &model, &optim, &state, &files.meta, err) != 0)
                goto done;
            progress_clear(&bar);
            if (verbose)
                printf("stopped by signal after epoch %d step %d; wrote %s (resume with "
                       "--resume %s)\n",
                       state.epoch + (state.step_in_epoch ? 1 : 0), state.step_in_epoch,
                       files.last, files.last);
        }
        rc = 1;
        goto done;
    }

    /* Training is over and checkpointed: from here a stop signal just ends
     * the program (the flag would no longer be looked at). */
    set_stop_handlers(SIG_DFL);

    /* Test accuracy of the best weights, again shared by all ranks. */
    if (root)
        memcpy(model.params, best_params, model.n_params * sizeof(float));
    cfx_dist_bcast(model.params, model.n_params * sizeof(float));
    int test_ok = cfx_cifar10_open_test(&test_ds, cfg->data_dir, err) == 0;
    if (!cfx_dist_all_ok(test_ok)) {
        if (test_ok)
            err->msg[0] = '\0'; /* another rank reports why */
        goto done;
    }
    int *all = cfx_malloc((size_t)test_ds.n * sizeof *all);
    for (int i = 0; i < test_ds.n; i++)
        all[i] = i;
    cfx_eval_result test = evaluate_shared(&model, &test_ds, all, test_ds.n, d);
    free(all);
    if (root) {
        if (cfx_metrics_set_test(files.metrics_h5, test.loss, test.accuracy, err) != 0)
            goto done;
        if (verbose)
            printf("best validation accuracy %.4f at epoch %d; test loss %.4f, test accuracy "
                   "%.4f (%d images)\n",
                   state.best_validation_accuracy, state.best_epoch, test.loss, test.accuracy,
                   test.n);
    }
    report_memory(d, verbose);
    rc = 0;

done:
    progress_clear(&bar);
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

int cfx_eval_checkpoint(const cfx_config *cfg, const cfx_dist *d, const char *path,
                        cfx_error *err)
{
    cfx_dataset test_ds = {0};
    cfx_model model = {0};
    int ok = 1;
    if (d->rank == 0) {
        ok = cfx_model_create(&model, cfg->layers, cfg->n_layers, CFX_IMAGE_CHANNELS,
                              CFX_IMAGE_SIZE, CFX_IMAGE_SIZE, cfg->eval_batch_size, 0, err) == 0 &&
             cfx_checkpoint_read(path, &model, NULL, NULL, err) == 0 &&
             cfx_cifar10_open_test(&test_ds, cfg->data_dir, err) == 0;
        if (ok) {
            int *all = cfx_malloc((size_t)test_ds.n * sizeof *all);
            for (int i = 0; i < test_ds.n; i++)
                all[i] = i;
            cfx_eval_result test;
            cfx_evaluate(&model, &test_ds, all, test_ds.n, &test, NULL, NULL);
            free(all);
            printf("%s: test loss %.4f, test accuracy %.4f (%d images)\n", path, test.loss,
                   test.accuracy, test.n);
        }
        cfx_model_free(&model);
        if (test_ds.n)
            cfx_dataset_close(&test_ds);
    }
    return cfx_dist_all_ok(ok) ? 0 : -1;
}
