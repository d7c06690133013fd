/* The training program's building blocks: BLAS setup, evaluation and the
 * data-parallel training loop. */
#ifndef CFX_TRAIN_H
#define CFX_TRAIN_H

#include "cfx/common.h" /* defines: cfx_error */
#include "cfx/config.h" /* defines: cfx_config */
#include "cfx/data.h"   /* defines: cfx_dataset */
#include "cfx/dist.h"   /* defines: cfx_dist */
#include "cfx/nn.h"     /* defines: cfx_model */

/* Exit codes of cfx-train (documented in the README). */
enum {
    CFX_EXIT_OK = 0,
    CFX_EXIT_FAILURE = 1, /* bad data, I/O error, divergence */
    CFX_EXIT_USAGE = 2,   /* bad command line or config */
    CFX_EXIT_STOPPED = 3, /* stopped by SIGTERM/SIGINT/SIGUSR1 after writing last.h5:
                             resume with --resume (a SLURM script requeues on 3) */
};

/* OpenBLAS 0.3.21 does not know some recent CPUs and falls back to its
 * slowest kernels ("Prescott"). If so, and OPENBLAS_CORETYPE is unset, this
 * sets it to the best core the CPU supports and re-executes the program, so
 * the library loads with fast kernels. Call first thing in main, before
 * MPI_Init. Set CFX_KEEP_BLAS_CORE=1 to disable. */
void cfx_blas_select_kernels(char **argv);

/* Sets the threads of this rank (cfx_set_threads): runtime.blas_threads if
 * set, else $CFX_BLAS_THREADS, else cores of the node / ranks on the node.
 * OpenBLAS itself is set to one thread: the layers split their work. */
int cfx_blas_setup(const cfx_config *cfg, const cfx_dist *d);
const char *cfx_blas_core(void);
/* How the linked OpenBLAS threads: "OpenMP" (one pool with cfx's own
 * loops), "pthreads" (a second pool) or "sequential". */
const char *cfx_blas_threading(void);
/* The threads cfx_blas_setup set (cfx_threads()). */
int cfx_blas_threads(void);

typedef struct {
    int n;
    double loss;     /* mean cross-entropy */
    double accuracy; /* share of correct argmax predictions */
} cfx_eval_result;

/* Forward passes in eval mode over ds[indices[0..n)] in chunks of at most
 * m->max_batch images without augmentation. predictions (n ints) and probs (n x classes
 * floats) may be NULL. */
void cfx_evaluate(cfx_model *m, const cfx_dataset *ds, const int *indices, int n,
                  cfx_eval_result *result, int *predictions, float *probs);
/* The same with test-time augmentation: the logits of each image are the
 * weighted sum over views[0..n_views) (cfx_tta_views), loss and predictions
 * from them. */
void cfx_evaluate_views(cfx_model *m, const cfx_dataset *ds, const int *indices, int n,
                        const cfx_view *views, int n_views, cfx_eval_result *result,
                        int *predictions, float *probs);
/* cfx_evaluate that also calls observe(ctx, m, start, count) after the
 * forward pass of images [start, start + count): the model's activations
 * then hold theirs (cfx-viz's channel statistics and embedding). */
typedef void (*cfx_eval_observer)(void *ctx, const cfx_model *m, int start, int count);
void cfx_evaluate_observed(cfx_model *m, const cfx_dataset *ds, const int *indices, int n,
                           cfx_eval_result *result, int *predictions, float *probs,
                           cfx_eval_observer observe, void *ctx);

typedef struct {
    int quiet;               /* rank 0 prints nothing but errors */
    int progress;            /* rank 0 redraws a progress bar during each epoch (a terminal) */
    const char *resume_path; /* continue from this last.h5, or NULL */
    const char *config_text; /* the effective config: stored in checkpoints and written
                                to <output.dir>/config.ini */
} cfx_train_options;

/* Seconds spent in each part of the training steps of one epoch. */
typedef struct {
    double data, forward, backward, allreduce, optimizer, validation, checkpoint;
} cfx_phase_times;

/* Makes SIGTERM, SIGINT and SIGUSR1 request a clean stop: every rank stops
 * after the same step and rank 0 writes last.h5. */
void cfx_install_stop_handlers(void);

/* Trains the model of cfg on this rank's share; rank 0 validates, logs,
 * checkpoints and reports the test accuracy of the best weights.
 * Returns 0 when training finished, 1 when it stopped on a signal after
 * writing last.h5, -1 on failure (err filled on the rank(s) that failed). */
int cfx_train(const cfx_config *cfg, cfx_dist *d, const cfx_train_options *opt, cfx_error *err);

/* Loads the weights of a checkpoint into the model of cfg and prints the
 * test loss and accuracy (rank 0). */
int cfx_eval_checkpoint(const cfx_config *cfg, const cfx_dist *d, const char *path,
                        cfx_error *err);

#endif
