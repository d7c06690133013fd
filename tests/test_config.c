/* Unit tests of the INI run configuration (src/config): configs/seed.ini,
 * error messages for unknown, missing, duplicated, mistyped and out-of-range
 * keys, --set overrides, layer lists, the INI round trip and the reference. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cfx/config.h" /* defines: cfx_config_load, cfx_config_set, cfx_parse_layers */

#ifndef CFX_TEST_FIXTURES
#error "CFX_TEST_FIXTURES must be defined by tests/CMakeLists.txt"
#endif
#define SEED_INI CFX_TEST_FIXTURES "/../../configs/seed.ini"

static char tmpdir[256];
static char last_path[512]; /* the file written by the last load_text */

/* Fails the test unless msg contains needle, showing both. */
#define assert_has(msg, needle)                                                                    \
    do {                                                                                           \
        if (!strstr((msg), (needle)))                                                              \
            fail_msg("error message \"%s\" does not contain \"%s\"", (msg), (needle));             \
    } while (0)
#define assert_lacks(msg, needle)                                                                  \
    do {                                                                                           \
        if (strstr((msg), (needle)))                                                               \
            fail_msg("error message \"%s\" contains \"%s\"", (msg), (needle));                     \
    } while (0)

/* A complete, valid config; line numbers matter to some tests. */
static const char BASE[] = "[data]\n"                          /* 1 */
                           "dir = /data/c10\n"                 /* 2 */
                           "[train]\n"                         /* 3 */
                           "epochs = 3\n"                      /* 4 */
                           "batch_size = 32\n"                 /* 5 */
                           "[optim]\n"                         /* 6 */
                           "name = sgd\n"                      /* 7 */
                           "lr = 0.05\n"                       /* 8 */
                           "[model]\n"                         /* 9 */
                           "layers = flatten; linear out=10\n" /* 10 */
                           "[output]\n"                        /* 11 */
                           "dir = out/run\n";                  /* 12 */

static int group_setup(void **state)
{
    (void)state;
    snprintf(tmpdir, sizeof tmpdir, "/tmp/cfx_test_config_XXXXXX");
    return mkdtemp(tmpdir) ? 0 : -1;
}

static int group_teardown(void **state)
{
    (void)state;
    for (int i = 0; i < 1000; i++) {
        char p[512];
        snprintf(p, sizeof p, "%s/cfg_%d.ini", tmpdir, i);
        unlink(p);
    }
    return rmdir(tmpdir);
}

static void write_text(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    assert_int_equal(fputs(text, f) >= 0, 1);
    assert_int_equal(fclose(f), 0);
}

/* Writes text to a fresh file in tmpdir (last_path) and loads it. */
static int load_text(cfx_config *cfg, const char *text, int n_overrides,
                     const char *const *overrides, cfx_error *err)
{
    static int counter;
    assert_true(counter < 1000);
    snprintf(last_path, sizeof last_path, "%s/cfg_%d.ini", tmpdir, counter++);
    write_text(last_path, text);
    memset(err->msg, 0, sizeof err->msg);
    return cfx_config_load(cfg, last_path, n_overrides, overrides, err);
}

/* BASE with the first occurrence of `find` replaced (malloc'd). */
static char *edit_base(const char *find, const char *replace)
{
    const char *at = strstr(BASE, find);
    assert_non_null(at);
    size_t pre = (size_t)(at - BASE);
    char *out = malloc(sizeof BASE + strlen(replace));
    assert_non_null(out);
    memcpy(out, BASE, pre);
    strcpy(out + pre, replace);
    strcat(out, at + strlen(find));
    return out;
}

/* Loads BASE edited; expects failure naming the file and every needle
 * (NULL-terminated). */
static void expect_edit_fails(const char *find, const char *replace, ...)
{
    char *text = edit_base(find, replace);
    cfx_config cfg;
    cfx_error err;
    if (load_text(&cfg, text, 0, NULL, &err) != -1)
        fail_msg("config with '%s' instead of '%s' was accepted", replace, find);
    assert_has(err.msg, last_path);
    va_list ap;
    va_start(ap, replace);
    for (const char *needle; (needle = va_arg(ap, const char *));)
        assert_has(err.msg, needle);
    va_end(ap);
    free(text);
}

/* out is out_channels (conv2d) or out_features (linear). */
static void assert_layer(const cfx_layer_spec *l, const char *type, int out, int kernel, int stride,
                         int padding)
{
    assert_string_equal(l->kind->name, type);
    assert_int_equal(l->out, out);
    assert_int_equal(l->kernel, kernel);
    assert_int_equal(l->stride, stride);
    assert_int_equal(l->padding, padding);
}

