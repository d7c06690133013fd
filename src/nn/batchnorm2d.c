/* Batch normalisation over channels (torch.nn.BatchNorm2d). In training the
 * statistics are those of the global batch: the model's reduce function sums
 * them over every rank (sync=false: each rank's own batch, as DDP without
 * SyncBatchNorm); in eval mode the running statistics are used. Sums are
 * accumulated in double, the variance is taken about the mean (two passes);
 * the model adds them up over ranks and chunks (cfx_layer_kind.sums).
 * Channels are split over cfx_threads(); each channel's sums stay on one
 * thread, in one order. */
#include <math.h>
#include <stddef.h>
#include <string.h>

#include "cfx/nn.h" /* defines: cfx_batchnorm_apply, cfx_batchnorm_sums */

void cfx_batchnorm_sums(double *sums, const float *in, const double *mean, int C, size_t NHW)
{
    CFX_PARALLEL_FOR_IF(C > 1 && (size_t)C * NHW >= CFX_PARALLEL_MIN)
    for (int c = 0; c < C; c++) {
        const float *x = in + (size_t)c * NHW;
        double s = 0.0;
        if (mean)
            for (size_t j = 0; j < NHW; j++) {
                double d = (double)x[j] - mean[c];
                s += d * d;
            }
        else
            for (size_t j = 0; j < NHW; j++)
                s += x[j];
        sums[c] = s;
    }
}

void cfx_batchnorm_apply(float *out, const float *in, const double *mean, const double *invstd,
                         const float *gamma, const float *beta, int C, size_t NHW)
{
    CFX_PARALLEL_FOR_IF(C > 1 && (size_t)C * NHW >= CFX_PARALLEL_MIN)
    for (int c = 0; c < C; c++) {
        float scale = (float)invstd[c] * (gamma ? gamma[c] : 1.0f);
        float shift = (beta ? beta[c] : 0.0f) - (float)mean[c] * scale;
        const float *x = in + (size_t)c * NHW;
        float *y = out + (size_t)c * NHW;
        for (size_t j = 0; j < NHW; j++)
            y[j] = x[j] * scale + shift;
    }
}

void cfx_batchnorm_grad_sums(double *sdy, double *sdyx, const float *dout, const float *in,
                             const double *mean, const double *invstd, int C, size_t NHW)
{
    CFX_PARALLEL_FOR_IF(C > 1 && (size_t)C * NHW >= CFX_PARALLEL_MIN)
    for (int c = 0; c < C; c++) {
        const float *x = in + (size_t)c * NHW, *dy = dout + (size_t)c * NHW;
        double s = 0.0, sx = 0.0;
        for (size_t j = 0; j < NHW; j++) {
            s += dy[j];
            sx += dy[j] * ((double)x[j] - mean[c]);
        }
        sdy[c] = s;
        sdyx[c] = sx * invstd[c];
    }
}

void cfx_batchnorm_input_grad(float *din, const float *dout, const float *in, const double *mean,
                              const double *invstd, const float *gamma, const double *a,
                              const double *b, int C, size_t NHW)
{
    CFX_PARALLEL_FOR_IF(C > 1 && (size_t)C * NHW >= CFX_PARALLEL_MIN)
    for (int c = 0; c < C; c++) {
        const float *x = in + (size_t)c * NHW, *dy = dout + (size_t)c * NHW;
        float *dx = din + (size_t)c * NHW;
        float k = (float)invstd[c] * (gamma ? gamma[c] : 1.0f);
        float ac = (float)a[c], bc = (float)b[c], m = (float)mean[c], is = (float)invstd[c];
        for (size_t j = 0; j < NHW; j++)
            dx[j] = k * (dy[j] - ac - (x[j] - m) * is * bc);
    }
}

/* ---- the layer: batchnorm2d [eps=E] [momentum=M] [affine=B] [sync=B] ------ */

static const cfx_layer_option batchnorm_options[] = {
    {"eps", CFX_OPT_REAL, offsetof(cfx_layer_spec, eps), 1e-5, 0, 1, 0, "E"},
    {"momentum", CFX_OPT_REAL, offsetof(cfx_layer_spec, momentum), 0.1, 0, 1, 0, "M"},
    {"affine", CFX_OPT_BOOL, offsetof(cfx_layer_spec, affine), 1, 0, 1, 0, NULL},
    {"sync", CFX_OPT_BOOL, offsetof(cfx_layer_spec, sync), 1, 0, 1, 0, NULL},
};

