/* 2-D convolution over a whole mini-batch as im2col + SGEMM, chunk by chunk
 * of images. The chunks run on the rank's threads, each with its own im2col
 * workspace and single-threaded OpenBLAS calls; their sizes do not depend on
 * the thread count, and the weight gradient adds fixed groups of chunks in a
 * fixed order, so every thread count gives the same bits. */
#include <cblas.h>
#include <stdlib.h>
#include <string.h>

#include <stddef.h>

#include "cfx/nn.h" /* defines: cfx_conv2d_forward, cfx_im2col, cfx_col2im */

/* Rows are short (8 to 32 floats): plain loops beat memset/memcpy calls, so
 * keep GCC from turning them back into library calls. */
#if defined(__GNUC__) && !defined(__clang__)
#define CFX_INLINE_COPIES __attribute__((optimize("no-tree-loop-distribute-patterns")))
#else
#define CFX_INLINE_COPIES
#endif

/* im2col for "same" convolutions (stride 1, output size = input size): each
 * row of col is the whole image shifted by one offset, so it is one long
 * copy, then the columns that fell off the left or right edge are zeroed. */
CFX_INLINE_COPIES static void im2col_same(float *col, const float *in, int N, int n0, int count,
                                          int C, int H, int W, int K, int pad)
{
    const int hw = H * W;
    for (int c = 0; c < C; c++)
        for (int kh = 0; kh < K; kh++)
            for (int kw = 0; kw < K; kw++) {
                const int dy = kh - pad, dx = kw - pad, offset = dy * W + dx;
                /* Output rows whose source row exists, and the part of the flat
                 * index range that stays inside the plane. */
                int oh_lo = dy < 0 ? -dy : 0, oh_hi = H - (dy > 0 ? dy : 0);
                if (oh_hi < oh_lo)
                    oh_hi = oh_lo;
                int j_lo = oh_lo * W, j_hi = oh_hi * W;
                if (j_lo < -offset)
                    j_lo = -offset;
                if (j_hi > hw - offset)
                    j_hi = hw - offset;
                float *dst = col + ((size_t)(c * K + kh) * K + kw) * count * hw;
                for (int n = n0; n < n0 + count; n++, dst += hw) {
                    const float *plane = in + ((size_t)c * N + n) * hw;
                    for (int j = 0; j < j_lo; j++)
                        dst[j] = 0.0f;
                    for (int j = j_lo; j < j_hi; j++)
                        dst[j] = plane[j + offset];
                    for (int j = j_hi > j_lo ? j_hi : j_lo; j < hw; j++)
                        dst[j] = 0.0f;
                    /* Columns [x_lo, x_hi) read a pixel of the same row. */
                    int x_lo = dx < 0 ? -dx : 0, x_hi = dx > 0 ? W - dx : W;
                    for (int oh = oh_lo; oh < oh_hi; oh++) {
                        float *row = dst + (size_t)oh * W;
                        for (int ow = 0; ow < x_lo && ow < W; ow++)
                            row[ow] = 0.0f;
                        for (int ow = x_hi > 0 ? x_hi : 0; ow < W; ow++)
                            row[ow] = 0.0f;
                    }
                }
            }
}

/* im2col of images [n0, n0 + count) of a batch of N: col has count*OH*OW columns. */
CFX_INLINE_COPIES CFX_SIMD_CLONES static void im2col_range(float *col, const float *in, int N,
                                                           int n0, int count, int C, int H, int W,
                                                           int K, int stride, int pad, int OH,
                                                           int OW)
{
    const size_t ohw = (size_t)OH * OW, row_len = (size_t)count * ohw;
    if (stride == 1 && OH == H && OW == W) {
        im2col_same(col, in, N, n0, count, C, H, W, K, pad);
        return;
    }
    for (int c = 0; c < C; c++)
        for (int kh = 0; kh < K; kh++)
            for (int kw = 0; kw < K; kw++) {
                float *dst = col + ((size_t)(c * K + kh) * K + kw) * row_len;
                for (int n = n0; n < n0 + count; n++) {
                    const float *plane = in + ((size_t)c * N + n) * H * W;
                    for (int oh = 0; oh < OH; oh++, dst += OW) {
                        int ih = oh * stride - pad + kh;
                        if (ih < 0 || ih >= H) {
                            for (int ow = 0; ow < OW; ow++)
                                dst[ow] = 0.0f;
                            continue;
                        }
                        const float *src = plane + (size_t)ih * W;
                        if (stride == 1) {
                            /* iw = ow - pad + kw: a shifted copy with zero edges. */
                            int shift = kw - pad;
                            int lo = shift < 0 ? -shift : 0;
                            int hi = W - shift < OW ? W - shift : OW;
                            if (lo > OW) /* the tap only ever sees left padding */
                                lo = OW;
                            if (hi < lo)
                                hi = lo;
                            for (int ow = 0; ow < lo; ow++)
                                dst[ow] = 0.0f;
                            for (int ow = lo; ow < hi; ow++)
                                dst[ow] = src[ow + shift];
                            for (int ow = hi; ow < OW; ow++)
                                dst[ow] = 0.0f;
                        } else {
                            for (int ow = 0; ow < OW; ow++) {
                                int iw = ow * stride - pad + kw;
                                dst[ow] = (iw >= 0 && iw < W) ? src[iw] : 0.0f;
                            }
                        }
                    }
                }
            }
}

