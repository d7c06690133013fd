/* Rectified linear unit. */
#include "cfx/nn.h" /* defines: cfx_relu_forward, cfx_relu_backward */

CFX_SIMD_CLONES static void relu_forward(float *out, const float *in, const float *unused, size_t n)
{
    (void)unused;
    for (size_t i = 0; i < n; i++)
        out[i] = in[i] > 0.0f ? in[i] : 0.0f;
}

CFX_SIMD_CLONES static void relu_backward(float *din, const float *dout, const float *out, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        float g = dout[i]; /* loaded unconditionally so the loop vectorises */
        din[i] = out[i] > 0.0f ? g : 0.0f;
    }
}

CFX_SIMD_CLONES static void relu_guided_backward(float *din, const float *dout, const float *out,
                                                 size_t n)
{
    for (size_t i = 0; i < n; i++) {
        float g = dout[i];
        din[i] = out[i] > 0.0f && g > 0.0f ? g : 0.0f;
    }
}

/* The passes, split into blocks on cfx_threads(). */
void cfx_relu_forward(float *out, const float *in, size_t n)
{
    cfx_parallel_elementwise(relu_forward, out, in, NULL, n);
}

void cfx_relu_backward(float *din, const float *dout, const float *out, size_t n)
{
    cfx_parallel_elementwise(relu_backward, din, dout, out, n);
}

void cfx_relu_guided_backward(float *din, const float *dout, const float *out, size_t n)
{
    cfx_parallel_elementwise(relu_guided_backward, din, dout, out, n);
}

/* ---- the layer: relu ------------------------------------------------------ */

static void relu_layer_forward(cfx_model *m, cfx_layer *L, int n)
{
    if (!L->fused) /* else the conv2d before it applied it, in place */
        cfx_relu_forward(cfx_layer_output(m, L), cfx_layer_input(m, L, 0), cfx_layer_out_size(L, n));
}

static void relu_layer_backward(cfx_model *m, cfx_layer *L, int n, float *const *din)
{
    /* fused == 2: the layer reading it applied the mask (in place) */
    if (din[0] && L->fused != 2)
        (m->guided ? cfx_relu_guided_backward : cfx_relu_backward)(
            din[0], cfx_layer_dout(m, L), cfx_layer_output(m, L), cfx_layer_out_size(L, n));
}

const cfx_layer_kind cfx_kind_relu = {
    .name = "relu",
    .torch_name = "ReLU",
    .help = "max(x, 0)",
    .n_inputs = 1,
    .flags = CFX_KIND_RELU,
    .infer = cfx_layer_same_shape,
    .forward = relu_layer_forward,
    .backward = relu_layer_backward,
};
