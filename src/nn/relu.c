/* Rectified linear unit. */
#include "cfx/nn.h" /* defines: cfx_relu_forward, cfx_relu_backward */

CFX_SIMD_CLONES void cfx_relu_forward(float *out, const float *in, size_t n)
{
    for (size_t i = 0; i < n; i++)
        out[i] = in[i] > 0.0f ? in[i] : 0.0f;
}

CFX_SIMD_CLONES void cfx_relu_backward(float *din, const float *dout, const float *out, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        float g = dout[i]; /* loaded unconditionally so the loop vectorises */
        din[i] = out[i] > 0.0f ? g : 0.0f;
    }
}

/* ---- the layer: relu ------------------------------------------------------ */

static int relu_infer(cfx_layer *L, const cfx_shape *in, int max_batch, cfx_error *err)
{
    (void)max_batch, (void)err;
    L->out_c = in->c, L->out_h = in->h, L->out_w = in->w, L->flat_out = in->flat;
    return 0;
}

static size_t layer_size(const cfx_layer *L, int n)
{
    return (size_t)n * L->out_c * L->out_h * L->out_w;
}

static void relu_layer_forward(cfx_model *m, cfx_layer *L, int n)
{
    if (!L->fused) /* else the conv2d before it applied it, in place */
        cfx_relu_forward(cfx_layer_output(m, L), cfx_layer_input(m, L, 0), layer_size(L, n));
}

static void relu_layer_backward(cfx_model *m, cfx_layer *L, int n, float *const *din)
{
    /* fused == 2: the layer reading it applied the mask (in place) */
    if (din[0] && L->fused != 2)
        cfx_relu_backward(din[0], cfx_layer_dout(m, L), cfx_layer_output(m, L), layer_size(L, n));
}

const cfx_layer_kind cfx_kind_relu = {
    .name = "relu",
    .torch_name = "ReLU",
    .help = "max(x, 0)",
    .n_inputs = 1,
    .flags = CFX_KIND_RELU,
    .infer = relu_infer,
    .forward = relu_layer_forward,
    .backward = relu_layer_backward,
};
