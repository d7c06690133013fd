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
    opt->n = n;
    opt->m = cfx_calloc(n, sizeof(float));
    if (opt->kind == CFX_OPTIM_ADAM)
        opt->v = cfx_calloc(n, sizeof(float));
    return 0;
}

void cfx_optim_free(cfx_optim *opt)
{
    free(opt->m);
    free(opt->v);
    memset(opt, 0, sizeof *opt);
}

static void adam_step(cfx_optim *o, float *p, const float *g)
{
    /* torch: bias corrections in double, the tensor math in float. */
    double bc1 = 1.0 - pow(o->beta1, (double)o->step);
    double bc2 = 1.0 - pow(o->beta2, (double)o->step);
    const float step_size = (float)(o->lr / bc1), bc2_sqrt = (float)sqrt(bc2);
    const float b1 = (float)o->beta1, b2 = (float)o->beta2;
    const float one_b1 = (float)(1.0 - o->beta1), one_b2 = (float)(1.0 - o->beta2);
    const float eps = (float)o->eps, wd = (float)o->weight_decay;
    float *m = o->m, *v = o->v;
    for (size_t i = 0; i < o->n; i++) {
        float gi = wd != 0.0f ? g[i] + wd * p[i] : g[i];
        m[i] = m[i] * b1 + one_b1 * gi;
        v[i] = v[i] * b2 + one_b2 * gi * gi;
        float denom = sqrtf(v[i]) / bc2_sqrt + eps;
        p[i] -= step_size * (m[i] / denom);
    }
}

static void sgd_step(cfx_optim *o, float *p, const float *g)
{
    const float lr = (float)o->lr, mu = (float)o->momentum, wd = (float)o->weight_decay;
    float *buf = o->m;
    for (size_t i = 0; i < o->n; i++) {
        float d = wd != 0.0f ? g[i] + wd * p[i] : g[i];
        if (mu != 0.0f) {
            buf[i] = o->step == 1 ? d : buf[i] * mu + d; /* torch clones d on the first step */
            d = o->nesterov ? d + mu * buf[i] : buf[i];
        }
        p[i] -= lr * d;
    }
}

void cfx_optim_step(cfx_optim *opt, float *params, const float *grads)
{
    opt->step++;
    if (opt->kind == CFX_OPTIM_ADAM)
        adam_step(opt, params, grads);
    else
        sgd_step(opt, params, grads);
}
