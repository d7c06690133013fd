/* cfx against PyTorch: the seed CNN's and a small residual network's forward
 * pass, loss and gradients (BatchNorm in both modes, running statistics), and
 * Adam/SGD steps, compared with fixtures written by
 * tests/fixtures/make_reference.py (format documented there); also the
 * parameter init distribution. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "cfx/config.h" /* defines: cfx_config, cfx_config_defaults, cfx_parse_layers */
#include "cfx/nn.h"     /* defines: cfx_model, cfx_model_forward, cfx_model_backward */
#include "cfx/optim.h"  /* defines: cfx_optim, cfx_optim_step */

#define SEED_LAYERS                                                                                \
    "conv2d out=16 kernel=3 padding=1; relu; maxpool2d kernel=2; "                                 \
    "conv2d out=32 kernel=3 padding=1; relu; maxpool2d kernel=2; "                                 \
    "conv2d out=64 kernel=3 padding=1; relu; maxpool2d kernel=2; flatten; linear out=10"

/* Tolerances on max|cfx - torch| / max|torch| per tensor. */
#define MODEL_TOL 1e-4
#define OPTIM_TOL 1e-6

/* ---- fixture reader ----------------------------------------------------- */

#define FIX_MAX_DIMS 8

typedef struct {
    char name[64];
    int ndim;
    uint32_t dims[FIX_MAX_DIMS];
    size_t n; /* elements */
    float *data;
} fix_tensor;

typedef struct {
    int count;
    fix_tensor *t;
} fixture;

static uint32_t get_u32(const unsigned char *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* Reads one fixture file; any malformed input fails the test. */
static void fixture_load(fixture *fx, const char *file)
{
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", CFX_TEST_FIXTURES, file);
    FILE *f = fopen(path, "rb");
    if (!f)
        fail_msg("cannot open %s", path);
    fseek(f, 0, SEEK_END);
    long size = ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *buf = malloc((size_t)size);
    assert_non_null(buf);
    assert_int_equal(fread(buf, 1, (size_t)size, f), (size_t)size);
    fclose(f);

    size_t pos = 0, len = (size_t)size;
#define NEED(k)                                                                                    \
    do {                                                                                           \
        if (len - pos < (size_t)(k))                                                               \
            fail_msg("%s: truncated at byte %zu", path, pos);                                      \
    } while (0)
    NEED(8);
    if (memcmp(buf, "CFXF", 4) != 0)
        fail_msg("%s: not a fixture file (bad magic)", path);
    fx->count = (int)get_u32(buf + 4);
    pos = 8;
    fx->t = calloc((size_t)fx->count, sizeof *fx->t);
    assert_non_null(fx->t);
    for (int i = 0; i < fx->count; i++) {
        fix_tensor *t = &fx->t[i];
        NEED(4);
        uint32_t name_len = get_u32(buf + pos);
        pos += 4;
        NEED(name_len);
        if (name_len >= sizeof t->name)
            fail_msg("%s: record %d name too long", path, i);
        memcpy(t->name, buf + pos, name_len);
        pos += name_len;
        NEED(4);
        t->ndim = (int)get_u32(buf + pos);
        pos += 4;
        if (t->ndim > FIX_MAX_DIMS)
            fail_msg("%s: %s has %d dims", path, t->name, t->ndim);
        NEED(4 * t->ndim);
        t->n = 1;
        for (int d = 0; d < t->ndim; d++, pos += 4) {
            t->dims[d] = get_u32(buf + pos);
            t->n *= t->dims[d];
        }
        NEED(4 * t->n);
        t->data = malloc((t->n ? t->n : 1) * sizeof(float));
        assert_non_null(t->data);
        for (size_t j = 0; j < t->n; j++, pos += 4) {
            uint32_t bits = get_u32(buf + pos);
            memcpy(&t->data[j], &bits, sizeof bits);
        }
    }
#undef NEED
    if (pos != len)
        fail_msg("%s: %zu trailing bytes", path, len - pos);
    free(buf);
}

static void fixture_free(fixture *fx)
{
    for (int i = 0; i < fx->count; i++)
        free(fx->t[i].data);
    free(fx->t);
    memset(fx, 0, sizeof *fx);
}

/* The tensor called name; fails the test if absent. */
static const fix_tensor *fixture_find(const fixture *fx, const char *name)
{
    for (int i = 0; i < fx->count; i++)
        if (strcmp(fx->t[i].name, name) == 0)
            return &fx->t[i];
    fail_msg("fixture has no tensor '%s'", name);
    return NULL;
}

/* The tensor called name, which must have n elements. */
static const fix_tensor *fixture_get(const fixture *fx, const char *name, size_t n)
{
    const fix_tensor *t = fixture_find(fx, name);
    if (t->n != n)
        fail_msg("fixture %s: %zu elements, expected %zu", name, t->n, n);
    return t;
}

/* max|got - want| / max|want| (absolute error if want is all zero). */
static double rel_err(const float *got, const float *want, size_t n)
{
    double diff = 0.0, scale = 0.0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)got[i] - (double)want[i]);
        if (!(d <= diff)) /* also catches NaN */
            diff = d;
        if (fabs((double)want[i]) > scale)
            scale = fabs((double)want[i]);
    }
    return scale > 0.0 ? diff / scale : diff;
}