void cfx_im2col(float *col, const float *in, int N, int C, int H, int W, int K, int stride, int pad,
                int OH, int OW)
{
    im2col_range(col, in, N, 0, N, C, H, W, K, stride, pad, OH, OW);
}

/* The adjoint of im2col_range: adds the columns into images [n0, n0 + count). */
CFX_SIMD_CLONES static void col2im_range(float *in, const float *col, int N, int n0, int count,
                                         int C, int H, int W, int K, int stride, int pad, int OH,
                                         int OW)
{
    const size_t ohw = (size_t)OH * OW, row_len = (size_t)count * ohw;
    for (int c = 0; c < C; c++)
        for (int kh = 0; kh < K; kh++)
            for (int kw = 0; kw < K; kw++) {
                const float *src = col + ((size_t)(c * K + kh) * K + kw) * row_len;
                for (int n = n0; n < n0 + count; n++) {
                    float *plane = in + ((size_t)c * N + n) * H * W;
                    for (int oh = 0; oh < OH; oh++, src += OW) {
                        int ih = oh * stride - pad + kh;
                        if (ih < 0 || ih >= H)
                            continue;
                        float *dst = plane + (size_t)ih * W;
                        if (stride == 1) {
                            /* iw = ow + shift for ow in [lo, hi): a shifted add. */
                            int shift = kw - pad;
                            int lo = shift < 0 ? -shift : 0;
                            int hi = W - shift < OW ? W - shift : OW;
                            for (int ow = lo; ow < hi; ow++)
                                dst[ow + shift] += src[ow];
                            continue;
                        }
                        for (int ow = 0; ow < OW; ow++) {
                            int iw = ow * stride - pad + kw;
                            if (iw >= 0 && iw < W)
                                dst[iw] += src[ow];
                        }
                    }
                }
            }
}

void cfx_col2im(float *in, const float *col, int N, int C, int H, int W, int K, int stride, int pad,
                int OH, int OW)
{
    col2im_range(in, col, N, 0, N, C, H, W, K, stride, pad, OH, OW);
}

/* ---- workspaces ------------------------------------------------------------ */

/* The im2col workspaces of threads 1, 2, ... (thread 0 uses the caller's col
 * and dcol), grown on demand and kept for the next call; only thread t
 * touches slot t. */
static struct {
    float *col, *dcol;
    size_t cap;
} thread_workspace[CFX_MAX_THREADS];

static void workspace_of(int t, size_t n, float **col, float **dcol)
{
    if (t == 0)
        return;
    if (thread_workspace[t].cap < n) {
        free(thread_workspace[t].col), free(thread_workspace[t].dcol);
        thread_workspace[t].col = cfx_malloc(n * sizeof(float));
        thread_workspace[t].dcol = cfx_malloc(n * sizeof(float));
        thread_workspace[t].cap = n;
    }
    *col = thread_workspace[t].col, *dcol = thread_workspace[t].dcol;
}

/* Weight-gradient groups: the chunks are cut into this many runs (fewer if
 * there are fewer chunks), each summed on one thread into its own partial,
 * then the partials are added in order. Any thread count up to it is busy. */
#define WGRAD_GROUPS 8

/* The partials of each calling thread (replicas run side by side: model.c). */
static struct {
    float *buf;
    size_t cap;
} wgrad_partials[CFX_MAX_THREADS];

static float *partials(size_t n)
{
    int t = cfx_thread_id();
    if (wgrad_partials[t].cap < n) {
        free(wgrad_partials[t].buf);
        wgrad_partials[t].buf = cfx_malloc(n * sizeof(float));
        wgrad_partials[t].cap = n;
    }
    return wgrad_partials[t].buf;
}

