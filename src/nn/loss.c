/* Softmax cross-entropy, numerically stable (log-sum-exp). */
#include <math.h>

#include "cfx/nn.h" /* defines: cfx_softmax_xent */

void cfx_softmax_xent(const float *logits, const int *labels, int N, int K, float scale,
                      float *dlogits, double *loss_sum, long *correct)
{
    cfx_softmax_xent_smooth(logits, labels, N, K, 0.0, scale, dlogits, loss_sum, correct);
}

/* With smoothing eps the target is q = (1 - eps) onehot + eps / K: the loss
 * is -sum_k q_k log p_k and its gradient p - q (PyTorch's label_smoothing). */
void cfx_softmax_xent_smooth(const float *logits, const int *labels, int N, int K, double eps,
                             float scale, float *dlogits, double *loss_sum, long *correct)
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
        if (eps == 0.0) {
            *loss_sum += log_sum - (double)z[labels[n]];
        } else {
            double mean_z = 0.0;
            for (int k = 0; k < K; k++)
                mean_z += z[k];
            mean_z /= K;
            *loss_sum += log_sum - (1.0 - eps) * z[labels[n]] - eps * mean_z;
        }
        *correct += arg == labels[n];
        if (dlogits) {
            float *d = dlogits + (size_t)n * K;
            for (int k = 0; k < K; k++) {
                double p = exp((double)z[k] - log_sum);
                double q = (1.0 - eps) * (k == labels[n]) + eps / K;
                d[k] = (float)((p - q) * scale);
            }
        }
    }
}
