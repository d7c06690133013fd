/* The sequential model: shapes, parameter layout, init, forward, backward. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cfx/nn.h"  /* defines: cfx_model, cfx_model_forward, cfx_model_backward */
#include "cfx/rng.h" /* defines: cfx_rng */

const char *cfx_layer_type_name(cfx_layer_type t)
{
    switch (t) {
    case CFX_LAYER_CONV2D: return "Conv2d";
    case CFX_LAYER_RELU: return "ReLU";
    case CFX_LAYER_MAXPOOL2D: return "MaxPool2d";
    case CFX_LAYER_FLATTEN: return "Flatten";
    case CFX_LAYER_LINEAR: return "Linear";
    }
    return "?";
}

void cfx_param_name(char *buf, size_t len, int layer, int is_bias)
{
    snprintf(buf, len, "%d.%s", layer, is_bias ? "bias" : "weight");
}

int cfx_model_create(cfx_model *m, const cfx_layer_spec *specs, int n_specs, int in_c, int in_h,
                     int in_w, int max_batch, int flags, cfx_error *err)
{
    memset(m, 0, sizeof *m);
    if (n_specs < 1 || n_specs > CFX_MAX_LAYERS)
        return cfx_fail(err, "model.layers: %d layers (1..%d allowed)", n_specs, CFX_MAX_LAYERS);
    if (max_batch < 1)
        return cfx_fail(err, "model: batch size %d must be at least 1", max_batch);
    m->n_layers = n_specs;
    m->in_c = in_c, m->in_h = in_h, m->in_w = in_w;
    m->max_batch = max_batch;
    m->flags = flags;
    const int input_grad = flags & CFX_MODEL_INPUT_GRAD;
    int c = in_c, h = in_h, w = in_w, flat = 0;
    size_t offset = 0, col_max = 0;
    for (int i = 0; i < n_specs; i++) {
        cfx_layer *L = &m->layers[i];
        const cfx_layer_spec *s = &specs[i];
        L->spec = *s;
        L->in_c = c, L->in_h = h, L->in_w = w;
        const char *tn = cfx_layer_type_name(s->type);
        switch (s->type) {
        case CFX_LAYER_CONV2D:
        case CFX_LAYER_MAXPOOL2D: {
            if (flat)
                return cfx_fail(err, "model.layers: layer %d (%s) needs a spatial input but "
                                     "follows flatten/linear", i, tn);
            int pad = s->type == CFX_LAYER_CONV2D ? s->padding : 0;
            int oh = cfx_window_out(h, s->kernel, s->stride, pad);
            int ow = cfx_window_out(w, s->kernel, s->stride, pad);
            if (s->kernel > h + 2 * pad || s->kernel > w + 2 * pad || oh < 1 || ow < 1)
                return cfx_fail(err, "model.layers: layer %d (%s) kernel %d does not fit its "
                                     "%dx%d input", i, tn, s->kernel, h, w);
            if (s->type == CFX_LAYER_CONV2D) {
                L->n_weight = (size_t)s->out_channels * c * s->kernel * s->kernel;
                L->n_bias = (size_t)s->out_channels;
                L->col_size = (size_t)c * s->kernel * s->kernel * oh * ow *
                              cfx_conv2d_chunk(max_batch, c, s->kernel, oh, ow);
                if (L->col_size > col_max)
                    col_max = L->col_size;
                c = s->out_channels;
            }
            h = oh, w = ow;
            break;
        }
        case CFX_LAYER_RELU: break;
        case CFX_LAYER_FLATTEN:
            if (flat)
                return cfx_fail(err, "model.layers: layer %d (Flatten) follows a flat output", i);
            c = c * h * w, h = w = 1, flat = 1;
            break;
        case CFX_LAYER_LINEAR:
            if (!flat)
                return cfx_fail(err, "model.layers: layer %d (Linear) needs a flatten before it",
                                i);
            L->n_weight = (size_t)s->out_features * c;
            L->n_bias = (size_t)s->out_features;
            c = s->out_features;
            break;
        }
        L->weight_offset = offset;
        offset += L->n_weight;
        L->bias_offset = offset;
        offset += L->n_bias;
        L->out_c = c, L->out_h = h, L->out_w = w;
        L->flat_out = flat;
    }
    if (!flat)
        return cfx_fail(err, "model.layers: the last layer must produce a flat output "
                             "(end with flatten and linear)");
    m->n_classes = c;
    m->n_params = offset;
    m->params = cfx_calloc(offset, sizeof(float));
    m->grads = cfx_calloc(offset + CFX_GRAD_TAIL, sizeof(float));
    /* A ReLU right after a conv2d runs inside it, in place; a maxpool2d right
     * after such a ReLU also does the ReLU's backward. */
    if (!(flags & CFX_MODEL_KEEP_ACTIVATIONS))
        for (int i = 1; i < n_specs; i++)
            if (specs[i].type == CFX_LAYER_RELU && specs[i - 1].type == CFX_LAYER_CONV2D) {
                m->layers[i - 1].fused = m->layers[i].fused = 1;
                if (i + 1 < n_specs && specs[i + 1].type == CFX_LAYER_MAXPOOL2D)
                    m->layers[i + 1].fused = 1;
            }
    for (int i = 0; i <= n_specs; i++) {
        if (i > 0 && m->layers[i - 1].spec.type == CFX_LAYER_RELU && m->layers[i - 1].fused) {
            m->acts[i] = m->acts[i - 1]; /* in place: shares the conv's buffers */
            m->dacts[i] = m->dacts[i - 1];
            continue;
        }
        size_t per_image = i == 0 ? (size_t)in_c * in_h * in_w
                                  : (size_t)m->layers[i - 1].out_c * m->layers[i - 1].out_h *
                                        m->layers[i - 1].out_w;
        m->acts[i] = cfx_zalloc_aligned(per_image * max_batch, sizeof(float));
        if (i > 0 || input_grad)
            m->dacts[i] = cfx_zalloc_aligned(per_image * max_batch, sizeof(float));
    }
    m->col = cfx_malloc((col_max ? col_max : 1) * sizeof(float));
    m->dcol = cfx_malloc((col_max ? col_max : 1) * sizeof(float));
    return 0;
}