int cfx_conv2d_chunk(int N, int C, int K, int OH, int OW)
{
    size_t per_image = (size_t)C * K * K * OH * OW * sizeof(float);
    size_t budget = CFX_CONV_CHUNK_BYTES;
    int chunk = (int)(budget / (per_image ? per_image : 1));
    int min_chunk = (int)((CFX_CONV_MIN_COLS + (size_t)OH * OW - 1) / ((size_t)OH * OW));
    if (chunk < min_chunk)
        chunk = min_chunk;
    return chunk < N ? chunk : N;
}

/* Adds bias[oc] (none if bias is NULL) to row oc of out (rows ld apart),
 * then the ReLU if asked. */
CFX_SIMD_CLONES static void add_bias(float *out, const float *bias, int OC, int cols, int ld,
                                     int relu)
{
    if (!bias && !relu)
        return;
    for (int oc = 0; oc < OC; oc++) {
        float b = bias ? bias[oc] : 0.0f, *row = out + (size_t)oc * ld;
        if (relu)
            for (int j = 0; j < cols; j++)
                row[j] = row[j] + b > 0.0f ? row[j] + b : 0.0f;
        else
            for (int j = 0; j < cols; j++)
                row[j] += b;
    }
}

static void conv2d_forward(float *out, float *col, const float *in, const float *weight,
                           const float *bias, int N, int C, int H, int W, int OC, int K, int stride,
                           int pad, int relu)
{
    if (cfx_conv2d_direct_usable(N, H, W, K, stride, pad) &&
        cfx_conv2d_direct_forward(out, in, weight, bias, N, C, H, W, OC, K, relu) == 0)
        return;
    int OH = cfx_window_out(H, K, stride, pad), OW = cfx_window_out(W, K, stride, pad);
    const int ckk = C * K * K, ohw = OH * OW, ld = N * ohw;
    const int chunk = cfx_conv2d_chunk(N, C, K, OH, OW), n_chunks = (N + chunk - 1) / chunk;
    const int threads = n_chunks < cfx_threads() ? n_chunks : cfx_threads();
    CFX_PARALLEL(threads)
    {
        float *tcol = col, *unused = NULL;
        workspace_of(cfx_thread_id(), (size_t)ckk * chunk * ohw, &tcol, &unused);
        CFX_FOR_STATIC
        for (int ch = 0; ch < n_chunks; ch++) {
            int n0 = ch * chunk, cn = N - n0 < chunk ? N - n0 : chunk, cols = cn * ohw;
            im2col_range(tcol, in, N, n0, cn, C, H, W, K, stride, pad, OH, OW);
            float *o = out + (size_t)n0 * ohw;
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, OC, cols, ckk, 1.0f, weight, ckk,
                        tcol, cols, 0.0f, o, ld);
            add_bias(o, bias, OC, cols, ld, relu);
        }
    }
}

void cfx_conv2d_forward(float *out, float *col, const float *in, const float *weight,
                        const float *bias, int N, int C, int H, int W, int OC, int K, int stride,
                        int pad)
{
    conv2d_forward(out, col, in, weight, bias, N, C, H, W, OC, K, stride, pad, 0);
}

void cfx_conv2d_relu_forward(float *out, float *col, const float *in, const float *weight,
                             const float *bias, int N, int C, int H, int W, int OC, int K,
                             int stride, int pad)
{
    conv2d_forward(out, col, in, weight, bias, N, C, H, W, OC, K, stride, pad, 1);
}

/* out = a + b (the weight-gradient partials' sum). */
CFX_SIMD_CLONES static void add_into(float *out, const float *a, const float *b, size_t n)
{
    for (size_t i = 0; i < n; i++)
        out[i] = a[i] + b[i];
}

