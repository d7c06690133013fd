/* The model: layers from the table, their inputs, shapes, parameter layout,
 * init, forward and backward. Layer i writes acts[i + 1] and reads the
 * outputs of earlier layers (by default the previous one), so residual
 * networks are lists too. In backward every layer overwrites its input
 * gradients; where an output has several readers, the first reader in
 * backward order writes its gradient and the others add theirs through a
 * scratch buffer, so no gradient buffer is zeroed per step. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cfx/nn.h"  /* defines: cfx_model, cfx_model_forward, cfx_model_backward */
#include "cfx/rng.h" /* defines: cfx_rng */

#define CFX_MAX_MODEL_LAYERS 2048 /* after blocks are expanded */

int cfx_layer_add_tensor(cfx_layer *L, const char *suffix, cfx_tensor_store store,
                         cfx_tensor_init init, int rank, const int *dims)
{
    cfx_tensor *T = &L->tensors[L->n_tensors];
    memset(T, 0, sizeof *T);
    snprintf(T->suffix, sizeof T->suffix, "%s", suffix);
    T->store = store, T->init = init, T->rank = rank;
    T->count = 1;
    for (int d = 0; d < rank; d++) {
        T->dims[d] = dims[d];
        T->count *= (size_t)dims[d];
    }
    return L->n_tensors++;
}

int cfx_layer_same_shape(cfx_layer *L, const cfx_shape *in, int max_batch, cfx_error *err)
{
    (void)max_batch, (void)err;
    L->out_c = in->c, L->out_h = in->h, L->out_w = in->w, L->flat_out = in->flat;
    return 0;
}

int cfx_layer_need_spatial(const cfx_shape *in, const char *kind_name, cfx_error *err)
{
    if (in->flat)
        return cfx_fail(err, "%s needs a spatial input but follows flatten/linear", kind_name);
    return 0;
}

/* ---- building the layer list --------------------------------------------- */

static cfx_shape output_shape(const cfx_model *m, int src)
{
    if (src < 0)
        return (cfx_shape){m->in_c, m->in_h, m->in_w, 0};
    const cfx_layer *L = &m->layers[src];
    return (cfx_shape){L->out_c, L->out_h, L->out_w, L->flat_out};
}

static const char *source_key(const cfx_model *m, int src)
{
    return src < 0 ? "input" : m->layers[src].key;
}

/* "layer 12 (add 'layer2.0.add')" */
static void describe(const cfx_model *m, const cfx_layer *L, char *buf, size_t len)
{
    if (L->spec.name[0])
        snprintf(buf, len, "layer %d (%s '%s')", L->index, L->kind->name, L->spec.name);
    else
        snprintf(buf, len, "layer %d (%s)", L->index, L->kind->name);
    if (L->n_inputs > 1) {
        size_t used = strlen(buf);
        snprintf(buf + used, len - used, " of '%s' and '%s'", source_key(m, L->input[0]),
                 source_key(m, L->input[1]));
    }
}

int cfx_model_find_layer(const cfx_model *m, const char *name)
{
    for (int i = m->n_layers - 1; i >= 0; i--)
        if (strcmp(m->layers[i].key, name) == 0)
            return i;
    return -1;
}

/* Where a spec's inputs come from. entry is the spec's position in the
 * config list, entry_out[] the output layer of each earlier entry; block and
 * block_in are the enclosing block's name and input (NULL outside blocks). */
typedef struct {
    int entry;
    const int *entry_out;
    const char *block;
    int block_in;
} input_scope;

static int resolve_input(const cfx_model *m, const char *ref, const input_scope *sc, int *src,
                         cfx_error *err)
{
    if (ref[0] == '-') {
        int back = sc->entry - atoi(ref + 1);
        if (back < -1)
            return cfx_fail(err, "in=%s reaches before the first layer", ref);
        *src = back < 0 ? -1 : sc->entry_out[back];
        return 0;
    }
    if (sc->block && strcmp(ref, CFX_BLOCK_INPUT) == 0) {
        *src = sc->block_in;
        return 0;
    }
    char full[2 * CFX_NAME_LEN];
    snprintf(full, sizeof full, "%s%s%s", sc->block ? sc->block : "", sc->block ? "." : "", ref);
    *src = cfx_model_find_layer(m, full);
    if (*src < 0)
        return cfx_fail(err, "in=%s names no earlier layer", ref);
    return 0;
}

