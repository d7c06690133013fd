/* Helper of tests/bad_input_test.sh (not a test itself): makes bad
 * checkpoints from good ones.
 *
 *   ckpt_tool damage FILE DATASET   flips one byte in the middle of the stored
 *                                   data of DATASET ("/model/3.weight"), so
 *                                   only its fletcher32 checksum can tell
 *   ckpt_tool explode IN OUT        writes IN with weights whose forward pass
 *                                   is finite (a finite loss) but whose
 *                                   gradients overflow to infinity: the last
 *                                   convolution outputs ~1e-26, the linear
 *                                   layer after it has weights ~1e37
 *
 * IN must be a cfx-train checkpoint (layer list in its "layers" attribute,
 * Adam or SGD state, training state). */
#include <hdf5.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cfx/checkpoint.h" /* defines: cfx_checkpoint_read, cfx_checkpoint_write */
#include "cfx/config.h"     /* defines: cfx_parse_layers, cfx_config_defaults */
#include "cfx/data.h"       /* defines: CFX_IMAGE_CHANNELS, CFX_IMAGE_SIZE */

static int damage(const char *path, const char *obj)
{
    hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    hid_t d = f >= 0 ? H5Dopen2(f, obj, H5P_DEFAULT) : -1;
    hid_t s = d >= 0 ? H5Dget_space(d) : -1;
    haddr_t addr = 0;
    hsize_t size = 0;
    int ok = s >= 0 && H5Dget_chunk_info(d, s, 0, NULL, NULL, &addr, &size) >= 0 && size > 8;
    if (s >= 0)
        H5Sclose(s);
    if (d >= 0)
        H5Dclose(d);
    if (f >= 0)
        H5Fclose(f);
    FILE *fp = ok ? fopen(path, "r+b") : NULL;
    if (!fp) {
        fprintf(stderr, "ckpt_tool: %s: cannot locate the data of %s\n", path, obj);
        return 1;
    }
    long at = (long)(addr + size / 2);
    fseek(fp, at, SEEK_SET);
    int c = fgetc(fp);
    fseek(fp, at, SEEK_SET);
    fputc(c ^ 0x10, fp);
    return fclose(fp) == 0 ? 0 : 1;
}

static int explode(const char *in, const char *out)
{
    cfx_error err = {{0}};
    char *layers = NULL;
    cfx_layer_spec specs[CFX_MAX_LAYERS];
    int n = 0;
    if (cfx_checkpoint_read_attr(in, "layers", &layers, &err) != 0 ||
        cfx_parse_layers(layers, specs, &n, &err) != 0) {
        fprintf(stderr, "ckpt_tool: %s\n", err.msg);
        return 1;
    }
    free(layers);
    hid_t f = H5Fopen(in, H5F_ACC_RDONLY, H5P_DEFAULT);
    int adam = f >= 0 && H5Lexists(f, "/optimizer/0.weight/exp_avg_sq", H5P_DEFAULT) > 0;
    if (f >= 0)
        H5Fclose(f);
    cfx_config cfg;
    cfx_config_defaults(&cfg);
    strcpy(cfg.optim_name, adam ? "adam" : "sgd");
    cfg.lr = 1e-3;
    cfx_model m;
    cfx_optim o;
    cfx_train_state st;
    if (cfx_model_create(&m, specs, n, CFX_IMAGE_CHANNELS, CFX_IMAGE_SIZE, CFX_IMAGE_SIZE, 1, 0,
                         &err) != 0 ||
        cfx_optim_create(&o, &cfg, m.n_params, &err) != 0 ||
        cfx_checkpoint_read(in, &m, &o, &st, &err) != 0) {
        fprintf(stderr, "ckpt_tool: %s\n", err.msg);
        return 1;
    }
    /* The last convolution before the last linear layer, and that layer. */
    int conv = -1, lin = -1;
    for (int i = 0; i < m.n_layers; i++) {
        if (!strcmp(m.layers[i].kind->name, "conv2d") && lin < 0)
            conv = i;
        if (!strcmp(m.layers[i].kind->name, "linear"))
            lin = i;
    }
    if (conv < 0 || lin < 0) {
        fprintf(stderr, "ckpt_tool: %s: needs a conv2d followed by a linear layer\n", in);
        return 1;
    }
    cfx_layer *C = &m.layers[conv], *L = &m.layers[lin];
    for (size_t i = 0; i < C->n_weight; i++)
        m.params[C->weight_offset + i] = fabsf(m.params[C->weight_offset + i]) * 1e-30f;
    for (size_t i = 0; i < C->n_bias; i++)
        m.params[C->bias_offset + i] = 1e-30f;
    size_t in_f = (size_t)L->in_c;
    for (size_t k = 0; k < (size_t)L->out_c; k++)
        for (size_t j = 0; j < in_f; j++)
            m.params[L->weight_offset + k * in_f + j] = 1e37f * (float)(k + 1);
    cfx_run_meta meta = {0};
    if (cfx_checkpoint_read_attr(in, "layers", (char **)&meta.layers_text, &err) != 0 ||
        cfx_checkpoint_write(out, &m, &o, &st, &meta, &err) != 0) {
        fprintf(stderr, "ckpt_tool: %s\n", err.msg);
        return 1;
    }
    free((char *)meta.layers_text);
    cfx_model_free(&m);
    cfx_optim_free(&o);
    return 0;
}

int main(int argc, char **argv)
{
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
    if (argc == 4 && strcmp(argv[1], "damage") == 0)
        return damage(argv[2], argv[3]);
    if (argc == 4 && strcmp(argv[1], "explode") == 0)
        return explode(argv[2], argv[3]);
    fprintf(stderr, "usage: ckpt_tool damage FILE DATASET | ckpt_tool explode IN OUT\n");
    return 2;
}