void cfx_model_free(cfx_model *m)
{
    for (int i = 0; i <= m->n_layers; i++) {
        if (i > 0 && m->layers[i - 1].spec.type == CFX_LAYER_RELU && m->layers[i - 1].fused)
            continue; /* shares the buffers of acts[i - 1] */
        free(m->acts[i]);
        free(m->dacts[i]);
    }
    free(m->params);
    free(m->grads);
    free(m->col);
    free(m->dcol);
    memset(m, 0, sizeof *m);
}

void cfx_model_init_params(cfx_model *m, uint64_t seed)
{
    cfx_rng rng;
    cfx_rng_seed(&rng, cfx_hash3(seed, 0x494E4954ULL /* "INIT" */, 0));
    for (int i = 0; i < m->n_layers; i++) {
        cfx_layer *L = &m->layers[i];
        if (!L->n_weight)
            continue;
        size_t fan_in = L->n_weight / L->n_bias;
        float bound = 1.0f / sqrtf((float)fan_in);
        float *p = m->params + L->weight_offset;
        for (size_t j = 0; j < L->n_weight + L->n_bias; j++) /* bias follows weight */
            p[j] = (2.0f * cfx_rng_float(&rng) - 1.0f) * bound;
    }
}

const float *cfx_model_forward(cfx_model *m, int n)
{
    for (int i = 0; i < m->n_layers; i++) {
        cfx_layer *L = &m->layers[i];
        double t0 = cfx_now();
        const float *in = m->acts[i];
        float *out = m->acts[i + 1];
        const float *wt = m->params + L->weight_offset, *b = m->params + L->bias_offset;
        size_t out_size = (size_t)n * L->out_c * L->out_h * L->out_w;
        switch (L->spec.type) {
        case CFX_LAYER_CONV2D:
            (L->fused ? cfx_conv2d_relu_forward : cfx_conv2d_forward)(
                out, m->col, in, wt, b, n, L->in_c, L->in_h, L->in_w, L->out_c, L->spec.kernel,
                L->spec.stride, L->spec.padding);
            break;
        case CFX_LAYER_RELU:
            if (!L->fused) /* else the conv2d before it applied it */
                cfx_relu_forward(out, in, out_size);
            break;
        case CFX_LAYER_MAXPOOL2D:
            cfx_maxpool_forward(out, in, L->in_c * n, L->in_h, L->in_w, L->spec.kernel,
                                L->spec.stride);
            break;
        case CFX_LAYER_FLATTEN:
            cfx_flatten_forward(out, in, n, L->in_c, L->in_h * L->in_w);
            break;
        case CFX_LAYER_LINEAR:
            cfx_linear_forward(out, in, wt, b, n, L->in_c, L->out_c);
            break;
        }
        L->forward_seconds += cfx_now() - t0;
    }
    return m->acts[m->n_layers];
}