/* Prints and checks one tensor comparison; returns its error. */
static double check_close(const char *what, const float *got, const float *want, size_t n,
                          double tol)
{
    double e = rel_err(got, want, n);
    printf("  %-22s %7zu values  worst rel err %.3g\n", what, n, e);
    if (!(e <= tol))
        fail_msg("%s: relative error %.3g exceeds %.1g", what, e, tol);
    return e;
}

/* ---- the seed CNN -------------------------------------------------------- */

static void make_seed_model(cfx_model *m, int batch)
{
    cfx_layer_spec specs[CFX_MAX_LAYERS];
    int n_specs = 0;
    cfx_error err;
    assert_int_equal(cfx_parse_layers(SEED_LAYERS, specs, &n_specs, &err), 0);
    assert_int_equal(n_specs, 11);
    if (cfx_model_create(m, specs, n_specs, 3, 32, 32, batch, 0, &err) != 0)
        fail_msg("%s", err.msg);
}

static void test_seed_cnn_matches_torch(void **state)
{
    (void)state;
    fixture fx;
    fixture_load(&fx, "seed_cnn.bin");
    cfx_model m;
    const int N = 4, C = 3, H = 32, W = 32;
    make_seed_model(&m, N);
    assert_int_equal(m.n_classes, 10);

    /* Parameters by state_dict name; every fixture parameter must be used. */
    int n_param_tensors = 0;
    for (int i = 0; i < m.n_layers; i++) {
        const cfx_layer *L = &m.layers[i];
        if (!L->n_weight)
            continue;
        char name[96];
        snprintf(name, sizeof name, "%s.weight", L->key);
        memcpy(m.params + L->weight_offset, fixture_get(&fx, name, L->n_weight)->data,
               L->n_weight * sizeof(float));
        snprintf(name, sizeof name, "%s.bias", L->key);
        memcpy(m.params + L->bias_offset, fixture_get(&fx, name, L->n_bias)->data,
               L->n_bias * sizeof(float));
        n_param_tensors += 2;
    }
    int n_fixture_params = 0;
    for (int i = 0; i < fx.count; i++)
        if (strncmp(fx.t[i].name, "grad.", 5) == 0)
            n_fixture_params++;
    assert_int_equal(n_param_tensors, n_fixture_params);

    /* NCHW fixture -> cfx's [C][N][H][W]. */
    const fix_tensor *x = fixture_get(&fx, "input", (size_t)N * C * H * W);
    for (int n = 0; n < N; n++)
        for (int c = 0; c < C; c++)
            memcpy(m.acts[0] + ((size_t)c * N + n) * H * W, x->data + ((size_t)n * C + c) * H * W,
                   (size_t)H * W * sizeof(float));
    const fix_tensor *lab = fixture_get(&fx, "labels", (size_t)N);
    int labels[4];
    for (int n = 0; n < N; n++)
        labels[n] = (int)lab->data[n];

    printf("seed CNN vs torch (tolerance %.0e):\n", MODEL_TOL);
    const float *logits = cfx_model_forward(&m, N);
    check_close("logits", logits, fixture_get(&fx, "logits", (size_t)N * 10)->data, (size_t)N * 10,
                MODEL_TOL);

    double loss_sum = 0.0;
    long correct = 0;
    cfx_softmax_xent(logits, labels, N, 10, 1.0f / N, m.dacts[m.n_layers], &loss_sum, &correct);
    float loss = (float)(loss_sum / N);
    check_close("loss", &loss, fixture_get(&fx, "loss", 1)->data, 1, MODEL_TOL);

    cfx_model_backward(&m, N);
    for (int i = 0; i < m.n_layers; i++) {
        const cfx_layer *L = &m.layers[i];
        if (!L->n_weight)
            continue;
        for (int is_bias = 0; is_bias <= 1; is_bias++) {
            char name[96], gname[104];
            snprintf(name, sizeof name, "%s.%s", L->key, is_bias ? "bias" : "weight");
            snprintf(gname, sizeof gname, "grad.%s", name);
            size_t n = is_bias ? L->n_bias : L->n_weight;
            const float *g = m.grads + (is_bias ? L->bias_offset : L->weight_offset);
            check_close(gname, g, fixture_get(&fx, gname, n)->data, n, MODEL_TOL);
        }
    }
    cfx_model_free(&m);
    fixture_free(&fx);
}

/* ---- a small residual network with BatchNorm ------------------------------ */

#define RESIDUAL_LAYERS                                                                            \
    "conv2d out=8 kernel=3 padding=1 bias=false name=conv1; batchnorm2d name=bn1; relu;"           \
    "basicblock out=8 name=layer1.0; basicblock out=16 stride=2 name=layer2.0; avgpool;"           \
    "flatten; linear out=10 name=fc"

