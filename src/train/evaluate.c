/* Loss and accuracy of a model on a list of images, in eval mode, without
 * augmentation or with test-time augmentation (the logits of several views
 * averaged). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cfx/train.h" /* defines: cfx_evaluate, cfx_evaluate_views */

/* Softmax of one row of logits z[K] into p, from its maximum arg. */
static void softmax_row(const float *z, int K, int arg, float *p)
{
    double sum = 0.0;
    for (int k = 0; k < K; k++)
        sum += exp((double)z[k] - (double)z[arg]);
    for (int k = 0; k < K; k++)
        p[k] = (float)(exp((double)z[k] - (double)z[arg]) / sum);
}

/* Forward passes of images [start, start + count) in every view; their
 * logits weighted by the views' weights in mean[count][K] (a single view of
 * weight 1: the logits themselves). */
static void view_logits(cfx_model *m, const cfx_dataset *ds, const int *indices, int count,
                        const cfx_view *views, int n_views, int *labels, float *mean)
{
    const int K = m->n_classes;
    const size_t size = (size_t)count * K;
    for (int v = 0; v < n_views; v++) {
        cfx_batch_fill_view(m->acts[0], labels, ds, indices, count, &views[v]);
        const float *logits = cfx_model_forward(m, count);
        const float w = views[v].weight;
        for (size_t j = 0; j < size; j++)
            mean[j] = v == 0 ? w * logits[j] : mean[j] + w * logits[j];
    }
}

static void evaluate(cfx_model *m, const cfx_dataset *ds, const int *indices, int n,
                     const cfx_view *views, int n_views, cfx_eval_result *result,
                     int *predictions, float *probs, cfx_eval_observer observe, void *ctx)
{
    const int K = m->n_classes;
    int *labels = cfx_malloc((size_t)m->max_batch * sizeof *labels);
    float *logits = cfx_malloc((size_t)m->max_batch * K * sizeof *logits);
    double loss = 0.0;
    long correct = 0;
    const int was_training = m->training;
    cfx_model_set_training(m, 0); /* running statistics, nothing updated */
    for (int start = 0; start < n; start += m->max_batch) {
        int count = n - start < m->max_batch ? n - start : m->max_batch;
        view_logits(m, ds, indices + start, count, views, n_views, labels, logits);
        if (observe)
            observe(ctx, m, start, count);
        cfx_softmax_xent(logits, labels, count, K, 1.0f, NULL, &loss, &correct);
        for (int i = 0; i < count; i++) {
            const float *z = logits + (size_t)i * K;
            int arg = 0;
            for (int k = 1; k < K; k++)
                if (z[k] > z[arg])
                    arg = k;
            if (predictions)
                predictions[start + i] = arg;
            if (probs)
                softmax_row(z, K, arg, probs + (size_t)(start + i) * K);
        }
    }
    cfx_model_set_training(m, was_training);
    free(labels);
    free(logits);
    result->n = n;
    result->loss = n ? loss / n : 0.0;
    result->accuracy = n ? (double)correct / n : 0.0;
}

void cfx_evaluate_views(cfx_model *m, const cfx_dataset *ds, const int *indices, int n,
                        const cfx_view *views, int n_views, cfx_eval_result *result,
                        int *predictions, float *probs)
{
    evaluate(m, ds, indices, n, views, n_views, result, predictions, probs, NULL, NULL);
}

void cfx_evaluate(cfx_model *m, const cfx_dataset *ds, const int *indices, int n,
                  cfx_eval_result *result, int *predictions, float *probs)
{
    const cfx_view identity = {0, 0, 0, 0, 1.0f};
    evaluate(m, ds, indices, n, &identity, 1, result, predictions, probs, NULL, NULL);
}

void cfx_evaluate_observed(cfx_model *m, const cfx_dataset *ds, const int *indices, int n,
                           cfx_eval_result *result, int *predictions, float *probs,
                           cfx_eval_observer observe, void *ctx)
{
    const cfx_view identity = {0, 0, 0, 0, 1.0f};
    evaluate(m, ds, indices, n, &identity, 1, result, predictions, probs, observe, ctx);
}