/* Appends one layer (not a block) built from spec s. */
static int add_layer(cfx_model *m, const cfx_layer_spec *s, const input_scope *sc, cfx_error *err)
{
    if (m->n_layers == CFX_MAX_MODEL_LAYERS)
        return cfx_fail(err, "model.layers: more than %d layers after expanding blocks",
                        CFX_MAX_MODEL_LAYERS);
    cfx_layer *L = &m->layers[m->n_layers];
    memset(L, 0, sizeof *L);
    L->spec = *s, L->kind = s->kind, L->index = m->n_layers;
    if (sc->block) {
        char full[3 * CFX_NAME_LEN];
        snprintf(full, sizeof full, "%s%s%s", sc->block, s->name[0] ? "." : "", s->name);
        if (strlen(full) >= CFX_NAME_LEN)
            return cfx_fail(err, "model.layers: the layer name '%s' is longer than %d characters",
                            full, CFX_NAME_LEN - 1);
        memcpy(L->spec.name, full, strlen(full) + 1);
    }
    if (L->spec.name[0])
        snprintf(L->key, sizeof L->key, "%s", L->spec.name);
    else
        snprintf(L->key, sizeof L->key, "%d", L->index);
    L->n_inputs = L->kind->n_inputs;
    cfx_shape in[CFX_MAX_INPUTS];
    char what[160];
    int rc = 0;
    if (s->n_inputs == 0 && L->n_inputs > 1)
        rc = cfx_fail(err, "needs in=A,B (the layers it reads)");
    for (int k = 0; k < L->n_inputs && rc == 0; k++) {
        if (s->n_inputs == 0)
            L->input[k] = m->n_layers - 1;
        else
            rc = resolve_input(m, s->inputs[k], sc, &L->input[k], err);
        in[k] = output_shape(m, L->input[k]);
    }
    L->spec.n_inputs = 0; /* resolved into input[] */
    if (rc == 0) {
        L->in_c = in[0].c, L->in_h = in[0].h, L->in_w = in[0].w;
        rc = L->kind->infer(L, in, m->max_batch, err);
    }
    if (rc == 0 && cfx_model_find_layer(m, L->key) >= 0)
        rc = cfx_fail(err, "the name '%s' is used twice", L->key);
    if (rc != 0) {
        char msg[CFX_ERROR_LEN];
        snprintf(msg, sizeof msg, "%s", err->msg);
        describe(m, L, what, sizeof what);
        return cfx_fail(err, "model.layers: %s: %s", what, msg);
    }
    m->n_layers++;
    return 0;
}

/* Appends config entry j (a layer, or a block's layers). */
static int add_entry(cfx_model *m, const cfx_layer_spec *s, int j, int *entry_out, cfx_error *err)
{
    input_scope sc = {.entry = j, .entry_out = entry_out, .block = NULL, .block_in = -1};
    if (!s->kind->expand) {
        if (add_layer(m, s, &sc, err) != 0)
            return -1;
        entry_out[j] = m->n_layers - 1;
        return 0;
    }
    cfx_layer_spec sub[CFX_MAX_EXPANSION];
    int src = m->n_layers - 1;
    if (s->n_inputs && resolve_input(m, s->inputs[0], &sc, &src, err) != 0)
        return cfx_fail(err, "model.layers: %s: %s", s->kind->name, err->msg);
    cfx_shape in = output_shape(m, src);
    int n = s->kind->expand(s, &in, sub, err);
    if (n < 0)
        return cfx_fail(err, "model.layers: %s: %s", s->kind->name, err->msg);
    char prefix[CFX_NAME_LEN];
    if (s->name[0])
        snprintf(prefix, sizeof prefix, "%s", s->name);
    else
        snprintf(prefix, sizeof prefix, "%d", m->n_layers);
    sc.block = prefix, sc.block_in = src;
    for (int i = 0; i < n; i++) {
        sub[i].lr_scale = s->lr_scale, sub[i].decay_scale = s->decay_scale; /* the block's group */
        sub[i].bias_only = s->bias_only, sub[i].train_epochs = s->train_epochs;
        if (add_layer(m, &sub[i], &sc, err) != 0)
            return -1;
    }
    entry_out[j] = m->n_layers - 1;
    return 0;
}