void cfx_conv2d_backward(float *din, float *dweight, float *dbias, float *col, float *dcol,
                         const float *dout, const float *in, const float *weight, int N, int C,
                         int H, int W, int OC, int K, int stride, int pad)
{
    int OH = cfx_window_out(H, K, stride, pad), OW = cfx_window_out(W, K, stride, pad);
    const int ckk = C * K * K, ohw = OH * OW, ld = N * ohw;
    if (N == 0) {
        if (dweight)
            memset(dweight, 0, (size_t)OC * ckk * sizeof *dweight);
        if (dbias)
            memset(dbias, 0, (size_t)OC * sizeof *dbias);
        return;
    }
    CFX_PARALLEL_FOR_IF(dbias && (size_t)OC * ld >= CFX_PARALLEL_MIN)
    for (int oc = 0; oc < (dbias ? OC : 0); oc++)
        dbias[oc] = (float)cfx_sum(dout + (size_t)oc * ld, (size_t)ld);
    if (cfx_conv2d_direct_usable(N, H, W, K, stride, pad) &&
        (!dweight || cfx_conv2d_direct_weight_grad(dweight, dout, in, N, C, H, W, OC, K) == 0) &&
        (!din || cfx_conv2d_direct_input_grad(din, dout, weight, N, C, H, W, OC, K) == 0))
        return;
    const int chunk = cfx_conv2d_chunk(N, C, K, OH, OW), n_chunks = (N + chunk - 1) / chunk;
    const int groups = n_chunks < WGRAD_GROUPS ? n_chunks : WGRAD_GROUPS;
    const int threads = groups < cfx_threads() ? groups : cfx_threads();
    const size_t n_w = (size_t)OC * ckk;
    float *part = groups > 1 && dweight ? partials((size_t)(groups - 1) * n_w) : NULL;
    CFX_PARALLEL(threads)
    {
        float *tcol = col, *tdcol = dcol;
        workspace_of(cfx_thread_id(), (size_t)ckk * chunk * ohw, &tcol, &tdcol);
        CFX_FOR_STATIC
        for (int g = 0; g < groups; g++) {
            float *dw = g == 0 || !dweight ? dweight : part + (size_t)(g - 1) * n_w;
            int first = (int)((long)n_chunks * g / groups);
            int end = (int)((long)n_chunks * (g + 1) / groups);
            for (int ch = first; ch < end; ch++) {
                int n0 = ch * chunk, cn = N - n0 < chunk ? N - n0 : chunk, cols = cn * ohw;
                const float *d = dout + (size_t)n0 * ohw;
                im2col_range(tcol, in, N, n0, cn, C, H, W, K, stride, pad, OH, OW);
                if (dweight)
                    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, OC, ckk, cols, 1.0f, d, ld,
                                tcol, cols, ch == first ? 0.0f : 1.0f, dw, ckk);
                if (!din)
                    continue;
                cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, ckk, cols, OC, 1.0f, weight,
                            ckk, d, ld, 0.0f, tdcol, cols);
                for (int c = 0; c < C; c++)
                    memset(din + ((size_t)c * N + n0) * H * W, 0, (size_t)cn * H * W * sizeof *din);
                col2im_range(din, tdcol, N, n0, cn, C, H, W, K, stride, pad, OH, OW);
            }
        }
    }
    for (int g = 1; g < (dweight ? groups : 0);
         g++) /* in group order: the same bits for any thread count */
        cfx_parallel_elementwise(add_into, dweight, dweight, part + (size_t)(g - 1) * n_w, n_w);
}

/* ---- the layer: conv2d out=N kernel=K [stride=S] [padding=P] [bias=false] --- */

static const cfx_layer_option conv2d_options[] = {
    {"out", CFX_OPT_INT, offsetof(cfx_layer_spec, out), 0, 1, 65536,
     CFX_OPT_REQUIRED | CFX_OPT_SHOWN, "N"},
    {"kernel", CFX_OPT_INT, offsetof(cfx_layer_spec, kernel), 0, 1, 65536,
     CFX_OPT_REQUIRED | CFX_OPT_SHOWN, "K"},
    {"stride", CFX_OPT_INT, offsetof(cfx_layer_spec, stride), 1, 1, 65536, CFX_OPT_SHOWN, "S"},
    {"padding", CFX_OPT_INT, offsetof(cfx_layer_spec, padding), 0, 0, 65536, CFX_OPT_SHOWN, "P"},
    {"bias", CFX_OPT_BOOL, offsetof(cfx_layer_spec, bias), 1, 0, 1, 0, NULL},
    {"dirac", CFX_OPT_BOOL, offsetof(cfx_layer_spec, dirac), 0, 0, 1, 0, NULL},
    {"identity", CFX_OPT_BOOL, offsetof(cfx_layer_spec, identity), 0, 0, 1, 0, NULL},
    {"whiten", CFX_OPT_BOOL, offsetof(cfx_layer_spec, whiten), 0, 0, 1, 0, NULL},
};

