/* The layer table, and the parsing and printing of layer lists from it.
 * A new layer type: a file src/nn/<type>.c defining its cfx_layer_kind, and
 * one row below. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "cfx/layers.h" /* defines: cfx_layer_kind, cfx_layer_spec, cfx_parse_layers */

extern const cfx_layer_kind cfx_kind_conv2d, cfx_kind_batchnorm2d, cfx_kind_relu, cfx_kind_gelu,
    cfx_kind_maxpool2d, cfx_kind_avgpool, cfx_kind_add, cfx_kind_flatten, cfx_kind_linear,
    cfx_kind_basicblock;

const cfx_layer_kind *const cfx_layer_kinds[] = {
    &cfx_kind_conv2d,    &cfx_kind_batchnorm2d, &cfx_kind_relu, &cfx_kind_gelu,
    &cfx_kind_maxpool2d, &cfx_kind_avgpool,     &cfx_kind_add,  &cfx_kind_flatten,
    &cfx_kind_linear,    &cfx_kind_basicblock,
};
const int cfx_n_layer_kinds = (int)(sizeof cfx_layer_kinds / sizeof cfx_layer_kinds[0]);

const cfx_layer_kind *cfx_layer_kind_find(const char *name)
{
    for (int i = 0; i < cfx_n_layer_kinds; i++)
        if (strcmp(cfx_layer_kinds[i]->name, name) == 0)
            return cfx_layer_kinds[i];
    return NULL;
}

/* ---- option fields ---------------------------------------------------- */

static double option_get(const cfx_layer_spec *s, const cfx_layer_option *o)
{
    const char *f = (const char *)s + o->offset;
    return o->type == CFX_OPT_REAL ? *(const double *)f : (double)*(const int *)f;
}

static void option_set(cfx_layer_spec *s, const cfx_layer_option *o, double v)
{
    char *f = (char *)s + o->offset;
    if (o->type == CFX_OPT_REAL)
        *(double *)f = v;
    else
        *(int *)f = (int)v;
}

void cfx_layer_spec_default(cfx_layer_spec *s, const cfx_layer_kind *kind)
{
    memset(s, 0, sizeof *s);
    s->kind = kind;
    s->lr_scale = s->decay_scale = 1.0;
    for (int i = 0; i < kind->n_options; i++)
        option_set(s, &kind->options[i], kind->options[i].def);
}

/* ---- parsing ------------------------------------------------------------ */

static int valid_name(const char *v)
{
    if (!*v || strlen(v) >= CFX_NAME_LEN || *v == '-' || *v == '@')
        return 0;
    for (const char *p = v; *p; p++)
        if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
              *p == '_' || *p == '.'))
            return 0;
    return 1;
}