/* ---- wiring: readers, in-place ReLUs, gradients that add ------------------ */

static void count_readers(cfx_model *m)
{
    for (int i = 0; i < m->n_layers; i++)
        for (int k = 0; k < m->layers[i].n_inputs; k++)
            if (m->layers[i].input[k] >= 0)
                m->layers[m->layers[i].input[k]].readers++;
}

/* A ReLU reading a conv2d that nothing else reads runs in place inside it;
 * if the ReLU has one reader that can fold its backward (maxpool2d), it does. */
static void mark_fusions(cfx_model *m)
{
    for (int i = 0; i < m->n_layers; i++) {
        cfx_layer *L = &m->layers[i];
        int src = L->input[0];
        if (!(L->kind->flags & CFX_KIND_RELU) || src < 0 ||
            !(m->layers[src].kind->flags & CFX_KIND_FUSES_RELU) || m->layers[src].readers != 1)
            continue;
        m->layers[src].fused = L->fused = 1;
        for (int r = i + 1; r < m->n_layers; r++)
            if (L->readers == 1 && m->layers[r].input[0] == i && m->layers[r].n_inputs == 1 &&
                (m->layers[r].kind->flags & CFX_KIND_FOLDS_RELU_BACKWARD)) {
                m->layers[r].fused = 1;
                L->fused = 2; /* its backward is done by layer r */
            }
    }
}

/* Backward runs from the last layer down: the first reader of an output to
 * run writes its gradient, later ones add. Returns the largest gradient, in
 * floats per image, that is added. */
static size_t mark_adding_gradients(cfx_model *m, size_t *per_image)
{
    char *written = cfx_calloc((size_t)m->n_layers + 1, 1);
    size_t largest = 0;
    for (int i = m->n_layers - 1; i >= 0; i--) {
        cfx_layer *L = &m->layers[i];
        for (int k = 0; k < L->n_inputs; k++) {
            int slot = L->input[k] + 1;
            L->din_add[k] = written[slot];
            written[slot] = 1;
            if (L->din_add[k] && per_image[slot] > largest)
                largest = per_image[slot];
        }
    }
    free(written);
    return largest;
}

/* ---- allocation ------------------------------------------------------------ */

static void place_tensors(cfx_model *m)
{
    size_t sizes[3] = {0, 0, 0};
    for (int i = 0; i < m->n_layers; i++) {
        cfx_layer *L = &m->layers[i];
        for (int t = 0; t < L->n_tensors; t++) {
            cfx_tensor *T = &L->tensors[t];
            T->offset = sizes[T->store];
            sizes[T->store] += T->count;
            if (T->store == CFX_TENSOR_PARAM && !strcmp(T->suffix, "weight"))
                L->weight_offset = T->offset, L->n_weight = T->count;
            if (T->store == CFX_TENSOR_PARAM && !strcmp(T->suffix, "bias"))
                L->bias_offset = T->offset, L->n_bias = T->count;
        }
    }
    m->n_params = sizes[CFX_TENSOR_PARAM];
    m->n_buffers = sizes[CFX_TENSOR_BUFFER];
    m->n_counts = sizes[CFX_TENSOR_COUNT];
    size_t floats = m->n_params + m->n_buffers;
    size_t head = (floats * sizeof(float) + 7) / 8 * 8; /* int64 aligned */
    m->state_bytes = head + m->n_counts * sizeof(int64_t);
    m->state = cfx_calloc(m->state_bytes ? m->state_bytes : 1, 1);
    m->params = m->state;
    m->buffers = m->params + m->n_params;
    m->counts = (int64_t *)((char *)m->state + head);
    m->grads = cfx_calloc(m->n_params + CFX_GRAD_TAIL, sizeof(float));
}

