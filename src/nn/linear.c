/* Fully connected layer on OpenBLAS. */
#include <cblas.h>
#include <string.h>

#include "cfx/nn.h" /* defines: cfx_linear_forward, cfx_linear_backward */

void cfx_linear_forward(float *out, const float *in, const float *weight, const float *bias,
                        int N, int in_f, int out_f)
{
    if (N == 0)
        return;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, N, out_f, in_f, 1.0f, in, in_f, weight, in_f, 0.0f,
                out, out_f);
    for (int n = 0; n < N; n++)
        for (int o = 0; o < out_f; o++)
            out[(size_t)n * out_f + o] += bias[o];
}

void cfx_linear_backward(float *din, float *dweight, float *dbias, const float *dout,
                         const float *in, const float *weight, int N, int in_f, int out_f)
{
    if (N == 0) {
        memset(dweight, 0, (size_t)out_f * in_f * sizeof *dweight);
        memset(dbias, 0, (size_t)out_f * sizeof *dbias);
        return;
    }
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, out_f, in_f, N, 1.0f, dout, out_f, in, in_f, 0.0f,
                dweight, in_f);
    for (int o = 0; o < out_f; o++) {
        float s = 0.0f;
        for (int n = 0; n < N; n++)
            s += dout[(size_t)n * out_f + o];
        dbias[o] = s;
    }
    if (din)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, N, in_f, out_f, 1.0f, dout, out_f, weight, in_f,
                    0.0f, din, in_f);
}
