/* INI configuration: key table, parsing, validation and formatting. */
#include "cfx/config.h" /* defines: cfx_config, cfx_config_load, cfx_parse_layers */

#include <ctype.h>
#include <errno.h>
#include <ini.h>
#include <math.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

typedef enum { KEY_INT, KEY_LONG, KEY_U64, KEY_DOUBLE, KEY_BOOL, KEY_STRING, KEY_LAYERS } key_type;

typedef struct {
    const char *section;
    const char *name;
    key_type type;
    size_t offset;
    size_t size;       /* strings: buffer size */
    double min, max;   /* numbers: inclusive range */
    const char *choices; /* strings: '|'-separated allowed values, or NULL */
    const char *def;   /* default as text; NULL = required */
    const char *help;
} key_def;

#define FIELD(f) offsetof(cfx_config, f), sizeof(((cfx_config *)0)->f)

static const key_def KEYS[] = {
    {"data", "dir", KEY_STRING, FIELD(data_dir), 0, 0, NULL, NULL,
     "folder with data_batch_1..5.bin and test_batch.bin (CIFAR-10 binary version)"},
    {"data", "train_limit", KEY_LONG, FIELD(train_limit), 0, 1e9, NULL, "0",
     "use only the first K images of the training split (0 = all)"},
    {"data", "val_limit", KEY_LONG, FIELD(val_limit), 0, 1e9, NULL, "0",
     "use only the first K images of the validation split (0 = all)"},
    {"data", "test_limit", KEY_LONG, FIELD(test_limit), 0, 1e9, NULL, "0",
     "test only on the first K test images at the end of training (0 = all 10,000)"},
    {"data", "val_size", KEY_LONG, FIELD(val_size), 1, 49999, NULL, "5000",
     "images of the 50,000 held out for validation"},
    {"data", "split_seed", KEY_U64, FIELD(split_seed), 0, 0, NULL, "42",
     "seed of the fixed train/validation permutation"},
    {"data", "augment", KEY_BOOL, FIELD(augment), 0, 1, NULL, "true",
     "RandomCrop(32, padding data.crop_padding) and horizontal flip on training images"},
    {"data", "crop_padding", KEY_INT, FIELD(crop_padding), 0, 8, NULL, "4",
     "the crop's translation range, pixels each way (airbench: 2)"},
    {"data", "pad_mode", KEY_STRING, FIELD(pad_mode), 0, 0, "zero|reflect", "zero",
     "what the translation shows outside the image: black (zero) or the reflection"},
    {"data", "flip", KEY_STRING, FIELD(flip), 0, 0, "random|alternating|none", "random",
     "horizontal flips: random (p = 0.5), alternating (random in epoch 1, then each image "
     "flipped in alternate epochs, as airbench) or none"},
    {"train", "epochs", KEY_INT, FIELD(epochs), 1, 100000, NULL, NULL, "number of epochs"},
    {"train", "batch_size", KEY_INT, FIELD(batch_size), 1, 65536, NULL, NULL,
     "global mini-batch size, split across all ranks"},
    {"train", "seed", KEY_U64, FIELD(seed), 0, 0, NULL, "1",
     "seed of weight init, shuffling and augmentation"},
    {"train", "eval_batch_size", KEY_INT, FIELD(eval_batch_size), 1, 4096, NULL, "100",
     "batch size of validation and test passes"},
    {"train", "label_smoothing", KEY_DOUBLE, FIELD(label_smoothing), 0, 0.999, NULL, "0",
     "label smoothing of the training loss, as torch's cross_entropy(label_smoothing=...); "
     "validation and test report plain cross-entropy"},
    {"train", "tta", KEY_STRING, FIELD(tta), 0, 0, "none|flip|flip_translate", "none",
     "test-time augmentation of validation, test and --eval: the mean logits of the image "
     "and its mirror image (flip), also shifted by one pixel both ways with reflection "
     "(flip_translate, 6 views: as airbench, the unshifted pair weighs 1/4 each, the "
     "shifted ones 1/8); logs/metrics.h5 records it (attribute tta)"},
    {"train", "validation_tta", KEY_BOOL, FIELD(validation_tta), 0, 1, NULL, "true",
     "apply train.tta to the validation pass of every epoch too (false: plain validation, "
     "the views only for the final test and --eval; TTA multiplies a pass's cost by its views)"},
    {"train", "max_loss", KEY_DOUBLE, FIELD(max_loss), 1e-3, 1e300, NULL, "1000",
     "a step whose mean training loss exceeds this stops training as diverged, keeping the "
     "last good checkpoint (chance level is ln 10 = 2.3; an exploding run may stay finite)"},
    {"optim", "name", KEY_STRING, FIELD(optim_name), 0, 0, "adam|sgd", NULL,
     "optimizer: adam or sgd"},
    {"optim", "lr", KEY_DOUBLE, FIELD(lr), 0, 1e6, NULL, NULL, "learning rate (> 0)"},
    {"optim", "beta1", KEY_DOUBLE, FIELD(beta1), 0, 0.999999, NULL, "0.9", "Adam beta1"},
    {"optim", "beta2", KEY_DOUBLE, FIELD(beta2), 0, 0.99999999, NULL, "0.999", "Adam beta2"},
    {"optim", "eps", KEY_DOUBLE, FIELD(eps), 0, 1, NULL, "1e-8", "Adam epsilon"},
    {"optim", "momentum", KEY_DOUBLE, FIELD(momentum), 0, 0.999999, NULL, "0.9", "SGD momentum"},
    {"optim", "weight_decay", KEY_DOUBLE, FIELD(weight_decay), 0, 1, NULL, "0",
     "L2 penalty added to the gradient (as torch.optim)"},
    {"optim", "nesterov", KEY_BOOL, FIELD(nesterov), 0, 1, NULL, "false", "SGD Nesterov momentum"},
    {"optim", "decoupled_weight_decay", KEY_BOOL, FIELD(decoupled_weight_decay), 0, 1, NULL,
     "false",
     "weight decay decoupled from the gradient: every step multiplies the parameters by "
     "1 - lr x weight_decay (torch.optim.AdamW; for SGD the same rule) instead of adding "
     "weight_decay x param to the gradient (torch's weight_decay)"},
    {"optim", "schedule", KEY_STRING, FIELD(schedule), 0, 0, "constant|linear|cosine|step|onecycle",
     "constant",
     "learning rate per step: constant; linear or cosine decay to final_lr_factor x lr; step "
     "(x step_gamma every step_epochs epochs); onecycle (torch's OneCycleLR, max_lr = lr, "
     "rising for warmup_steps); logs/learning_rate.csv lists every step's"},
    {"optim", "warmup_steps", KEY_LONG, FIELD(warmup_steps), 0, 1e9, NULL, "0",
     "steps of linear warm-up from lr / warmup_steps to lr before the schedule (onecycle: "
     "the rising phase, default 30 % of the run)"},
    {"optim", "warmup_start_factor", KEY_DOUBLE, FIELD(warmup_start_factor), 0, 1, NULL, "0",
     "where the warm-up starts, as a fraction of lr: step k of w has lr x (s + (1 - s) (k + 1) "
     "/ w) (airbench: 0.2)"},
    {"optim", "final_lr_factor", KEY_DOUBLE, FIELD(final_lr_factor), 0, 1, NULL, "0",
     "linear and cosine: the learning rate of the last step, as a fraction of optim.lr"},
    {"optim", "step_epochs", KEY_DOUBLE, FIELD(step_epochs), 1e-9, 1e9, NULL, "30",
     "step schedule: epochs between decays"},
    {"optim", "step_gamma", KEY_DOUBLE, FIELD(step_gamma), 0, 1, NULL, "0.1",
     "step schedule: factor of each decay"},
    {"optim", "lookahead_steps", KEY_LONG, FIELD(lookahead_steps), 0, 1e9, NULL, "0",
     "lookahead weight averaging (airbench): every this many steps the average moves toward "
     "the weights, avg += (1 - a) (w - avg), and the weights are set to it, with "
     "a = lookahead_decay^lookahead_steps x (step / total steps)^3; validation, checkpoints "
     "(/model) and the test use the average; 0 = off"},
    {"optim", "lookahead_decay", KEY_DOUBLE, FIELD(lookahead_decay), 0, 1, NULL, "0.95",
     "lookahead: the per-step decay of the average (airbench: 0.95)"},
    {"model", "layers", KEY_LAYERS, 0, 0, 0, 0, NULL, NULL,
     "the layers, one per line or ';'-separated, from these types and options"},
    {"output", "dir", KEY_STRING, FIELD(output_dir), 0, 0, NULL, NULL,
     "run directory: logs/ and checkpoints/ are written here"},
    {"dist", "reduction", KEY_STRING, FIELD(reduction), 0, 0, "exact|float", "exact",
     "exact: every global batch is cut into chunks of dist.chunk images, ranks own whole "
     "chunks and every sum over the batch is exact (int64 fixed point), so the model is "
     "bitwise the same for any rank count; float: one float allreduce of each rank's slice "
     "(order depends on the rank count)"},
    {"dist", "chunk", KEY_INT, FIELD(chunk), 1, 65536, NULL, "16",
     "images per chunk of the exact reduction: the unit of work a rank owns; larger chunks "
     "cost less (fewer sums, larger kernels), smaller ones share a batch among more ranks "
     "(at most batch_size / chunk ranks have work)"},
    {"dist", "overlap", KEY_BOOL, FIELD(overlap), 0, 1, NULL, "false",
     "exact reduction: sum the gradients in buckets while the backward pass runs (a "
     "communication thread per rank, MPI_THREAD_MULTIPLE), instead of all at once after it; "
     "the same bits either way. Pays on slow links for networks without synchronised "
     "BatchNorm, whose batch sums in the backward pass would queue behind the buckets "
     "(README, Scaling)"},
    {"dist", "bucket_mb", KEY_DOUBLE, FIELD(bucket_mb), 0, 1e6, NULL, "1",
     "dist.overlap: a bucket is sent once the layers finished since the last one hold this "
     "many MB of gradients (floats), cut at layer boundaries; 0 = one bucket per layer"},
    {"runtime", "blas_threads", KEY_INT, FIELD(blas_threads), 0, 1024, NULL, "0",
     "threads per rank (0 = cores of the node / ranks on the node); the layers split their "
     "work over them in pieces that do not depend on the count, so any count gives the same "
     "bits"},
};
#define N_KEYS (sizeof KEYS / sizeof KEYS[0])