static void allocate_activations(cfx_model *m, const size_t *per_image, size_t add_max)
{
    const size_t B = (size_t)m->max_batch;
    size_t col_max = 1;
    m->acts = cfx_calloc((size_t)m->n_layers + 1, sizeof *m->acts);
    m->dacts = cfx_calloc((size_t)m->n_layers + 1, sizeof *m->dacts);
    m->acts[0] = cfx_zalloc_aligned(per_image[0] * B, sizeof(float));
    if (m->flags & CFX_MODEL_INPUT_GRAD)
        m->dacts[0] = cfx_zalloc_aligned(per_image[0] * B, sizeof(float));
    for (int i = 0; i < m->n_layers; i++) {
        cfx_layer *L = &m->layers[i];
        if (L->col_size > col_max)
            col_max = L->col_size;
        if (L->scratch_bytes)
            L->scratch = cfx_calloc(L->scratch_bytes, 1);
        if ((L->kind->flags & CFX_KIND_RELU) && L->fused) { /* in place */
            m->acts[i + 1] = m->acts[L->input[0] + 1];
            m->dacts[i + 1] = m->dacts[L->input[0] + 1];
            continue;
        }
        m->acts[i + 1] = cfx_zalloc_aligned(per_image[i + 1] * B, sizeof(float));
        m->dacts[i + 1] = cfx_zalloc_aligned(per_image[i + 1] * B, sizeof(float));
    }
    m->col = cfx_malloc(col_max * sizeof(float));
    m->dcol = cfx_malloc(col_max * sizeof(float));
    for (int k = 0; k < CFX_MAX_INPUTS && add_max; k++)
        m->dscratch[k] = cfx_zalloc_aligned(add_max * B, sizeof(float));
}

/* Checks that every output but the last is read and the last is flat. */
static int check_graph(const cfx_model *m, cfx_error *err)
{
    for (int i = 0; i + 1 < m->n_layers; i++)
        if (m->layers[i].readers == 0) {
            char what[160];
            describe(m, &m->layers[i], what, sizeof what);
            return cfx_fail(err,
                            "model.layers: %s: its output is never used (the last layer "
                            "must be the only one nothing reads)",
                            what);
        }
    const cfx_layer *last = &m->layers[m->n_layers - 1];
    if (!last->flat_out)
        return cfx_fail(err, "model.layers: the last layer must produce a flat output "
                             "(end with flatten and linear)");
    return 0;
}

int cfx_model_create(cfx_model *m, const cfx_layer_spec *specs, int n_specs, int in_c, int in_h,
                     int in_w, int max_batch, int flags, cfx_error *err)
{
    memset(m, 0, sizeof *m);
    if (n_specs < 1 || n_specs > CFX_MAX_LAYERS)
        return cfx_fail(err, "model.layers: %d layers (1..%d allowed)", n_specs, CFX_MAX_LAYERS);
    if (max_batch < 1)
        return cfx_fail(err, "model: batch size %d must be at least 1", max_batch);
    m->in_c = in_c, m->in_h = in_h, m->in_w = in_w;
    m->max_batch = max_batch;
    m->flags = flags;
    m->training = 1;
    m->owns_buffers = 1;
    m->layers = cfx_calloc(CFX_MAX_MODEL_LAYERS, sizeof *m->layers);
    m->specs = cfx_malloc((size_t)n_specs * sizeof *specs);
    memcpy(m->specs, specs, (size_t)n_specs * sizeof *specs);
    m->n_specs = n_specs;
    int entry_out[CFX_MAX_LAYERS], rc = 0;
    for (int j = 0; j < n_specs && rc == 0; j++)
        rc = add_entry(m, &specs[j], j, entry_out, err);
    if (rc == 0) {
        count_readers(m);
        rc = check_graph(m, err);
    }
    if (rc != 0) {
        free(m->specs);
        free(m->layers);
        memset(m, 0, sizeof *m);
        return -1;
    }
    m->n_classes = m->layers[m->n_layers - 1].out_c;
    if (!(flags & CFX_MODEL_KEEP_ACTIVATIONS))
        mark_fusions(m);
    size_t *per_image = cfx_malloc(((size_t)m->n_layers + 1) * sizeof *per_image);
    per_image[0] = (size_t)in_c * in_h * in_w;
    for (int i = 0; i < m->n_layers; i++)
        per_image[i + 1] = (size_t)m->layers[i].out_c * m->layers[i].out_h * m->layers[i].out_w;
    size_t add_max = mark_adding_gradients(m, per_image);
    place_tensors(m);
    allocate_activations(m, per_image, add_max);
    free(per_image);
    return 0;
}

