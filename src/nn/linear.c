/* Fully connected layer on OpenBLAS. */
#include <cblas.h>
#include <stddef.h>
#include <string.h>

#include "cfx/nn.h" /* defines: cfx_linear_forward, cfx_linear_backward */

void cfx_linear_forward(float *out, const float *in, const float *weight, const float *bias, int N,
                        int in_f, int out_f)
{
    if (N == 0)
        return;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, N, out_f, in_f, 1.0f, in, in_f, weight,
                in_f, 0.0f, out, out_f);
    for (int n = 0; n < N && bias; n++)
        for (int o = 0; o < out_f; o++)
            out[(size_t)n * out_f + o] += bias[o];
}

void cfx_linear_backward(float *din, float *dweight, float *dbias, const float *dout,
                         const float *in, const float *weight, int N, int in_f, int out_f)
{
    if (N == 0) {
        memset(dweight, 0, (size_t)out_f * in_f * sizeof *dweight);
        if (dbias)
            memset(dbias, 0, (size_t)out_f * sizeof *dbias);
        return;
    }
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, out_f, in_f, N, 1.0f, dout, out_f, in,
                in_f, 0.0f, dweight, in_f);
    for (int o = 0; o < out_f && dbias; o++) {
        float s = 0.0f;
        for (int n = 0; n < N; n++)
            s += dout[(size_t)n * out_f + o];
        dbias[o] = s;
    }
    if (din)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, N, in_f, out_f, 1.0f, dout, out_f,
                    weight, in_f, 0.0f, din, in_f);
}

/* ---- the layer: linear out=N [bias=false] --------------------------------- */

static const cfx_layer_option linear_options[] = {
    {"out", CFX_OPT_INT, offsetof(cfx_layer_spec, out), 0, 1, 1 << 24,
     CFX_OPT_REQUIRED | CFX_OPT_SHOWN, "N"},
    {"bias", CFX_OPT_BOOL, offsetof(cfx_layer_spec, bias), 1, 0, 1, 0, NULL},
    {"scale", CFX_OPT_REAL, offsetof(cfx_layer_spec, scale), 1, -1e6, 1e6, 0, "X"},
};

/* x[0..n) *= s */
static void scale_in_place(float *x, size_t n, float s)
{
    for (size_t i = 0; i < n; i++)
        x[i] *= s;
}

/* in[N][in_f] -> out[N][out]; weight [out][in_f], bias [out]. */
static int linear_infer(cfx_layer *L, const cfx_shape *in, int max_batch, cfx_error *err)
{
    (void)max_batch;
    if (!in->flat)
        return cfx_fail(err, "linear needs a flatten before it");
    int wdims[2] = {L->spec.out, in->c};
    cfx_layer_add_tensor(L, "weight", CFX_TENSOR_PARAM, CFX_INIT_FAN_IN, 2, wdims);
    if (L->spec.bias)
        cfx_layer_add_tensor(L, "bias", CFX_TENSOR_PARAM, CFX_INIT_FAN_IN, 1, &L->spec.out);
    L->fan_in = in->c;
    L->out_c = L->spec.out, L->out_h = L->out_w = 1, L->flat_out = 1;
    return 0;
}

static void linear_layer_forward(cfx_model *m, cfx_layer *L, int n)
{
    cfx_linear_forward(cfx_layer_output(m, L), cfx_layer_input(m, L, 0),
                       m->params + L->weight_offset,
                       L->spec.bias ? m->params + L->bias_offset : NULL, n, L->in_c, L->out_c);
    if (L->spec.scale != 1.0) /* out = scale x (x W^T + b) */
        scale_in_place(cfx_layer_output(m, L), (size_t)n * L->out_c, (float)L->spec.scale);
}

static void linear_layer_backward(cfx_model *m, cfx_layer *L, int n, float *const *din)
{
    if (L->spec.scale != 1.0) /* only this layer reads its output's gradient: scaled in place */
        scale_in_place(cfx_layer_dout(m, L), (size_t)n * L->out_c, (float)L->spec.scale);
    cfx_linear_backward(din[0], m->grads + L->weight_offset,
                        L->spec.bias ? m->grads + L->bias_offset : NULL, cfx_layer_dout(m, L),
                        cfx_layer_input(m, L, 0), m->params + L->weight_offset, n, L->in_c,
                        L->out_c);
}

static double linear_flops(const cfx_layer *L) { return 2.0 * (double)L->n_weight; }

static int linear_attrs(const cfx_layer *L, cfx_attr *a)
{
    a[0] = (cfx_attr){"in_features", L->in_c, 1};
    a[1] = (cfx_attr){"out_features", L->out_c, 1};
    a[2] = (cfx_attr){"bias", L->spec.bias, 1};
    return 3;
}

const cfx_layer_kind cfx_kind_linear = {
    .name = "linear",
    .torch_name = "Linear",
    .help = "fully connected (weight, bias); scale=X multiplies its output",
    .options = linear_options,
    .n_options = sizeof linear_options / sizeof linear_options[0],
    .n_inputs = 1,
    .infer = linear_infer,
    .forward = linear_layer_forward,
    .backward = linear_layer_backward,
    .flops = linear_flops,
    .attrs = linear_attrs,
};