/* ---- the seed recipe ----------------------------------------------------- */

static void test_seed_ini(void **state)
{
    (void)state;
    cfx_config cfg;
    cfx_error err;
    if (cfx_config_load(&cfg, SEED_INI, 0, NULL, &err) != 0)
        fail_msg("%s", err.msg);
    assert_string_equal(cfg.data_dir, "data/cifar10");
    assert_int_equal(cfg.train_limit, 0);
    assert_int_equal(cfg.val_limit, 0);
    assert_int_equal(cfg.val_size, 5000); /* default */
    assert_int_equal(cfg.split_seed, 42); /* default */
    assert_int_equal(cfg.augment, 1);     /* default */
    assert_int_equal(cfg.epochs, 20);
    assert_int_equal(cfg.batch_size, 64);
    assert_int_equal(cfg.seed, 1);
    assert_int_equal(cfg.eval_batch_size, 100); /* default */
    assert_string_equal(cfg.optim_name, "adam");
    assert_true(cfg.lr == 0.001);
    assert_true(cfg.beta1 == 0.9);
    assert_true(cfg.beta2 == 0.999);
    assert_true(cfg.eps == 1e-8);
    assert_true(cfg.momentum == 0.9);
    assert_true(cfg.weight_decay == 0.0);
    assert_int_equal(cfg.nesterov, 0);
    assert_string_equal(cfg.output_dir, "outputs/seed");
    assert_int_equal(cfg.blas_threads, 0);

    assert_int_equal(cfg.n_layers, 11);
    const cfx_layer_spec *l = cfg.layers;
    static const int channels[3] = {16, 32, 64};
    for (int b = 0; b < 3; b++) {
        assert_layer(&l[3 * b], "conv2d", channels[b], 3, 1, 1);
        assert_layer(&l[3 * b + 1], "relu", 0, 0, 0, 0);
        assert_layer(&l[3 * b + 2], "maxpool2d", 0, 2, 2, 0);
    }
    assert_layer(&l[9], "flatten", 0, 0, 0, 0);
    assert_layer(&l[10], "linear", 10, 0, 0, 0);
}

static void test_base_and_defaults(void **state)
{
    (void)state;
    cfx_config cfg;
    cfx_error err;
    if (load_text(&cfg, BASE, 0, NULL, &err) != 0)
        fail_msg("%s", err.msg);
    assert_string_equal(cfg.data_dir, "/data/c10");
    assert_string_equal(cfg.optim_name, "sgd");
    assert_true(cfg.lr == 0.05);
    assert_int_equal(cfg.n_layers, 2);
    assert_string_equal(cfg.output_dir, "out/run");

    /* Comments, blank lines, spaces and other boolean spellings. */
    static const char *const yes[] = {"true", "1", "yes", "on"};
    static const char *const no[] = {"false", "0", "no", "off"};
    for (int i = 0; i < 4; i++) {
        char add[160];
        snprintf(add, sizeof add, "[data]\n; comment\n# comment\n\n  augment   =   %s  \n", no[i]);
        char *text = edit_base("[data]\n", add);
        assert_int_equal(load_text(&cfg, text, 0, NULL, &err), 0);
        assert_int_equal(cfg.augment, 0);
        free(text);
        snprintf(add, sizeof add, "[optim]\nnesterov = %s\n", yes[i]);
        text = edit_base("[optim]\n", add);
        assert_int_equal(load_text(&cfg, text, 0, NULL, &err), 0);
        assert_int_equal(cfg.nesterov, 1);
        free(text);
    }

    /* No file at all. */
    char missing[512];
    snprintf(missing, sizeof missing, "%s/does_not_exist.ini", tmpdir);
    assert_int_equal(cfx_config_load(&cfg, missing, 0, NULL, &err), -1);
    assert_has(err.msg, missing);
    assert_has(err.msg, "cannot open config");
}

/* ---- errors ---------------------------------------------------------------- */