void cfx_model_free(cfx_model *m)
{
    for (int i = 0; i <= m->n_layers && m->acts; i++) {
        const cfx_layer *L = i > 0 ? &m->layers[i - 1] : NULL;
        if (L && (L->kind->flags & CFX_KIND_RELU) && L->fused)
            continue; /* shares the buffers of its input */
        free(m->acts[i]);
        free(m->dacts[i]);
    }
    for (int i = 0; i < m->n_layers; i++)
        free(m->layers[i].scratch);
    for (int k = 0; k < CFX_MAX_INPUTS; k++)
        free(m->dscratch[k]);
    free(m->acts);
    free(m->dacts);
    free(m->layers);
    free(m->specs);
    if (!m->shares_state)
        free(m->state);
    free(m->grads);
    free(m->col);
    free(m->dcol);
    memset(m, 0, sizeof *m);
}

/* ---- init, forward, backward ---------------------------------------------- */

/* torch.nn.init.dirac_ of a weight [OC][C][K][K]: output channel i copies
 * input channel i (i < min(OC, C)) through the kernel's centre. */
/* Filters i < min(OC, C) of w[OC][C][KH][KW] pass input channel i through;
 * all: the others are zero (torch.nn.init.dirac_), else they are kept. */
static void init_dirac(float *w, const cfx_tensor *T, int all)
{
    const int OC = T->dims[0], C = T->dims[1], KH = T->dims[2], KW = T->dims[3];
    const size_t filter = (size_t)C * KH * KW;
    memset(w, 0, (all ? (size_t)OC : (size_t)(OC < C ? OC : C)) * filter * sizeof *w);
    for (int i = 0; i < OC && i < C; i++)
        w[(((size_t)i * C + i) * KH + KH / 2) * KW + KW / 2] = 1.0f;
}

void cfx_model_init_params(cfx_model *m, uint64_t seed)
{
    cfx_rng rng;
    cfx_rng_seed(&rng, cfx_hash3(seed, 0x494E4954ULL /* "INIT" */, 0));
    memset(m->counts, 0, m->n_counts * sizeof *m->counts);
    for (int i = 0; i < m->n_layers; i++) {
        cfx_layer *L = &m->layers[i];
        for (int t = 0; t < L->n_tensors; t++) {
            const cfx_tensor *T = &L->tensors[t];
            if (T->store == CFX_TENSOR_COUNT)
                continue;
            float *p = cfx_layer_tensor(m, L, t);
            if (T->init == CFX_INIT_DIRAC) {
                init_dirac(p, T, 1);
                continue;
            }
            int fan_in = T->init == CFX_INIT_FAN_IN || T->init == CFX_INIT_IDENTITY;
            float bound = fan_in ? 1.0f / sqrtf((float)L->fan_in) : 0.0f;
            for (size_t j = 0; j < T->count; j++)
                p[j] = fan_in                    ? (2.0f * cfx_rng_float(&rng) - 1.0f) * bound
                       : T->init == CFX_INIT_ONE ? 1.0f
                                                 : 0.0f;
            if (T->init == CFX_INIT_IDENTITY)
                init_dirac(p, T, 0);
        }
    }
}

void cfx_model_set_training(cfx_model *m, int training) { m->training = training != 0; }

/* Phases [p0, p1) of layer L's batch sums in a single model: summed over
 * ranks by m->reduce (unless the layer keeps them local). */
static void batch_sums(cfx_model *m, cfx_layer *L, int n, int p0, int p1)
{
    if (!L->kind->sums)
        return;
    double *buf = cfx_malloc((size_t)CFX_MAX_SUMS(L->out_c) * sizeof *buf);
    for (int p = p0; p < p1; p++) {
        int k = L->kind->sums(m, L, n, p, buf);
        if (k == 0)
            continue;
        if (k > 0 && m->reduce)
            m->reduce(m->reduce_ctx, buf, k);
        L->kind->sums_done(m, L, p, buf);
    }
    free(buf);
}

const float *cfx_model_forward(cfx_model *m, int n)
{
    for (int i = 0; i < m->n_layers; i++) {
        cfx_layer *L = &m->layers[i];
        double t0 = cfx_now();
        batch_sums(m, L, n, 0, L->kind->n_forward_sums);
        L->kind->forward(m, L, n);
        L->forward_seconds += cfx_now() - t0;
    }
    return m->acts[m->n_layers];
}

