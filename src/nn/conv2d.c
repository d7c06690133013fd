/* 2-D convolution over a whole mini-batch as im2col + one SGEMM. */
#include <cblas.h>
#include <string.h>

#include "cfx/nn.h" /* defines: cfx_conv2d_forward, cfx_im2col, cfx_col2im */

void cfx_im2col(float *col, const float *in, int N, int C, int H, int W, int K, int stride,
                int pad, int OH, int OW)
{
    const size_t ohw = (size_t)OH * OW, row_len = (size_t)N * ohw;
    for (int c = 0; c < C; c++)
        for (int kh = 0; kh < K; kh++)
            for (int kw = 0; kw < K; kw++) {
                float *dst = col + ((size_t)(c * K + kh) * K + kw) * row_len;
                for (int n = 0; n < N; n++) {
                    const float *plane = in + ((size_t)c * N + n) * H * W;
                    for (int oh = 0; oh < OH; oh++, dst += OW) {
                        int ih = oh * stride - pad + kh;
                        if (ih < 0 || ih >= H) {
                            memset(dst, 0, (size_t)OW * sizeof *dst);
                            continue;
                        }
                        const float *src = plane + (size_t)ih * W;
                        if (stride == 1) {
                            /* iw = ow - pad + kw: a shifted copy with zero edges. */
                            int shift = kw - pad;
                            int lo = shift < 0 ? -shift : 0;
                            int hi = W - shift < OW ? W - shift : OW;
                            if (lo > OW) /* the tap only ever sees left padding */
                                lo = OW;
                            if (hi < lo)
                                hi = lo;
                            memset(dst, 0, (size_t)lo * sizeof *dst);
                            if (hi > lo)
                                memcpy(dst + lo, src + lo + shift, (size_t)(hi - lo) * sizeof *dst);
                            memset(dst + hi, 0, (size_t)(OW - hi) * sizeof *dst);
                        } else {
                            for (int ow = 0; ow < OW; ow++) {
                                int iw = ow * stride - pad + kw;
                                dst[ow] = (iw >= 0 && iw < W) ? src[iw] : 0.0f;
                            }
                        }
                    }
                }
            }
}

void cfx_col2im(float *in, const float *col, int N, int C, int H, int W, int K, int stride,
                int pad, int OH, int OW)
{
    const size_t ohw = (size_t)OH * OW, row_len = (size_t)N * ohw;
    for (int c = 0; c < C; c++)
        for (int kh = 0; kh < K; kh++)
            for (int kw = 0; kw < K; kw++) {
                const float *src = col + ((size_t)(c * K + kh) * K + kw) * row_len;
                for (int n = 0; n < N; n++) {
                    float *plane = in + ((size_t)c * N + n) * H * W;
                    for (int oh = 0; oh < OH; oh++, src += OW) {
                        int ih = oh * stride - pad + kh;
                        if (ih < 0 || ih >= H)
                            continue;
                        float *dst = plane + (size_t)ih * W;
                        if (stride == 1) {
                            /* iw = ow + shift for ow in [lo, hi): a shifted add. */
                            int shift = kw - pad;
                            int lo = shift < 0 ? -shift : 0;
                            int hi = W - shift < OW ? W - shift : OW;
                            for (int ow = lo; ow < hi; ow++)
                                dst[ow + shift] += src[ow];
                            continue;
                        }
                        for (int ow = 0; ow < OW; ow++) {
                            int iw = ow * stride - pad + kw;
                            if (iw >= 0 && iw < W)
                                dst[iw] += src[ow];
                        }
                    }
                }
            }
}

void cfx_conv2d_forward(float *out, float *col, const float *in, const float *weight,
                        const float *bias, int N, int C, int H, int W, int OC, int K, int stride,
                        int pad)
{
    int OH = cfx_window_out(H, K, stride, pad), OW = cfx_window_out(W, K, stride, pad);
    int ckk = C * K * K, cols = N * OH * OW;
    if (cols == 0)
        return;
    cfx_im2col(col, in, N, C, H, W, K, stride, pad, OH, OW);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, OC, cols, ckk, 1.0f, weight, ckk, col,
                cols, 0.0f, out, cols);
    for (int oc = 0; oc < OC; oc++) {
        float b = bias[oc], *o = out + (size_t)oc * cols;
        for (int j = 0; j < cols; j++)
            o[j] += b;
    }
}

/* Sum of x[0..n) in double, in 8 lanes the compiler vectorises. */
static float row_sum(const float *x, int n)
{
    double lanes[8] = {0};
    int j = 0;
    for (; j + 8 <= n; j += 8)
        for (int k = 0; k < 8; k++)
            lanes[k] += x[j + k];
    double s = 0.0;
    for (int k = 0; k < 8; k++)
        s += lanes[k];
    for (; j < n; j++)
        s += x[j];
    return (float)s;
}

void cfx_conv2d_backward(float *din, float *dweight, float *dbias, float *dcol, const float *dout,
                         const float *col, const float *weight, int N, int C, int H, int W,
                         int OC, int K, int stride, int pad)
{
    int OH = cfx_window_out(H, K, stride, pad), OW = cfx_window_out(W, K, stride, pad);
    int ckk = C * K * K, cols = N * OH * OW;
    if (cols == 0) {
        memset(dweight, 0, (size_t)OC * ckk * sizeof *dweight);
        memset(dbias, 0, (size_t)OC * sizeof *dbias);
        return;
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, OC, ckk, cols, 1.0f, dout, cols, col,
                cols, 0.0f, dweight, ckk);
    for (int oc = 0; oc < OC; oc++)
        dbias[oc] = row_sum(dout + (size_t)oc * cols, cols);
    if (din) {
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, ckk, cols, OC, 1.0f, weight, ckk,
                    dout, cols, 0.0f, dcol, cols);
        memset(din, 0, (size_t)C * N * H * W * sizeof *din);
        cfx_col2im(din, dcol, N, C, H, W, K, stride, pad, OH, OW);
    }
}
