/* The data-parallel training loop, with checkpoints, resume and clean stops.
 *
 * Every rank holds a full replica. Each epoch has one global permutation of
 * the training split (seeded by train.seed and the epoch). Each image's
 * gradient is divided by the global batch size, so the sum over ranks is the
 * batch mean. dist.reduction = exact (default): each global batch is cut
 * into chunks of dist.chunk images, ranks own whole chunks, each chunk runs
 * in its own replica of the model, and every sum over the batch is exact
 * (int64 fixed point), so the bits do not depend on the number of ranks.
 * dist.reduction = float: contiguous per-rank slices and one float
 * MPI_Allreduce of the gradients.
 *
 * Validation is shared by all ranks; rank 0 alone writes
 * logs/metrics.{h5,csv} and checkpoints/{best,last}.h5. A stop signal or a
 * failure of rank 0 travels to every rank with the next step's sums, so all
 * ranks leave the loop after the same step. */
#include "cfx_build_info.h" /* defines: CFX_GIT_COMMIT (generated at build time) */
#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cfx/buckets.h"    /* defines: cfx_buckets (dist.overlap) */
#include "cfx/checkpoint.h" /* defines: cfx_checkpoint_write/read, cfx_metrics_append */
#include "cfx/exact_sum.h"  /* defines: cfx_exact, cfx_exact_sum, cfx_exact_sum_double */
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
    char host[256], start_time[64];
    char *layers; /* the layer list, one per line (malloc'd) */
    cfx_run_meta meta;
} run_files;

/* <output.dir>/config.ini: the effective config of the run, written whole
 * at every start, so the run directory says how it was made. */
static int write_config_copy(const char *dir, const char *text, cfx_error *err)
{
    char path[CFX_PATH_LEN + 32];
    snprintf(path, sizeof path, "%s/config.ini", dir);
    const char *head = "# The effective configuration of this run (written by cfx-train).\n";
    size_t n = strlen(head) + strlen(text);
    char *all = cfx_malloc(n + 1);
    snprintf(all, n + 1, "%s%s", head, text);
    int rc = cfx_write_file_atomic(path, all, n, err);
    free(all);
    return rc;
}