/* ---- helpers ---------------------------------------------------------- */

static int edit_distance(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b);
    if (la > 63 || lb > 63)
        return 99;
    int d[64][64];
    for (size_t i = 0; i <= la; i++)
        d[i][0] = (int)i;
    for (size_t j = 0; j <= lb; j++)
        d[0][j] = (int)j;
    for (size_t i = 1; i <= la; i++)
        for (size_t j = 1; j <= lb; j++) {
            int sub = d[i - 1][j - 1] + (a[i - 1] != b[j - 1]);
            int del = d[i - 1][j] + 1, ins = d[i][j - 1] + 1;
            d[i][j] = sub < del ? (sub < ins ? sub : ins) : (del < ins ? del : ins);
        }
    return d[la][lb];
}

static const key_def *find_key(const char *section, const char *name)
{
    for (size_t i = 0; i < N_KEYS; i++)
        if (strcmp(KEYS[i].section, section) == 0 && strcmp(KEYS[i].name, name) == 0)
            return &KEYS[i];
    return NULL;
}

/* Suggests the closest valid key: a key of the same name in another section
 * ("train.lr" -> "optim.lr"; "x.dir" -> "data.dir" or "output.dir"), else the
 * nearest full name by edit distance if it is close enough. */
static int unknown_key(const char *where, const char *section, const char *name, cfx_error *err)
{
    char full[160], best[320] = "";
    snprintf(full, sizeof full, "%s.%s", section, name);
    size_t same_name[N_KEYS], n_same = 0;
    for (size_t i = 0; i < N_KEYS; i++)
        if (strcmp(KEYS[i].name, name) == 0)
            same_name[n_same++] = i;
    if (n_same > 0) {
        size_t len = 0;
        for (size_t j = 0; j < n_same && len < sizeof best; j++) {
            const key_def *k = &KEYS[same_name[j]];
            const char *sep = j == 0 ? "" : j + 1 == n_same ? "' or '" : "', '";
            len += (size_t)snprintf(best + len, sizeof best - len, "%s%s.%s", sep, k->section,
                                    k->name);
        }
        return cfx_fail(err, "%sunknown config key '%s' (did you mean '%s'?)", where, full, best);
    }
    int best_d = 99;
    for (size_t i = 0; i < N_KEYS; i++) {
        char cand[160];
        snprintf(cand, sizeof cand, "%s.%s", KEYS[i].section, KEYS[i].name);
        int d = edit_distance(full, cand);
        if (d < best_d) {
            best_d = d;
            snprintf(best, sizeof best, "%s", cand);
        }
    }
    if (best_d <= 4)
        return cfx_fail(err, "%sunknown config key '%s' (did you mean '%s'?)", where, full, best);
    return cfx_fail(err, "%sunknown config key '%s'", where, full);
}

