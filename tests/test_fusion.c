/* The fused training path (ReLU in place inside conv2d and maxpool2d
 * backward) computes exactly what the layer-by-layer path computes: logits,
 * every parameter gradient and the input gradient are bitwise equal. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "cfx/nn.h"  /* defines: cfx_model, CFX_MODEL_* */
#include "cfx/rng.h" /* defines: cfx_rng */

static void run(cfx_model *m, int n, const float *input, const int *labels)
{
    memcpy(m->acts[0], input, (size_t)n * m->in_c * m->in_h * m->in_w * sizeof(float));
    const float *logits = cfx_model_forward(m, n);
    double loss = 0.0;
    long correct = 0;
    cfx_softmax_xent(logits, labels, n, m->n_classes, 1.0f / (float)n, m->dacts[m->n_layers],
                     &loss, &correct);
    cfx_model_backward(m, n);
}

static void check(const char *layers, int in_c, int size, int n)
{
    cfx_layer_spec specs[CFX_MAX_LAYERS];
    int n_specs = 0;
    cfx_error err;
    assert_int_equal(cfx_parse_layers(layers, specs, &n_specs, &err), 0);
    cfx_model fused, plain;
    assert_int_equal(cfx_model_create(&fused, specs, n_specs, in_c, size, size, n,
                                      CFX_MODEL_INPUT_GRAD, &err),
                     0);
    assert_int_equal(cfx_model_create(&plain, specs, n_specs, in_c, size, size, n,
                                      CFX_MODEL_INPUT_GRAD | CFX_MODEL_KEEP_ACTIVATIONS, &err),
                     0);
    int n_fused = 0;
    for (int i = 0; i < n_specs; i++) {
        n_fused += fused.layers[i].fused;
        assert_int_equal(plain.layers[i].fused, 0);
    }
    assert_true(n_fused > 0); /* the fused path is really taken */

    cfx_model_init_params(&fused, 3);
    memcpy(plain.params, fused.params, fused.n_params * sizeof(float));
    size_t in_size = (size_t)n * in_c * size * size;
    float *input = malloc(in_size * sizeof(float));
    int *labels = malloc((size_t)n * sizeof(int));
    cfx_rng rng;
    cfx_rng_seed(&rng, 11);
    for (size_t i = 0; i < in_size; i++)
        input[i] = 2.0f * cfx_rng_float(&rng) - 1.0f;
    for (int i = 0; i < n; i++)
        labels[i] = (int)cfx_rng_below(&rng, (uint32_t)fused.n_classes);

    run(&fused, n, input, labels);
    run(&plain, n, input, labels);
    assert_memory_equal(fused.acts[n_specs], plain.acts[n_specs],
                        (size_t)n * fused.n_classes * sizeof(float));
    assert_memory_equal(fused.grads, plain.grads, fused.n_params * sizeof(float));
    assert_memory_equal(fused.dacts[0], plain.dacts[0], in_size * sizeof(float));
    free(input);
    free(labels);
    cfx_model_free(&fused);
    cfx_model_free(&plain);
}

static void test_seed_cnn(void **state)
{
    (void)state;
    check("conv2d out=16 kernel=3 padding=1; relu; maxpool2d kernel=2; "
          "conv2d out=32 kernel=3 padding=1; relu; maxpool2d kernel=2; "
          "conv2d out=64 kernel=3 padding=1; relu; maxpool2d kernel=2; flatten; linear out=10",
          3, 32, 5);
}

static void test_other_patterns(void **state)
{
    (void)state;
    /* conv-relu-conv (no pool after the ReLU), overlapping pool, ReLU after linear. */
    check("conv2d out=4 kernel=5 stride=2 padding=2; relu; conv2d out=5 kernel=3 padding=1; relu; "
          "maxpool2d kernel=3 stride=2; flatten; linear out=8; relu; linear out=3",
          3, 9, 3);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_seed_cnn),
        cmocka_unit_test(test_other_patterns),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
