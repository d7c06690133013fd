/* Unit tests of the HDF5 checkpoint and metrics log (src/io): round trips
 * of every dataset and attribute, h5dump readability, truncated, foreign,
 * incomplete, mismatched and damaged files, and writes that fail (bad
 * directory, full disk) without touching the previous checkpoint. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <errno.h>
#include <hdf5.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "cfx/checkpoint.h" /* defines: cfx_checkpoint_write, cfx_checkpoint_read */
#include "cfx/config.h"     /* defines: cfx_parse_layers, cfx_config_defaults */
#include "cfx/rng.h"        /* defines: cfx_rng */

#define SEED_LAYERS                                                                                \
    "conv2d out=16 kernel=3 padding=1; relu; maxpool2d kernel=2; "                                 \
    "conv2d out=32 kernel=3 padding=1; relu; maxpool2d kernel=2; "                                 \
    "conv2d out=64 kernel=3 padding=1; relu; maxpool2d kernel=2; flatten; linear out=10"
/* The seed model with a wider second convolution. */
#define WIDE_LAYERS                                                                                \
    "conv2d out=16 kernel=3 padding=1; relu; maxpool2d kernel=2; "                                 \
    "conv2d out=64 kernel=3 padding=1; relu; maxpool2d kernel=2; "                                 \
    "conv2d out=64 kernel=3 padding=1; relu; maxpool2d kernel=2; flatten; linear out=10"

static char tmpdir[256];

#define assert_has(msg, needle)                                                                    \
    do {                                                                                           \
        if (!strstr((msg), (needle)))                                                              \
            fail_msg("message \"%s\" does not contain \"%s\"", (msg), (needle));                   \
    } while (0)

static int group_setup(void **state)
{
    (void)state;
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
    snprintf(tmpdir, sizeof tmpdir, "/tmp/cfx_test_checkpoint_XXXXXX");
    return mkdtemp(tmpdir) ? 0 : -1;
}

static int group_teardown(void **state)
{
    (void)state;
    char cmd[512];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    return system(cmd) == 0 ? 0 : -1;
}

/* tmpdir/name (one of a few rotating static buffers). */
static const char *tpath(const char *name)
{
    static char bufs[4][512];
    static int next;
    char *b = bufs[next++ % 4];
    snprintf(b, 512, "%s/%s", tmpdir, name);
    return b;
}

static void make_model(cfx_model *m, const char *layers)
{
    cfx_layer_spec specs[CFX_MAX_LAYERS];
    int n = 0;
    cfx_error err = {{0}};
    if (cfx_parse_layers(layers, specs, &n, &err) != 0)
        fail_msg("%s", err.msg);
    if (cfx_model_create(m, specs, n, 3, 32, 32, 1, 0, &err) != 0)
        fail_msg("%s", err.msg);
}

static void make_optim(cfx_optim *o, const char *name, double momentum, size_t n)
{
    cfx_config cfg;
    cfx_config_defaults(&cfg);
    snprintf(cfg.optim_name, sizeof cfg.optim_name, "%s", name);
    cfg.lr = 0.01;
    cfg.momentum = momentum;
    cfx_error err = {{0}};
    if (cfx_optim_create(o, &cfg, n, &err) != 0)
        fail_msg("%s", err.msg);
}

static void fill_random(float *x, size_t n, uint64_t seed)
{
    cfx_rng rng;
    cfx_rng_seed(&rng, seed);
    for (size_t i = 0; i < n; i++)
        x[i] = cfx_rng_float(&rng) - 0.5f;
}

static void fill(float *x, size_t n, float v)
{
    for (size_t i = 0; i < n; i++)
        x[i] = v;
}

static const cfx_train_state STATE = {
    .epoch = 7,
    .global_step = 12345,
    .step_in_epoch = 17,
    .best_validation_accuracy = 0.625,
    .best_epoch = 5,
    .epoch_loss_sum = 1234.5,
    .epoch_correct = 777.0,
    .seed = 0xFEDCBA9876543210ULL, /* above INT64_MAX: must survive as unsigned */
    .split_seed = 42,
};

static const cfx_run_meta META = {
    .config_text = "[train]\nepochs = 3\nbatch_size = 64\n",
    .layers_text = SEED_LAYERS,
    .cfx_version = "9.8.7",
    .git_commit = "0123456789ab",
    .ranks = 4,
    .blas_core = "Haswell",
    .blas_threads = 2,
    .seed = 1,
    .host = "node17",
    .start_time = "2024-05-01T12:00:00Z",
};

/* The seed model with random parameters and a matching Adam state. */
static void write_seed(const char *path, cfx_model *m, cfx_optim *o)
{
    make_model(m, SEED_LAYERS);
    cfx_model_init_params(m, 3);
    make_optim(o, "adam", 0.9, m->n_params);
    fill_random(o->m, o->n, 11);
    fill_random(o->v, o->n, 12);
    o->step = 321;
    cfx_error err = {{0}};
    if (cfx_checkpoint_write(path, m, o, &STATE, &META, &err) != 0)
        fail_msg("%s", err.msg);
}

