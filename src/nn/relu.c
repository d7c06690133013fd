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
