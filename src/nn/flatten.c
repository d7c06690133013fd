/* Flatten: the spatial layout [C][N][HW] to the row-per-image layout [N][C*HW]. */
#include <string.h>

#include "cfx/nn.h" /* defines: cfx_flatten_forward, cfx_flatten_backward */

void cfx_flatten_forward(float *out, const float *in, int N, int C, int HW)
{
    for (int c = 0; c < C; c++)
        for (int n = 0; n < N; n++)
            memcpy(out + ((size_t)n * C + c) * HW, in + ((size_t)c * N + n) * HW,
                   (size_t)HW * sizeof *out);
}

void cfx_flatten_backward(float *din, const float *dout, int N, int C, int HW)
{
    for (int c = 0; c < C; c++)
        for (int n = 0; n < N; n++)
            memcpy(din + ((size_t)c * N + n) * HW, dout + ((size_t)n * C + c) * HW,
                   (size_t)HW * sizeof *din);
}

/* ---- the layer: flatten ([C][N][H][W] -> [N][C*H*W]) ---------------------- */

static int flatten_infer(cfx_layer *L, const cfx_shape *in, int max_batch, cfx_error *err)
{
    (void)max_batch;
    if (in->flat)
        return cfx_fail(err, "flatten follows a flat output");
    L->out_c = in->c * in->h * in->w, L->out_h = L->out_w = 1, L->flat_out = 1;
    return 0;
}

static void flatten_layer_forward(cfx_model *m, cfx_layer *L, int n)
{
    cfx_flatten_forward(cfx_layer_output(m, L), cfx_layer_input(m, L, 0), n, L->in_c,
                        L->in_h * L->in_w);
}

static void flatten_layer_backward(cfx_model *m, cfx_layer *L, int n, float *const *din)
{
    if (din[0])
        cfx_flatten_backward(din[0], cfx_layer_dout(m, L), n, L->in_c, L->in_h * L->in_w);
}

const cfx_layer_kind cfx_kind_flatten = {
    .name = "flatten",
    .torch_name = "Flatten",
    .help = "[C][H][W] to a vector per image",
    .n_inputs = 1,
    .infer = flatten_infer,
    .forward = flatten_layer_forward,
    .backward = flatten_layer_backward,
};