/* Every state_dict entry (parameters and buffers) from the fixture, by key;
 * returns how many there are. */
static int load_state(cfx_model *m, const fixture *fx, const char *prefix)
{
    int n = 0;
    for (int i = 0; i < m->n_layers; i++) {
        const cfx_layer *L = &m->layers[i];
        for (int t = 0; t < L->n_tensors; t++, n++) {
            const cfx_tensor *T = &L->tensors[t];
            char name[160];
            snprintf(name, sizeof name, "%s%s.%s", prefix, L->key, T->suffix);
            const fix_tensor *f = fixture_get(fx, name, T->count);
            if (T->store == CFX_TENSOR_COUNT)
                m->counts[T->offset] = (int64_t)f->data[0];
            else
                memcpy(cfx_layer_tensor(m, L, t), f->data, T->count * sizeof(float));
        }
    }
    return n;
}

/* NCHW fixture -> cfx's [C][N][H][W], and back for gradients. */
static void nchw_to_cnhw(float *dst, const float *src, int N, int C, int HW, int to_cfx)
{
    for (int n = 0; n < N; n++)
        for (int c = 0; c < C; c++) {
            float *a = dst + (to_cfx ? ((size_t)c * N + n) : ((size_t)n * C + c)) * HW;
            const float *b = src + (to_cfx ? ((size_t)n * C + c) : ((size_t)c * N + n)) * HW;
            memcpy(a, b, (size_t)HW * sizeof(float));
        }
}

/* One forward and backward in the fixture's mode ("train.", "eval." or ""),
 * compared with torch: logits, loss, every parameter gradient, the input's. */
static void fixture_pass(cfx_model *m, const fixture *fx, const char *mode, int N)
{
    const int C = 3, HW = 16 * 16;
    char name[160];
    nchw_to_cnhw(m->acts[0], fixture_get(fx, "input", (size_t)N * C * HW)->data, N, C, HW, 1);
    const fix_tensor *lab = fixture_get(fx, "labels", (size_t)N);
    int labels[8];
    for (int n = 0; n < N; n++)
        labels[n] = (int)lab->data[n];
    const float *logits = cfx_model_forward(m, N);
    snprintf(name, sizeof name, "%slogits", mode);
    check_close(name, logits, fixture_get(fx, name, (size_t)N * 10)->data, (size_t)N * 10,
                MODEL_TOL);
    double loss_sum = 0.0;
    long correct = 0;
    cfx_softmax_xent(logits, labels, N, 10, 1.0f / N, m->dacts[m->n_layers], &loss_sum, &correct);
    float loss = (float)(loss_sum / N);
    snprintf(name, sizeof name, "%sloss", mode);
    check_close(name, &loss, fixture_get(fx, name, 1)->data, 1, MODEL_TOL);
    cfx_model_backward(m, N);
    for (int i = 0; i < m->n_layers; i++) {
        const cfx_layer *L = &m->layers[i];
        for (int t = 0; t < L->n_tensors; t++) {
            const cfx_tensor *T = &L->tensors[t];
            if (T->store != CFX_TENSOR_PARAM)
                continue;
            snprintf(name, sizeof name, "%sgrad.%s.%s", mode, L->key, T->suffix);
            check_close(name, cfx_layer_grad(m, L, t), fixture_get(fx, name, T->count)->data,
                        T->count, MODEL_TOL);
        }
    }
    float *dx = malloc((size_t)N * C * HW * sizeof *dx);
    nchw_to_cnhw(dx, m->dacts[0], N, C, HW, 0);
    snprintf(name, sizeof name, "%sinput_grad", mode);
    check_close(name, dx, fixture_get(fx, name, (size_t)N * C * HW)->data, (size_t)N * C * HW,
                MODEL_TOL);
    free(dx);
}