/* What the forward pass keeps for backward, in the layer's scratch. */
typedef struct {
    double *count;             /* images x pixels the statistics are over */
    double *mean, *invstd;     /* [C] */
    double *local, *global;    /* [2C]: this replica's sum dy, sum dy*xhat; the batch's means */
} bn_saved;

static bn_saved saved(const cfx_layer *L)
{
    double *d = L->scratch;
    const int C = L->out_c;
    return (bn_saved){d, d + 1, d + 1 + C, d + 1 + 2 * C, d + 1 + 4 * C};
}

enum { BN_WEIGHT, BN_BIAS }; /* tensor indices when affine; the buffers follow */
enum { BN_SUM_X, BN_SUM_SQ, BN_SUM_GRAD }; /* phases of batch sums */

static int batchnorm_infer(cfx_layer *L, const cfx_shape *in, int max_batch, cfx_error *err)
{
    (void)max_batch;
    if (cfx_layer_need_spatial(in, "batchnorm2d", err) != 0)
        return -1;
    int C = in->c;
    if (L->spec.affine) {
        cfx_layer_add_tensor(L, "weight", CFX_TENSOR_PARAM, CFX_INIT_ONE, 1, &C);
        cfx_layer_add_tensor(L, "bias", CFX_TENSOR_PARAM, CFX_INIT_ZERO, 1, &C);
    }
    cfx_layer_add_tensor(L, "running_mean", CFX_TENSOR_BUFFER, CFX_INIT_ZERO, 1, &C);
    cfx_layer_add_tensor(L, "running_var", CFX_TENSOR_BUFFER, CFX_INIT_ONE, 1, &C);
    cfx_layer_add_tensor(L, "num_batches_tracked", CFX_TENSOR_COUNT, CFX_INIT_ZERO, 0, NULL);
    L->scratch_bytes = (size_t)(1 + 6 * C) * sizeof(double);
    L->out_c = C, L->out_h = in->h, L->out_w = in->w;
    return 0;
}

/* This replica's sums over its n images: of x and the pixel count, of
 * (x - mean)^2, or of dy and dy * xhat. Training mode only. */
static int batchnorm_sums(cfx_model *m, cfx_layer *L, int n, int phase, double *out)
{
    if (!m->training)
        return 0;
    const int C = L->out_c;
    const size_t NHW = (size_t)n * L->out_h * L->out_w;
    const float *x = cfx_layer_input(m, L, 0);
    bn_saved s = saved(L);
    int count = 0;
    if (phase == BN_SUM_X) {
        cfx_batchnorm_sums(out, x, NULL, C, NHW);
        out[C] = (double)NHW;
        count = C + 1;
    } else if (phase == BN_SUM_SQ) {
        cfx_batchnorm_sums(out, x, s.mean, C, NHW);
        count = C;
    } else {
        cfx_batchnorm_grad_sums(out, out + C, cfx_layer_dout(m, L), x, s.mean, s.invstd, C, NHW);
        memcpy(s.local, out, 2 * (size_t)C * sizeof *out);
        count = 2 * C;
    }
    return L->spec.sync ? count : -count;
}

/* Updates the running statistics (once per step: the model that owns the
 * buffers) from the batch mean and biased variance over M values. */
static void update_running(cfx_model *m, cfx_layer *L, const double *var, double M)
{
    const int t = L->spec.affine ? 2 : 0;
    float *rm = cfx_layer_tensor(m, L, t), *rv = cfx_layer_tensor(m, L, t + 1);
    const double mom = L->spec.momentum;
    const double *mean = saved(L).mean;
    for (int c = 0; c < L->out_c; c++) {
        rm[c] = (float)((1.0 - mom) * rm[c] + mom * mean[c]);
        rv[c] = (float)((1.0 - mom) * rv[c] + mom * (M > 1 ? var[c] * M / (M - 1) : var[c]));
    }
    m->counts[L->tensors[t + 2].offset]++;
}