/* in=A or in=A,B: layer names or -k (k entries back). */
static int parse_inputs(cfx_layer_spec *s, char *v, cfx_error *err)
{
    s->n_inputs = 0;
    for (char *save = NULL, *tok = strtok_r(v, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        char *end;
        int relative = tok[0] == '-' && strtol(tok + 1, &end, 10) > 0 && *end == '\0';
        if (s->n_inputs == CFX_MAX_INPUTS || !(relative || valid_name(tok)))
            return cfx_fail(err,
                            "model.layers: %s: bad option 'in=%s' (expected in=A or in=A,B "
                            "with layer names or -k)",
                            s->kind->name, tok);
        snprintf(s->inputs[s->n_inputs++], CFX_NAME_LEN, "%s", tok);
    }
    if (s->n_inputs == 0)
        return cfx_fail(err, "model.layers: %s: in= names no layer", s->kind->name);
    return 0;
}

static int parse_number(const cfx_layer_option *o, const char *v, double *out)
{
    char *end;
    errno = 0;
    if (o->type == CFX_OPT_BOOL) {
        if (!strcmp(v, "true") || !strcmp(v, "1"))
            return *out = 1, 0;
        if (!strcmp(v, "false") || !strcmp(v, "0"))
            return *out = 0, 0;
        return -1;
    }
    if (o->type == CFX_OPT_INT) {
        long x = strtol(v, &end, 10);
        if (errno || end == v || *end || x < 0 || x > o->max)
            return -1;
        return *out = (double)x, 0;
    }
    double x = strtod(v, &end);
    if (errno || end == v || *end || !(x >= o->min && x <= o->max))
        return -1;
    return *out = x, 0;
}

/* lr_scale=X, decay_scale=X (>= 0), trainable=true|false|bias or train_epochs=N. */
static int parse_group_option(cfx_layer_spec *s, const char *opt, const char *v, cfx_error *err)
{
    if (!strcmp(opt, "trainable")) {
        if (strcmp(v, "true") && strcmp(v, "false") && strcmp(v, "bias"))
            return cfx_fail(err, "model.layers: %s: bad option 'trainable=%s' (expected "
                                 "trainable=true|false|bias)", s->kind->name, v);
        if (!strcmp(v, "false"))
            s->lr_scale = s->decay_scale = 0.0;
        s->bias_only = !strcmp(v, "bias");
        return 0;
    }
    char *end;
    errno = 0;
    if (!strcmp(opt, "train_epochs")) {
        long n = strtol(v, &end, 10);
        if (errno || end == v || *end || n < 0 || n > 1000000)
            return cfx_fail(err,
                            "model.layers: %s: bad option 'train_epochs=%s' (expected an "
                            "epoch count 0..1000000; 0 = every epoch)",
                            s->kind->name, v);
        s->train_epochs = (int)n;
        return 0;
    }
    double x = strtod(v, &end);
    if (errno || end == v || *end || !(x >= 0.0 && x <= 1e6))
        return cfx_fail(err, "model.layers: %s: bad option '%s=%s' (expected a number 0..1e6)",
                        s->kind->name, opt, v);
    *(!strcmp(opt, "lr_scale") ? &s->lr_scale : &s->decay_scale) = x;
    return 0;
}

/* One option "key=value" of spec s. */
static int parse_option(cfx_layer_spec *s, char *opt, unsigned *given, cfx_error *err)
{
    const cfx_layer_kind *k = s->kind;
    char *eq = strchr(opt, '=');
    if (!eq)
        return cfx_fail(err, "model.layers: %s: bad option '%s' (expected name=value)", k->name,
                        opt);
    *eq = '\0';
    char *v = eq + 1;
    if (!strcmp(opt, "name")) {
        if (!valid_name(v))
            return cfx_fail(err,
                            "model.layers: %s: bad option 'name=%s' (letters, digits, '_' "
                            "and '.', under %d characters)",
                            k->name, v, CFX_NAME_LEN);
        snprintf(s->name, sizeof s->name, "%s", v);
        return 0;
    }
    if (!strcmp(opt, "in"))
        return parse_inputs(s, v, err);
    if (!strcmp(opt, "lr_scale") || !strcmp(opt, "decay_scale") || !strcmp(opt, "trainable") ||
        !strcmp(opt, "train_epochs"))
        return parse_group_option(s, opt, v, err);
    for (int i = 0; i < k->n_options; i++) {
        const cfx_layer_option *o = &k->options[i];
        if (strcmp(opt, o->name) != 0)
            continue;
        double x;
        if (parse_number(o, v, &x) != 0)
            return cfx_fail(err, "model.layers: %s: bad option '%s=%s' (expected %s=%s)", k->name,
                            opt, v, o->name,
                            o->type == CFX_OPT_BOOL  ? "true|false"
                            : o->type == CFX_OPT_INT ? "integer"
                                                     : "number");
        option_set(s, o, x);
        *given |= 1u << i;
        return 0;
    }
    return cfx_fail(err, "model.layers: %s has no option '%s'", k->name, opt);
}

static int parse_layer(char *item, cfx_layer_spec *s, cfx_error *err)
{
    char *save = NULL;
    char *type = strtok_r(item, " \t", &save);
    const cfx_layer_kind *k = cfx_layer_kind_find(type);
    if (!k) {
        char names[256];
        size_t used = 0;
        for (int i = 0; i < cfx_n_layer_kinds; i++)
            used += (size_t)snprintf(names + used, sizeof names - used, "%s%s", i ? ", " : "",
                                     cfx_layer_kinds[i]->name);
        return cfx_fail(err, "model.layers: unknown layer type '%s' (expected one of: %s)", type,
                        names);
    }
    cfx_layer_spec_default(s, k);
    unsigned given = 0;
    for (char *opt; (opt = strtok_r(NULL, " \t", &save));)
        if (parse_option(s, opt, &given, err) != 0)
            return -1;
    if (k->finish && k->finish(s, err) != 0)
        return -1;
    for (int i = 0; i < k->n_options; i++) {
        const cfx_layer_option *o = &k->options[i];
        if (o->type != CFX_OPT_INT || option_get(s, o) >= o->min)
            continue;
        if (o->flags & CFX_OPT_REQUIRED)
            return cfx_fail(err, "model.layers: %s needs %s=%s with %s >= %g", k->name, o->name,
                            o->placeholder, o->placeholder, o->min);
        return cfx_fail(err, "model.layers: %s needs %s >= %g", k->name, o->name, o->min);
    }
    if (s->n_inputs && s->n_inputs != k->n_inputs)
        return cfx_fail(err, "model.layers: %s takes %d input%s, in= names %d", k->name,
                        k->n_inputs, k->n_inputs == 1 ? "" : "s", s->n_inputs);
    return 0;
}

static char *trim(char *s)
{
    while (*s == ' ' || *s == '\t' || *s == '\r')
        s++;
    size_t n = strlen(s);
    while (n > 0 && (s[n - 1] == ' ' || s[n - 1] == '\t' || s[n - 1] == '\r'))
        s[--n] = '\0';
    return s;
}

int cfx_parse_layers(const char *text, cfx_layer_spec *layers, int *n_layers, cfx_error *err)
{
    char *copy = cfx_malloc(strlen(text) + 1);
    strcpy(copy, text);
    int n = 0, rc = 0;
    char *save = NULL;
    for (char *item = strtok_r(copy, ";\n", &save); item; item = strtok_r(NULL, ";\n", &save)) {
        item = trim(item);
        if (*item == '\0')
            continue;
        if (n == CFX_MAX_LAYERS) {
            rc = cfx_fail(err, "model.layers: more than %d layers", CFX_MAX_LAYERS);
            break;
        }
        if ((rc = parse_layer(item, &layers[n], err)) != 0)
            break;
        n++;
    }
    free(copy);
    if (rc == 0 && n == 0)
        rc = cfx_fail(err, "model.layers: the layer list is empty");
    if (rc == 0)
        *n_layers = n;
    return rc;
}

/* ---- printing ------------------------------------------------------------ */

static void append(char *buf, size_t len, size_t *used, const char *fmt, const char *a,
                   const char *b)
{
    if (*used < len)
        *used += (size_t)snprintf(buf + *used, len - *used, fmt, a, b);
}

/* The shortest text that reads back as the same double. */
static void format_real(char *buf, size_t len, double x)
{
    for (int digits = 6; digits <= 17; digits++) {
        snprintf(buf, len, "%.*g", digits, x);
        if (strtod(buf, NULL) == x)
            return;
    }
}

void cfx_layer_spec_format(const cfx_layer_spec *s, char *buf, size_t len)
{
    const cfx_layer_kind *k = s->kind;
    size_t used = 0;
    buf[0] = '\0';
    append(buf, len, &used, "%s%s", k->name, "");
    for (int i = 0; i < k->n_options; i++) {
        const cfx_layer_option *o = &k->options[i];
        double v = option_get(s, o);
        if (v == o->def && !(o->flags & CFX_OPT_SHOWN))
            continue;
        char value[32];
        if (o->type == CFX_OPT_BOOL)
            snprintf(value, sizeof value, "%s", v != 0.0 ? "true" : "false");
        else if (o->type == CFX_OPT_INT)
            snprintf(value, sizeof value, "%d", (int)v);
        else
            format_real(value, sizeof value, v);
        append(buf, len, &used, " %s=", o->name, "");
        append(buf, len, &used, "%s%s", value, "");
    }
    char num[32];
    if (s->lr_scale == 0.0 && s->decay_scale == 0.0) {
        append(buf, len, &used, " trainable=false%s%s", "", "");
    } else {
        if (s->bias_only)
            append(buf, len, &used, " trainable=bias%s%s", "", "");
        if (s->lr_scale != 1.0) {
            format_real(num, sizeof num, s->lr_scale);
            append(buf, len, &used, " lr_scale=%s%s", num, "");
        }
        if (s->decay_scale != 1.0) {
            format_real(num, sizeof num, s->decay_scale);
            append(buf, len, &used, " decay_scale=%s%s", num, "");
        }
        if (s->train_epochs) {
            snprintf(num, sizeof num, "%d", s->train_epochs);
            append(buf, len, &used, " train_epochs=%s%s", num, "");
        }
    }
    if (s->name[0])
        append(buf, len, &used, " name=%s%s", s->name, "");
    for (int i = 0; i < s->n_inputs; i++)
        append(buf, len, &used, "%s%s", i ? "," : " in=", s->inputs[i]);
}

void cfx_layer_kinds_help(char *buf, size_t len)
{
    size_t used = 0;
    if (len)
        buf[0] = '\0';
    for (int i = 0; i < cfx_n_layer_kinds && len; i++) {
        const cfx_layer_kind *k = cfx_layer_kinds[i];
        append(buf, len, &used, "%s%s", i ? "\n" : "", k->name);
        for (int j = 0; j < k->n_options; j++) {
            const cfx_layer_option *o = &k->options[j];
            const char *ph = o->placeholder            ? o->placeholder
                             : o->type == CFX_OPT_BOOL ? "true|false"
                                                       : "X";
            append(buf, len, &used, (o->flags & CFX_OPT_REQUIRED) ? " %s=%s" : " [%s=%s]", o->name,
                   ph);
        }
        append(buf, len, &used, ": %s%s", k->help, "");
    }
}