static void add_into(float *restrict dst, const float *restrict src, size_t n)
{
    for (size_t i = 0; i < n; i++)
        dst[i] += src[i];
}

/* Layer i's backward over n images, with its input gradients routed to
 * scratch and added where a later reader already wrote them. */
static void backward_layer(cfx_model *m, int i, int n)
{
    cfx_layer *L = &m->layers[i];
    float *din[CFX_MAX_INPUTS] = {NULL, NULL};
    for (int k = 0; k < L->n_inputs; k++) {
        din[k] = m->dacts[L->input[k] + 1]; /* NULL for the input unless input_grad */
        if (din[k] && L->din_add[k])
            din[k] = m->dscratch[k];
    }
    L->kind->backward(m, L, n, din);
    for (int k = 0; k < L->n_inputs; k++)
        if (din[k] && L->din_add[k]) {
            cfx_shape s = output_shape(m, L->input[k]);
            add_into(m->dacts[L->input[k] + 1], din[k], (size_t)n * s.c * s.h * s.w);
        }
}

void cfx_model_backward(cfx_model *m, int n)
{
    for (int i = m->n_layers - 1; i >= 0; i--) {
        cfx_layer *L = &m->layers[i];
        double t0 = cfx_now();
        int p0 = L->kind->n_forward_sums;
        batch_sums(m, L, n, p0, p0 + L->kind->n_backward_sums);
        backward_layer(m, i, n);
        L->backward_seconds += cfx_now() - t0;
    }
}

/* ---- replicas ------------------------------------------------------------ */

int cfx_model_create_replica(cfx_model *rep, const cfx_model *master, int max_batch,
                             cfx_error *err)
{
    if (cfx_model_create(rep, master->specs, master->n_specs, master->in_c, master->in_h,
                         master->in_w, max_batch, master->flags, err) != 0)
        return -1;
    free(rep->state);
    rep->state = master->state;
    rep->params = master->params, rep->buffers = master->buffers, rep->counts = master->counts;
    rep->shares_state = 1;
    rep->owns_buffers = 0;
    rep->training = master->training;
    return 0;
}

/* Phases [p0, p1) of layer i's batch sums over the replicas: the rows of
 * those with images are summed (over ranks too) by reduce. */
static void replica_sums(cfx_model *const *reps, const int *counts, int n_reps, int i, int p0,
                         int p1, cfx_reduce_rows_fn reduce, void *ctx)
{
    if (!reps[0]->layers[i].kind->sums)
        return;
    const int width = CFX_MAX_SUMS(reps[0]->layers[i].out_c); /* this layer's, not the largest */
    double *rows = cfx_malloc(((size_t)n_reps + 2) * width * sizeof *rows);
    double *total = rows + (size_t)(n_reps + 1) * width;
    for (int p = p0; p < p1; p++) {
        int n_rows = 0, k = 0;
        for (int r = 0; r < n_reps; r++) {
            if (counts[r] == 0 && r > 0)
                continue;
            cfx_layer *L = &reps[r]->layers[i];
            double *row = rows + (size_t)(counts[r] ? n_rows : n_reps) * width;
            k = L->kind->sums(reps[r], L, counts[r], p, row); /* the same k for every replica */
            n_rows += counts[r] > 0;
        }
        if (k == 0)
            continue;
        if (k > 0) {
            for (int r = 1; r < n_rows; r++) /* rows of k, one after another */
                memmove(rows + (size_t)r * k, rows + (size_t)r * width, (size_t)k * sizeof *rows);
            reduce(ctx, rows, n_rows, k, total);
        }
        for (int r = 0, row = 0; r < n_reps; r++) {
            if (k < 0 && counts[r] == 0)
                continue; /* local statistics of no images */
            cfx_layer *L = &reps[r]->layers[i];
            L->kind->sums_done(reps[r], L, p, k > 0 ? total : rows + (size_t)row++ * width);
        }
    }
    free(rows);
}

/* How many threads run the replicas side by side: one per replica with
 * images, up to cfx_threads(), and at least one. Each takes every T-th replica, whose layers'
 * own loops then run on that thread alone (the bits do not change); with one
 * busy replica the layers use the threads instead. */
