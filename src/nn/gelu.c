/* GELU, exact form: x * Phi(x) = x/2 * (1 + erf(x / sqrt 2)) (torch.nn.GELU()). */
#include <math.h>

#include "cfx/nn.h" /* defines: cfx_gelu_forward, cfx_gelu_backward */

void cfx_gelu_forward(float *out, const float *in, size_t n)
{
    for (size_t i = 0; i < n; i++)
        out[i] = 0.5f * in[i] * (1.0f + erff(in[i] * 0.70710678118654752f));
}

/* GELU'(x) = Phi(x) + x * phi(x). */
void cfx_gelu_backward(float *din, const float *dout, const float *in, size_t n)
{
    const float inv_sqrt_2pi = 0.3989422804014327f;
    for (size_t i = 0; i < n; i++) {
        float x = in[i];
        float cdf = 0.5f * (1.0f + erff(x * 0.70710678118654752f));
        float pdf = inv_sqrt_2pi * expf(-0.5f * x * x);
        din[i] = dout[i] * (cdf + x * pdf);
    }
}

/* ---- the layer: gelu -------------------------------------------------------- */

static void gelu_layer_forward(cfx_model *m, cfx_layer *L, int n)
{
    cfx_gelu_forward(cfx_layer_output(m, L), cfx_layer_input(m, L, 0), cfx_layer_out_size(L, n));
}

static void gelu_layer_backward(cfx_model *m, cfx_layer *L, int n, float *const *din)
{
    if (din[0])
        cfx_gelu_backward(din[0], cfx_layer_dout(m, L), cfx_layer_input(m, L, 0), cfx_layer_out_size(L, n));
}

const cfx_layer_kind cfx_kind_gelu = {
    .name = "gelu",
    .torch_name = "GELU",
    .help = "GELU, exact erf form",
    .n_inputs = 1,
    .infer = cfx_layer_same_shape,
    .forward = gelu_layer_forward,
    .backward = gelu_layer_backward,
};