static void test_residual_matches_torch(void **state)
{
    (void)state;
    fixture fx;
    fixture_load(&fx, "residual.bin");
    cfx_layer_spec specs[CFX_MAX_LAYERS];
    int n_specs = 0;
    cfx_error err;
    cfx_model m;
    if (cfx_parse_layers(RESIDUAL_LAYERS, specs, &n_specs, &err) != 0 ||
        cfx_model_create(&m, specs, n_specs, 3, 16, 16, 4, CFX_MODEL_INPUT_GRAD, &err) != 0)
        fail_msg("%s", err.msg);
    /* The keys are torch's: every fixture state_dict entry is used. */
    int n_state = load_state(&m, &fx, ""), n_fixture = 0;
    for (int i = 0; i < fx.count; i++)
        n_fixture += strchr(fx.t[i].name, '.') && strncmp(fx.t[i].name, "train.", 6) &&
                     strncmp(fx.t[i].name, "eval.", 5);
    assert_int_equal(n_state, n_fixture);
    char *start = malloc(m.state_bytes);
    memcpy(start, m.state, m.state_bytes);

    printf("residual network vs torch, training mode (tolerance %.0e):\n", MODEL_TOL);
    fixture_pass(&m, &fx, "train.", 4);
    for (int i = 0; i < m.n_layers; i++) /* running statistics after the step */
        for (int t = 0; t < m.layers[i].n_tensors; t++) {
            const cfx_layer *L = &m.layers[i];
            const cfx_tensor *T = &L->tensors[t];
            char name[160];
            snprintf(name, sizeof name, "train.after.%s.%s", L->key, T->suffix);
            if (T->store == CFX_TENSOR_BUFFER)
                check_close(name, cfx_layer_tensor(&m, L, t),
                            fixture_get(&fx, name, T->count)->data, T->count, MODEL_TOL);
            else if (T->store == CFX_TENSOR_COUNT)
                assert_int_equal(m.counts[T->offset], (int64_t)fixture_get(&fx, name, 1)->data[0]);
        }

    printf("residual network vs torch, eval mode:\n");
    memcpy(m.state, start, m.state_bytes);
    cfx_model_set_training(&m, 0);
    fixture_pass(&m, &fx, "eval.", 4);
    assert_memory_equal(m.state, start, m.state_bytes); /* eval changes no buffer */
    free(start);
    cfx_model_free(&m);
    fixture_free(&fx);
}

/* GELU and a 3x3 stride-2 max-pool (overlapping windows) against torch. */
static void test_gelu_pool_matches_torch(void **state)
{
    (void)state;
    fixture fx;
    fixture_load(&fx, "gelu_pool.bin");
    cfx_layer_spec specs[CFX_MAX_LAYERS];
    int n_specs = 0;
    cfx_error err;
    cfx_model m;
    if (cfx_parse_layers("conv2d out=4 kernel=3 padding=1; gelu; maxpool2d kernel=3 stride=2;"
                         "flatten; linear out=10",
                         specs, &n_specs, &err) != 0 ||
        cfx_model_create(&m, specs, n_specs, 3, 16, 16, 3, CFX_MODEL_INPUT_GRAD, &err) != 0)
        fail_msg("%s", err.msg);
    load_state(&m, &fx, "");
    printf("conv-GELU-maxpool(3, stride 2)-linear vs torch:\n");
    fixture_pass(&m, &fx, "", 3);
    cfx_model_free(&m);
    fixture_free(&fx);
}

/* Guided Backpropagation (m->guided) through the seed CNN against torch with
 * ReLU backward hooks that clamp gradients at 0; the plain input gradient
 * too, which must differ from the guided one. The model keeps its
 * activations (no ReLU fused into conv2d), as cfx-viz's does. */
static void test_guided_backprop_matches_torch(void **state)
{
    (void)state;
    fixture fx;
    fixture_load(&fx, "guided.bin");
    enum { N = 3, C = 3, HW = 32 * 32, K = 10 };
    cfx_layer_spec specs[CFX_MAX_LAYERS];
    int n_specs = 0;
    cfx_error err;
    cfx_model m;
    if (cfx_parse_layers(SEED_LAYERS, specs, &n_specs, &err) != 0 ||
        cfx_model_create(&m, specs, n_specs, C, 32, 32, N,
                         CFX_MODEL_INPUT_GRAD | CFX_MODEL_KEEP_ACTIVATIONS, &err) != 0)
        fail_msg("%s", err.msg);
    load_state(&m, &fx, "");
    const fix_tensor *cls = fixture_get(&fx, "classes", N);
    static float want[N * C * HW], plain[N * C * HW];
    printf("Guided Backpropagation through the seed CNN vs torch:\n");
    for (int guided = 0; guided < 2; guided++) {
        nchw_to_cnhw(m.acts[0], fixture_get(&fx, "input", (size_t)N * C * HW)->data, N, C, HW, 1);
        const float *logits = cfx_model_forward(&m, N);
        check_close("logits", logits, fixture_get(&fx, "logits", N * K)->data, N * K, MODEL_TOL);
        float *d = m.dacts[m.n_layers];
        memset(d, 0, N * K * sizeof *d);
        for (int i = 0; i < N; i++)
            d[i * K + (int)cls->data[i]] = 1.0f;
        m.guided = guided;
        cfx_model_backward(&m, N);
        const char *name = guided ? "guided.input_grad" : "plain.input_grad";
        nchw_to_cnhw(guided ? want : plain, m.dacts[0], N, C, HW, 0);
        check_close(name, guided ? want : plain, fixture_get(&fx, name, N * C * HW)->data,
                    N * C * HW, MODEL_TOL);
    }
    assert_true(rel_err(want, plain, N * C * HW) > 0.1); /* the rule changed the gradient */
    cfx_model_free(&m);
    fixture_free(&fx);
}

/* Sums rows in one process (what the MPI reduction does across ranks). */
static void sum_rows(void *ctx, const double *rows, int n_rows, int n, double *total)
{
    (void)ctx;
    for (int i = 0; i < n; i++) {
        total[i] = 0.0;
        for (int r = 0; r < n_rows; r++)
            total[i] += rows[(size_t)r * n + i];
    }
}