static void test_unknown_key(void **state)
{
    (void)state;
    char where[600];
    expect_edit_fails("lr = 0.05", "lrr = 0.05", "unknown config key 'optim.lrr'",
                      "did you mean 'optim.lr'", ":8:", NULL);
    cfx_error err;
    cfx_config cfg;
    assert_int_equal(load_text(&cfg, "[optim]\nlrr = 1\n", 0, NULL, &err), -1);
    assert_has(err.msg, "did you mean 'optim.lr'");
    snprintf(where, sizeof where, "%s:2:", last_path);
    assert_has(err.msg, where);

    expect_edit_fails("batch_size = 32", "batchsize = 32", "'train.batchsize'",
                      "did you mean 'train.batch_size'", NULL);
    expect_edit_fails("[optim]", "[optimizer]", "'optimizer.name'", "did you mean 'optim.name'",
                      NULL);
    /* A key of that name in another section is the suggestion. */
    expect_edit_fails("epochs = 3", "epochs = 3\nlr = 0.1", "unknown config key 'train.lr'",
                      "did you mean 'optim.lr'", NULL);
    /* Nothing close: no suggestion. */
    char *text = edit_base("epochs = 3", "epochs = 3\ncompletely_unrelated = 1");
    assert_int_equal(load_text(&cfg, text, 0, NULL, &err), -1);
    assert_has(err.msg, "unknown config key 'train.completely_unrelated'");
    assert_lacks(err.msg, "did you mean");
    free(text);
}

static void test_missing_required_key(void **state)
{
    (void)state;
    static const struct {
        const char *line, *key;
    } required[] = {
        {"dir = /data/c10\n", "data.dir"},
        {"epochs = 3\n", "train.epochs"},
        {"batch_size = 32\n", "train.batch_size"},
        {"name = sgd\n", "optim.name"},
        {"lr = 0.05\n", "optim.lr"},
        {"layers = flatten; linear out=10\n", "model.layers"},
        {"dir = out/run\n", "output.dir"},
    };
    for (size_t i = 0; i < sizeof required / sizeof required[0]; i++) {
        char want[128];
        snprintf(want, sizeof want, "missing required key %s", required[i].key);
        expect_edit_fails(required[i].line, "", want, NULL);
    }
    /* An empty file names the first required key. */
    cfx_config cfg;
    cfx_error err;
    assert_int_equal(load_text(&cfg, "", 0, NULL, &err), -1);
    assert_has(err.msg, "missing required key data.dir");
}

static void test_out_of_range(void **state)
{
    (void)state;
    expect_edit_fails("batch_size = 32", "batch_size = 0", "train.batch_size", "out of range",
                      NULL);
    expect_edit_fails("batch_size = 32", "batch_size = -5", "train.batch_size", "-5",
                      "out of range", NULL);
    expect_edit_fails("batch_size = 32", "batch_size = 65537", "train.batch_size", "out of range",
                      NULL);
    expect_edit_fails("epochs = 3", "epochs = 0", "train.epochs", "out of range", NULL);
    expect_edit_fails("lr = 0.05", "lr = 0", "optim.lr", "out of range", NULL);
    expect_edit_fails("lr = 0.05", "lr = -0.1", "optim.lr", "out of range", NULL);
    expect_edit_fails("[data]\n", "[data]\ntrain_limit = -1\n", "data.train_limit", "out of range",
                      NULL);
    expect_edit_fails("[data]\n", "[data]\nval_limit = -1\n", "data.val_limit", "out of range",
                      NULL);
    expect_edit_fails("[data]\n", "[data]\nval_size = 0\n", "data.val_size", "out of range", NULL);
    expect_edit_fails("[data]\n", "[data]\nval_size = 50000\n", "data.val_size", "out of range",
                      NULL);
    expect_edit_fails("[optim]\n", "[optim]\nbeta1 = 1\n", "optim.beta1", "out of range", NULL);
    expect_edit_fails("[optim]\n", "[optim]\nweight_decay = -0.01\n", "optim.weight_decay",
                      "out of range", NULL);
    /* The line of the bad value is named. */
    char *text = edit_base("lr = 0.05", "lr = 0");
    cfx_config cfg;
    cfx_error err;
    assert_int_equal(load_text(&cfg, text, 0, NULL, &err), -1);
    char where[600];
    snprintf(where, sizeof where, "%s:8:", last_path);
    assert_has(err.msg, where);
    free(text);
    /* The ends of the ranges are accepted. */
    text = edit_base("batch_size = 32", "batch_size = 65536\n[data]\ntrain_limit = 0\n"
                                        "val_size = 49999\n[optim]\nweight_decay = 1\n");
    if (load_text(&cfg, text, 0, NULL, &err) != 0)
        fail_msg("%s", err.msg);
    assert_int_equal(cfg.batch_size, 65536);
    assert_int_equal(cfg.val_size, 49999);
    free(text);
}

