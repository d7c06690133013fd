/* libFuzzer harness of the checkpoint loader (src/io): the input is a file
 * for cfx_checkpoint_read (parameters, Adam state and training state of a
 * small model), cfx_checkpoint_read_attr and cfx_metrics_read, which --resume
 * and --eval use. A failed load must leave the model untouched and report
 * one line, and no HDF5 file or object may stay open afterwards. */
#include <hdf5.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "cfx/checkpoint.h" /* defines: cfx_checkpoint_read, cfx_metrics_read */
#include "cfx/config.h"     /* defines: cfx_parse_layers, cfx_config_defaults */
#include "fuzz_util.h"      /* defines: fuzz_scratch_file */

/* The layer list of the seed corpus (tests/fuzz/make_checkpoint_seeds.c):
 * small, so that the seed files stay small. */
#define FUZZ_LAYERS "conv2d out=2 kernel=3 padding=1; relu; maxpool2d kernel=2; flatten; linear out=3"
#define FUZZ_IN_C 3
#define FUZZ_IN_HW 4

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static cfx_model model;
static cfx_optim optim;

static void setup(void)
{
    static int done;
    if (done)
        return;
    done = 1;
    setenv("HDF5_USE_FILE_LOCKING", "FALSE", 1);
    cfx_layer_spec specs[CFX_MAX_LAYERS];
    int n = 0;
    cfx_config cfg;
    cfx_error err = {{0}};
    cfx_config_defaults(&cfg);
    strcpy(cfg.optim_name, "adam");
    cfg.lr = 1e-3;
    if (cfx_parse_layers(FUZZ_LAYERS, specs, &n, &err) != 0 ||
        cfx_model_create(&model, specs, n, FUZZ_IN_C, FUZZ_IN_HW, FUZZ_IN_HW, 1, 0, &err) != 0 ||
        cfx_optim_create(&optim, &cfg, model.n_params, &err) != 0)
        abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    setup();
    const char *path = fuzz_scratch_file("checkpoint", ".h5", data, size);
    cfx_error err = {{0}};
    cfx_train_state state;
    for (size_t i = 0; i < model.n_params; i++)
        model.params[i] = 7.0f;
    if (cfx_checkpoint_read(path, &model, &optim, &state, &err) != 0) {
        for (size_t i = 0; i < model.n_params; i++)
            if (model.params[i] != 7.0f)
                abort(); /* a failed load changed the model */
        if (err.msg[0] == '\0' || strchr(err.msg, '\n'))
            abort(); /* the error must be one non-empty line */
    }
    char *text = NULL;
    if (cfx_checkpoint_read_attr(path, "config", &text, &err) == 0)
        free(text);
    cfx_epoch_metrics *rows = NULL;
    int n_rows = 0;
    if (cfx_metrics_read(path, &rows, &n_rows, &err) == 0)
        free(rows);
    if (H5Fget_obj_count(H5F_OBJ_ALL, H5F_OBJ_ALL) != 0)
        abort(); /* a reader left a file or an object open */
    return 0;
}