/* The same network in replicas of 1 and 3 images (the chunks of the exact
 * reduction), layer by layer: BatchNorm's statistics are those of all 4
 * images, so logits, the summed gradients and the running statistics equal
 * torch's for the whole batch. */
static void test_replicas_match_torch(void **state)
{
    (void)state;
    fixture fx;
    fixture_load(&fx, "residual.bin");
    cfx_layer_spec specs[CFX_MAX_LAYERS];
    int n_specs = 0;
    cfx_error err;
    cfx_model m, rep[2];
    if (cfx_parse_layers(RESIDUAL_LAYERS, specs, &n_specs, &err) != 0 ||
        cfx_model_create(&m, specs, n_specs, 3, 16, 16, 4, 0, &err) != 0 ||
        cfx_model_create_replica(&rep[0], &m, 3, &err) != 0 ||
        cfx_model_create_replica(&rep[1], &m, 3, &err) != 0)
        fail_msg("%s", err.msg);
    rep[0].owns_buffers = 1;
    load_state(&m, &fx, "");
    const int N = 4, C = 3, HW = 16 * 16, counts[3] = {1, 3, 0};
    float *x = malloc((size_t)N * C * HW * sizeof *x);
    nchw_to_cnhw(x, fixture_get(&fx, "input", (size_t)N * C * HW)->data, N, C, HW, 1);
    for (int r = 0, n0 = 0; r < 2; n0 += counts[r++]) /* images [n0, n0 + count) */
        for (int c = 0; c < C; c++)
            memcpy(rep[r].acts[0] + (size_t)c * counts[r] * HW, x + ((size_t)c * N + n0) * HW,
                   (size_t)counts[r] * HW * sizeof *x);
    const fix_tensor *lab = fixture_get(&fx, "labels", (size_t)N);
    cfx_model *reps[2] = {&rep[0], &rep[1]};
    cfx_replicas_forward(reps, counts, 2, sum_rows, NULL);
    float logits[40], *want = fixture_get(&fx, "train.logits", 40)->data;
    for (int r = 0, n0 = 0; r < 2; n0 += counts[r++]) {
        memcpy(logits + n0 * 10, rep[r].acts[rep[r].n_layers], (size_t)counts[r] * 10 * 4);
        int labels[3];
        for (int i = 0; i < counts[r]; i++)
            labels[i] = (int)lab->data[n0 + i];
        double loss = 0.0;
        long correct = 0;
        cfx_softmax_xent(rep[r].acts[rep[r].n_layers], labels, counts[r], 10, 1.0f / N,
                         rep[r].dacts[rep[r].n_layers], &loss, &correct);
    }
    printf("residual network in replicas of 1 and 3 images vs torch:\n");
    check_close("train.logits", logits, want, 40, MODEL_TOL);
    cfx_replicas_backward(reps, counts, 2, sum_rows, NULL, NULL);
    for (int i = 0; i < m.n_layers; i++)
        for (int t = 0; t < m.layers[i].n_tensors; t++) {
            const cfx_layer *L = &m.layers[i];
            const cfx_tensor *T = &L->tensors[t];
            char name[160];
            if (T->store == CFX_TENSOR_PARAM) {
                float *g = malloc(T->count * sizeof *g);
                for (size_t j = 0; j < T->count; j++)
                    g[j] = rep[0].grads[T->offset + j] + rep[1].grads[T->offset + j];
                snprintf(name, sizeof name, "train.grad.%s.%s", L->key, T->suffix);
                check_close(name, g, fixture_get(&fx, name, T->count)->data, T->count, MODEL_TOL);
                free(g);
            } else if (T->store == CFX_TENSOR_BUFFER) { /* updated once, by rep[0] */
                snprintf(name, sizeof name, "train.after.%s.%s", L->key, T->suffix);
                check_close(name, cfx_layer_tensor(&m, L, t),
                            fixture_get(&fx, name, T->count)->data, T->count, MODEL_TOL);
            }
        }
    free(x);
    cfx_model_free(&rep[1]);
    cfx_model_free(&rep[0]);
    cfx_model_free(&m);
    fixture_free(&fx);
}

/* ---- label smoothing --------------------------------------------------------- */

static void test_label_smoothing_matches_torch(void **state)
{
    (void)state;
    fixture fx;
    fixture_load(&fx, "loss.bin");
    const int N = 6, K = 10;
    const float *z = fixture_get(&fx, "logits", (size_t)N * K)->data;
    const fix_tensor *lab = fixture_get(&fx, "labels", (size_t)N);
    int labels[6];
    for (int n = 0; n < N; n++)
        labels[n] = (int)lab->data[n];
    float d[60];
    double loss_sum = 0.0;
    long correct = 0;
    cfx_softmax_xent_smooth(z, labels, N, K, 0.2, 1.0f / N, d, &loss_sum, &correct);
    float loss = (float)(loss_sum / N);
    printf("label smoothing 0.2 vs torch:\n");
    check_close("loss", &loss, fixture_get(&fx, "loss", 1)->data, 1, 1e-6);
    check_close("grad", d, fixture_get(&fx, "grad", (size_t)N * K)->data, (size_t)N * K, 1e-6);
    fixture_free(&fx);
}