/* in[C][N][H][W] -> out[OC][N][OH][OW]; weight [OC][C][K][K], bias [OC]. */
static int conv2d_infer(cfx_layer *L, const cfx_shape *in, int max_batch, cfx_error *err)
{
    const cfx_layer_spec *s = &L->spec;
    if (cfx_layer_need_spatial(in, "conv2d", err) != 0)
        return -1;
    int oh = cfx_window_out(in->h, s->kernel, s->stride, s->padding);
    int ow = cfx_window_out(in->w, s->kernel, s->stride, s->padding);
    if (s->kernel > in->h + 2 * s->padding || s->kernel > in->w + 2 * s->padding || oh < 1 ||
        ow < 1)
        return cfx_fail(err, "kernel %d does not fit its %dx%d input", s->kernel, in->h, in->w);
    if (s->whiten && s->out != 2 * in->c * s->kernel * s->kernel)
        return cfx_fail(err, "whiten=true needs out=%d (2 x %d channels x %dx%d patches)",
                        2 * in->c * s->kernel * s->kernel, in->c, s->kernel, s->kernel);
    int wdims[4] = {s->out, in->c, s->kernel, s->kernel};
    cfx_tensor_init init = s->dirac      ? CFX_INIT_DIRAC
                           : s->identity ? CFX_INIT_IDENTITY
                                         : CFX_INIT_FAN_IN;
    cfx_layer_add_tensor(L, "weight", CFX_TENSOR_PARAM, init, 4, wdims);
    if (s->bias) /* a whitening conv's bias starts at 0, as airbench's */
        cfx_layer_add_tensor(L, "bias", CFX_TENSOR_PARAM,
                             s->whiten ? CFX_INIT_ZERO : CFX_INIT_FAN_IN, 1, &s->out);
    L->fan_in = in->c * s->kernel * s->kernel;
    L->col_size = (size_t)in->c * s->kernel * s->kernel * oh * ow *
                  cfx_conv2d_chunk(max_batch, in->c, s->kernel, oh, ow);
    L->out_c = s->out, L->out_h = oh, L->out_w = ow;
    return 0;
}

static void conv2d_layer_forward(cfx_model *m, cfx_layer *L, int n)
{
    const float *b = L->spec.bias ? m->params + L->bias_offset : NULL;
    (L->fused ? cfx_conv2d_relu_forward : cfx_conv2d_forward)(
        cfx_layer_output(m, L), m->col, cfx_layer_input(m, L, 0), m->params + L->weight_offset, b,
        n, L->in_c, L->in_h, L->in_w, L->out_c, L->spec.kernel, L->spec.stride, L->spec.padding);
}

static void conv2d_layer_backward(cfx_model *m, cfx_layer *L, int n, float *const *din)
{
    const int params = !(m->flags & CFX_MODEL_NO_PARAM_GRAD);
    float *db = L->spec.bias && params ? m->grads + L->bias_offset : NULL;
    cfx_conv2d_backward(din[0], params ? m->grads + L->weight_offset : NULL, db, m->col, m->dcol,
                        cfx_layer_dout(m, L), cfx_layer_input(m, L, 0),
                        m->params + L->weight_offset, n, L->in_c, L->in_h, L->in_w, L->out_c,
                        L->spec.kernel, L->spec.stride, L->spec.padding);
}

static double conv2d_flops(const cfx_layer *L)
{
    return 2.0 * (double)L->n_weight * L->out_h * L->out_w;
}

static int conv2d_attrs(const cfx_layer *L, cfx_attr *a)
{
    a[0] = (cfx_attr){"in_channels", L->in_c, 1};
    a[1] = (cfx_attr){"out_channels", L->out_c, 1};
    a[2] = (cfx_attr){"kernel_size", L->spec.kernel, 1};
    a[3] = (cfx_attr){"stride", L->spec.stride, 1};
    a[4] = (cfx_attr){"padding", L->spec.padding, 1};
    a[5] = (cfx_attr){"bias", L->spec.bias, 1};
    return 6;
}

const cfx_layer_kind cfx_kind_conv2d = {
    .name = "conv2d",
    .torch_name = "Conv2d",
    .help = "2-D convolution (weight, bias); dirac=true: weight initialised as "
            "torch.nn.init.dirac_; identity=true: the default init, then dirac_ on the first "
            "in filters (airbench; the others stay random); whiten=true: weight from the "
            "eigenvectors of the KxK patch "
            "covariance of the first 5,000 training images, +-v / sqrt(eigenvalue + 5e-4), "
            "out = 2 x in x K x K, bias from 0 (airbench; pair with trainable=bias)",
    .options = conv2d_options,
    .n_options = sizeof conv2d_options / sizeof conv2d_options[0],
    .n_inputs = 1,
    .flags = CFX_KIND_FUSES_RELU,
    .infer = conv2d_infer,
    .forward = conv2d_layer_forward,
    .backward = conv2d_layer_backward,
    .flops = conv2d_flops,
    .attrs = conv2d_attrs,
};