static char *trim(char *s)
{
    while (isspace((unsigned char)*s))
        s++;
    char *e = s + strlen(s);
    while (e > s && isspace((unsigned char)e[-1]))
        *--e = '\0';
    return s;
}

static int parse_long(const char *text, long *out)
{
    char *end;
    errno = 0;
    long v = strtol(text, &end, 10);
    if (errno || end == text || *end != '\0')
        return -1;
    *out = v;
    return 0;
}

/* ---- setting values ----------------------------------------------------- */

/* A string key's value: not empty, no ';', within its size and, where the
 * key lists its choices, one of them. */
static int set_string(char *field, const key_def *k, const char *name, const char *v,
                      cfx_error *err)
{
    if (*v == '\0')
        return cfx_fail(err, "%s: empty value", name);
    /* The effective config is written back as INI (checkpoints, config
     * copies), where ';' may start a comment: it would not read back. */
    if (strchr(v, ';'))
        return cfx_fail(err, "%s: '%s' contains ';', which INI files read as a comment", name, v);
    if (strlen(v) >= k->size)
        return cfx_fail(err, "%s: value longer than %zu characters", name, k->size - 1);
    if (k->choices) {
        char opts[128];
        snprintf(opts, sizeof opts, "%s", k->choices);
        int ok = 0;
        char *save = NULL;
        for (char *c = strtok_r(opts, "|", &save); c; c = strtok_r(NULL, "|", &save))
            ok |= strcmp(c, v) == 0;
        if (!ok)
            return cfx_fail(err, "%s: '%s' is not one of %s", name, v, k->choices);
    }
    strcpy(field, v);
    return 0;
}