void cfx_model_backward(cfx_model *m, int n)
{
    for (int i = m->n_layers - 1; i >= 0; i--) {
        cfx_layer *L = &m->layers[i];
        double t0 = cfx_now();
        const float *dout = m->dacts[i + 1];
        float *din = m->dacts[i]; /* NULL for the input unless input_grad */
        float *dw = m->grads + L->weight_offset, *db = m->grads + L->bias_offset;
        const float *wt = m->params + L->weight_offset;
        size_t out_size = (size_t)n * L->out_c * L->out_h * L->out_w;
        switch (L->spec.type) {
        case CFX_LAYER_CONV2D:
            cfx_conv2d_backward(din, dw, db, m->col, m->dcol, dout, m->acts[i], wt, n, L->in_c,
                                L->in_h, L->in_w, L->out_c, L->spec.kernel, L->spec.stride,
                                L->spec.padding);
            break;
        case CFX_LAYER_RELU:
            if (!din)
                break;
            if (!L->fused)
                cfx_relu_backward(din, dout, m->acts[i + 1], out_size);
            else if (!(i + 1 < m->n_layers && m->layers[i + 1].fused &&
                       m->layers[i + 1].spec.type == CFX_LAYER_MAXPOOL2D))
                cfx_relu_backward(din, dout, m->acts[i + 1], out_size); /* in place */
            /* else the maxpool2d after it applied the ReLU mask */
            break;
        case CFX_LAYER_MAXPOOL2D:
            if (din)
                (L->fused ? cfx_maxpool_relu_backward : cfx_maxpool_backward)(
                    din, dout, m->acts[i], L->in_c * n, L->in_h, L->in_w, L->spec.kernel,
                    L->spec.stride);
            break;
        case CFX_LAYER_FLATTEN:
            if (din)
                cfx_flatten_backward(din, dout, n, L->in_c, L->in_h * L->in_w);
            break;
        case CFX_LAYER_LINEAR:
            cfx_linear_backward(din, dw, db, dout, m->acts[i], wt, n, L->in_c, L->out_c);
            break;
        }
        L->backward_seconds += cfx_now() - t0;
    }
}

void cfx_model_print(const cfx_model *m, FILE *out)
{
    fprintf(out, "model: input %dx%dx%d, %zu parameters\n", m->in_c, m->in_h, m->in_w,
            m->n_params);
    for (int i = 0; i < m->n_layers; i++) {
        const cfx_layer *L = &m->layers[i];
        char spec[128];
        cfx_layer_spec_format(&L->spec, spec, sizeof spec);
        if (L->flat_out)
            fprintf(out, "  %2d %-44s -> %d\n", i, spec, L->out_c);
        else
            fprintf(out, "  %2d %-44s -> %dx%dx%d\n", i, spec, L->out_c, L->out_h, L->out_w);
    }
}

double cfx_model_forward_flops(const cfx_model *m)
{
    double flops = 0.0;
    for (int i = 0; i < m->n_layers; i++) {
        const cfx_layer *L = &m->layers[i];
        if (L->spec.type == CFX_LAYER_CONV2D)
            flops += 2.0 * (double)L->n_weight * L->out_h * L->out_w;
        else if (L->spec.type == CFX_LAYER_LINEAR)
            flops += 2.0 * (double)L->n_weight;
    }
    return flops;
}
