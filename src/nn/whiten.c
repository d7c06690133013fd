/* Whitening initialisation of a first convolution (airbench): its filters
 * are the eigenvectors of the covariance of the K x K patches of training
 * images, each scaled by 1 / sqrt(eigenvalue + eps) and given with both
 * signs, so the layer's output has (about) unit, decorrelated channels. */
#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cfx/nn.h" /* defines: cfx_whiten_weights */

/* LAPACK (in OpenBLAS): eigenvalues (ascending) and eigenvectors of a
 * symmetric matrix, column-major. */
extern void dsyev_(const char *jobz, const char *uplo, const int *n, double *a, const int *lda,
                   double *w, double *work, const int *lwork, int *info);

int cfx_eigen_symmetric(double *a, int n, double *eigval)
{
    double query;
    int info = 0, lwork = -1;
    dsyev_("V", "L", &n, a, &n, eigval, &query, &lwork, &info);
    lwork = info == 0 ? (int)query : 3 * n;
    double *work = cfx_malloc((size_t)lwork * sizeof *work);
    dsyev_("V", "L", &n, a, &n, eigval, work, &lwork, &info);
    free(work);
    return info;
}

/* cov[D][D] += the patches of one image plane set img[C][H][W] (stride
 * between channels plane_stride), D = C K K, patch vectors in [c][kh][kw]
 * order; rows is scratch for (H-K+1)(W-K+1) x D doubles. */
static void add_patch_covariance(double *cov, double *rows, const float *img, size_t plane_stride,
                                 int C, int H, int W, int K)
{
    const int D = C * K * K, PH = H - K + 1, PW = W - K + 1;
    for (int y = 0; y < PH; y++)
        for (int x = 0; x < PW; x++) {
            double *r = rows + ((size_t)y * PW + x) * D;
            for (int c = 0; c < C; c++)
                for (int kh = 0; kh < K; kh++)
                    for (int kw = 0; kw < K; kw++)
                        *r++ = img[c * plane_stride + (size_t)(y + kh) * W + x + kw];
        }
    cblas_dsyrk(CblasRowMajor, CblasUpper, CblasTrans, D, PH * PW, 1.0, rows, D, 1.0, cov, D);
}

int cfx_whiten_weights(float *weight, int OC, const float *images, int N, int C, int H, int W,
                       int K, double eps, cfx_error *err)
{
    const int D = C * K * K;
    if (OC != 2 * D)
        return cfx_fail(err, "whiten=true: the layer needs out=%d (2 x %d channels x %dx%d), not %d",
                        2 * D, C, K, K, OC);
    if (N < 1 || H < K || W < K)
        return cfx_fail(err, "whiten=true: no %dx%d patches in %d images of %dx%d", K, K, N, H, W);
    double *cov = cfx_calloc((size_t)D * D, sizeof *cov);
    double *rows = cfx_malloc((size_t)(H - K + 1) * (W - K + 1) * D * sizeof *rows);
    const size_t plane = (size_t)H * W, channel_stride = (size_t)N * plane; /* [C][N][H][W] */
    for (int n = 0; n < N; n++)
        add_patch_covariance(cov, rows, images + n * plane, channel_stride, C, H, W, K);
    free(rows);
    const double n_patches = (double)N * (H - K + 1) * (W - K + 1);
    for (int i = 0; i < D; i++) /* the upper triangle, row-major = lower column-major */
        for (int j = i; j < D; j++)
            cov[(size_t)i * D + j] /= n_patches;
    double *eigval = cfx_malloc((size_t)D * sizeof *eigval);
    int info = cfx_eigen_symmetric(cov, D, eigval);
    if (info != 0) {
        free(cov), free(eigval);
        return cfx_fail(err, "whiten=true: the patch covariance has no eigendecomposition "
                             "(LAPACK dsyev info %d)", info);
    }
    /* Column j of cov (column-major) is eigenvector j: filters by decreasing eigenvalue. */
    for (int f = 0; f < D; f++) {
        int j = D - 1 - f;
        double s = 1.0 / sqrt((eigval[j] > 0.0 ? eigval[j] : 0.0) + eps);
        for (int i = 0; i < D; i++) {
            weight[(size_t)f * D + i] = (float)(cov[(size_t)j * D + i] * s);
            weight[(size_t)(f + D) * D + i] = (float)(-cov[(size_t)j * D + i] * s);
        }
    }
    free(cov), free(eigval);
    return 0;
}