static int set_value(cfx_config *cfg, const key_def *k, const char *raw, cfx_error *err)
{
    char buf[4096];
    snprintf(buf, sizeof buf, "%s", raw);
    char *v = trim(buf);
    char *field = (char *)cfg + k->offset;
    char name[96];
    snprintf(name, sizeof name, "%s.%s", k->section, k->name);
    switch (k->type) {
    case KEY_INT:
    case KEY_LONG: {
        long x;
        if (parse_long(v, &x) != 0)
            return cfx_fail(err, "%s: '%s' is not an integer", name, v);
        if (x < (long)k->min || x > (long)k->max)
            return cfx_fail(err, "%s: %ld is out of range [%ld, %ld]", name, x, (long)k->min,
                            (long)k->max);
        if (k->type == KEY_INT)
            *(int *)field = (int)x;
        else
            *(long *)field = x;
        return 0;
    }
    case KEY_U64: {
        char *end;
        errno = 0;
        unsigned long long x = strtoull(v, &end, 10);
        if (errno || end == v || *end != '\0' || v[0] == '-')
            return cfx_fail(err, "%s: '%s' is not a non-negative integer", name, v);
        *(uint64_t *)field = (uint64_t)x;
        return 0;
    }
    case KEY_DOUBLE: {
        char *end;
        errno = 0;
        double x = strtod(v, &end);
        if (errno || end == v || *end != '\0' || !isfinite(x))
            return cfx_fail(err, "%s: '%s' is not a number", name, v);
        int lr_like = strcmp(k->name, "lr") == 0;
        if (x < k->min || x > k->max || (lr_like && x <= 0))
            return cfx_fail(err, "%s: %g is out of range %s%g, %g]", name, x,
                            lr_like ? "(" : "[", k->min, k->max);
        *(double *)field = x;
        return 0;
    }
    case KEY_BOOL:
        if (!strcmp(v, "true") || !strcmp(v, "1") || !strcmp(v, "yes") || !strcmp(v, "on"))
            *(int *)field = 1;
        else if (!strcmp(v, "false") || !strcmp(v, "0") || !strcmp(v, "no") || !strcmp(v, "off"))
            *(int *)field = 0;
        else
            return cfx_fail(err, "%s: '%s' is not a boolean (true or false)", name, v);
        return 0;
    case KEY_STRING:
        return set_string(field, k, name, v, err);
    case KEY_LAYERS:
        return cfx_parse_layers(v, cfg->layers, &cfg->n_layers, err);
    }
    return cfx_fail(err, "%s: internal error: unknown key type", name);
}