static void test_wrong_types(void **state)
{
    (void)state;
    expect_edit_fails("epochs = 3", "epochs = abc", "train.epochs", "'abc' is not an integer",
                      NULL);
    expect_edit_fails("epochs = 3", "epochs = 1.5", "train.epochs", "not an integer", NULL);
    expect_edit_fails("epochs = 3", "epochs = 3x", "train.epochs", "not an integer", NULL);
    expect_edit_fails("epochs = 3", "epochs =", "train.epochs", "not an integer", NULL);
    expect_edit_fails("epochs = 3", "epochs = 99999999999999999999", "train.epochs",
                      "not an integer", NULL);
    expect_edit_fails("[data]\n", "[data]\naugment = maybe\n", "data.augment",
                      "'maybe' is not a boolean", NULL);
    expect_edit_fails("lr = 0.05", "lr = fast", "optim.lr", "'fast' is not a number", NULL);
    expect_edit_fails("lr = 0.05", "lr = nan", "optim.lr", "not a number", NULL);
    expect_edit_fails("lr = 0.05", "lr = inf", "optim.lr", "not a number", NULL);
    expect_edit_fails("epochs = 3", "epochs = 3\nseed = -1", "train.seed",
                      "not a non-negative integer", NULL);
    expect_edit_fails("dir = out/run", "dir =", "output.dir", "empty value", NULL);
    expect_edit_fails("name = sgd", "name = rmsprop", "optim.name", "'rmsprop' is not one of",
                      "adam|sgd", NULL);
    expect_edit_fails("name = sgd", "name = Adam", "optim.name", "not one of", NULL);
    /* Not INI at all. */
    expect_edit_fails("epochs = 3", "epochs 3", "syntax error", ":4:", NULL);
    expect_edit_fails("[train]", "[train", "syntax error", ":3:", NULL);
}

static void test_key_given_twice(void **state)
{
    (void)state;
    expect_edit_fails("epochs = 3", "epochs = 3\nepochs = 4", "train.epochs is given twice",
                      ":5:", NULL);
    /* Also when the section is opened again. */
    expect_edit_fails("dir = out/run", "dir = out/run\n[train]\nepochs = 4",
                      "train.epochs is given twice", NULL);
    expect_edit_fails("[output]", "[optim]\nlr = 0.1\n[output]", "optim.lr is given twice", NULL);
    /* model.layers: continuation lines belong to one value, a second
     * 'layers =' is an error whether or not another key came between. */
    expect_edit_fails("dir = out/run", "dir = out/run\n[model]\nlayers = relu",
                      "model.layers is given twice", NULL);
    expect_edit_fails("layers = flatten; linear out=10", "layers = flatten\nlayers = linear out=10",
                      "model.layers is given twice", NULL);
}

static void test_long_lines(void **state)
{
    (void)state;
    /* 198 characters fit libinih's line buffer; a longer line is an error
     * naming its line, not the start of a new line (which, in a comment
     * containing '=', used to surface as an unknown key). */
    char line[400];
    snprintf(line, sizeof line, "# %0196d", 0);
    assert_int_equal(strlen(line), 198);
    char add[512];
    snprintf(add, sizeof add, "%s\n[train]", line);
    char *text = edit_base("[train]", add);
    cfx_config cfg;
    cfx_error err;
    if (load_text(&cfg, text, 0, NULL, &err) != 0)
        fail_msg("%s", err.msg);
    free(text);
    snprintf(add, sizeof add, "# %0200d = 1\n[train]", 0);
    expect_edit_fails("[train]", add, ":3: line longer than 198 characters", NULL);
    snprintf(add, sizeof add, "layers = flatten; %0200d; linear out=10", 0);
    expect_edit_fails("layers = flatten; linear out=10", add, ":10: line longer than", NULL);
    /* An earlier error is still the one reported. */
    snprintf(add, sizeof add, "epochs = x\n# %0200d", 0);
    expect_edit_fails("epochs = 3", add, ":4:", "train.epochs", NULL);
}

/* ---- overrides ----------------------------------------------------------- */