static void batchnorm_sums_done(cfx_model *m, cfx_layer *L, int phase, const double *total)
{
    const int C = L->out_c;
    bn_saved s = saved(L);
    if (phase == BN_SUM_X) {
        *s.count = total[C];
        for (int c = 0; c < C; c++)
            s.mean[c] = *s.count > 0 ? total[c] / *s.count : 0.0;
    } else if (phase == BN_SUM_SQ) {
        double *var = s.global; /* free until backward */
        for (int c = 0; c < C; c++) {
            var[c] = *s.count > 0 ? total[c] / *s.count : 0.0;
            s.invstd[c] = 1.0 / sqrt(var[c] + L->spec.eps);
        }
        if (m->owns_buffers)
            update_running(m, L, var, *s.count);
    } else {
        for (int c = 0; c < 2 * C; c++)
            s.global[c] = *s.count > 0 ? total[c] / *s.count : 0.0;
    }
}

static void batchnorm_layer_forward(cfx_model *m, cfx_layer *L, int n)
{
    const int C = L->out_c, t = L->spec.affine ? 2 : 0;
    const size_t NHW = (size_t)n * L->out_h * L->out_w;
    bn_saved s = saved(L);
    if (!m->training) { /* the running statistics */
        const float *rm = cfx_layer_tensor(m, L, t), *rv = cfx_layer_tensor(m, L, t + 1);
        for (int c = 0; c < C; c++) {
            s.mean[c] = rm[c];
            s.invstd[c] = 1.0 / sqrt((double)rv[c] + L->spec.eps);
        }
    } /* else the batch's, from sums_done */
    cfx_batchnorm_apply(cfx_layer_output(m, L), cfx_layer_input(m, L, 0), s.mean, s.invstd,
                        L->spec.affine ? cfx_layer_tensor(m, L, BN_WEIGHT) : NULL,
                        L->spec.affine ? cfx_layer_tensor(m, L, BN_BIAS) : NULL, C, NHW);
}

static void batchnorm_layer_backward(cfx_model *m, cfx_layer *L, int n, float *const *din)
{
    const int C = L->out_c;
    const size_t NHW = (size_t)n * L->out_h * L->out_w;
    const float *x = cfx_layer_input(m, L, 0), *dy = cfx_layer_dout(m, L);
    bn_saved s = saved(L);
    if (!m->training) { /* constant statistics: only the local sums matter */
        cfx_batchnorm_grad_sums(s.local, s.local + C, dy, x, s.mean, s.invstd, C, NHW);
        memset(s.global, 0, 2 * (size_t)C * sizeof *s.global);
    }
    if (L->spec.affine) { /* this replica's part; the gradient reduction adds the rest */
        float *dw = cfx_layer_grad(m, L, BN_WEIGHT), *db = cfx_layer_grad(m, L, BN_BIAS);
        for (int c = 0; c < C; c++)
            dw[c] = (float)s.local[C + c], db[c] = (float)s.local[c];
    }
    if (din[0])
        cfx_batchnorm_input_grad(din[0], dy, x, s.mean, s.invstd,
                                 L->spec.affine ? cfx_layer_tensor(m, L, BN_WEIGHT) : NULL,
                                 s.global, s.global + C, C, NHW);
}

static int batchnorm_attrs(const cfx_layer *L, cfx_attr *a)
{
    a[0] = (cfx_attr){"num_features", L->out_c, 1};
    a[1] = (cfx_attr){"eps", L->spec.eps, 0};
    a[2] = (cfx_attr){"momentum", L->spec.momentum, 0};
    a[3] = (cfx_attr){"affine", L->spec.affine, 1};
    return 4;
}

static double batchnorm_flops(const cfx_layer *L) { return 2.0 * L->out_c * L->out_h * L->out_w; }

const cfx_layer_kind cfx_kind_batchnorm2d = {
    .name = "batchnorm2d",
    .torch_name = "BatchNorm2d",
    .help = "batch normalisation over channels; statistics of the global batch unless sync=false",
    .options = batchnorm_options,
    .n_options = sizeof batchnorm_options / sizeof batchnorm_options[0],
    .n_inputs = 1,
    .infer = batchnorm_infer,
    .sums = batchnorm_sums,
    .sums_done = batchnorm_sums_done,
    .n_forward_sums = 2,
    .n_backward_sums = 1,
    .forward = batchnorm_layer_forward,
    .backward = batchnorm_layer_backward,
    .flops = batchnorm_flops,
    .attrs = batchnorm_attrs,
};
