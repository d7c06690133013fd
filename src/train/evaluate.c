/* Loss and accuracy of a model on a list of images, in eval mode, without augmentation. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cfx/train.h" /* defines: cfx_evaluate */

void cfx_evaluate(cfx_model *m, const cfx_dataset *ds, const int *indices, int n,
                  cfx_eval_result *result, int *predictions, float *probs)
{
    int K = m->n_classes;
    int *labels = cfx_malloc((size_t)m->max_batch * sizeof *labels);
    double loss = 0.0;
    long correct = 0;
    const int was_training = m->training;
    cfx_model_set_training(m, 0); /* running statistics, nothing updated */
    for (int start = 0; start < n; start += m->max_batch) {
        int count = n - start < m->max_batch ? n - start : m->max_batch;
        cfx_batch_fill(m->acts[0], labels, ds, indices + start, count, NULL);
        const float *logits = cfx_model_forward(m, count);
        cfx_softmax_xent(logits, labels, count, K, 1.0f, NULL, &loss, &correct);
        for (int i = 0; i < count; i++) {
            const float *z = logits + (size_t)i * K;
            int arg = 0;
            for (int k = 1; k < K; k++)
                if (z[k] > z[arg])
                    arg = k;
            if (predictions)
                predictions[start + i] = arg;
            if (probs) {
                double sum = 0.0;
                for (int k = 0; k < K; k++)
                    sum += exp((double)z[k] - (double)z[arg]);
                for (int k = 0; k < K; k++)
                    probs[(size_t)(start + i) * K + k] =
                        (float)(exp((double)z[k] - (double)z[arg]) / sum);
            }
        }
    }
    cfx_model_set_training(m, was_training);
    free(labels);
    result->n = n;
    result->loss = n ? loss / n : 0.0;
    result->accuracy = n ? (double)correct / n : 0.0;
}