static void test_overrides(void **state)
{
    (void)state;
    cfx_config cfg;
    cfx_error err;
    const char *const over[] = {"optim.lr=3e-4", "train.epochs = 9", "data.augment=false",
                                "model.layers=conv2d out=4 kernel=3; relu; flatten; linear out=2",
                                "optim.lr=0.01"};
    if (load_text(&cfg, BASE, 5, over, &err) != 0)
        fail_msg("%s", err.msg);
    assert_true(cfg.lr == 0.01); /* applied in order: the last wins */
    assert_int_equal(cfg.epochs, 9);
    assert_int_equal(cfg.augment, 0);
    assert_int_equal(cfg.n_layers, 4);
    assert_layer(&cfg.layers[0], "conv2d", 4, 3, 1, 0);
    assert_layer(&cfg.layers[3], "linear", 2, 0, 0, 0);
    assert_int_equal(cfg.batch_size, 32); /* untouched */

    /* An override supplies a required key the file lacks. */
    char *text = edit_base("epochs = 3\n", "");
    const char *const epochs[] = {"train.epochs=4"};
    if (load_text(&cfg, text, 1, epochs, &err) != 0)
        fail_msg("%s", err.msg);
    assert_int_equal(cfg.epochs, 4);
    const char *const spaced[] = {"  train.epochs = 5 "};
    if (load_text(&cfg, text, 1, spaced, &err) != 0)
        fail_msg("%s", err.msg);
    assert_int_equal(cfg.epochs, 5);
    free(text);

    /* Bad overrides name the key. */
    const char *const typo[] = {"optim.lrr=1"};
    assert_int_equal(load_text(&cfg, BASE, 1, typo, &err), -1);
    assert_has(err.msg, "--set");
    assert_has(err.msg, "'optim.lrr'");
    assert_has(err.msg, "did you mean 'optim.lr'");
    const char *const no_eq[] = {"optim.lr"};
    assert_int_equal(load_text(&cfg, BASE, 1, no_eq, &err), -1);
    assert_has(err.msg, "optim.lr");
    assert_has(err.msg, "expected section.key=value");
    const char *const no_dot[] = {"lr=0.1"};
    assert_int_equal(load_text(&cfg, BASE, 1, no_dot, &err), -1);
    assert_has(err.msg, "expected section.key=value");
    const char *const bad_value[] = {"train.batch_size=0"};
    assert_int_equal(load_text(&cfg, BASE, 1, bad_value, &err), -1);
    assert_has(err.msg, "train.batch_size");
    assert_has(err.msg, "out of range");
    const char *const bad_name[] = {"optim.name=rmsprop"};
    assert_int_equal(load_text(&cfg, BASE, 1, bad_name, &err), -1);
    assert_has(err.msg, "rmsprop");
}

static void test_config_set(void **state)
{
    (void)state;
    cfx_config cfg;
    cfx_error err;
    cfx_config_defaults(&cfg);
    assert_int_equal(cfg.val_size, 5000);
    assert_int_equal(cfg.eval_batch_size, 100);
    assert_int_equal(cfg.n_layers, 0);
    assert_string_equal(cfg.data_dir, ""); /* required: unset */

    assert_int_equal(cfx_config_set(&cfg, "train.batch_size", "128", &err), 0);
    assert_int_equal(cfg.batch_size, 128);
    assert_int_equal(cfx_config_set(&cfg, "optim.lr", " 2.5e-3 ", &err), 0);
    assert_true(cfg.lr == 2.5e-3);
    assert_int_equal(cfx_config_set(&cfg, "data.split_seed", "18446744073709551615", &err), 0);
    assert_true(cfg.split_seed == UINT64_MAX);
    assert_int_equal(cfx_config_set(&cfg, "optim.name", "adam", &err), 0);
    assert_string_equal(cfg.optim_name, "adam");
    assert_int_equal(cfx_config_set(&cfg, "data.dir", "/x/y", &err), 0);
    assert_string_equal(cfg.data_dir, "/x/y");
    assert_int_equal(cfx_config_set(&cfg, "model.layers", "flatten\nlinear out=5", &err), 0);
    assert_int_equal(cfg.n_layers, 2);

    assert_int_equal(cfx_config_set(&cfg, "train.batchsize", "1", &err), -1);
    assert_has(err.msg, "did you mean 'train.batch_size'");
    assert_int_equal(cfx_config_set(&cfg, "optim.epochs", "1", &err), -1);
    assert_has(err.msg, "did you mean 'train.epochs'");
    assert_int_equal(cfx_config_set(&cfg, "train.dir", "x", &err), -1);
    assert_has(err.msg, "did you mean 'data.dir' or 'output.dir'");
    assert_int_equal(cfx_config_set(&cfg, "optim.lr", "0", &err), -1);
    assert_has(err.msg, "optim.lr");
    assert_true(cfg.lr == 2.5e-3); /* unchanged */
    assert_int_equal(cfx_config_set(&cfg, "optim.name", "rmsprop", &err), -1);
    assert_string_equal(cfg.optim_name, "adam");
    assert_int_equal(cfx_config_set(&cfg, "data.augment", "maybe", &err), -1);
    assert_has(err.msg, "data.augment");
    assert_int_equal(cfx_config_set(&cfg, "batch_size", "1", &err), -1);
    assert_has(err.msg, "expected section.key=value");
    assert_int_equal(cfx_config_set(&cfg, "train.", "1", &err), -1);
    assert_int_equal(cfx_config_set(&cfg, ".lr", "1", &err), -1);
    char long_dir[CFX_PATH_LEN + 10];
    memset(long_dir, 'a', sizeof long_dir - 1);
    long_dir[sizeof long_dir - 1] = '\0';
    assert_int_equal(cfx_config_set(&cfg, "data.dir", long_dir, &err), -1);
    assert_has(err.msg, "longer than 1023");
}