void cfx_config_defaults(cfx_config *cfg)
{
    memset(cfg, 0, sizeof *cfg);
    for (size_t i = 0; i < N_KEYS; i++)
        if (KEYS[i].def)
            set_value(cfg, &KEYS[i], KEYS[i].def, NULL);
}

int cfx_config_set(cfx_config *cfg, const char *dotted, const char *value, cfx_error *err)
{
    char section[64], name[64];
    const char *dot = strchr(dotted, '.');
    if (!dot || dot == dotted || (size_t)(dot - dotted) >= sizeof section ||
        strlen(dot + 1) >= sizeof name || dot[1] == '\0')
        return cfx_fail(err, "--set %s: expected section.key=value", dotted);
    memcpy(section, dotted, (size_t)(dot - dotted));
    section[dot - dotted] = '\0';
    strcpy(name, dot + 1);
    const key_def *k = find_key(section, name);
    if (!k)
        return unknown_key("--set: ", section, name, err);
    return set_value(cfg, k, value, err);
}

/* ---- reading a file ----------------------------------------------------- */

typedef struct {
    cfx_config *cfg;
    const char *path;
    FILE *file;
    int lineno;            /* line last read; this libinih passes no line numbers */
    int indented;          /* that line starts with blanks: a continuation line */
    unsigned char seen[N_KEYS];
    const key_def *prev;   /* key of the previous handler call, for continuations */
    char *layers_text;     /* model.layers accumulates over continuation lines */
    int failed;
    int fail_line;         /* line of the handler's error */
    int long_line;         /* a line too long for libinih's buffer: parsing stopped there */
    int max_len;           /* the longest line libinih reads whole */
    cfx_error *err;
} parse_ctx;

static char *read_line(char *str, int num, void *stream)
{
    parse_ctx *ctx = stream;
    char *line = fgets(str, num, ctx->file);
    if (line) {
        ctx->lineno++;
        /* libinih would read the rest of a longer line as a line of its own. */
        size_t len = strlen(line);
        if (num > 2 && len == (size_t)num - 1 && line[len - 1] != '\n') {
            int c = getc(ctx->file);
            if (c != EOF) {
                ungetc(c, ctx->file);
                ctx->long_line = ctx->lineno;
                ctx->max_len = num - 2;
                return NULL;
            }
        }
        const char *s = line;
        while (isspace((unsigned char)*s))
            s++;
        ctx->indented = s > line && *s;
        if (*s == '[' && s == line)
            ctx->prev = NULL; /* a new section ends any multi-line value */
    }
    return line;
}

