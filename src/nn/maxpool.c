/* Max pooling (no padding, floor mode), the argmax recomputed in backward.
 * The 2x2 stride-2 case of every CNN of this kind has its own fast loops. */
#include <string.h>

#include "cfx/nn.h" /* defines: cfx_maxpool_forward, cfx_maxpool_backward */

CFX_SIMD_CLONES static void maxpool2x2_forward(float *out, const float *in, int planes, int H, int W)
{
    int OH = H / 2, OW = W / 2;
    for (int p = 0; p < planes; p++) {
        const float *src = in + (size_t)p * H * W;
        float *dst = out + (size_t)p * OH * OW;
        for (int oh = 0; oh < OH; oh++) {
            const float *r0 = src + (size_t)2 * oh * W, *r1 = r0 + W;
            float *o = dst + (size_t)oh * OW;
            for (int ow = 0; ow < OW; ow++) {
                float a = r0[2 * ow], b = r0[2 * ow + 1], c = r1[2 * ow], d = r1[2 * ow + 1];
                float top = b > a ? b : a, bottom = d > c ? d : c;
                o[ow] = bottom > top ? bottom : top;
            }
        }
    }
}

/* Writes every element of din once: the gradient at the window's first
 * maximum (row-major order, as PyTorch), zero elsewhere. */
static void maxpool2x2_backward(float *din, const float *dout, const float *in, int planes,
                                int H, int W, int relu)
{
    int OH = H / 2, OW = W / 2;
    for (int p = 0; p < planes; p++) {
        const float *src = in + (size_t)p * H * W;
        float *dsrc = din + (size_t)p * H * W;
        const float *d = dout + (size_t)p * OH * OW;
        for (int oh = 0; oh < OH; oh++) {
            const float *r0 = src + (size_t)2 * oh * W, *r1 = r0 + W;
            float *g0 = dsrc + (size_t)2 * oh * W, *g1 = g0 + W;
            for (int ow = 0; ow < OW; ow++) {
                float a = r0[2 * ow], b = r0[2 * ow + 1], c = r1[2 * ow], e = r1[2 * ow + 1];
                float g = d[oh * OW + ow];
                /* Branch-free first-maximum selection (the loop vectorises). */
                float top = b > a ? b : a, bottom = e > c ? e : c;
                if (relu) /* the input is a ReLU output: no gradient where the max is 0 */
                    g = (bottom > top ? bottom : top) > 0.0f ? g : 0.0f;
                int use_bottom = bottom > top, use_top = 1 - use_bottom;
                int top_b = b > a, bottom_e = e > c;
                g0[2 * ow] = g * (float)(use_top * (1 - top_b));
                g0[2 * ow + 1] = g * (float)(use_top * top_b);
                g1[2 * ow] = g * (float)(use_bottom * (1 - bottom_e));
                g1[2 * ow + 1] = g * (float)(use_bottom * bottom_e);
            }
            if (W % 2) /* the last column is in no window */
                g0[W - 1] = g1[W - 1] = 0.0f;
        }
        if (H % 2) /* the last row is in no window */
            memset(dsrc + (size_t)(H - 1) * W, 0, (size_t)W * sizeof *dsrc);
    }
}

void cfx_maxpool_forward(float *out, const float *in, int planes, int H, int W, int K, int stride)
{
    if (K == 2 && stride == 2) {
        maxpool2x2_forward(out, in, planes, H, W);
        return;
    }
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

static void maxpool_backward(float *din, const float *dout, const float *in, int planes, int H,
                             int W, int K, int stride, int relu)
{
    if (K == 2 && stride == 2) {
        maxpool2x2_backward(din, dout, in, planes, H, W, relu);
        return;
    }
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
                if (!relu || best > 0.0f)
                    dsrc[arg] += d[oh * OW + ow];
            }
    }
}

void cfx_maxpool_backward(float *din, const float *dout, const float *in, int planes, int H,
                          int W, int K, int stride)
{
    maxpool_backward(din, dout, in, planes, H, W, K, stride, 0);
}

void cfx_maxpool_relu_backward(float *din, const float *dout, const float *in, int planes,
                               int H, int W, int K, int stride)
{
    maxpool_backward(din, dout, in, planes, H, W, K, stride, 1);
}