/* The layer list as config text, one entry per line (malloc'd). */
static char *layers_text(const cfx_config *cfg)
{
    size_t cap = 256 * ((size_t)cfg->n_layers + 1), len = 0;
    char *text = cfx_malloc(cap);
    text[0] = '\0';
    for (int i = 0; i < cfg->n_layers; i++) {
        char one[256];
        cfx_layer_spec_format(&cfg->layers[i], one, sizeof one);
        len += (size_t)snprintf(text + len, cap - len, "%s%s", i ? "\n" : "", one);
    }
    return text;
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
    f->layers = layers_text(cfg);
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

/* logs/metrics.csv mirrors logs/metrics.h5; rewritten whole so a resumed
 * run never duplicates rows. */
static int write_metrics_csv(const run_files *f, cfx_error *err)
{
    cfx_epoch_metrics *rows = NULL;
    int n = 0;
    if (cfx_metrics_read(f->metrics_h5, &rows, &n, err) != 0)
        return -1;
    size_t cap = 256 * ((size_t)n + 1), len = 0;
    char *csv = cfx_malloc(cap);
    len += (size_t)snprintf(csv, cap,
                            "epoch,train_loss,train_accuracy,validation_loss,"
                            "validation_accuracy,learning_rate,images_per_second,"
                            "epoch_seconds,allreduce_seconds\n");
    for (int i = 0; i < n; i++) {
        const cfx_epoch_metrics *r = &rows[i];
        len += (size_t)snprintf(csv + len, cap - len, "%d,%.8f,%.6f,%.8f,%.6f,%g,%.1f,%.3f,%.3f\n",
                                r->epoch, r->train_loss, r->train_accuracy, r->validation_loss,
                                r->validation_accuracy, r->learning_rate, r->images_per_second,
                                r->epoch_seconds, r->allreduce_seconds);
    }
    free(rows);
    int rc = cfx_write_file_atomic(f->metrics_csv, csv, len, err);
    free(csv);
    return rc;
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
                                       int n, const cfx_view *views, int n_views,
                                       const cfx_dist *d)
{
    int start, count;
    cfx_dist_slice(n, d->rank, d->size, &start, &count);
    cfx_eval_result part;
    cfx_evaluate_views(m, ds, indices + start, count, views, n_views, &part, NULL, NULL);
    double sums[2] = {part.loss * part.n, (double)llround(part.accuracy * part.n)};
    cfx_dist_allreduce_sum_double(sums, 2);
    return (cfx_eval_result){
        .n = n, .loss = n ? sums[0] / n : 0.0, .accuracy = n ? sums[1] / n : 0.0};
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
    double mine[4] = {
        proc_mb("/proc/self/status", "VmHWM"), proc_mb("/proc/self/status", "RssAnon"),
        proc_mb("/proc/self/status", "RssFile"), proc_mb("/proc/self/smaps_rollup", "Pss")};
    double *all = d->rank == 0 ? cfx_malloc((size_t)d->size * sizeof mine) : NULL;
    cfx_dist_gather_double(mine, 4, all);
    if (verbose)
        for (int r = 0; r < d->size; r++)
            printf("memory: rank %d peak RSS %.0f MB (at the end: private %.0f MB, mapped files "
                   "%.0f MB, proportional share %.0f MB)\n",
                   r, all[4 * r], all[4 * r + 1], all[4 * r + 2], all[4 * r + 3]);
    free(all);
}

/* Batch statistics of BatchNorm summed over every rank. */
static void reduce_over_ranks(void *ctx, double *buf, int n)
{
    (void)ctx;
    cfx_dist_allreduce_sum_double(buf, n);
}

/* Everything one rank's training holds. */
typedef struct {
    const cfx_config *cfg;
    cfx_dist *d;
    const cfx_train_options *opt;
    int root, verbose;
    cfx_dataset train_ds, test_ds;
    cfx_split split;
    cfx_model model;
    cfx_optim optim;
    cfx_train_state state;
    run_files files;
    progress_bar bar;
    char *best_state; /* rank 0: the model state (parameters and buffers) of the best epoch */
    int *perm, *labels;
    int local_max, steps_per_epoch;
    int root_failed; /* rank 0 could not write a file: every rank stops at the next step */
    int stopped;     /* a stop signal was seen by every rank */
    fault_plan fault;
    cfx_phase_times pt;
    cfx_view views[CFX_MAX_VIEWS]; /* train.tta of validation and test */
    int n_views;
    /* dist.reduction = exact: one replica per chunk a rank may own, and the sums */
    int exact_mode, n_reps, max_terms;
    cfx_model *reps;
    cfx_model **rep_ptrs;
    int *rep_counts;
    cfx_exact exact;
    cfx_buckets *buckets; /* dist.overlap: the sum runs during the backward pass */
    double epoch_start, reduce_before;
    double loss_sum, correct; /* of the current epoch so far */
} trainer;

/* Collective: 1 if ok on every rank; else clears err where another rank failed. */
static int all_ok(int ok, cfx_error *err)
{
    if (cfx_dist_all_ok(ok))
        return 1;
    if (ok)
        err->msg[0] = '\0'; /* another rank failed and reports why */
    return 0;
}

/* optim.lr of this step under optim.schedule. */
static long total_steps(const trainer *t)
{
    return (long)t->cfg->epochs * t->steps_per_epoch;
}

static void set_learning_rate(trainer *t)
{
    t->optim.lr = cfx_lr_at(t->cfg, t->state.global_step, total_steps(t), t->steps_per_epoch);
}

/* logs/learning_rate.csv: the learning rate of every step of the run (a
 * pure function of the config), written whole at the start. */
static int write_lr_log(const trainer *t, cfx_error *err)
{
    long total = total_steps(t);
    size_t cap = 64 * ((size_t)total + 1), len = 0;
    char *csv = cfx_malloc(cap);
    len += (size_t)snprintf(csv, cap, "step,epoch,learning_rate\n");
    for (long s = 0; s < total; s++)
        len += (size_t)snprintf(csv + len, cap - len, "%ld,%ld,%.9g\n", s + 1,
                                s / t->steps_per_epoch + 1,
                                cfx_lr_at(t->cfg, s, total, t->steps_per_epoch));
    char path[CFX_PATH_LEN + 32];
    snprintf(path, sizeof path, "%s/logs/learning_rate.csv", t->cfg->output_dir);
    int rc = cfx_write_file_atomic(path, csv, len, err);
    free(csv);
    return rc;
}

/* Parameter groups in `epoch`: the tensors of layers with lr_scale or
 * decay_scale (or trainable=false) get their multipliers in the optimizer;
 * trainable=bias freezes the other tensors of the layer, train_epochs=N all
 * of them after epoch N. */
static void set_param_groups(cfx_optim *o, const cfx_model *m, int epoch)
{
    cfx_optim_clear_groups(o);
    for (int i = 0; i < m->n_layers; i++) {
        const cfx_layer_spec *s = &m->layers[i].spec;
        int expired = s->train_epochs > 0 && epoch > s->train_epochs;
        if (s->lr_scale == 1.0 && s->decay_scale == 1.0 && !s->bias_only && !expired)
            continue;
        for (int k = 0; k < m->layers[i].n_tensors; k++) {
            const cfx_tensor *T = &m->layers[i].tensors[k];
            if (T->store != CFX_TENSOR_PARAM)
                continue;
            int frozen = expired || (s->bias_only && strcmp(T->suffix, "bias") != 0);
            cfx_optim_set_group(o, T->offset, T->offset + T->count, frozen ? 0.0 : s->lr_scale,
                                frozen ? 0.0 : s->decay_scale);
        }
    }
}

/* The augmentation of training images in `epoch`, from data.*. */
static cfx_augment train_augment(const cfx_config *cfg, int epoch)
{
    cfx_flip_mode flip = !strcmp(cfg->flip, "alternating") ? CFX_FLIP_ALTERNATING
                         : !strcmp(cfg->flip, "none")      ? CFX_FLIP_NONE
                                                           : CFX_FLIP_RANDOM;
    return (cfx_augment){cfg->augment, cfg->seed, epoch, cfg->crop_padding,
                         !strcmp(cfg->pad_mode, "reflect"), flip};
}

/* BatchNorm's batch sums of the replicas of every rank, exactly. */
static void reduce_rows_exact(void *ctx, const double *rows, int n_rows, int n, double *total)
{
    trainer *t = ctx;
    if (cfx_exact_sum_double(&t->exact, rows, n_rows, n, t->max_terms, total) != CFX_EXACT_OK)
        for (int i = 0; i < n; i++)
            total[i] = NAN; /* a non-finite statistic: the gradients will say so */
}

/* The backward pass has finished `layer`: its bucket may go. */
static void layer_done(void *ctx, int layer)
{
    trainer *t = ctx;
    cfx_buckets_layer_done(t->buckets, layer);
}

/* dist.overlap: buckets of the exact sum cut at layer boundaries
 * (layer_seg: the first segment of each layer, then the number of segments). */
static int setup_buckets(trainer *t, const int *layer_seg, cfx_error *err)
{
    if (!t->d->thread_multiple) {
        if (t->root)
            printf("note: dist.overlap: this MPI gives no MPI_THREAD_MULTIPLE; the gradients "
                   "are summed after the backward pass\n");
        return 0;
    }
    size_t bytes = (size_t)(t->cfg->bucket_mb * 1e6);
    int n_layers = t->model.n_layers;
    if (cfx_buckets_count(&t->exact, layer_seg, n_layers, bytes) < 2)
        return 0; /* one bucket: nothing to overlap */
    return cfx_buckets_create(&t->buckets, &t->exact, layer_seg, n_layers, bytes, err);
}

/* dist.reduction = exact: a replica for each chunk this rank may own in a
 * step, sharing the model's state, and the fixed-point sum of gradients
 * with one scale per parameter tensor (in buckets with dist.overlap). */
static int setup_replicas(trainer *t, cfx_error *err)
{
    const cfx_model *m = &t->model;
    t->reps = cfx_calloc((size_t)t->n_reps, sizeof *t->reps);
    t->rep_ptrs = cfx_calloc((size_t)t->n_reps, sizeof *t->rep_ptrs);
    t->rep_counts = cfx_calloc((size_t)t->n_reps, sizeof *t->rep_counts);
    for (int r = 0; r < t->n_reps; r++) {
        if (cfx_model_create_replica(&t->reps[r], m, t->cfg->chunk, err) != 0)
            return -1;
        t->rep_ptrs[r] = &t->reps[r];
    }
    t->reps[0].owns_buffers = 1; /* the running statistics move once per step */
    int n_tensors = 0, n_segs = 0;
    for (int i = 0; i < m->n_layers; i++)
        n_tensors += m->layers[i].n_tensors;
    size_t *seg = cfx_malloc(((size_t)n_tensors + 1) * sizeof *seg);
    int *layer_seg = cfx_malloc(((size_t)m->n_layers + 1) * sizeof *layer_seg);
    for (int i = 0; i < m->n_layers; i++) {
        layer_seg[i] = n_segs;
        for (int k = 0; k < m->layers[i].n_tensors; k++)
            if (m->layers[i].tensors[k].store == CFX_TENSOR_PARAM)
                seg[n_segs++] = m->layers[i].tensors[k].count;
    }
    layer_seg[m->n_layers] = n_segs;
    int rc = cfx_exact_create(&t->exact, m->n_params, seg, n_segs, err);
    if (rc == 0 && t->cfg->overlap)
        rc = setup_buckets(t, layer_seg, err);
    free(seg);
    free(layer_seg);
    return rc;
}

/* Data, split, model, optimizer and run files: identical on every rank, and
 * so are their failures; all_ok keeps ranks in step if one fails alone. */
static int trainer_setup(trainer *t, cfx_error *err)
{
    const cfx_config *cfg = t->cfg;
    int ok = cfx_cifar10_open_train(&t->train_ds, cfg->data_dir, err) == 0 &&
             cfx_split_make(&t->split, t->train_ds.n, cfg->val_size, cfg->split_seed,
                            cfg->train_limit, cfg->val_limit, err) == 0;
    if (ok && t->split.n_train < t->d->size)
        ok = cfx_fail(err,
                      "data.train_limit: %d training images for %d ranks (need at least "
                      "one per rank)",
                      t->split.n_train, t->d->size) == 0;
    t->exact_mode = strcmp(cfg->reduction, "exact") == 0;
    t->n_views = cfx_tta_views(cfg->tta, t->views);
    t->max_terms = (cfg->batch_size + cfg->chunk - 1) / cfg->chunk; /* chunks of a full batch */
    t->n_reps = (t->max_terms + t->d->size - 1) / t->d->size;
    t->local_max = t->exact_mode ? t->n_reps * cfg->chunk
                                 : (cfg->batch_size + t->d->size - 1) / t->d->size;
    int max_batch = cfg->eval_batch_size > t->local_max ? cfg->eval_batch_size : t->local_max;
    ok = ok && cfx_model_create(&t->model, cfg->layers, cfg->n_layers, CFX_IMAGE_CHANNELS,
                                CFX_IMAGE_SIZE, CFX_IMAGE_SIZE, max_batch, 0, err) == 0;
    if (ok && t->model.n_classes != CFX_NUM_CLASSES)
        ok = cfx_fail(err, "model.layers: the last layer has %d outputs, CIFAR-10 has %d classes",
                      t->model.n_classes, CFX_NUM_CLASSES) == 0;
    ok = ok && cfx_optim_create(&t->optim, cfg, t->model.n_params, err) == 0;
    if (ok) {
        set_param_groups(&t->optim, &t->model, 1);
        cfx_lookahead_start(&t->optim, t->model.params, t->model.n_params + t->model.n_buffers);
    }
    ok = ok && (!t->exact_mode || setup_replicas(t, err) == 0);
    if (ok && t->root)
        ok =
            run_files_init(&t->files, cfg, t->d, t->opt->config_text, cfx_blas_threads(), err) == 0;
    if (!all_ok(ok, err))
        return -1;
    t->model.reduce = reduce_over_ranks;
    if (t->root)
        t->best_state = cfx_malloc(t->model.state_bytes);
    t->steps_per_epoch = (t->split.n_train + cfg->batch_size - 1) / cfg->batch_size;
    if (!all_ok(!t->root || write_lr_log(t, err) == 0, err))
        return -1;
    t->perm = cfx_malloc((size_t)t->split.n_train * sizeof *t->perm);
    t->labels = cfx_malloc((size_t)t->local_max * sizeof *t->labels);
    t->fault = fault_plan_from_env();
    return 0;
}

/* Rank 0: the checkpoint to resume from, the best state so far (best.h5 of
 * the run directory) and the metrics log cut back to the checkpoint. */
static int read_resume_state(trainer *t, cfx_error *err)
{
    const char *path = t->opt->resume_path;
    const cfx_config *cfg = t->cfg;
    if (cfx_checkpoint_read(path, &t->model, &t->optim, &t->state, err) != 0)
        return -1;
    if (t->state.seed != cfg->seed)
        return cfx_fail(err, "%s: written with train.seed=%llu, the config has %llu", path,
                        (unsigned long long)t->state.seed, (unsigned long long)cfg->seed);
    if (t->state.epoch >= cfg->epochs && t->state.step_in_epoch == 0)
        return cfx_fail(err, "%s: already trained %d of train.epochs=%d epochs", path,
                        t->state.epoch, cfg->epochs);
    memcpy(t->best_state, t->model.state, t->model.state_bytes);
    if (access(t->files.best, R_OK) == 0) {
        cfx_model best = {0};
        int ok = cfx_model_create(&best, cfg->layers, cfg->n_layers, CFX_IMAGE_CHANNELS,
                                  CFX_IMAGE_SIZE, CFX_IMAGE_SIZE, 1, 0, err) == 0 &&
                 cfx_checkpoint_read(t->files.best, &best, NULL, NULL, err) == 0;
        if (ok)
            memcpy(t->best_state, best.state, t->model.state_bytes);
        cfx_model_free(&best);
        if (!ok)
            return -1;
    }
    if (cfx_metrics_truncate(t->files.metrics_h5, t->state.epoch, err) != 0)
        return -1;
    /* a resume into a new output.dir has no log yet */
    return access(t->files.metrics_h5, F_OK) != 0 ? 0 : write_metrics_csv(&t->files, err);
}

/* conv2d whiten=true layers (which must read the image): weights from the
 * patches of the first CFX_WHITEN_IMAGES training images, unaugmented. The
 * same on every rank: same images, same arithmetic. */
static int whiten_layers(trainer *t, cfx_error *err)
{
    cfx_model *m = &t->model;
    int n = t->split.n_train < CFX_WHITEN_IMAGES ? t->split.n_train : CFX_WHITEN_IMAGES, rc = 0;
    float *images = NULL;
    int *labels = NULL;
    for (int i = 0; i < m->n_layers && rc == 0; i++) {
        const cfx_layer *L = &m->layers[i];
        if (!L->spec.whiten)
            continue;
        if (L->input[0] != -1) {
            rc = cfx_fail(err, "model.layers: layer %s: whiten=true needs the image as its "
                               "input (make it the first layer)", L->key);
            break;
        }
        if (!images) {
            images = cfx_malloc((size_t)n * m->in_c * m->in_h * m->in_w * sizeof *images);
            labels = cfx_malloc((size_t)n * sizeof *labels);
            cfx_batch_fill(images, labels, &t->train_ds, t->split.train, n, NULL);
        }
        rc = cfx_whiten_weights(m->params + L->weight_offset, L->out_c, images, n, L->in_c,
                                L->in_h, L->in_w, L->spec.kernel, CFX_WHITEN_EPS, err);
    }
    free(images);
    free(labels);
    return rc;
}

/* Initial state on every rank: fresh weights from rank 0, or a checkpoint. */
static int trainer_start(trainer *t, cfx_error *err)
{
    cfx_model *m = &t->model;
    if (t->opt->resume_path) {
        int ok = !t->root || read_resume_state(t, err) == 0;
        if (!all_ok(ok, err))
            return -1;
        cfx_dist_bcast(t->optim.m, t->optim.n * sizeof(float));
        if (t->optim.v)
            cfx_dist_bcast(t->optim.v, t->optim.n * sizeof(float));
        cfx_dist_bcast(&t->optim.step, sizeof t->optim.step);
        cfx_dist_bcast(&t->state, sizeof t->state);
        if (t->optim.lookahead) { /* the checkpoint's /model is the average */
            cfx_dist_bcast(t->optim.lookahead, t->optim.n_state * sizeof(float));
            t->optim.model_has_average = 1;
        }
        if (t->verbose)
            printf("resumed from %s: epoch %d, step %d of the next epoch, global step %ld\n",
                   t->opt->resume_path, t->state.epoch, t->state.step_in_epoch,
                   t->state.global_step);
    } else if (t->root) {
        cfx_model_init_params(m, t->cfg->seed);
    }
    cfx_dist_bcast(m->state, m->state_bytes);
    if (t->opt->resume_path) {
        cfx_lookahead_swap(&t->optim, m->params); /* train the fast weights */
    } else {
        if (!all_ok(whiten_layers(t, err) == 0, err))
            return -1;
        cfx_lookahead_start(&t->optim, m->params, t->optim.n_state);
    }
    if (t->verbose) {
        cfx_model_print(m, stdout);
        printf("data: %d training, %d validation images from %s\n", t->split.n_train,
               t->split.n_val, t->cfg->data_dir);
        fflush(stdout);
    }
    return 0;
}

static void inject_fault(const trainer *t)
{
    if (t->state.global_step == t->fault.step && t->d->rank == t->fault.rank)
        raise(t->fault.sig);
}

/* Every rank holds the same sums, so every rank stops alike. */
/* The summed loss of a step of glen images: not finite, or its mean above
 * train.max_loss (a loss that explodes without becoming NaN). */
static int check_loss(const trainer *t, int epoch, int step, double loss_sum, int glen,
                      cfx_error *err)
{
    if (!isfinite(loss_sum))
        return cfx_fail(err,
                        "training diverged at epoch %d, step %d: the loss is %g; the last "
                        "good checkpoint is kept",
                        epoch, step + 1, loss_sum);
    double mean = loss_sum / glen;
    if (mean > t->cfg->max_loss)
        return cfx_fail(err,
                        "training diverged at epoch %d, step %d: the loss is %.3g, above "
                        "train.max_loss=%g; the last good checkpoint is kept",
                        epoch, step + 1, mean, t->cfg->max_loss);
    return 0;
}

static int check_divergence(const trainer *t, int epoch, int step, const float *tail, int glen,
                            cfx_error *err)
{
    if (check_loss(t, epoch, step, tail[TAIL_LOSS], glen, err) != 0)
        return -1;
    /* NaN or inf iff some summed gradient is: a double sum of floats cannot overflow. */
    double grad_sum = cfx_sum(t->model.grads, t->model.n_params);
    if (!isfinite(grad_sum))
        return cfx_fail(err,
                        "training diverged at epoch %d, step %d: a gradient is not finite "
                        "(their sum is %g); the last good checkpoint is kept",
                        epoch, step + 1, grad_sum);
    return 0;
}

/* One optimizer step on global batch `step` of the epoch. Returns 0, or -1
 * when training must end (failure of rank 0 or divergence). */
static int train_step(trainer *t, int epoch, int step, cfx_error *err)
{
    cfx_model *m = &t->model;
    const int B = t->cfg->batch_size, n_train = t->split.n_train;
    int gstart = step * B, glen = n_train - gstart < B ? n_train - gstart : B;
    int start, count;
    cfx_dist_slice(glen, t->d->rank, t->d->size, &start, &count);
    cfx_augment aug = train_augment(t->cfg, epoch);
    double t0 = cfx_now();
    cfx_batch_fill(m->acts[0], t->labels, &t->train_ds, t->perm + gstart + start, count, &aug);
    t->pt.data += cfx_now() - t0;
    t0 = cfx_now();
    const float *logits = cfx_model_forward(m, count);
    double step_loss = 0.0;
    long step_correct = 0;
    cfx_softmax_xent_smooth(logits, t->labels, count, m->n_classes, t->cfg->label_smoothing,
                            1.0f / (float)glen, m->dacts[m->n_layers], &step_loss, &step_correct);
    t->pt.forward += cfx_now() - t0;
    t0 = cfx_now();
    cfx_model_backward(m, count);
    t->pt.backward += cfx_now() - t0;
    float *tail = m->grads + m->n_params;
    tail[TAIL_LOSS] = (float)step_loss;
    tail[TAIL_CORRECT] = (float)step_correct;
    tail[TAIL_STOP] = stop_requested ? 1.0f : 0.0f;
    tail[TAIL_ABORT] = (float)t->root_failed;
    t0 = cfx_now();
    cfx_dist_allreduce_sum(t->d, m->grads, m->n_params + CFX_GRAD_TAIL);
    t->pt.allreduce += cfx_now() - t0;
    if (tail[TAIL_ABORT] != 0.0f) {
        if (!t->root)
            err->msg[0] = '\0'; /* rank 0 failed and reports why */
        return -1;
    }
    if (check_divergence(t, epoch, step, tail, glen, err) != 0)
        return -1;
    t->loss_sum += tail[TAIL_LOSS];
    t->correct += tail[TAIL_CORRECT];
    t0 = cfx_now();
    set_learning_rate(t);
    cfx_optim_step(&t->optim, m->params, m->grads);
    cfx_lookahead_step(&t->optim, m->params, t->optim.step, total_steps(t));
    t->pt.optimizer += cfx_now() - t0;
    t->state.global_step++;
    t->stopped = tail[TAIL_STOP] != 0.0f; /* every rank saw the same flag */
    return 0;
}

/* Loss and accuracy over ds[indices[0..n)] by all ranks. Exact reduction:
 * ranks own whole chunks of eval_batch_size images, each one forward pass of
 * exactly those images, and the sums are exact, so the metrics are the same
 * bits for any rank count. The first n_views views of train.tta (1: the
 * image alone). */
static cfx_eval_result evaluate_all(trainer *t, const cfx_dataset *ds, const int *indices, int n,
                                    int n_views)
{
    if (!t->exact_mode)
        return evaluate_shared(&t->model, ds, indices, n, t->views, n_views, t->d);
    const int cs = t->cfg->eval_batch_size, n_chunks = (n + cs - 1) / cs;
    int first, count;
    cfx_dist_slice(n_chunks, t->d->rank, t->d->size, &first, &count);
    double *rows = cfx_calloc(2 * ((size_t)count + 1), sizeof *rows), sums[2] = {0.0, 0.0};
    for (int c = 0; c < count; c++) {
        int start = (first + c) * cs, len = n - start < cs ? n - start : cs;
        cfx_eval_result part;
        cfx_evaluate_views(&t->model, ds, indices + start, len, t->views, n_views, &part,
                           NULL, NULL);
        rows[2 * c] = part.loss * len;
        rows[2 * c + 1] = (double)llround(part.accuracy * len);
    }
    cfx_exact_sum_double(&t->exact, rows, count, 2, n_chunks > 0 ? n_chunks : 1, sums);
    free(rows);
    return (cfx_eval_result){
        .n = n, .loss = n ? sums[0] / n : 0.0, .accuracy = n ? sums[1] / n : 0.0};
}

/* The parameter tensor of segment seg of the exact sum ("3.weight"). */
static void param_key(const cfx_model *m, int seg, char *buf, size_t len)
{
    for (int i = 0; i < m->n_layers; i++)
        for (int k = 0; k < m->layers[i].n_tensors; k++)
            if (m->layers[i].tensors[k].store == CFX_TENSOR_PARAM && seg-- == 0) {
                snprintf(buf, len, "%s.%s", m->layers[i].key, m->layers[i].tensors[k].suffix);
                return;
            }
    snprintf(buf, len, "?");
}

/* The chunks of global batch `step` this rank owns, each in a replica: its
 * images, their labels, and counts (0 for replicas without a chunk). */
static int fill_chunks(trainer *t, int epoch, int step, int glen)
{
    const int B = t->cfg->batch_size, cs = t->cfg->chunk;
    int first, n_chunks;
    cfx_dist_slice((glen + cs - 1) / cs, t->d->rank, t->d->size, &first, &n_chunks);
    cfx_augment aug = train_augment(t->cfg, epoch);
    for (int r = 0; r < t->n_reps; r++) {
        int start = (first + r) * cs, count = r < n_chunks ? glen - start : 0;
        t->rep_counts[r] = count < cs ? count : cs;
        if (t->rep_counts[r] > 0)
            cfx_batch_fill(t->reps[r].acts[0], t->labels + (size_t)r * cs, &t->train_ds,
                           t->perm + (size_t)step * B + start, t->rep_counts[r], &aug);
    }
    return n_chunks;
}

/* One optimizer step with dist.reduction = exact: each chunk's gradient in
 * its own replica, then every sum over the batch (gradients, loss, correct
 * predictions) in int64 fixed point, the same bits for any rank count. */
static int train_step_exact(trainer *t, int epoch, int step, cfx_error *err)
{
    const int B = t->cfg->batch_size, n_train = t->split.n_train, cs = t->cfg->chunk;
    int glen = n_train - step * B < B ? n_train - step * B : B;
    double t0 = cfx_now(), exact_before = t->exact.seconds;
    int n_chunks = fill_chunks(t, epoch, step, glen);
    t->pt.data += cfx_now() - t0;
    t0 = cfx_now();
    cfx_replicas_forward(t->rep_ptrs, t->rep_counts, t->n_reps, reduce_rows_exact, t);
    double *stats = cfx_calloc(2 * ((size_t)t->n_reps + 1), sizeof *stats);
    for (int r = 0; r < n_chunks; r++) {
        cfx_model *m = &t->reps[r];
        long correct = 0;
        cfx_softmax_xent_smooth(m->acts[m->n_layers], t->labels + (size_t)r * cs,
                                t->rep_counts[r], m->n_classes, t->cfg->label_smoothing,
                                1.0f / (float)glen, m->dacts[m->n_layers], &stats[2 * r], &correct);
        stats[2 * r + 1] = (double)correct;
    }
    t->pt.forward += cfx_now() - t0;
    const float **g = cfx_malloc((size_t)t->n_reps * sizeof *g);
    for (int r = 0; r < n_chunks; r++)
        g[r] = t->reps[r].grads;
    if (t->buckets)
        cfx_buckets_begin(t->buckets, g, n_chunks, t->max_terms, t->model.grads);
    t0 = cfx_now();
    cfx_replicas_backward(t->rep_ptrs, t->rep_counts, t->n_reps, reduce_rows_exact,
                          t->buckets ? layer_done : NULL, t);
    t->pt.backward += cfx_now() - t0;
    t0 = cfx_now();
    int flags[2] = {stop_requested != 0, t->root_failed};
    cfx_dist_allreduce_max_int(flags, 2);
    double wait0 = cfx_now();
    int bad = -1,
        status = t->buckets ? cfx_buckets_end(t->buckets, &bad)
                            : cfx_exact_sum(&t->exact, g, n_chunks, t->max_terms, t->model.grads);
    if (t->buckets)
        t->d->allreduce_seconds += cfx_now() - wait0; /* what the overlap did not hide */
    else
        bad = t->exact.bad_segment;
    double sums[2] = {0.0, 0.0};
    int stat_status = cfx_exact_sum_double(&t->exact, stats, n_chunks, 2, t->max_terms, sums);
    free((void *)g);
    free(stats);
    t->pt.allreduce += cfx_now() - t0;
    t->d->allreduce_seconds += t->exact.seconds - exact_before;
    if (flags[1]) {
        if (!t->root)
            err->msg[0] = '\0'; /* rank 0 failed and reports why */
        return -1;
    }
    if (stat_status != CFX_EXACT_OK)
        sums[0] = NAN; /* a non-finite loss of some chunk */
    if (check_loss(t, epoch, step, sums[0], glen, err) != 0)
        return -1;
    if (status != CFX_EXACT_OK) {
        char key[2 * CFX_NAME_LEN];
        param_key(&t->model, bad, key, sizeof key);
        return cfx_fail(err, "training diverged at epoch %d, step %d: a gradient is not finite "
                             "(in %s); the last good checkpoint is kept", epoch, step + 1, key);
    }
    t->loss_sum += sums[0];
    t->correct += sums[1];
    t0 = cfx_now();
    set_learning_rate(t);
    cfx_optim_step(&t->optim, t->model.params, t->model.grads);
    cfx_lookahead_step(&t->optim, t->model.params, t->optim.step, total_steps(t));
    t->pt.optimizer += cfx_now() - t0;
    t->state.global_step++;
    t->stopped = flags[0];
    return 0;
}

/* The epoch's permutation of the training split. */
static void shuffle_epoch(trainer *t, int epoch)
{
    for (int i = 0; i < t->split.n_train; i++)
        t->perm[i] = t->split.train[i];
    cfx_rng rng;
    cfx_rng_seed(&rng, cfx_hash3(t->cfg->seed, 0x45504F4348ULL /* "EPOCH" */, (uint64_t)epoch));
    cfx_shuffle(t->perm, t->split.n_train, &rng);
}

/* The training steps of one epoch (from step_in_epoch of a resumed run).
 * Returns 0 when the epoch is complete, 1 when a stop signal ended it early
 * (state.step_in_epoch says where), -1 on failure. */
static int train_epoch(trainer *t, int epoch, cfx_error *err)
{
    const int B = t->cfg->batch_size, n_train = t->split.n_train;
    int first_step = t->state.step_in_epoch;
    t->loss_sum = first_step ? t->state.epoch_loss_sum : 0.0;
    t->correct = first_step ? t->state.epoch_correct : 0.0;
    t->state.step_in_epoch = 0;
    shuffle_epoch(t, epoch);
    set_param_groups(&t->optim, &t->model, epoch);
    cfx_model_set_training(&t->model, 1);
    for (int r = 0; r < t->n_reps && t->reps; r++)
        cfx_model_set_training(&t->reps[r], 1);
    for (int step = first_step; step < t->steps_per_epoch; step++) {
        if ((t->exact_mode ? train_step_exact : train_step)(t, epoch, step, err) != 0)
            return -1;
        if (t->bar.on) {
            long done = (long)(step + 1) * B < n_train ? (long)(step + 1) * B : n_train;
            progress_draw(&t->bar, epoch, t->cfg->epochs, done, n_train,
                          done - (long)first_step * B, cfx_now() - t->epoch_start,
                          step + 1 == t->steps_per_epoch);
        }
        inject_fault(t);
        if (t->stopped && step + 1 < t->steps_per_epoch) {
            t->state.step_in_epoch = step + 1;
            t->state.epoch_loss_sum = t->loss_sum;
            t->state.epoch_correct = t->correct;
            return 1;
        } /* at the last step: finish the epoch, then stop */
    }
    return 0;
}

static void print_epoch(const trainer *t, const cfx_epoch_metrics *row, int improved)
{
    printf("epoch %3d/%d  train loss %.4f acc %.4f  val loss %.4f acc %.4f%s  %6.0f img/s  "
           "%5.1f s\n",
           row->epoch, t->cfg->epochs, row->train_loss, row->train_accuracy, row->validation_loss,
           row->validation_accuracy, improved ? " *" : "  ", row->images_per_second,
           row->epoch_seconds);
    const cfx_phase_times *pt = &t->pt;
    if (getenv("CFX_PHASE_TIMES"))
        printf("  phases: data %.2f s, forward %.2f s, backward %.2f s, allreduce %.2f s, "
               "optimizer %.2f s, validation %.2f s, checkpoint %.2f s\n",
               pt->data, pt->forward, pt->backward, pt->allreduce, pt->optimizer, pt->validation,
               pt->checkpoint);
    if (getenv("CFX_PHASE_TIMES") && t->buckets)
        printf("  overlap: %ld gradient buckets so far, summed in %.2f s beside the backward "
               "pass\n",
               cfx_buckets_sent(t->buckets), cfx_buckets_busy_seconds(t->buckets));
    fflush(stdout);
}

/* Rank 0 after validation: best state, checkpoints, metrics row. */
static void record_epoch(trainer *t, int epoch, int images, double train_seconds,
                         cfx_eval_result val, cfx_error *err)
{
    cfx_model *m = &t->model;
    int improved = val.accuracy > t->state.best_validation_accuracy;
    if (improved) {
        t->state.best_validation_accuracy = val.accuracy;
        t->state.best_epoch = epoch;
        memcpy(t->best_state, m->state, m->state_bytes);
    }
    const int n_train = t->split.n_train;
    cfx_epoch_metrics row = {
        .epoch = epoch,
        .train_loss = t->loss_sum / n_train,
        .train_accuracy = t->correct / n_train,
        .validation_loss = val.loss,
        .validation_accuracy = val.accuracy,
        .learning_rate = t->optim.lr, /* of the epoch's last step */
        .images_per_second = images / train_seconds,
        .allreduce_seconds = t->d->allreduce_seconds - t->reduce_before,
    };
    double t0 = cfx_now();
    const run_files *f = &t->files;
    if (cfx_checkpoint_write(f->last, m, &t->optim, &t->state, &f->meta, err) != 0 ||
        (improved && cfx_checkpoint_write(f->best, m, &t->optim, &t->state, &f->meta, err) != 0))
        t->root_failed = 1;
    t->pt.checkpoint = cfx_now() - t0;
    row.epoch_seconds = cfx_now() - t->epoch_start;
    if (!t->root_failed &&
        (cfx_metrics_append(f->metrics_h5, &row, err) != 0 || write_metrics_csv(f, err) != 0))
        t->root_failed = 1;
    if (t->verbose) {
        progress_clear(&t->bar);
        print_epoch(t, &row, improved);
    }
}

/* After the last step of an epoch: the same buffers everywhere (per-rank
 * BatchNorm statistics take rank 0's), validation in eval mode by all ranks,
 * then rank 0 records the epoch. */
static void end_epoch(trainer *t, int epoch, int first_step, cfx_error *err)
{
    cfx_model *m = &t->model;
    t->state.epoch = epoch;
    t->state.epoch_loss_sum = t->state.epoch_correct = 0.0;
    double train_seconds = cfx_now() - t->epoch_start;
    int images = t->split.n_train - first_step * t->cfg->batch_size;
    size_t param_bytes = m->n_params * sizeof(float);
    cfx_dist_bcast((char *)m->state + param_bytes, m->state_bytes - param_bytes);
    if (t->optim.lookahead) { /* validate and save the average */
        cfx_lookahead_swap(&t->optim, m->params);
        cfx_dist_bcast(m->buffers, m->n_buffers * sizeof(float));
    }
    double t0 = cfx_now();
    cfx_eval_result val = evaluate_all(t, &t->train_ds, t->split.val, t->split.n_val,
                                       t->cfg->validation_tta ? t->n_views : 1);
    t->pt.validation = cfx_now() - t0;
    if (t->root && !t->root_failed)
        record_epoch(t, epoch, images > 0 ? images : 0, train_seconds, val, err);
    cfx_lookahead_swap(&t->optim, m->params);
}

/* Rank 0 writes last.h5 of a run stopped inside an epoch. Returns 1 (stopped). */
static int finish_stopped(trainer *t, cfx_error *err)
{
    if (!t->root)
        return 1;
    const cfx_train_state *s = &t->state;
    cfx_lookahead_swap(&t->optim, t->model.params); /* /model: the average */
    if (s->step_in_epoch &&
        cfx_checkpoint_write(t->files.last, &t->model, &t->optim, s, &t->files.meta, err) != 0)
        return -1;
    progress_clear(&t->bar);
    if (t->verbose)
        printf("stopped by signal after epoch %d step %d; wrote %s (resume with --resume %s)\n",
               s->epoch + (s->step_in_epoch ? 1 : 0), s->step_in_epoch, t->files.last,
               t->files.last);
    return 1;
}

/* "no TTA" or "TTA flip_translate (6 views)", for the test lines. */
static const char *tta_label(const char *tta, int n_views, char *buf, size_t len)
{
    if (n_views <= 1)
        return "no TTA";
    snprintf(buf, len, "TTA %s (%d views)", tta, n_views);
    return buf;
}

/* Test accuracy of the best state, shared by all ranks. */
static int finish_test(trainer *t, cfx_error *err)
{
    cfx_model *m = &t->model;
    if (t->root)
        memcpy(m->state, t->best_state, m->state_bytes);
    cfx_dist_bcast(m->state, m->state_bytes);
    int ok = cfx_cifar10_open_test(&t->test_ds, t->cfg->data_dir, err) == 0;
    if (!all_ok(ok, err))
        return -1;
    int n_test = t->test_ds.n;
    if (t->cfg->test_limit > 0 && t->cfg->test_limit < n_test)
        n_test = (int)t->cfg->test_limit;
    int *all = cfx_malloc((size_t)n_test * sizeof *all);
    for (int i = 0; i < n_test; i++)
        all[i] = i;
    cfx_eval_result test = evaluate_all(t, &t->test_ds, all, n_test, t->n_views);
    free(all);
    if (t->root) {
        if (cfx_metrics_set_test(t->files.metrics_h5, test.loss, test.accuracy, t->cfg->tta,
                                 err) != 0)
            return -1;
        char tta[64];
        if (t->verbose)
            printf("best validation accuracy %.4f at epoch %d; test loss %.4f, test accuracy "
                   "%.4f (%d images), %s\n",
                   t->state.best_validation_accuracy, t->state.best_epoch, test.loss, test.accuracy,
                   test.n, tta_label(t->cfg->tta, t->n_views, tta, sizeof tta));
    }
    report_memory(t->d, t->verbose);
    return 0;
}

static void trainer_free(trainer *t)
{
    progress_clear(&t->bar);
    free(t->best_state);
    free(t->perm);
    free(t->labels);
    if (t->root)
        free(t->files.layers);
    cfx_optim_free(&t->optim);
    for (int r = 0; r < t->n_reps && t->reps; r++)
        cfx_model_free(&t->reps[r]);
    free(t->reps);
    free(t->rep_ptrs);
    free(t->rep_counts);
    cfx_buckets_free(t->buckets);
    cfx_exact_free(&t->exact);
    cfx_model_free(&t->model);
    cfx_split_free(&t->split);
    cfx_dataset_close(&t->train_ds);
    if (t->test_ds.n)
        cfx_dataset_close(&t->test_ds);
}

int cfx_train(const cfx_config *cfg, cfx_dist *d, const cfx_train_options *opt, cfx_error *err)
{
    trainer t = {.cfg = cfg, .d = d, .opt = opt, .root = d->rank == 0};
    t.verbose = t.root && !opt->quiet;
    t.bar.on = t.verbose && opt->progress;
    t.state = (cfx_train_state){
        .seed = cfg->seed, .split_seed = cfg->split_seed, .best_validation_accuracy = -1.0};
    int rc = -1;
    if (trainer_setup(&t, err) != 0 || trainer_start(&t, err) != 0)
        goto done;
    for (int epoch = t.state.epoch + 1; epoch <= cfg->epochs && !t.stopped; epoch++) {
        memset(&t.pt, 0, sizeof t.pt);
        t.epoch_start = cfx_now();
        t.reduce_before = d->allreduce_seconds;
        int first_step = t.state.step_in_epoch;
        int status = train_epoch(&t, epoch, err);
        if (status < 0)
            goto done;
        if (status > 0)
            break; /* stopped inside the epoch */
        end_epoch(&t, epoch, first_step, err);
    }
    if (t.root_failed)
        goto done;
    if (t.stopped && (t.state.step_in_epoch || t.state.epoch < cfg->epochs)) {
        rc = finish_stopped(&t, err);
        goto done;
    }
    /* Training is over and checkpointed: from here a stop signal just ends
     * the program (the flag would no longer be looked at). */
    set_stop_handlers(SIG_DFL);
    rc = finish_test(&t, err);
done:
    trainer_free(&t);
    return rc;
}

int cfx_eval_checkpoint(const cfx_config *cfg, const cfx_dist *d, const char *path, cfx_error *err)
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
            cfx_view views[CFX_MAX_VIEWS];
            int n_views = cfx_tta_views(cfg->tta, views);
            cfx_evaluate_views(&model, &test_ds, all, test_ds.n, views, n_views, &test, NULL,
                               NULL);
            free(all);
            char tta[64];
            printf("%s: test loss %.4f, test accuracy %.4f (%d images), %s\n", path, test.loss,
                   test.accuracy, test.n, tta_label(cfg->tta, n_views, tta, sizeof tta));
        }
        cfx_model_free(&model);
        if (test_ds.n)
            cfx_dataset_close(&test_ds);
    }
    return cfx_dist_all_ok(ok) ? 0 : -1;
}
