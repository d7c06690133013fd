/* Adam and SGD with momentum, written to match torch.optim's float32 math. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cfx/optim.h" /* defines: cfx_optim, cfx_optim_step */

int cfx_optim_create(cfx_optim *opt, const cfx_config *cfg, size_t n, cfx_error *err)
{
    memset(opt, 0, sizeof *opt);
    if (strcmp(cfg->optim_name, "adam") == 0)
        opt->kind = CFX_OPTIM_ADAM;
    else if (strcmp(cfg->optim_name, "sgd") == 0)
        opt->kind = CFX_OPTIM_SGD;
    else
        return cfx_fail(err, "optim.name: unknown optimizer '%s' (adam or sgd)", cfg->optim_name);
    opt->lr = cfg->lr, opt->beta1 = cfg->beta1, opt->beta2 = cfg->beta2, opt->eps = cfg->eps;
    opt->momentum = cfg->momentum, opt->weight_decay = cfg->weight_decay;
    opt->nesterov = cfg->nesterov;
    opt->decoupled = cfg->decoupled_weight_decay;
    opt->n = n;
    opt->lookahead_steps = cfg->lookahead_steps;
    opt->lookahead_decay = cfg->lookahead_decay;
    opt->m = cfx_calloc(n, sizeof(float));
    if (opt->kind == CFX_OPTIM_ADAM)
        opt->v = cfx_calloc(n, sizeof(float));
    return 0;
}

void cfx_optim_free(cfx_optim *opt)
{
    free(opt->m);
    free(opt->v);
    free(opt->groups);
    free(opt->lookahead);
    memset(opt, 0, sizeof *opt);
}

/* Parameters [begin, end) of p with learning rate lr and weight decay wd. */
static void adam_step(cfx_optim *o, float *p, const float *g, size_t begin, size_t end,
                      double lr, double weight_decay)
{
    /* torch: bias corrections in double, the tensor math in float. */
    double bc1 = 1.0 - pow(o->beta1, (double)o->step);
    double bc2 = 1.0 - pow(o->beta2, (double)o->step);
    const float step_size = (float)(lr / bc1), bc2_sqrt = (float)sqrt(bc2);
    const float b1 = (float)o->beta1, b2 = (float)o->beta2;
    const float one_b1 = (float)(1.0 - o->beta1), one_b2 = (float)(1.0 - o->beta2);
    const float eps = (float)o->eps, wd = (float)weight_decay;
    float *m = o->m, *v = o->v;
    for (size_t i = begin; i < end; i++) {
        float gi = wd != 0.0f ? g[i] + wd * p[i] : g[i];
        m[i] = m[i] * b1 + one_b1 * gi;
        v[i] = v[i] * b2 + one_b2 * gi * gi;
        float denom = sqrtf(v[i]) / bc2_sqrt + eps;
        p[i] -= step_size * (m[i] / denom);
    }
}

static void sgd_step(cfx_optim *o, float *p, const float *g, size_t begin, size_t end,
                     double lr_d, double weight_decay)
{
    const float lr = (float)lr_d, mu = (float)o->momentum, wd = (float)weight_decay;
    float *buf = o->m;
    for (size_t i = begin; i < end; i++) {
        float d = wd != 0.0f ? g[i] + wd * p[i] : g[i];
        if (mu != 0.0f) {
            buf[i] = o->step == 1 ? d : buf[i] * mu + d; /* torch clones d on the first step */
            d = o->nesterov ? d + mu * buf[i] : buf[i];
        }
        p[i] -= lr * d;
    }
}

void cfx_optim_clear_groups(cfx_optim *opt) { opt->n_groups = 0; }

void cfx_optim_set_group(cfx_optim *opt, size_t begin, size_t end, double lr_scale,
                         double decay_scale)
{
    opt->groups = realloc(opt->groups, ((size_t)opt->n_groups + 1) * sizeof *opt->groups);
    if (!opt->groups)
        abort();
    opt->groups[opt->n_groups++] = (cfx_optim_group){begin, end, lr_scale, decay_scale};
}

/* Parameters [begin, end) with one group's multipliers. */
static void step_range(cfx_optim *o, float *p, const float *g, size_t begin, size_t end,
                       double lr_scale, double decay_scale)
{
    const double lr = o->lr * lr_scale, wd = o->weight_decay * decay_scale;
    if (o->decoupled && wd != 0.0) { /* torch.optim.AdamW: decay before the update */
        const float keep = (float)(1.0 - lr * wd);
        for (size_t i = begin; i < end; i++)
            p[i] *= keep;
    }
    const double coupled = o->decoupled ? 0.0 : wd;
    if (o->kind == CFX_OPTIM_ADAM)
        adam_step(o, p, g, begin, end, lr, coupled);
    else
        sgd_step(o, p, g, begin, end, lr, coupled);
}

