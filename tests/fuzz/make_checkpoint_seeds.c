/* Writes the seed corpus of fuzz_checkpoint (tests/fuzz/checkpoint/corpus):
 * checkpoints of the harness's small model with Adam and SGD state, one
 * with parameters only, one of another architecture, a metrics log, and
 * cut-short and non-HDF5 files. Run by hand; the output is committed.
 *
 * usage: make_checkpoint_seeds DIR */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cfx/checkpoint.h" /* defines: cfx_checkpoint_write, cfx_metrics_append */
#include "cfx/config.h"     /* defines: cfx_parse_layers, cfx_config_defaults */

#define LAYERS "conv2d out=2 kernel=3 padding=1; relu; maxpool2d kernel=2; flatten; linear out=3"
#define OTHER "conv2d out=3 kernel=3 padding=1; relu; maxpool2d kernel=2; flatten; linear out=3"

static void check(int rc, const cfx_error *err)
{
    if (rc != 0) {
        fprintf(stderr, "make_checkpoint_seeds: %s\n", err->msg);
        exit(1);
    }
}

static void make(cfx_model *m, cfx_optim *o, const char *layers, const char *optim, double momentum)
{
    cfx_layer_spec specs[CFX_MAX_LAYERS];
    int n = 0;
    cfx_config cfg;
    cfx_error err = {{0}};
    cfx_config_defaults(&cfg);
    strcpy(cfg.optim_name, optim);
    cfg.lr = 1e-3;
    cfg.momentum = momentum;
    check(cfx_parse_layers(layers, specs, &n, &err), &err);
    check(cfx_model_create(m, specs, n, 3, 4, 4, 1, 0, &err), &err);
    check(cfx_optim_create(o, &cfg, m->n_params, &err), &err);
    cfx_model_init_params(m, 1);
    for (size_t i = 0; i < m->n_params; i++) {
        o->m[i] = 0.01f * (float)i;
        if (o->v)
            o->v[i] = 0.001f * (float)i;
    }
    o->step = 12;
}

/* Copies the first `keep` bytes of src to dst. */
static void cut(const char *src, const char *dst, double keep)
{
    FILE *in = fopen(src, "rb"), *out = fopen(dst, "wb");
    if (!in || !out)
        exit(1);
    fseek(in, 0, SEEK_END);
    long n = (long)((double)ftell(in) * keep);
    fseek(in, 0, SEEK_SET);
    for (long i = 0; i < n; i++)
        fputc(fgetc(in), out);
    fclose(in);
    fclose(out);
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: %s DIR\n", argv[0]);
        return 2;
    }
    char path[1024], path2[1024];
    cfx_error err = {{0}};
    cfx_model m;
    cfx_optim o;
    cfx_train_state st = {.epoch = 2, .global_step = 12, .step_in_epoch = 3,
                          .best_validation_accuracy = 0.5, .best_epoch = 1, .seed = 1,
                          .split_seed = 42};
    cfx_run_meta meta = {.config_text = "[train]\nepochs = 3\n", .layers_text = LAYERS,
                         .ranks = 2, .blas_core = "Haswell", .blas_threads = 1, .seed = 1,
                         .host = "fuzz", .start_time = "2024-01-01T00:00:00Z"};

    make(&m, &o, LAYERS, "adam", 0.9);
    snprintf(path, sizeof path, "%s/adam.h5", argv[1]);
    check(cfx_checkpoint_write(path, &m, &o, &st, &meta, &err), &err);
    snprintf(path2, sizeof path2, "%s/adam_cut_half.h5", argv[1]);
    cut(path, path2, 0.5);
    snprintf(path2, sizeof path2, "%s/adam_cut_tail.h5", argv[1]);
    cut(path, path2, 0.95);
    snprintf(path, sizeof path, "%s/params_only.h5", argv[1]);
    check(cfx_checkpoint_write(path, &m, NULL, NULL, NULL, &err), &err);
    cfx_model_free(&m);
    cfx_optim_free(&o);

    make(&m, &o, LAYERS, "sgd", 0.9);
    snprintf(path, sizeof path, "%s/sgd.h5", argv[1]);
    check(cfx_checkpoint_write(path, &m, &o, &st, &meta, &err), &err);
    cfx_model_free(&m);
    cfx_optim_free(&o);

    make(&m, &o, OTHER, "adam", 0.9);
    snprintf(path, sizeof path, "%s/other_architecture.h5", argv[1]);
    check(cfx_checkpoint_write(path, &m, &o, &st, &meta, &err), &err);
    cfx_model_free(&m);
    cfx_optim_free(&o);

    snprintf(path, sizeof path, "%s/metrics.h5", argv[1]);
    unlink(path);
    for (int e = 1; e <= 2; e++) {
        cfx_epoch_metrics row = {.epoch = e, .train_loss = 2.0 / e, .train_accuracy = 0.1 * e,
                                 .validation_loss = 1.5, .validation_accuracy = 0.2,
                                 .learning_rate = 1e-3, .images_per_second = 100,
                                 .epoch_seconds = 1, .allreduce_seconds = 0.1};
        check(cfx_metrics_append(path, &row, &err), &err);
    }
    check(cfx_metrics_set_test(path, 1.25, 0.5, NULL, &err), &err);

    snprintf(path, sizeof path, "%s/not_hdf5.txt", argv[1]);
    FILE *f = fopen(path, "w");
    if (!f)
        return 1;
    fputs("[train]\nepochs = 3\n", f);
    fclose(f);
    return 0;
}