static char *slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = malloc((size_t)n + 1);
    assert_int_equal(fread(buf, 1, (size_t)n, f), (size_t)n);
    fclose(f);
    *len = (size_t)n;
    return buf;
}

static void spit(const char *path, const char *buf, size_t len)
{
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(buf, 1, len, f), len);
    assert_int_equal(fclose(f), 0);
}

static int file_exists(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0;
}

/* Reads a numeric attribute with the HDF5 API (what h5py would see). */
static double h5_num_attr(hid_t loc, const char *obj, const char *name, hid_t *class_out)
{
    double v = -1;
    hid_t a = H5Aopen_by_name(loc, obj, name, H5P_DEFAULT, H5P_DEFAULT);
    if (a < 0)
        fail_msg("attribute %s of %s is missing", name, obj);
    hid_t t = H5Aget_type(a);
    if (class_out)
        *class_out = H5Tget_class(t);
    assert_true(H5Aread(a, H5T_NATIVE_DOUBLE, &v) >= 0);
    H5Tclose(t);
    H5Aclose(a);
    return v;
}

static void h5_str_attr(hid_t loc, const char *obj, const char *name, const char *want)
{
    hid_t a = H5Aopen_by_name(loc, obj, name, H5P_DEFAULT, H5P_DEFAULT);
    if (a < 0)
        fail_msg("attribute %s of %s is missing", name, obj);
    hid_t t = H5Aget_type(a);
    assert_int_equal(H5Tget_class(t), H5T_STRING);
    hid_t mt = H5Tcopy(H5T_C_S1);
    H5Tset_size(mt, H5T_VARIABLE);
    H5Tset_cset(mt, H5Tget_cset(t));
    char *s = NULL;
    assert_true(H5Aread(a, mt, &s) >= 0);
    assert_string_equal(s, want);
    H5free_memory(s);
    H5Tclose(mt);
    H5Tclose(t);
    H5Aclose(a);
}

/* Dataset obj exists, is float32, chunked and has the fletcher32 filter. */
static void check_dataset_storage(hid_t f, const char *obj)
{
    hid_t d = H5Dopen2(f, obj, H5P_DEFAULT);
    if (d < 0)
        fail_msg("dataset %s is missing", obj);
    hid_t t = H5Dget_type(d);
    assert_true(H5Tequal(t, H5T_IEEE_F32LE) > 0);
    hid_t dcpl = H5Dget_create_plist(d);
    assert_int_equal(H5Pget_layout(dcpl), H5D_CHUNKED);
    int found = 0;
    for (int i = 0; i < H5Pget_nfilters(dcpl); i++) {
        unsigned flags;
        size_t nelem = 0;
        if (H5Pget_filter2(dcpl, (unsigned)i, &flags, &nelem, NULL, 0, NULL, NULL) ==
            H5Z_FILTER_FLETCHER32)
            found = 1;
    }
    if (!found)
        fail_msg("dataset %s has no fletcher32 filter", obj);
    H5Pclose(dcpl);
    H5Tclose(t);
    H5Dclose(d);
}

/* ---- round trips ---------------------------------------------------------- */