static int replica_threads(const int *counts, int n_reps)
{
    int busy = 0;
    for (int r = 0; r < n_reps; r++)
        busy += counts[r] > 0;
    busy = busy < cfx_threads() ? busy : cfx_threads();
    return busy > 1 ? busy : 1; /* a rank without images still joins the sums */
}

/* The phases [p0, p1) of layer i's batch sums, on thread 0 (its reduce may
 * call MPI) once every thread has finished the layers before (the sums read
 * what those wrote); the others wait for the result. */
static void replica_sums_team(cfx_model *const *reps, const int *counts, int n_reps, int i, int p0,
                              int p1, cfx_reduce_rows_fn reduce, void *ctx, int tid)
{
    if (p0 == p1 || !reps[0]->layers[i].kind->sums)
        return;
    CFX_BARRIER;
    if (tid == 0)
        replica_sums(reps, counts, n_reps, i, p0, p1, reduce, ctx);
    CFX_BARRIER;
}

void cfx_replicas_forward(cfx_model *const *reps, const int *counts, int n_reps,
                          cfx_reduce_rows_fn reduce, void *ctx)
{
    const int T = replica_threads(counts, n_reps);
    CFX_PARALLEL(T)
    {
        const int tid = T > 1 ? cfx_thread_id() : 0;
        for (int i = 0; i < reps[0]->n_layers; i++) {
            double t0 = cfx_now();
            replica_sums_team(reps, counts, n_reps, i, 0, reps[0]->layers[i].kind->n_forward_sums,
                              reduce, ctx, tid);
            for (int r = tid; r < n_reps; r += T)
                if (counts[r])
                    reps[r]->layers[i].kind->forward(reps[r], &reps[r]->layers[i], counts[r]);
            if (tid == 0)
                reps[0]->layers[i].forward_seconds += cfx_now() - t0;
        }
    }
}

void cfx_replicas_backward(cfx_model *const *reps, const int *counts, int n_reps,
                           cfx_reduce_rows_fn reduce, cfx_layer_done_fn done, void *ctx)
{
    const int T = replica_threads(counts, n_reps);
    CFX_PARALLEL(T)
    {
        const int tid = T > 1 ? cfx_thread_id() : 0;
        for (int i = reps[0]->n_layers - 1; i >= 0; i--) {
            double t0 = cfx_now();
            const cfx_layer_kind *kind = reps[0]->layers[i].kind;
            replica_sums_team(reps, counts, n_reps, i, kind->n_forward_sums,
                              kind->n_forward_sums + kind->n_backward_sums, reduce, ctx, tid);
            for (int r = tid; r < n_reps; r += T)
                if (counts[r])
                    backward_layer(reps[r], i, counts[r]);
            if (tid == 0)
                reps[0]->layers[i].backward_seconds += cfx_now() - t0;
            if (done) { /* every replica's gradient of layer i is final */
                CFX_BARRIER;
                if (tid == 0)
                    done(ctx, i);
            }
        }
    }
}

void cfx_model_print(const cfx_model *m, FILE *out)
{
    fprintf(out, "model: input %dx%dx%d, %zu parameters\n", m->in_c, m->in_h, m->in_w, m->n_params);
    for (int i = 0; i < m->n_layers; i++) {
        const cfx_layer *L = &m->layers[i];
        char spec[256], from[2 * CFX_NAME_LEN + 8] = "";
        cfx_layer_spec_format(&L->spec, spec, sizeof spec);
        if (L->n_inputs > 1 || L->input[0] != i - 1)
            snprintf(from, sizeof from, " in=%s%s%s", source_key(m, L->input[0]),
                     L->n_inputs > 1 ? "," : "", L->n_inputs > 1 ? source_key(m, L->input[1]) : "");
        size_t used = strlen(spec);
        snprintf(spec + used, sizeof spec - used, "%s", from);
        if (L->flat_out)
            fprintf(out, "  %2d %-44s -> %d\n", i, spec, L->out_c);
        else
            fprintf(out, "  %2d %-44s -> %dx%dx%d\n", i, spec, L->out_c, L->out_h, L->out_w);
    }
}

double cfx_model_forward_flops(const cfx_model *m)
{
    double flops = 0.0;
    for (int i = 0; i < m->n_layers; i++)
        if (m->layers[i].kind->flops)
            flops += m->layers[i].kind->flops(&m->layers[i]);
    return flops;
}
