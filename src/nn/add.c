/* Residual addition of two outputs of the same shape: out = in0 + in1. */
#include <string.h>

#include "cfx/nn.h" /* defines: cfx_layer_kind */

static int add_infer(cfx_layer *L, const cfx_shape *in, int max_batch, cfx_error *err)
{
    (void)max_batch;
    if (in[0].c != in[1].c || in[0].h != in[1].h || in[0].w != in[1].w || in[0].flat != in[1].flat)
        return cfx_fail(err, "the inputs have different shapes, %dx%dx%d and %dx%dx%d", in[0].c,
                        in[0].h, in[0].w, in[1].c, in[1].h, in[1].w);
    L->out_c = in[0].c, L->out_h = in[0].h, L->out_w = in[0].w, L->flat_out = in[0].flat;
    return 0;
}

static void add_layer_forward(cfx_model *m, cfx_layer *L, int n)
{
    size_t count = (size_t)n * L->out_c * L->out_h * L->out_w;
    float *restrict out = cfx_layer_output(m, L);
    const float *restrict a = cfx_layer_input(m, L, 0), *restrict b = cfx_layer_input(m, L, 1);
    for (size_t i = 0; i < count; i++)
        out[i] = a[i] + b[i];
}

/* Both inputs receive the output's gradient. */
static void add_layer_backward(cfx_model *m, cfx_layer *L, int n, float *const *din)
{
    size_t bytes = (size_t)n * L->out_c * L->out_h * L->out_w * sizeof(float);
    for (int k = 0; k < 2; k++)
        if (din[k])
            memcpy(din[k], cfx_layer_dout(m, L), bytes);
}

const cfx_layer_kind cfx_kind_add = {
    .name = "add",
    .torch_name = "Add",
    .help = "sum of two outputs of the same shape: in=A,B",
    .n_inputs = 2,
    .infer = add_infer,
    .forward = add_layer_forward,
    .backward = add_layer_backward,
};