static void test_round_trip_adam(void **state)
{
    (void)state;
    const char *path = tpath("adam.h5");
    cfx_model m;
    cfx_optim o;
    write_seed(path, &m, &o);
    assert_false(file_exists(tpath("adam.h5.tmp")));

    cfx_model m2;
    cfx_optim o2;
    cfx_train_state s2;
    memset(&s2, 0, sizeof s2);
    make_model(&m2, SEED_LAYERS);
    make_optim(&o2, "adam", 0.9, m2.n_params);
    cfx_error err = {{0}};
    if (cfx_checkpoint_read(path, &m2, &o2, &s2, &err) != 0)
        fail_msg("%s", err.msg);
    assert_memory_equal(m.params, m2.params, m.n_params * sizeof(float));
    assert_memory_equal(o.m, o2.m, o.n * sizeof(float));
    assert_memory_equal(o.v, o2.v, o.n * sizeof(float));
    assert_int_equal(o2.step, 321);
    assert_int_equal(s2.epoch, STATE.epoch);
    assert_int_equal(s2.global_step, STATE.global_step);
    assert_int_equal(s2.step_in_epoch, STATE.step_in_epoch);
    assert_true(s2.best_validation_accuracy == STATE.best_validation_accuracy);
    assert_int_equal(s2.best_epoch, STATE.best_epoch);
    assert_true(s2.epoch_loss_sum == STATE.epoch_loss_sum);
    assert_true(s2.epoch_correct == STATE.epoch_correct);
    assert_true(s2.seed == STATE.seed);
    assert_true(s2.split_seed == STATE.split_seed);

    /* String attributes through the public API. */
    const struct {
        const char *name, *want;
    } strs[] = {{"config", META.config_text},   {"layers", META.layers_text},
                {"cfx_version", "9.8.7"},       {"git_commit", "0123456789ab"},
                {"blas_core", "Haswell"},       {"host", "node17"},
                {"start_time", META.start_time}};
    for (size_t i = 0; i < sizeof strs / sizeof strs[0]; i++) {
        char *v = NULL;
        if (cfx_checkpoint_read_attr(path, strs[i].name, &v, &err) != 0)
            fail_msg("%s", err.msg);
        assert_string_equal(v, strs[i].want);
        free(v);
    }
    char *v = NULL;
    assert_int_equal(cfx_checkpoint_read_attr(path, "no_such_attr", &v, &err), -1);
    assert_has(err.msg, path);
    assert_has(err.msg, "no_such_attr");

    /* Everything else as h5py would see it. */
    hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    assert_true(f >= 0);
    hid_t cls;
    assert_true(h5_num_attr(f, "/", "format_version", &cls) == 1 && cls == H5T_INTEGER);
    assert_true(h5_num_attr(f, "/", "ranks", &cls) == 4 && cls == H5T_INTEGER);
    assert_true(h5_num_attr(f, "/", "blas_threads", NULL) == 2);
    assert_true(h5_num_attr(f, "/", "seed", NULL) == 1);
    h5_str_attr(f, "/model/0.weight", "layer_type", "Conv2d");
    assert_true(h5_num_attr(f, "/model/0.weight", "in_channels", NULL) == 3);
    assert_true(h5_num_attr(f, "/model/0.weight", "out_channels", NULL) == 16);
    assert_true(h5_num_attr(f, "/model/0.weight", "kernel_size", NULL) == 3);
    assert_true(h5_num_attr(f, "/model/0.weight", "stride", NULL) == 1);
    assert_true(h5_num_attr(f, "/model/0.weight", "padding", NULL) == 1);
    h5_str_attr(f, "/model/10.bias", "layer_type", "Linear");
    assert_true(h5_num_attr(f, "/model/10.weight", "in_features", NULL) == 1024);
    assert_true(h5_num_attr(f, "/model/10.weight", "out_features", NULL) == 10);
    h5_str_attr(f, "/optimizer", "name", "adam");
    assert_true(h5_num_attr(f, "/optimizer", "lr", &cls) == 0.01 && cls == H5T_FLOAT);
    assert_true(h5_num_attr(f, "/optimizer", "beta1", NULL) == 0.9);
    assert_true(h5_num_attr(f, "/optimizer", "beta2", NULL) == 0.999);
    assert_true(h5_num_attr(f, "/optimizer", "eps", NULL) == 1e-8);
    assert_true(h5_num_attr(f, "/optimizer", "momentum", NULL) == 0.9);
    assert_true(h5_num_attr(f, "/optimizer", "weight_decay", NULL) == 0);
    assert_true(h5_num_attr(f, "/optimizer", "nesterov", NULL) == 0);
    assert_true(h5_num_attr(f, "/optimizer", "step", NULL) == 321);
    assert_true(h5_num_attr(f, "/train_state", "epoch", NULL) == 7);
    assert_true(h5_num_attr(f, "/train_state", "global_step", NULL) == 12345);
    unsigned long long seed = 0;
    hid_t a = H5Aopen_by_name(f, "/train_state", "seed", H5P_DEFAULT, H5P_DEFAULT);
    assert_true(a >= 0 && H5Aread(a, H5T_NATIVE_ULLONG, &seed) >= 0);
    H5Aclose(a);
    assert_true(seed == STATE.seed);
    assert_true(H5Aexists_by_name(f, "/train_state", "rng", H5P_DEFAULT) > 0);
    const char *datasets[] = {"/model/0.weight",
                              "/model/0.bias",
                              "/model/3.weight",
                              "/model/6.bias",
                              "/model/10.weight",
                              "/model/10.bias",
                              "/optimizer/0.weight/exp_avg",
                              "/optimizer/10.bias/exp_avg_sq"};
    for (size_t i = 0; i < sizeof datasets / sizeof datasets[0]; i++)
        check_dataset_storage(f, datasets[i]);
    /* Data in PyTorch order: 3.weight[1][2][0][1] is params[offset + ((1*16+2)*3+0)*3+1]. */
    float w[32][16][3][3];
    hid_t d = H5Dopen2(f, "/model/3.weight", H5P_DEFAULT);
    assert_true(H5Dread(d, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, w) >= 0);
    H5Dclose(d);
    assert_true(w[1][2][0][1] ==
                m.params[m.layers[3].weight_offset + ((1 * 16 + 2) * 3 + 0) * 3 + 1]);
    H5Fclose(f);

    /* NULL optimizer and state: only the parameters are loaded. */
    cfx_model m3;
    make_model(&m3, SEED_LAYERS);
    if (cfx_checkpoint_read(path, &m3, NULL, NULL, &err) != 0)
        fail_msg("%s", err.msg);
    assert_memory_equal(m.params, m3.params, m.n_params * sizeof(float));

    cfx_model_free(&m);
    cfx_model_free(&m2);
    cfx_model_free(&m3);
    cfx_optim_free(&o);
    cfx_optim_free(&o2);
}