/* ---- layer lists ----------------------------------------------------------- */

static void expect_layers_fail(const char *text, const char *needle)
{
    cfx_layer_spec layers[CFX_MAX_LAYERS];
    int n = -7;
    cfx_error err;
    memset(err.msg, 0, sizeof err.msg);
    if (cfx_parse_layers(text, layers, &n, &err) != -1)
        fail_msg("layer list \"%s\" was accepted", text);
    assert_int_equal(n, -7);
    assert_has(err.msg, "model.layers");
    assert_has(err.msg, needle);
}

static void test_layers(void **state)
{
    (void)state;
    cfx_layer_spec layers[CFX_MAX_LAYERS];
    int n;
    cfx_error err;
    const char *good = " conv2d  out=8 kernel=5 stride=2 padding=2 ;relu\n"
                       "maxpool2d kernel=3\n\n; maxpool2d kernel=2 stride=1;flatten\n"
                       "\tlinear out=7 ;";
    if (cfx_parse_layers(good, layers, &n, &err) != 0)
        fail_msg("%s", err.msg);
    assert_int_equal(n, 6);
    assert_layer(&layers[0], "conv2d", 8, 5, 2, 2);
    assert_layer(&layers[1], "relu", 0, 0, 0, 0);
    assert_layer(&layers[2], "maxpool2d", 0, 3, 3, 0); /* stride = kernel */
    assert_layer(&layers[3], "maxpool2d", 0, 2, 1, 0);
    assert_layer(&layers[4], "flatten", 0, 0, 0, 0);
    assert_layer(&layers[5], "linear", 7, 0, 0, 0);

    /* The options every layer takes, and those of the new types, round trip. */
    const char *more = "conv2d out=4 kernel=3 bias=false dirac=true trainable=false name=c1;"
                       "batchnorm2d eps=1e-12 momentum=0.6 affine=false sync=false lr_scale=64 "
                       "train_epochs=3;"
                       "gelu in=c1; add in=-1,c1; avgpool; flatten; linear out=10 scale=0.111 "
                       "decay_scale=0 name=fc; basicblock out=8 stride=2 name=layer2.0";
    cfx_layer_spec ml[CFX_MAX_LAYERS];
    int nm;
    if (cfx_parse_layers(more, ml, &nm, &err) != 0)
        fail_msg("%s", err.msg);
    assert_int_equal(nm, 8);
    assert_true(ml[0].lr_scale == 0.0 && ml[0].decay_scale == 0.0 && ml[0].dirac && !ml[0].bias);
    assert_true(ml[1].eps == 1e-12 && ml[1].momentum == 0.6 && !ml[1].sync && ml[1].lr_scale == 64);
    assert_int_equal(ml[1].train_epochs, 3);
    assert_string_equal(ml[3].inputs[0], "-1");
    assert_true(ml[6].scale == 0.111 && ml[6].decay_scale == 0.0);
    for (int i = 0; i < nm; i++) {
        char buf[256];
        cfx_layer_spec back;
        int one;
        cfx_layer_spec_format(&ml[i], buf, sizeof buf);
        assert_int_equal(cfx_parse_layers(buf, &back, &one, &err), 0);
        assert_memory_equal(&back, &ml[i], sizeof back);
    }
    expect_layers_fail("relu lr_scale=-1", "bad option 'lr_scale=-1'");
    expect_layers_fail("relu trainable=maybe", "bad option 'trainable=maybe'");
    expect_layers_fail("relu train_epochs=1.5", "bad option 'train_epochs=1.5'");
    expect_layers_fail("relu train_epochs=-2", "bad option 'train_epochs=-2'");

    /* Formatting gives text that parses back to the same layer. */
    for (int i = 0; i < n; i++) {
        char buf[128];
        cfx_layer_spec back;
        int one;
        cfx_layer_spec_format(&layers[i], buf, sizeof buf);
        assert_int_equal(cfx_parse_layers(buf, &back, &one, &err), 0);
        assert_int_equal(one, 1);
        assert_memory_equal(&back, &layers[i], sizeof back);
    }

    expect_layers_fail("dense out=10", "unknown layer type 'dense'");
    expect_layers_fail("relu; Conv2d out=3 kernel=3", "unknown layer type 'Conv2d'");
    expect_layers_fail("conv2d kernel=3", "conv2d needs out=N");
    expect_layers_fail("conv2d out=0 kernel=3", "conv2d needs out=N");
    expect_layers_fail("conv2d out=16", "conv2d needs kernel=K");
    expect_layers_fail("conv2d out=16 kernel=3 stride=0", "stride");
    expect_layers_fail("conv2d out=16 kernel=3 dilation=2", "conv2d has no option 'dilation'");
    expect_layers_fail("conv2d out=x kernel=3", "bad option 'out=x'");
    expect_layers_fail("conv2d out=16 kernel=-3", "bad option 'kernel=-3'");
    expect_layers_fail("conv2d out 16 kernel=3", "bad option 'out'");
    expect_layers_fail("maxpool2d", "maxpool2d needs kernel=K");
    expect_layers_fail("maxpool2d kernel=2 padding=1", "maxpool2d has no option 'padding'");
    expect_layers_fail("relu out=3", "relu has no option 'out'");
    expect_layers_fail("flatten kernel=2", "flatten has no option 'kernel'");
    expect_layers_fail("linear", "linear needs out=N");
    expect_layers_fail("linear out=10 kernel=3", "linear has no option 'kernel'");
    expect_layers_fail("", "empty");
    expect_layers_fail(" ; \n ;", "empty");
    char many[CFX_MAX_LAYERS * 8 + 16] = "";
    for (int i = 0; i <= CFX_MAX_LAYERS; i++)
        strcat(many, "relu;");
    char want[32];
    snprintf(want, sizeof want, "more than %d layers", CFX_MAX_LAYERS);
    expect_layers_fail(many, want);

    /* In a file the error names the file. */
    expect_edit_fails("layers = flatten; linear out=10", "layers = flatten; linear size=10",
                      "model.layers", "linear has no option 'size'", NULL);
    expect_edit_fails("layers = flatten; linear out=10", "layers = conv2d kernel=3\n    relu",
                      "model.layers", "conv2d needs out=N", NULL);
    expect_edit_fails("layers = flatten; linear out=10", "layers = pool kernel=2",
                      "unknown layer type 'pool'", NULL);
}

