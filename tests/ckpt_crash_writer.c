/* Helper of test_checkpoint_crash (not a test itself): rewrites one
 * checkpoint forever, numbered k = start, start + 1, ..., with every
 * parameter and optimizer value equal to k and the step counters equal to
 * k, until it is killed. With BEST, it also writes BEST after every even k,
 * as cfx-train writes best.h5 right after last.h5 when an epoch improved.
 *
 * usage: ckpt_crash_writer PATH START [BEST] */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cfx/checkpoint.h" /* defines: cfx_checkpoint_write */
#include "cfx/config.h"     /* defines: cfx_parse_layers, cfx_config_defaults */

#define SEED_LAYERS                                                                                \
    "conv2d out=16 kernel=3 padding=1; relu; maxpool2d kernel=2; "                                 \
    "conv2d out=32 kernel=3 padding=1; relu; maxpool2d kernel=2; "                                 \
    "conv2d out=64 kernel=3 padding=1; relu; maxpool2d kernel=2; flatten; linear out=10"

int main(int argc, char **argv)
{
    if (argc != 3 && argc != 4) {
        fprintf(stderr, "usage: %s PATH START [BEST]\n", argv[0]);
        return 2;
    }
    const char *path = argv[1], *best = argc == 4 ? argv[3] : NULL;
    long k = atol(argv[2]);
    cfx_error err = {{0}};
    cfx_layer_spec specs[CFX_MAX_LAYERS];
    int n_specs = 0;
    cfx_model model;
    cfx_config cfg;
    cfx_optim optim;
    cfx_config_defaults(&cfg);
    snprintf(cfg.optim_name, sizeof cfg.optim_name, "adam");
    cfg.lr = 1e-3;
    if (cfx_parse_layers(SEED_LAYERS, specs, &n_specs, &err) != 0 ||
        cfx_model_create(&model, specs, n_specs, 3, 32, 32, 1, 0, &err) != 0 ||
        cfx_optim_create(&optim, &cfg, model.n_params, &err) != 0) {
        fprintf(stderr, "ckpt_crash_writer: %s\n", err.msg);
        return 1;
    }
    cfx_train_state state = {0};
    for (;; k++) {
        for (size_t i = 0; i < model.n_params; i++)
            model.params[i] = optim.m[i] = optim.v[i] = (float)k;
        optim.step = k;
        state.global_step = k;
        state.epoch = (int)k;
        if (cfx_checkpoint_write(path, &model, &optim, &state, NULL, &err) != 0 ||
            (best && k % 2 == 0 &&
             cfx_checkpoint_write(best, &model, &optim, &state, NULL, &err) != 0)) {
            fprintf(stderr, "ckpt_crash_writer: %s\n", err.msg);
            return 1;
        }
    }
}