static void test_round_trip_sgd(void **state)
{
    (void)state;
    const char *path = tpath("sgd.h5");
    cfx_model m, m2;
    cfx_optim o, o2;
    cfx_error err = {{0}};
    make_model(&m, SEED_LAYERS);
    make_model(&m2, SEED_LAYERS);
    cfx_model_init_params(&m, 5);
    make_optim(&o, "sgd", 0.9, m.n_params);
    fill_random(o.m, o.n, 13);
    o.step = 9;
    assert_int_equal(cfx_checkpoint_write(path, &m, &o, &STATE, NULL, &err), 0);
    make_optim(&o2, "sgd", 0.9, m.n_params);
    cfx_train_state s2;
    if (cfx_checkpoint_read(path, &m2, &o2, &s2, &err) != 0)
        fail_msg("%s", err.msg);
    assert_memory_equal(o.m, o2.m, o.n * sizeof(float));
    assert_int_equal(o2.step, 9);
    assert_int_equal(s2.global_step, STATE.global_step);
    hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    check_dataset_storage(f, "/optimizer/3.weight/momentum_buffer");
    h5_str_attr(f, "/optimizer", "name", "sgd");
    h5_str_attr(f, "/", "host", ""); /* NULL meta: empty strings */
    H5Fclose(f);

    /* A file with Adam state does not load into SGD, and vice versa. */
    cfx_optim adam;
    make_optim(&adam, "adam", 0.9, m.n_params);
    assert_int_equal(cfx_checkpoint_read(path, &m2, &adam, NULL, &err), -1);
    assert_has(err.msg, path);
    assert_has(err.msg, "'sgd' optimizer state, this run uses 'adam'");

    /* Without momentum there is no buffer; loading gives zeros. */
    cfx_optim_free(&o);
    make_optim(&o, "sgd", 0.0, m.n_params);
    assert_int_equal(cfx_checkpoint_write(path, &m, &o, &STATE, NULL, &err), 0);
    f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    assert_true(H5Lexists(f, "/optimizer", H5P_DEFAULT) > 0);
    assert_int_equal(H5Lexists(f, "/optimizer/0.weight", H5P_DEFAULT), 0);
    H5Fclose(f);
    fill(o2.m, o2.n, 7.0f);
    if (cfx_checkpoint_read(path, &m2, &o2, NULL, &err) != 0)
        fail_msg("%s", err.msg);
    for (size_t i = 0; i < o2.n; i++)
        assert_true(o2.m[i] == 0.0f);

    /* A checkpoint without optimizer or state loads the model only. */
    assert_int_equal(cfx_checkpoint_write(path, &m, NULL, NULL, NULL, &err), 0);
    assert_int_equal(cfx_checkpoint_read(path, &m2, NULL, NULL, &err), 0);
    assert_int_equal(cfx_checkpoint_read(path, &m2, &o2, NULL, &err), -1);
    assert_has(err.msg, "no optimizer state");
    assert_int_equal(cfx_checkpoint_read(path, &m2, NULL, &s2, &err), -1);
    assert_has(err.msg, "no training state");

    cfx_optim_free(&adam);
    cfx_optim_free(&o);
    cfx_optim_free(&o2);
    cfx_model_free(&m);
    cfx_model_free(&m2);
}