/* ---- round trip and reference ---------------------------------------------- */

static void assert_config_equal(const cfx_config *a, const cfx_config *b)
{
    assert_string_equal(a->data_dir, b->data_dir);
    assert_int_equal(a->train_limit, b->train_limit);
    assert_int_equal(a->val_limit, b->val_limit);
    assert_int_equal(a->val_size, b->val_size);
    assert_true(a->split_seed == b->split_seed);
    assert_int_equal(a->augment, b->augment);
    assert_int_equal(a->epochs, b->epochs);
    assert_int_equal(a->batch_size, b->batch_size);
    assert_true(a->seed == b->seed);
    assert_int_equal(a->eval_batch_size, b->eval_batch_size);
    assert_string_equal(a->optim_name, b->optim_name);
    assert_true(a->lr == b->lr); /* exact: the shortest text that round-trips */
    assert_true(a->beta1 == b->beta1);
    assert_true(a->beta2 == b->beta2);
    assert_true(a->eps == b->eps);
    assert_true(a->momentum == b->momentum);
    assert_true(a->weight_decay == b->weight_decay);
    assert_int_equal(a->nesterov, b->nesterov);
    assert_int_equal(a->n_layers, b->n_layers);
    for (int i = 0; i < a->n_layers; i++)
        assert_memory_equal(&a->layers[i], &b->layers[i], sizeof a->layers[i]);
    assert_string_equal(a->output_dir, b->output_dir);
    assert_int_equal(a->blas_threads, b->blas_threads);
}