void cfx_optim_step(cfx_optim *opt, float *params, const float *grads)
{
    opt->step++;
    size_t done = 0; /* groups are in order; the gaps between them have multipliers 1 */
    for (int k = 0; k < opt->n_groups; k++) {
        const cfx_optim_group *gr = &opt->groups[k];
        if (gr->begin > done)
            step_range(opt, params, grads, done, gr->begin, 1.0, 1.0);
        step_range(opt, params, grads, gr->begin, gr->end, gr->lr_scale, gr->decay_scale);
        done = gr->end;
    }
    if (done < opt->n)
        step_range(opt, params, grads, done, opt->n, 1.0, 1.0);
}

/* ---- lookahead ---------------------------------------------------------- */

void cfx_lookahead_start(cfx_optim *opt, const float *state, size_t n_state)
{
    if (opt->lookahead_steps <= 0)
        return;
    free(opt->lookahead);
    opt->lookahead = cfx_malloc((n_state ? n_state : 1) * sizeof(float));
    memcpy(opt->lookahead, state, n_state * sizeof(float));
    opt->n_state = n_state;
    opt->model_has_average = 0;
}

void cfx_lookahead_step(cfx_optim *opt, float *state, long step, long total_steps)
{
    const long k = opt->lookahead_steps;
    if (!opt->lookahead || k <= 0 || (step % k != 0 && step != total_steps))
        return;
    double a = 1.0; /* the last step, between updates: the weights become the average */
    if (step % k == 0) {
        double progress = (double)step / (double)total_steps;
        a = pow(opt->lookahead_decay, (double)k) * progress * progress * progress;
    }
    const float w = (float)(1.0 - a);
    float *avg = opt->lookahead;
    for (size_t i = 0; i < opt->n_state; i++) {
        avg[i] += w * (state[i] - avg[i]);
        state[i] = avg[i];
    }
}

void cfx_lookahead_swap(cfx_optim *opt, float *state)
{
    if (!opt->lookahead)
        return;
    for (size_t i = 0; i < opt->n_state; i++) {
        float x = state[i];
        state[i] = opt->lookahead[i];
        opt->lookahead[i] = x;
    }
    opt->model_has_average = !opt->model_has_average;
}

/* ---- learning-rate schedules ----------------------------------------------- */

/* From start to end along half a cosine, pct in [0, 1] (torch's _annealing_cos). */
static double cos_anneal(double start, double end, double pct)
{
    return end + (start - end) / 2.0 * (1.0 + cos(3.14159265358979323846 * pct));
}

static double one_cycle(const cfx_config *cfg, long step, long total)
{
    const double max_lr = cfg->lr, initial = max_lr / 25.0, min_lr = initial / 1e4;
    long rise = cfg->warmup_steps ? cfg->warmup_steps : (long)(0.3 * (double)total);
    double end1 = (double)rise - 1.0, end2 = (double)total - 1.0;
    if ((double)step <= end1)
        return cos_anneal(initial, max_lr, end1 > 0 ? (double)step / end1 : 1.0);
    return cos_anneal(max_lr, min_lr, end2 > end1 ? ((double)step - end1) / (end2 - end1) : 1.0);
}

double cfx_lr_at(const cfx_config *cfg, long step, long total_steps, int steps_per_epoch)
{
    const char *s = cfg->schedule;
    const double lr = cfg->lr;
    if (!strcmp(s, "onecycle"))
        return one_cycle(cfg, step, total_steps);
    long w = cfg->warmup_steps;
    if (step < w) {
        const double s = cfg->warmup_start_factor;
        return lr * (s + (1.0 - s) * (double)(step + 1) / (double)w);
    }
    long k = step - w, span = total_steps - w - 1; /* steps after the warm-up, to the last */
    double pct = span > 0 ? (double)(k < span ? k : span) / (double)span : 1.0;
    if (!strcmp(s, "linear"))
        return lr * (1.0 + (cfg->final_lr_factor - 1.0) * pct);
    if (!strcmp(s, "cosine"))
        return cos_anneal(lr, cfg->final_lr_factor * lr, pct);
    if (!strcmp(s, "step")) {
        long every = (long)llround(cfg->step_epochs * steps_per_epoch);
        return lr * pow(cfg->step_gamma, (double)(k / (every > 0 ? every : 1)));
    }
    return lr; /* constant */
}