/* Runs cmd, returns its exit status and (if out) its first bytes of output. */
static int run(const char *cmd, char *out, size_t len)
{
    FILE *p = popen(cmd, "r");
    assert_non_null(p);
    size_t n = 0, got;
    char sink[4096];
    for (;;) { /* keep draining the pipe once out is full */
        int keep = out && n < len - 1;
        got = fread(keep ? out + n : sink, 1, keep ? len - 1 - n : sizeof sink, p);
        if (got == 0)
            break;
        if (keep)
            n += got;
    }
    if (out)
        out[n] = '\0';
    int status = pclose(p);
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

static void test_h5dump(void **state)
{
    (void)state;
    const char *path = tpath("dump.h5");
    cfx_model m;
    cfx_optim o;
    write_seed(path, &m, &o);
    char cmd[1024], out[16384];
    snprintf(cmd, sizeof cmd, "h5dump -H -d /model/0.weight '%s' 2>&1", path);
    if (run(cmd, out, sizeof out) != 0)
        fail_msg("%s failed:\n%s", cmd, out);
    assert_has(out, "( 16, 3, 3, 3 )");
    assert_has(out, "H5T_IEEE_F32LE");
    snprintf(cmd, sizeof cmd, "h5dump -a /layers '%s' 2>&1", path);
    assert_int_equal(run(cmd, out, sizeof out), 0);
    assert_has(out, "conv2d out=16 kernel=3 padding=1");
    snprintf(cmd, sizeof cmd, "h5dump '%s' >/dev/null 2>&1", path); /* the whole file */
    assert_int_equal(run(cmd, NULL, 0), 0);
    cfx_model_free(&m);
    cfx_optim_free(&o);
}

/* ---- files that must not load --------------------------------------------- */

static void test_not_a_checkpoint(void **state)
{
    (void)state;
    cfx_model m;
    cfx_optim o;
    cfx_error err = {{0}};
    const char *good = tpath("good.h5");
    write_seed(good, &m, &o);
    size_t len;
    char *bytes = slurp(good, &len);

    const char *path = tpath("half.h5");
    spit(path, bytes, len / 2);
    fill(m.params, m.n_params, 5.0f);
    assert_int_equal(cfx_checkpoint_read(path, &m, &o, NULL, &err), -1);
    assert_has(err.msg, path);
    assert_has(err.msg, "truncated");
    assert_true(m.params[0] == 5.0f && m.params[m.n_params - 1] == 5.0f); /* untouched */

    spit(path, bytes, 4);
    assert_int_equal(cfx_checkpoint_read(path, &m, NULL, NULL, &err), -1);
    assert_has(err.msg, "not an HDF5 file");
    spit(path, bytes, 0);
    assert_int_equal(cfx_checkpoint_read(path, &m, NULL, NULL, &err), -1);
    assert_has(err.msg, "empty file");

    spit(path, "[train]\nepochs = 3\n", 19);
    assert_int_equal(cfx_checkpoint_read(path, &m, NULL, NULL, &err), -1);
    assert_has(err.msg, path);
    assert_has(err.msg, "not an HDF5 file");
    char *v = NULL;
    assert_int_equal(cfx_checkpoint_read_attr(path, "config", &v, &err), -1);
    assert_has(err.msg, "not an HDF5 file");

    assert_int_equal(cfx_checkpoint_read(tpath("none.h5"), &m, NULL, NULL, &err), -1);
    assert_has(err.msg, "none.h5");
    assert_has(err.msg, "No such file or directory");

    /* An HDF5 file that is not a checkpoint. */
    hid_t f = H5Fcreate(path, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    H5Fclose(f);
    assert_int_equal(cfx_checkpoint_read(path, &m, NULL, NULL, &err), -1);
    assert_has(err.msg, "no /model group");

    free(bytes);
    cfx_model_free(&m);
    cfx_optim_free(&o);
}

static void test_missing_parameter(void **state)
{
    (void)state;
    cfx_model m;
    cfx_optim o;
    cfx_error err = {{0}};
    const char *path = tpath("missing.h5");
    write_seed(path, &m, &o);
    hid_t f = H5Fopen(path, H5F_ACC_RDWR, H5P_DEFAULT);
    assert_true(H5Ldelete(f, "/model/3.weight", H5P_DEFAULT) >= 0);
    H5Fclose(f);
    fill(m.params, m.n_params, 5.0f);
    assert_int_equal(cfx_checkpoint_read(path, &m, NULL, NULL, &err), -1);
    assert_has(err.msg, path);
    assert_has(err.msg, "parameter 3.weight is missing from the file (the model expects "
                        "32x16x3x3)");
    assert_true(m.params[0] == 5.0f);

    /* Optimizer state missing for one parameter. */
    cfx_model_free(&m);
    cfx_optim_free(&o);
    write_seed(path, &m, &o);
    f = H5Fopen(path, H5F_ACC_RDWR, H5P_DEFAULT);
    assert_true(H5Ldelete(f, "/optimizer/6.bias/exp_avg_sq", H5P_DEFAULT) >= 0);
    H5Fclose(f);
    assert_int_equal(cfx_checkpoint_read(path, &m, &o, NULL, &err), -1);
    assert_has(err.msg, "/optimizer/6.bias/exp_avg_sq is missing");
    cfx_model_free(&m);
    cfx_optim_free(&o);
}

static void test_other_architecture(void **state)
{
    (void)state;
    cfx_model wide, m;
    cfx_optim o;
    cfx_error err = {{0}};
    const char *path = tpath("wide.h5");
    make_model(&wide, WIDE_LAYERS);
    assert_int_equal(cfx_checkpoint_write(path, &wide, NULL, NULL, NULL, &err), 0);
    const char *seed = tpath("seed_arch.h5");
    write_seed(seed, &m, &o);
    assert_int_equal(cfx_checkpoint_read(path, &m, NULL, NULL, &err), -1);
    char want[1024];
    snprintf(want, sizeof want,
             "%s: parameter 3.weight has shape 64x16x3x3 in the file, the "
             "model expects 32x16x3x3",
             path);
    assert_string_equal(err.msg, want);

    /* The other way round: the first difference is 3.weight again. */
    assert_int_equal(cfx_checkpoint_read(seed, &wide, NULL, NULL, &err), -1);
    assert_has(err.msg, "parameter 3.weight has shape 32x16x3x3 in the file, the model "
                        "expects 64x16x3x3");

    /* A parameter the model does not have. */
    hid_t f = H5Fopen(seed, H5F_ACC_RDWR, H5P_DEFAULT);
    hsize_t n = 4;
    hid_t s = H5Screate_simple(1, &n, NULL);
    hid_t d =
        H5Dcreate2(f, "/model/12.bias", H5T_IEEE_F32LE, s, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    H5Dclose(d);
    H5Sclose(s);
    H5Fclose(f);
    assert_int_equal(cfx_checkpoint_read(seed, &m, NULL, NULL, &err), -1);
    assert_has(err.msg, "parameter 12.bias is in the file but not in the model");
    cfx_model_free(&wide);
    cfx_model_free(&m);
    cfx_optim_free(&o);
}

/* Flips one byte in the middle of the stored data of dataset obj. */
static void flip_data_byte(const char *path, const char *obj)
{
    hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    hid_t d = H5Dopen2(f, obj, H5P_DEFAULT);
    hid_t s = H5Dget_space(d);
    haddr_t addr = 0;
    hsize_t size = 0;
    assert_true(H5Dget_chunk_info(d, s, 0, NULL, NULL, &addr, &size) >= 0);
    assert_true(size > 8);
    H5Sclose(s);
    H5Dclose(d);
    H5Fclose(f);
    FILE *fp = fopen(path, "r+b");
    assert_non_null(fp);
    long at = (long)(addr + size / 2);
    fseek(fp, at, SEEK_SET);
    int c = fgetc(fp);
    fseek(fp, at, SEEK_SET);
    fputc(c ^ 0x10, fp);
    fclose(fp);
}

static void test_damaged(void **state)
{
    (void)state;
    cfx_model m;
    cfx_optim o;
    cfx_error err = {{0}};
    const char *path = tpath("damaged.h5");
    write_seed(path, &m, &o);
    flip_data_byte(path, "/model/3.weight");
    fill(m.params, m.n_params, 5.0f);
    assert_int_equal(cfx_checkpoint_read(path, &m, &o, NULL, &err), -1);
    char want[1024];
    snprintf(want, sizeof want, "%s: damaged: checksum mismatch in /model/3.weight", path);
    assert_string_equal(err.msg, want);
    assert_true(m.params[0] == 5.0f);

    cfx_model_free(&m);
    cfx_optim_free(&o);
    write_seed(path, &m, &o);
    flip_data_byte(path, "/optimizer/10.weight/exp_avg");
    assert_int_equal(cfx_checkpoint_read(path, &m, NULL, NULL, &err), 0); /* model is fine */
    assert_int_equal(cfx_checkpoint_read(path, &m, &o, NULL, &err), -1);
    assert_has(err.msg, "damaged: checksum mismatch in /optimizer/10.weight/exp_avg");
    cfx_model_free(&m);
    cfx_optim_free(&o);
}

/* ---- writes that fail ------------------------------------------------------ */

static void test_unwritable_directory(void **state)
{
    (void)state;
    cfx_model m;
    cfx_optim o;
    cfx_error err = {{0}};
    /* A "directory" that is a regular file fails even for root. */
    spit(tpath("plain"), "x", 1);
    const char *bad = tpath("plain/ckpt.h5");
    make_model(&m, SEED_LAYERS);
    assert_int_equal(cfx_checkpoint_write(bad, &m, NULL, NULL, NULL, &err), -1);
    assert_has(err.msg, bad);
    assert_has(err.msg, "Not a directory");
    assert_null(strchr(err.msg, '\n'));
    cfx_model_free(&m);

    /* The temporary name is taken by a directory: the old file survives. */
    const char *path = tpath("blocked.h5");
    write_seed(path, &m, &o);
    size_t len, len2;
    char *before = slurp(path, &len);
    char tmp[600];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    assert_int_equal(mkdir(tmp, 0755), 0);
    cfx_model_init_params(&m, 99);
    assert_int_equal(cfx_checkpoint_write(path, &m, &o, &STATE, &META, &err), -1);
    assert_has(err.msg, path);
    assert_has(err.msg, "Is a directory");
    char *after = slurp(path, &len2);
    assert_int_equal(len, len2);
    assert_memory_equal(before, after, len);
    assert_int_equal(rmdir(tmp), 0);
    free(before);
    free(after);

    /* Without root, a read-only directory fails too. */
    if (geteuid() != 0) {
        const char *ro = tpath("ro");
        assert_int_equal(mkdir(ro, 0555), 0);
        assert_int_equal(cfx_checkpoint_write(tpath("ro/ckpt.h5"), &m, NULL, NULL, NULL, &err), -1);
        assert_has(err.msg, "Permission denied");
    }
    cfx_model_free(&m);
    cfx_optim_free(&o);
}

/* Child of test_disk_full: exit codes say what went wrong. */
enum { FULL_OK, FULL_WROTE, FULL_CHANGED, FULL_TMP_LEFT, FULL_RETRY_FAILED };

static void test_disk_full(void **state)
{
    (void)state;
    cfx_model m;
    cfx_optim o;
    const char *path = tpath("full.h5");
    write_seed(path, &m, &o);
    size_t len;
    char *before = slurp(path, &len);
    char tmp[600];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    int fds[2];
    assert_int_equal(pipe(fds), 0);
    fflush(NULL);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        /* Files may grow to 64 KiB; the checkpoint is ~400 KiB. */
        signal(SIGXFSZ, SIG_IGN);
        struct rlimit rl;
        getrlimit(RLIMIT_FSIZE, &rl);
        rlim_t hard = rl.rlim_cur;
        rl.rlim_cur = 64 * 1024;
        setrlimit(RLIMIT_FSIZE, &rl);
        cfx_error err = {{0}};
        cfx_model_init_params(&m, 77);
        int rc = cfx_checkpoint_write(path, &m, &o, &STATE, &META, &err);
        if (write(fds[1], err.msg, strlen(err.msg) + 1) < 0)
            _exit(100);
        if (rc == 0)
            _exit(FULL_WROTE);
        FILE *fp = fopen(path, "rb");
        char *now = malloc(len + 1);
        size_t got = fp ? fread(now, 1, len + 1, fp) : 0;
        if (got != len || memcmp(now, before, len) != 0)
            _exit(FULL_CHANGED);
        if (access(tmp, F_OK) == 0)
            _exit(FULL_TMP_LEFT);
        /* Space again: the same process can write, and exit() runs HDF5's
         * cleanup (which crashes if a failed close left a file half open). */
        rl.rlim_cur = hard;
        setrlimit(RLIMIT_FSIZE, &rl);
        exit(cfx_checkpoint_write(path, &m, &o, &STATE, &META, &err) == 0 ? FULL_OK
                                                                          : FULL_RETRY_FAILED);
    }
    close(fds[1]);
    char msg[1024] = "";
    size_t n = 0;
    ssize_t got;
    while (n < sizeof msg - 1 && (got = read(fds[0], msg + n, sizeof msg - 1 - n)) > 0)
        n += (size_t)got;
    close(fds[0]);
    int status;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    if (!WIFEXITED(status))
        fail_msg("child died with signal %d", WIFSIGNALED(status) ? WTERMSIG(status) : 0);
    if (WEXITSTATUS(status) != FULL_OK)
        fail_msg("child exit %d (1 wrote, 2 changed, 3 tmp left, 4 retry failed): %s",
                 WEXITSTATUS(status), msg);
    assert_has(msg, path);
    assert_has(msg, "File too large");
    assert_null(strchr(msg, '\n'));
    /* The retry wrote the child's parameters. */
    cfx_model m2;
    cfx_error err = {{0}};
    make_model(&m2, SEED_LAYERS);
    cfx_model_init_params(&m, 77);
    assert_int_equal(cfx_checkpoint_read(path, &m2, NULL, NULL, &err), 0);
    assert_memory_equal(m.params, m2.params, m.n_params * sizeof(float));
    free(before);

    /* A real "No space left on device": the temporary file is /dev/full. */
    if (access("/dev/full", W_OK) == 0) {
        before = slurp(path, &len);
        assert_int_equal(symlink("/dev/full", tmp), 0);
        cfx_model_init_params(&m, 78);
        assert_int_equal(cfx_checkpoint_write(path, &m, &o, &STATE, &META, &err), -1);
        assert_has(err.msg, path);
        assert_has(err.msg, "No space left on device");
        size_t len2;
        char *after = slurp(path, &len2);
        assert_int_equal(len, len2);
        assert_memory_equal(before, after, len);
        assert_int_equal(access(tmp, F_OK), -1); /* the link is gone */
        /* The metrics log survives a full disk too. */
        const char *log = tpath("full_metrics.h5");
        char log_tmp[600];
        snprintf(log_tmp, sizeof log_tmp, "%s.tmp", log);
        cfx_epoch_metrics row = {.epoch = 1, .train_loss = 2.5};
        assert_int_equal(cfx_metrics_append(log, &row, &err), 0);
        assert_int_equal(symlink("/dev/full", log_tmp), 0);
        row.epoch = 2;
        assert_int_equal(cfx_metrics_append(log, &row, &err), -1);
        assert_has(err.msg, log);
        assert_has(err.msg, "No space left on device");
        cfx_epoch_metrics *rows = NULL;
        int n = 0;
        assert_int_equal(cfx_metrics_read(log, &rows, &n, &err), 0);
        assert_int_equal(n, 1);
        assert_true(rows[0].train_loss == 2.5);
        free(rows);
        free(before);
        free(after);
    }
    cfx_model_free(&m);
    cfx_model_free(&m2);
    cfx_optim_free(&o);
}

/* ---- metrics log ---------------------------------------------------------- */

static cfx_epoch_metrics metrics_row(int epoch, double salt)
{
    cfx_epoch_metrics r = {
        .epoch = epoch,
        .train_loss = 2.0 / epoch + salt,
        .train_accuracy = 0.1 * epoch + salt,
        .validation_loss = 2.5 / epoch + salt,
        .validation_accuracy = 0.09 * epoch + salt,
        .learning_rate = 1e-3 + salt,
        .images_per_second = 1000.0 * epoch + salt,
        .epoch_seconds = 45.0 + epoch + salt,
        .allreduce_seconds = 0.5 * epoch + salt,
    };
    return r;
}

static void assert_rows_equal(const cfx_epoch_metrics *a, const cfx_epoch_metrics *b)
{
    assert_int_equal(a->epoch, b->epoch);
    assert_true(a->train_loss == b->train_loss);
    assert_true(a->train_accuracy == b->train_accuracy);
    assert_true(a->validation_loss == b->validation_loss);
    assert_true(a->validation_accuracy == b->validation_accuracy);
    assert_true(a->learning_rate == b->learning_rate);
    assert_true(a->images_per_second == b->images_per_second);
    assert_true(a->epoch_seconds == b->epoch_seconds);
    assert_true(a->allreduce_seconds == b->allreduce_seconds);
}

static void h5dump_ok(const char *path, const char *obj, const char *needle)
{
    char cmd[1024], out[16384];
    snprintf(cmd, sizeof cmd, "h5dump %s%s '%s' 2>&1", obj ? "-d " : "", obj ? obj : "", path);
    if (run(cmd, out, sizeof out) != 0)
        fail_msg("%s failed:\n%s", cmd, out);
    if (needle)
        assert_has(out, needle);
}

static void test_metrics(void **state)
{
    (void)state;
    const char *path = tpath("metrics.h5");
    cfx_error err = {{0}};
    cfx_epoch_metrics *rows = NULL;
    int n = -1;
    /* No log yet: truncating is a no-op, reading fails naming the file. */
    assert_int_equal(cfx_metrics_truncate(path, 3, &err), 0);
    assert_int_equal(cfx_metrics_read(path, &rows, &n, &err), -1);
    assert_has(err.msg, path);
    assert_has(err.msg, "No such file or directory");

    for (int e = 1; e <= 3; e++) {
        cfx_epoch_metrics r = metrics_row(e, 0.0);
        if (cfx_metrics_append(path, &r, &err) != 0)
            fail_msg("%s", err.msg);
        char dims[32];
        snprintf(dims, sizeof dims, "( %d ) / ( H5S_UNLIMITED )", e);
        h5dump_ok(path, "/epoch", dims);
    }
    h5dump_ok(path, "/train_loss", "H5T_IEEE_F64LE");
    assert_int_equal(cfx_metrics_read(path, &rows, &n, &err), 0);
    assert_int_equal(n, 3);
    for (int e = 1; e <= 3; e++) {
        cfx_epoch_metrics want = metrics_row(e, 0.0);
        assert_rows_equal(&rows[e - 1], &want);
    }
    free(rows);

    /* A resumed run re-appends epoch 2: epochs 2 and 3 are replaced. */
    cfx_epoch_metrics r2 = metrics_row(2, 0.5);
    assert_int_equal(cfx_metrics_append(path, &r2, &err), 0);
    h5dump_ok(path, "/epoch", "( 2 ) / ( H5S_UNLIMITED )");
    assert_int_equal(cfx_metrics_read(path, &rows, &n, &err), 0);
    assert_int_equal(n, 2);
    cfx_epoch_metrics r1 = metrics_row(1, 0.0);
    assert_rows_equal(&rows[0], &r1);
    assert_rows_equal(&rows[1], &r2);
    free(rows);

    /* Test results as root attributes, replaceable. */
    assert_int_equal(cfx_metrics_set_test(path, 9.0, 0.1, NULL, &err), 0);
    assert_int_equal(cfx_metrics_set_test(path, 0.75, 0.8125, "flip", &err), 0);
    h5dump_ok(path, NULL, "test_accuracy");
    hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    assert_true(h5_num_attr(f, "/", "test_loss", NULL) == 0.75);
    assert_true(h5_num_attr(f, "/", "test_accuracy", NULL) == 0.8125);
    H5Fclose(f);

    /* Truncate to epoch 1, then continue. */
    assert_int_equal(cfx_metrics_truncate(path, 1, &err), 0);
    assert_int_equal(cfx_metrics_read(path, &rows, &n, &err), 0);
    assert_int_equal(n, 1);
    free(rows);
    cfx_epoch_metrics r5 = metrics_row(5, 0.25);
    assert_int_equal(cfx_metrics_append(path, &r5, &err), 0);
    assert_int_equal(cfx_metrics_read(path, &rows, &n, &err), 0);
    assert_int_equal(n, 2);
    assert_rows_equal(&rows[1], &r5);
    free(rows);
    assert_int_equal(cfx_metrics_truncate(path, 0, &err), 0);
    assert_int_equal(cfx_metrics_read(path, &rows, &n, &err), 0);
    assert_int_equal(n, 0);
    free(rows);

    /* Not an HDF5 file: every call names it. */
    const char *text = tpath("metrics.txt");
    spit(text, "epoch,loss\n", 11);
    cfx_epoch_metrics r = metrics_row(1, 0.0);
    assert_int_equal(cfx_metrics_append(text, &r, &err), -1);
    assert_has(err.msg, text);
    assert_has(err.msg, "not an HDF5 file");
    assert_int_equal(cfx_metrics_read(text, &rows, &n, &err), -1);
    assert_has(err.msg, text);
    assert_int_equal(cfx_metrics_set_test(text, 1, 1, NULL, &err), -1);
    assert_has(err.msg, text);
    spit(tpath("plain"), "x", 1);
    assert_int_equal(cfx_metrics_append(tpath("plain/metrics.h5"), &r, &err), -1);
    assert_has(err.msg, "plain/metrics.h5");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_round_trip_adam),
        cmocka_unit_test(test_round_trip_sgd),
        cmocka_unit_test(test_h5dump),
        cmocka_unit_test(test_not_a_checkpoint),
        cmocka_unit_test(test_missing_parameter),
        cmocka_unit_test(test_other_architecture),
        cmocka_unit_test(test_damaged),
        cmocka_unit_test(test_unwritable_directory),
        cmocka_unit_test(test_disk_full),
        cmocka_unit_test(test_metrics),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