static int on_ini_entry(void *user, const char *section, const char *name, const char *value)
{
    parse_ctx *ctx = user;
    int lineno = ctx->lineno;
    if (ctx->failed)
        return 0;
    char where[CFX_PATH_LEN + 32];
    snprintf(where, sizeof where, "%s:%d: ", ctx->path, lineno);
    const key_def *k = find_key(section, name);
    if (!k) {
        unknown_key(where, section, name, ctx->err);
        ctx->failed = 1;
        ctx->fail_line = lineno;
        return 0;
    }
    size_t idx = (size_t)(k - KEYS);
    if (k->type == KEY_LAYERS && ctx->seen[idx] && !(ctx->prev == k && ctx->indented)) {
        cfx_fail(ctx->err, "%s%s.%s is given twice", where, section, name);
        ctx->failed = 1;
        ctx->fail_line = lineno;
        return 0;
    }
    if (k->type == KEY_LAYERS) {
        /* The first line of the key starts a new list; continuation lines add to it. */
        size_t old = (ctx->prev == k && ctx->layers_text) ? strlen(ctx->layers_text) : 0;
        char *grown = realloc(old ? ctx->layers_text : NULL, old + strlen(value) + 2);
        if (!grown)
            abort();
        if (!old) {
            free(ctx->layers_text);
            grown[0] = '\0';
        }
        strcat(grown, "\n");
        strcat(grown, value);
        ctx->layers_text = grown;
    } else {
        if (ctx->seen[idx]) {
            cfx_fail(ctx->err, "%s%s.%s is given twice", where, section, name);
            ctx->failed = 1;
            ctx->fail_line = lineno;
            return 0;
        }
        cfx_error e;
        if (set_value(ctx->cfg, k, value, &e) != 0) {
            cfx_fail(ctx->err, "%s%s", where, e.msg);
            ctx->failed = 1;
            ctx->fail_line = lineno;
            return 0;
        }
    }
    ctx->seen[idx] = 1;
    ctx->prev = k;
    return 1;
}

int cfx_config_load(cfx_config *cfg, const char *path, int n_overrides,
                    const char *const *overrides, cfx_error *err)
{
    cfx_config_defaults(cfg);
    parse_ctx ctx = {.cfg = cfg, .path = path, .err = err};
    ctx.file = fopen(path, "r");
    if (!ctx.file)
        return cfx_fail(err, "%s: cannot open config: %s", path, strerror(errno));
    int rc = ini_parse_stream(read_line, &ctx, on_ini_entry, &ctx);
    fclose(ctx.file);
    /* rc is the first bad line; report the handler's error only if it was that one. */
    if (ctx.failed && (rc == 0 || rc >= ctx.fail_line)) {
        free(ctx.layers_text);
        return -1;
    }
    if (rc != 0) {
        free(ctx.layers_text);
        return cfx_fail(err, "%s:%d: syntax error (expected 'key = value' or '[section]', "
                             "lines of at most %d characters)", path, rc, INI_MAX_LINE - 2);
    }
    if (ctx.long_line) {
        free(ctx.layers_text);
        return cfx_fail(err, "%s:%d: line longer than %d characters", path, ctx.long_line,
                        ctx.max_len);
    }
    if (ctx.layers_text) {
        cfx_error e;
        rc = cfx_parse_layers(ctx.layers_text, cfg->layers, &cfg->n_layers, &e);
        free(ctx.layers_text);
        if (rc != 0)
            return cfx_fail(err, "%s: %s", path, e.msg);
    }
    for (int i = 0; i < n_overrides; i++) {
        const char *eq = strchr(overrides[i], '=');
        if (!eq)
            return cfx_fail(err, "--set %s: expected section.key=value", overrides[i]);
        char key[160];
        snprintf(key, sizeof key, "%.*s", (int)(eq - overrides[i]), overrides[i]);
        char *name = trim(key);
        if (cfx_config_set(cfg, name, eq + 1, err) != 0)
            return -1;
        const char *dot = strchr(name, '.');
        if (dot) {
            char section[64];
            snprintf(section, sizeof section, "%.*s", (int)(dot - name), name);
            const key_def *k = find_key(section, dot + 1);
            if (k)
                ctx.seen[k - KEYS] = 1;
        }
    }
    for (size_t i = 0; i < N_KEYS; i++)
        if (!KEYS[i].def && !ctx.seen[i])
            return cfx_fail(err, "%s: missing required key %s.%s (%s)", path, KEYS[i].section,
                            KEYS[i].name, KEYS[i].help);
    return 0;
}

/* ---- writing ------------------------------------------------------------ */