/* ---- learning-rate schedules --------------------------------------------------- */

static void test_schedules_match_torch(void **state)
{
    (void)state;
    fixture fx;
    fixture_load(&fx, "schedule.bin");
    const struct {
        const char *name;
        long warmup;
        double final_factor, step_epochs, gamma;
    } cases[] = {
        {"cosine", 0, 0.01, 30, 0.1},
        {"linear", 0, 0.01, 30, 0.1},
        {"step", 0, 0, 2, 0.5},
        {"onecycle", 10, 0, 30, 0.1},
    };
    printf("learning-rate schedules vs torch.optim.lr_scheduler:\n");
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        cfx_config cfg;
        cfx_config_defaults(&cfg);
        cfg.lr = 0.1;
        snprintf(cfg.schedule, sizeof cfg.schedule, "%s", cases[c].name);
        cfg.warmup_steps = cases[c].warmup;
        cfg.final_lr_factor = cases[c].final_factor;
        cfg.step_epochs = cases[c].step_epochs;
        cfg.step_gamma = cases[c].gamma;
        float got[50];
        for (long k = 0; k < 50; k++)
            got[k] = (float)cfx_lr_at(&cfg, k, 50, 5);
        char name[32];
        snprintf(name, sizeof name, "%s.lr", cases[c].name);
        check_close(name, got, fixture_get(&fx, name, 50)->data, 50, 1e-6);
    }
    /* warm-up: lr x (k + 1) / w, then the schedule over the remaining steps */
    cfx_config cfg;
    cfx_config_defaults(&cfg);
    cfg.lr = 0.1;
    snprintf(cfg.schedule, sizeof cfg.schedule, "linear");
    cfg.warmup_steps = 4;
    assert_true(fabs(cfx_lr_at(&cfg, 0, 14, 5) - 0.025) < 1e-15);
    assert_true(fabs(cfx_lr_at(&cfg, 3, 14, 5) - 0.1) < 1e-15);
    assert_true(fabs(cfx_lr_at(&cfg, 4, 14, 5) - 0.1) < 1e-15);
    assert_true(fabs(cfx_lr_at(&cfg, 13, 14, 5)) < 1e-15);
    /* airbench's warm-up from 0.2 x lr and decay to 0.07 x lr */
    cfg.warmup_start_factor = 0.2, cfg.final_lr_factor = 0.07;
    assert_true(fabs(cfx_lr_at(&cfg, 0, 14, 5) - 0.1 * (0.2 + 0.8 / 4)) < 1e-15);
    assert_true(fabs(cfx_lr_at(&cfg, 3, 14, 5) - 0.1) < 1e-15);
    assert_true(fabs(cfx_lr_at(&cfg, 13, 14, 5) - 0.007) < 1e-15);
    snprintf(cfg.schedule, sizeof cfg.schedule, "constant");
    assert_true(cfx_lr_at(&cfg, 9, 14, 5) == 0.1);
    fixture_free(&fx);
}

/* ---- optimizers ------------------------------------------------------------ */

#define OPT_STEPS 5

typedef struct {
    const char *name; /* record prefix in the fixture */
    const char *optim;
    double lr, beta1, beta2, eps, momentum, weight_decay;
    int nesterov, decoupled;
} optim_case;

static void run_optim_case(const fixture *fx, const optim_case *oc)
{
    /* The fixture's hyperparameters must be the ones configured here. */
    char key[64];
    snprintf(key, sizeof key, "%s.hparams", oc->name);
    int is_adam = strcmp(oc->optim, "adam") == 0;
    const fix_tensor *hp = fixture_get(fx, key, is_adam ? 5 : 4);
    double want[5];
    int n_hp = 0;
    if (is_adam) {
        want[n_hp++] = oc->lr, want[n_hp++] = oc->beta1, want[n_hp++] = oc->beta2;
        want[n_hp++] = oc->eps, want[n_hp++] = oc->weight_decay;
    } else {
        want[n_hp++] = oc->lr, want[n_hp++] = oc->momentum, want[n_hp++] = oc->weight_decay;
        want[n_hp++] = oc->nesterov;
    }
    for (int i = 0; i < n_hp; i++)
        assert_true(hp->data[i] == (float)want[i]);

    cfx_config cfg;
    cfx_config_defaults(&cfg);
    snprintf(cfg.optim_name, sizeof cfg.optim_name, "%s", oc->optim);
    cfg.lr = oc->lr, cfg.beta1 = oc->beta1, cfg.beta2 = oc->beta2, cfg.eps = oc->eps;
    cfg.momentum = oc->momentum, cfg.weight_decay = oc->weight_decay;
    cfg.nesterov = oc->nesterov;
    cfg.decoupled_weight_decay = oc->decoupled;

    const fix_tensor *p0 = fixture_find(fx, "param");
    size_t n = p0->n;
    cfx_optim opt;
    cfx_error err;
    if (cfx_optim_create(&opt, &cfg, n, &err) != 0)
        fail_msg("%s", err.msg);
    float *p = malloc(n * sizeof *p);
    assert_non_null(p);
    memcpy(p, p0->data, n * sizeof *p);
    printf("%s vs torch (tolerance %.0e):\n", oc->name, OPTIM_TOL);
    for (int k = 1; k <= OPT_STEPS; k++) {
        snprintf(key, sizeof key, "grad.%d", k);
        cfx_optim_step(&opt, p, fixture_get(fx, key, n)->data);
        snprintf(key, sizeof key, "%s.step.%d", oc->name, k);
        check_close(key, p, fixture_get(fx, key, n)->data, n, OPTIM_TOL);
    }
    free(p);
    cfx_optim_free(&opt);
}

