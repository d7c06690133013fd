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
