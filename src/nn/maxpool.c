/* Max pooling (no padding, floor mode), the argmax recomputed in backward. */
#include <string.h>

#include "cfx/nn.h" /* defines: cfx_maxpool_forward, cfx_maxpool_backward */

void cfx_maxpool_forward(float *out, const float *in, int planes, int H, int W, int K, int stride)
{
    int OH = cfx_window_out(H, K, stride, 0), OW = cfx_window_out(W, K, stride, 0);
    for (int p = 0; p < planes; p++) {
        const float *src = in + (size_t)p * H * W;
        float *dst = out + (size_t)p * OH * OW;
        for (int oh = 0; oh < OH; oh++)
            for (int ow = 0; ow < OW; ow++) {
                const float *win = src + (size_t)oh * stride * W + ow * stride;
                float best = win[0];
                for (int kh = 0; kh < K; kh++)
                    for (int kw = 0; kw < K; kw++)
                        if (win[kh * W + kw] > best)
                            best = win[kh * W + kw];
                dst[oh * OW + ow] = best;
            }
    }
}

void cfx_maxpool_backward(float *din, const float *dout, const float *in, int planes, int H,
                          int W, int K, int stride)
{
    int OH = cfx_window_out(H, K, stride, 0), OW = cfx_window_out(W, K, stride, 0);
    memset(din, 0, (size_t)planes * H * W * sizeof *din);
    for (int p = 0; p < planes; p++) {
        const float *src = in + (size_t)p * H * W;
        float *dsrc = din + (size_t)p * H * W;
        const float *d = dout + (size_t)p * OH * OW;
        for (int oh = 0; oh < OH; oh++)
            for (int ow = 0; ow < OW; ow++) {
                size_t base = (size_t)oh * stride * W + (size_t)ow * stride, arg = base;
                float best = src[base];
                for (int kh = 0; kh < K; kh++)
                    for (int kw = 0; kw < K; kw++) {
                        size_t at = base + (size_t)kh * W + kw;
                        if (src[at] > best) {
                            best = src[at];
                            arg = at;
                        }
                    }
                dsrc[arg] += d[oh * OW + ow];
            }
    }
}