static void test_adam_matches_torch(void **state)
{
    (void)state;
    static const optim_case cases[] = {
        {"adam", "adam", 1e-3, 0.9, 0.999, 1e-8, 0.0, 0.0, 0, 0},
        {"adam_wd", "adam", 1e-3, 0.9, 0.999, 1e-8, 0.0, 1e-2, 0, 0},
        {"adamw", "adam", 1e-2, 0.9, 0.999, 1e-8, 0.0, 0.5, 0, 1},
    };
    fixture fx;
    fixture_load(&fx, "adam.bin");
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        run_optim_case(&fx, &cases[i]);
    fixture_free(&fx);
}

static void test_sgd_matches_torch(void **state)
{
    (void)state;
    static const optim_case cases[] = {
        {"sgd", "sgd", 1e-2, 0.0, 0.0, 0.0, 0.9, 5e-4, 0, 0},
        {"sgd_nesterov", "sgd", 1e-2, 0.0, 0.0, 0.0, 0.9, 5e-4, 1, 0},
    };
    fixture fx;
    fixture_load(&fx, "sgd.bin");
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        run_optim_case(&fx, &cases[i]);
    fixture_free(&fx);
}

/* Parameter groups (torch's param_groups): the first half of the
 * parameters at 64x the learning rate and without weight decay. */
static void test_param_groups_match_torch(void **state)
{
    (void)state;
    fixture fx;
    fixture_load(&fx, "sgd.bin");
    cfx_config cfg;
    cfx_config_defaults(&cfg);
    snprintf(cfg.optim_name, sizeof cfg.optim_name, "sgd");
    cfg.lr = 0.01, cfg.momentum = 0.9, cfg.weight_decay = 5e-4, cfg.nesterov = 1;
    const fix_tensor *p0 = fixture_find(&fx, "param");
    size_t n = p0->n;
    cfx_optim opt;
    cfx_error err;
    if (cfx_optim_create(&opt, &cfg, n, &err) != 0)
        fail_msg("%s", err.msg);
    cfx_optim_set_group(&opt, 0, n / 2, 64.0, 0.0);
    float *p = malloc(n * sizeof *p);
    memcpy(p, p0->data, n * sizeof *p);
    printf("sgd with parameter groups vs torch:\n");
    for (int k = 1; k <= OPT_STEPS; k++) {
        char key[64];
        snprintf(key, sizeof key, "grad.%d", k);
        cfx_optim_step(&opt, p, fixture_get(&fx, key, n)->data);
        snprintf(key, sizeof key, "sgd_groups.step.%d", k);
        check_close(key, p, fixture_get(&fx, key, n)->data, n, OPTIM_TOL);
    }
    free(p);
    cfx_optim_free(&opt);
    fixture_free(&fx);
}

/* Lookahead (airbench's LookaheadState): every k steps the average moves
 * toward the weights by 1 - decay^k (step/total)^3 and the weights jump to
 * it; after the last step (here between updates) the weights are the
 * average. Checked against the rule computed in double. */
