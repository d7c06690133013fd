/* Optimizers over the flat parameter buffer, matching torch.optim. */
#ifndef CFX_OPTIM_H
#define CFX_OPTIM_H

#include <stddef.h>

#include "cfx/common.h" /* defines: cfx_error */
#include "cfx/config.h" /* defines: cfx_config */

typedef enum { CFX_OPTIM_ADAM, CFX_OPTIM_SGD } cfx_optim_kind;

/* Parameters [begin, end) with their own learning-rate and weight-decay
 * multipliers (torch's parameter groups). */
typedef struct {
    size_t begin, end;
    double lr_scale, decay_scale;
} cfx_optim_group;

typedef struct {
    cfx_optim_kind kind;
    double lr, beta1, beta2, eps, momentum, weight_decay;
    int nesterov;
    int decoupled; /* weight decay as param *= 1 - lr x weight_decay (AdamW) */
    size_t n;
    long step;   /* updates done so far */
    float *m;    /* Adam: first moment (exp_avg); SGD: momentum buffer */
    float *v;    /* Adam: second moment (exp_avg_sq); SGD: NULL */
    cfx_optim_group *groups; /* NULL: one group of every parameter, multipliers 1 */
    int n_groups;
    /* Lookahead (optim.lookahead_steps > 0): a second copy of the model's
     * float state (parameters, then buffers), n_state values. While training
     * it holds the slow average and the model the fast weights the optimizer
     * moves; cfx_lookahead_swap exchanges the two so that evaluation and
     * checkpoints (/model) see the average (model_has_average = 1). */
    float *lookahead;
    size_t n_state;
    long lookahead_steps;
    double lookahead_decay;
    int model_has_average;
} cfx_optim;

/* Optimizer named by cfg->optim_name for n parameters, state zeroed. */
int cfx_optim_create(cfx_optim *opt, const cfx_config *cfg, size_t n, cfx_error *err);
void cfx_optim_free(cfx_optim *opt);

/* Forgets every group: all parameters get multipliers 1 again. */
void cfx_optim_clear_groups(cfx_optim *opt);

/* Gives parameters [begin, end) the multipliers lr_scale and decay_scale
 * (0 and 0: frozen); the others keep 1 and 1. */
void cfx_optim_set_group(cfx_optim *opt, size_t begin, size_t end, double lr_scale,
                         double decay_scale);

/* One update of params from grads (torch.optim.Adam / torch.optim.SGD with
 * dampening 0 and maximize false). */
void cfx_optim_step(cfx_optim *opt, float *params, const float *grads);

/* Lookahead over n_state floats of model state (parameters then buffers):
 * start sets the average to state. */
void cfx_lookahead_start(cfx_optim *opt, const float *state, size_t n_state);

/* After update `step` (1-based) of total_steps: every lookahead_steps steps
 * the average moves toward the weights by 1 - a, a = decay^k (step/total)^3,
 * and the weights are set to the average; after the last step the weights
 * are the average (a = 1 if it falls between updates), as airbench. No-op when lookahead is off. */
void cfx_lookahead_step(cfx_optim *opt, float *state, long step, long total_steps);

/* Exchanges state with the other copy (see cfx_optim.lookahead). */
void cfx_lookahead_swap(cfx_optim *opt, float *state);

/* The learning rate of 0-based step `step` of a run of total_steps steps
 * (steps_per_epoch per epoch) under optim.schedule, as torch.optim.lr_scheduler:
 *   linear   LinearLR(1, final_lr_factor, total_iters = total - warmup - 1)
 *   cosine   CosineAnnealingLR(T_max = total - warmup - 1, eta_min = final x lr)
 *   step     StepLR(step_size = step_epochs x steps_per_epoch, gamma)
 *   onecycle OneCycleLR(max_lr = lr, total_steps, pct_start = warmup / total)
 * after a linear warm-up of warmup_steps (lr x (step + 1) / warmup; not for onecycle). */
double cfx_lr_at(const cfx_config *cfg, long step, long total_steps, int steps_per_epoch);

#endif