/* to_ini of cfg, re-loaded: the same config and the same text again. */
static void check_round_trip(const cfx_config *cfg)
{
    char *text = cfx_config_to_ini(cfg);
    assert_non_null(text);
    cfx_config back;
    cfx_error err;
    if (load_text(&back, text, 0, NULL, &err) != 0)
        fail_msg("%s\n--- written config ---\n%s", err.msg, text);
    assert_config_equal(cfg, &back);
    char *again = cfx_config_to_ini(&back);
    assert_string_equal(again, text);
    free(again);
    free(text);
}

static void test_round_trip(void **state)
{
    (void)state;
    cfx_config cfg;
    cfx_error err;
    assert_int_equal(cfx_config_load(&cfg, SEED_INI, 0, NULL, &err), 0);
    check_round_trip(&cfg);

    /* Every key away from its default, awkward numbers included. */
    const char *const over[] = {
        "data.dir=/some/where with spaces/c10",
        "data.train_limit=1000",
        "data.val_limit=77",
        "data.val_size=1234",
        "data.split_seed=18446744073709551615",
        "data.augment=no",
        "train.epochs=100000",
        "train.batch_size=3",
        "train.seed=0",
        "train.eval_batch_size=4096",
        "optim.name=sgd",
        "optim.lr=0.1234567890123456789",
        "optim.beta1=0.5",
        "optim.beta2=0.99999999",
        "optim.eps=1e-300",
        "optim.momentum=0.95",
        "optim.weight_decay=5e-4",
        "optim.nesterov=on",
        "model.layers=conv2d out=8 kernel=5 stride=2 padding=2; relu; maxpool2d kernel=3 "
        "stride=1; flatten; linear out=7",
        "output.dir=runs/x",
        "runtime.blas_threads=4",
    };
    int n = (int)(sizeof over / sizeof over[0]);
    if (load_text(&cfg, BASE, n, over, &err) != 0)
        fail_msg("%s", err.msg);
    assert_true(cfg.eps == 1e-300);
    assert_true(cfg.split_seed == UINT64_MAX);
    assert_int_equal(cfg.n_layers, 5);
    check_round_trip(&cfg);
}

static void test_reference(void **state)
{
    (void)state;
    static const struct {
        const char *section, *keys[8];
    } sections[] = {
        {"data", {"dir", "train_limit", "val_limit", "val_size", "split_seed", "augment"}},
        {"train", {"epochs", "batch_size", "seed", "eval_batch_size"}},
        {"optim", {"name", "lr", "beta1", "beta2", "eps", "momentum", "weight_decay", "nesterov"}},
        {"model", {"layers"}},
        {"output", {"dir"}},
        {"runtime", {"blas_threads"}},
    };
    char *ref = cfx_config_reference();
    assert_non_null(ref);
    for (size_t s = 0; s < sizeof sections / sizeof sections[0]; s++) {
        char header[64];
        snprintf(header, sizeof header, "\n[%s]\n", sections[s].section);
        const char *start = strstr(ref, header);
        if (!start)
            fail_msg("reference lacks section [%s]", sections[s].section);
        start += strlen(header);
        const char *end = strstr(start, "\n[");
        size_t len = end ? (size_t)(end - start) : strlen(start);
        char *body = malloc(len + 1);
        memcpy(body, start, len);
        body[len] = '\0';
        for (int k = 0; k < 8 && sections[s].keys[k]; k++) {
            char want[64];
            snprintf(want, sizeof want, "%s =", sections[s].keys[k]);
            if (!strstr(body, want))
                fail_msg("reference section [%s] lacks key %s", sections[s].section,
                         sections[s].keys[k]);
        }
        free(body);
    }
    assert_has(ref, "(required)");
    assert_has(ref, "--set");
    free(ref);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_seed_ini),        cmocka_unit_test(test_base_and_defaults),
        cmocka_unit_test(test_unknown_key),     cmocka_unit_test(test_missing_required_key),
        cmocka_unit_test(test_out_of_range),    cmocka_unit_test(test_wrong_types),
        cmocka_unit_test(test_key_given_twice), cmocka_unit_test(test_long_lines),
        cmocka_unit_test(test_overrides),       cmocka_unit_test(test_config_set),
        cmocka_unit_test(test_layers),          cmocka_unit_test(test_round_trip),
        cmocka_unit_test(test_reference),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
