/* Softmax cross-entropy, numerically stable (log-sum-exp). */
#include <math.h>

#include "cfx/nn.h" /* defines: cfx_softmax_xent */

void cfx_softmax_xent(const float *logits, const int *labels, int N, int K, float scale,
                      float *dlogits, double *loss_sum, long *correct)
{
    for (int n = 0; n < N; n++) {
        const float *z = logits + (size_t)n * K;
        int arg = 0;
        for (int k = 1; k < K; k++)
            if (z[k] > z[arg])
                arg = k;
        double sum = 0.0;
        for (int k = 0; k < K; k++)
            sum += exp((double)z[k] - (double)z[arg]);
        double log_sum = log(sum) + (double)z[arg];
        *loss_sum += log_sum - (double)z[labels[n]];
        *correct += arg == labels[n];
        if (dlogits) {
            float *d = dlogits + (size_t)n * K;
            for (int k = 0; k < K; k++) {
                double p = exp((double)z[k] - log_sum);
                d[k] = (float)((p - (k == labels[n])) * scale);
            }
        }
    }
}