static void test_lookahead_rule(void **state)
{
    (void)state;
    enum { N = 4, K = 3, TOTAL = 13 };
    cfx_config cfg;
    cfx_config_defaults(&cfg);
    snprintf(cfg.optim_name, sizeof cfg.optim_name, "sgd");
    cfg.lr = 0.1, cfg.lookahead_steps = K, cfg.lookahead_decay = 0.9;
    cfx_optim opt;
    cfx_error err;
    if (cfx_optim_create(&opt, &cfg, N, &err) != 0)
        fail_msg("%s", err.msg);
    float w[N] = {1.0f, -2.0f, 0.5f, 3.0f};
    double ref_w[N], ref_avg[N];
    for (int i = 0; i < N; i++)
        ref_w[i] = ref_avg[i] = w[i];
    cfx_lookahead_start(&opt, w, N);
    for (int step = 1; step <= TOTAL; step++) {
        for (int i = 0; i < N; i++) { /* a stand-in for the optimizer's update */
            float delta = 0.05f * (float)((step * (i + 1)) % 7) - 0.1f;
            w[i] += delta, ref_w[i] += delta;
        }
        cfx_lookahead_step(&opt, w, step, TOTAL);
        if (step % K == 0 || step == TOTAL) {
            double p = (double)step / TOTAL;
            double a = step % K == 0 ? pow(0.9, K) * p * p * p : 1.0;
            for (int i = 0; i < N; i++)
                ref_avg[i] += (1.0 - a) * (ref_w[i] - ref_avg[i]), ref_w[i] = ref_avg[i];
        }
        for (int i = 0; i < N; i++) {
            assert_true(fabs(w[i] - ref_w[i]) < 1e-5);
            assert_true(fabs(opt.lookahead[i] - ref_avg[i]) < 1e-5);
        }
    }
    cfx_lookahead_swap(&opt, w);
    assert_int_equal(opt.model_has_average, 1);
    cfx_optim_free(&opt);
}

/* ---- init distribution ------------------------------------------------------- */

/* cfx_model_init_params draws U(+-1/sqrt(fan_in)) like torch: every value in
 * range, mean ~0 and std ~bound/sqrt(3) on the big tensors, and torch's own
 * init (the fixture) fills the same range. */
static void test_init_distribution(void **state)
{
    (void)state;
    fixture fx;
    fixture_load(&fx, "seed_cnn.bin");
    cfx_model m;
    make_seed_model(&m, 1);
    cfx_model_init_params(&m, 1);
    printf("init U(+-bound) per tensor (cfx; torch max|w| for comparison):\n");
    for (int i = 0; i < m.n_layers; i++) {
        const cfx_layer *L = &m.layers[i];
        if (!L->n_weight)
            continue;
        size_t fan_in = L->n_weight / L->n_bias;
        double bound = 1.0 / sqrt((double)fan_in);
        for (int is_bias = 0; is_bias <= 1; is_bias++) {
            size_t n = is_bias ? L->n_bias : L->n_weight;
            const float *p = m.params + (is_bias ? L->bias_offset : L->weight_offset);
            double sum = 0.0, sq = 0.0, amax = 0.0;
            for (size_t j = 0; j < n; j++) {
                sum += p[j];
                sq += (double)p[j] * p[j];
                amax = fmax(amax, fabs(p[j]));
            }
            double mean = sum / n, sd = sqrt(sq / n - mean * mean);
            double want_sd = bound / sqrt(3.0);
            char name[96];
            snprintf(name, sizeof name, "%s.%s", L->key, is_bias ? "bias" : "weight");
            const fix_tensor *t = fixture_get(&fx, name, n);
            double torch_max = 0.0;
            for (size_t j = 0; j < n; j++)
                torch_max = fmax(torch_max, fabs(t->data[j]));
            printf("  %-10s n=%5zu bound %.4f  max %.4f  mean %+.5f  std/expected %.3f"
                   "  torch max %.4f\n",
                   name, n, bound, amax, mean, sd / want_sd, torch_max);
            assert_true(amax <= bound * (1.0 + 1e-6));
            assert_true(torch_max <= bound * (1.0 + 1e-6));
            if (n >= 1000) {
                /* Five standard errors; a uniform's sample std has relative
                 * standard error 1/sqrt(5n). */
                assert_true(fabs(mean) <= 5.0 * want_sd / sqrt((double)n));
                assert_true(fabs(sd / want_sd - 1.0) <= 5.0 / sqrt(5.0 * n));
                assert_true(amax >= 0.99 * bound);
                assert_true(torch_max >= 0.99 * bound);
            }
        }
    }
    /* Deterministic in the seed, different across seeds. */
    float *first = malloc(m.n_params * sizeof *first);
    assert_non_null(first);
    memcpy(first, m.params, m.n_params * sizeof *first);
    cfx_model_init_params(&m, 1);
    assert_memory_equal(first, m.params, m.n_params * sizeof *first);
    cfx_model_init_params(&m, 2);
    assert_memory_not_equal(first, m.params, m.n_params * sizeof *first);
    free(first);
    cfx_model_free(&m);
    fixture_free(&fx);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_seed_cnn_matches_torch),
        cmocka_unit_test(test_residual_matches_torch),
        cmocka_unit_test(test_replicas_match_torch),
        cmocka_unit_test(test_gelu_pool_matches_torch),
        cmocka_unit_test(test_guided_backprop_matches_torch),
        cmocka_unit_test(test_label_smoothing_matches_torch),
        cmocka_unit_test(test_schedules_match_torch),
        cmocka_unit_test(test_adam_matches_torch),
        cmocka_unit_test(test_sgd_matches_torch),
        cmocka_unit_test(test_param_groups_match_torch),
        cmocka_unit_test(test_lookahead_rule),
        cmocka_unit_test(test_init_distribution),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