static void append(char **buf, size_t *len, size_t *cap, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void append(char **buf, size_t *len, size_t *cap, const char *fmt, ...)
{
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(*buf + *len, *cap - *len, fmt, ap);
        va_end(ap);
        if (n >= 0 && (size_t)n < *cap - *len) {
            *len += (size_t)n;
            return;
        }
        *cap = *cap * 2 + (size_t)(n > 0 ? n : 0);
        char *grown = realloc(*buf, *cap);
        if (!grown)
            abort();
        *buf = grown;
    }
}

static void format_value(const cfx_config *cfg, const key_def *k, char **buf, size_t *len,
                         size_t *cap)
{
    const char *field = (const char *)cfg + k->offset;
    switch (k->type) {
    case KEY_INT: append(buf, len, cap, "%d", *(const int *)field); break;
    case KEY_LONG: append(buf, len, cap, "%ld", *(const long *)field); break;
    case KEY_U64:
        append(buf, len, cap, "%llu", (unsigned long long)*(const uint64_t *)field);
        break;
    case KEY_DOUBLE: {
        /* The shortest text that reads back as the same double ("0.003",
         * not "0.0030000000000000001"). */
        double x = *(const double *)field;
        char text[32];
        for (int digits = 6; digits <= 17; digits++) {
            snprintf(text, sizeof text, "%.*g", digits, x);
            if (strtod(text, NULL) == x)
                break;
        }
        append(buf, len, cap, "%s", text);
        break;
    }
    case KEY_BOOL: append(buf, len, cap, "%s", *(const int *)field ? "true" : "false"); break;
    case KEY_STRING: append(buf, len, cap, "%s", field); break;
    case KEY_LAYERS:
        for (int i = 0; i < cfg->n_layers; i++) {
            char layer[128];
            cfx_layer_spec_format(&cfg->layers[i], layer, sizeof layer);
            append(buf, len, cap, "%s%s", i ? "\n    " : "", layer);
        }
        break;
    }
}

/* One comment line per layer type, from the layer table. */
static void append_layer_help(char **buf, size_t *len, size_t *cap)
{
    char help[4096];
    cfx_layer_kinds_help(help, sizeof help);
    for (char *save = NULL, *line = strtok_r(help, "\n", &save); line;
         line = strtok_r(NULL, "\n", &save))
        append(buf, len, cap, "#   %s\n", line);
    append(buf, len, cap,
           "#   every layer also takes %s: its name (checkpoint keys are "
           "<name>.weight, ...; unnamed layers use their index), the layers "
           "it reads (names, or -k for k entries back; default: the previous), "
           "learning-rate and weight-decay multipliers of its parameters, and "
           "whether they train (trainable=bias: only the bias; the weight keeps "
           "its initial values; train_epochs=N: only in the first N epochs, "
           "as airbench's whitening bias)\n",
           CFX_COMMON_OPTIONS);
}

static char *write_ini(const cfx_config *cfg, int reference)
{
    size_t len = 0, cap = 2048;
    char *buf = cfx_malloc(cap);
    buf[0] = '\0';
    if (reference)
        append(&buf, &len, &cap,
               "# Every cfx-train config key with its default and meaning.\n"
               "# Keys marked (required) have no default. Override any key on the command\n"
               "# line with --set section.key=value.\n");
    const char *section = "";
    for (size_t i = 0; i < N_KEYS; i++) {
        const key_def *k = &KEYS[i];
        if (strcmp(section, k->section) != 0) {
            section = k->section;
            append(&buf, &len, &cap, "%s[%s]\n", len ? "\n" : "", section);
        }
        if (reference) {
            append(&buf, &len, &cap, "# %s%s\n", k->help, k->def ? "" : " (required)");
            if (k->type == KEY_LAYERS)
                append_layer_help(&buf, &len, &cap);
            if (!k->def) {
                append(&buf, &len, &cap, "# %s =\n", k->name);
                continue;
            }
        }
        append(&buf, &len, &cap, "%s = ", k->name);
        format_value(cfg, k, &buf, &len, &cap);
        append(&buf, &len, &cap, "\n");
    }
    return buf;
}

char *cfx_config_to_ini(const cfx_config *cfg) { return write_ini(cfg, 0); }

char *cfx_config_reference(void)
{
    cfx_config cfg;
    cfx_config_defaults(&cfg);
    return write_ini(&cfg, 1);
}
