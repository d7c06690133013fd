/* Max pooling (no padding, floor mode), the argmax recomputed in backward.
 * The 2x2 stride-2 case of every CNN of this kind has its own fast loops. */
#include <stddef.h>
#include <string.h>

#include "cfx/nn.h" /* defines: cfx_maxpool_forward, cfx_maxpool_backward */

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>

/* AVX-512 2x2 pooling for planes of even height and width 8, 16 or 32: then
 * every 16 consecutive outputs read 64 consecutive inputs (whole row pairs),
 * and fixed permutations pick each window's four corners a b / c d out of
 * those 4 vectors, and put the four gradients back. */
typedef struct {
    __m512i pick[4];      /* corner t of output lane j: input (pick & 31) of a vector pair */
    __mmask16 pick_hi[4]; /* lanes whose corner is in vectors 2-3 rather than 0-1 */
    __m512i put[4];       /* input 16k + i: lane of (corner pair) it comes from */
    __mmask16 put_cd[4];  /* inputs that are corner c or d (pair 1) */
} pool_perm;

__attribute__((target("avx512f"))) static void pool_perm_init(pool_perm *pp, int W)
{
    const int OW = W / 2;
    int pick[4][16], put[4][16];
    __mmask16 hi[4] = {0}, cd[4] = {0};
    for (int j = 0; j < 16; j++) {
        int a = (j / OW) * 2 * W + 2 * (j % OW);
        int at[4] = {a, a + 1, a + W, a + W + 1};
        for (int t = 0; t < 4; t++) {
            pick[t][j] = at[t] & 31;
            if (at[t] >= 32)
                hi[t] |= (__mmask16)(1u << j);
            /* input at[t] gets corner t's gradient of lane j */
            int k = at[t] / 16, i = at[t] % 16;
            put[k][i] = j + 16 * (t & 1); /* b and d are the second of their pair */
            if (t >= 2)
                cd[k] |= (__mmask16)(1u << i);
        }
    }
    for (int t = 0; t < 4; t++) {
        pp->pick[t] = _mm512_loadu_si512(pick[t]);
        pp->put[t] = _mm512_loadu_si512(put[t]);
        pp->pick_hi[t] = hi[t];
        pp->put_cd[t] = cd[t];
    }
}

static int pool_simd_usable(int H, int W)
{
    return H % 2 == 0 && (W == 8 || W == 16 || W == 32) && __builtin_cpu_supports("avx512f");
}

__attribute__((target("avx512f"), always_inline)) static inline void
pool_corners(const pool_perm *pp, const float *in, __m512 x[4])
{
    __m512 v0 = _mm512_loadu_ps(in), v1 = _mm512_loadu_ps(in + 16);
    __m512 v2 = _mm512_loadu_ps(in + 32), v3 = _mm512_loadu_ps(in + 48);
    for (int t = 0; t < 4; t++)
        x[t] = _mm512_mask_blend_ps(pp->pick_hi[t], _mm512_permutex2var_ps(v0, pp->pick[t], v1),
                                    _mm512_permutex2var_ps(v2, pp->pick[t], v3));
}

/* Returns how many outputs it did (a multiple of 16); the caller does the rest. */
__attribute__((target("avx512f"))) static size_t pool2x2_forward_avx512(float *out, const float *in,
                                                                        size_t n_out, int W)
{
    pool_perm pp;
    pool_perm_init(&pp, W);
    size_t o = 0;
    for (; o + 16 <= n_out; o += 16) {
        __m512 x[4];
        pool_corners(&pp, in + 4 * o, x);
        /* max_ps(p, q) = p > q ? p : q: the scalar code's order and NaN handling */
        __m512 top = _mm512_max_ps(x[1], x[0]), bottom = _mm512_max_ps(x[3], x[2]);
        _mm512_storeu_ps(out + o, _mm512_max_ps(bottom, top));
    }
    return o;
}

__attribute__((target("avx512f"))) static size_t
pool2x2_backward_avx512(float *din, const float *dout, const float *in, size_t n_out, int W,
                        int relu)
{
    pool_perm pp;
    pool_perm_init(&pp, W);
    size_t o = 0;
    for (; o + 16 <= n_out; o += 16) {
        __m512 x[4];
        pool_corners(&pp, in + 4 * o, x);
        __mmask16 top_b = _mm512_cmp_ps_mask(x[1], x[0], _CMP_GT_OQ);
        __mmask16 bottom_d = _mm512_cmp_ps_mask(x[3], x[2], _CMP_GT_OQ);
        __m512 top = _mm512_mask_blend_ps(top_b, x[0], x[1]);
        __m512 bottom = _mm512_mask_blend_ps(bottom_d, x[2], x[3]);
        __mmask16 use_bottom = _mm512_cmp_ps_mask(bottom, top, _CMP_GT_OQ);
        __m512 g = _mm512_loadu_ps(dout + o);
        if (relu) /* no gradient where the maximum (a ReLU output) is 0 */
            g = _mm512_maskz_mov_ps(
                _mm512_cmp_ps_mask(_mm512_mask_blend_ps(use_bottom, top, bottom),
                                   _mm512_setzero_ps(), _CMP_GT_OQ),
                g);
        __m512 ga = _mm512_maskz_mov_ps((__mmask16)(~use_bottom & ~top_b), g);
        __m512 gb = _mm512_maskz_mov_ps((__mmask16)(~use_bottom & top_b), g);
        __m512 gc = _mm512_maskz_mov_ps((__mmask16)(use_bottom & ~bottom_d), g);
        __m512 gd = _mm512_maskz_mov_ps((__mmask16)(use_bottom & bottom_d), g);
        for (int k = 0; k < 4; k++)
            _mm512_storeu_ps(din + 4 * o + 16 * k,
                             _mm512_mask_blend_ps(pp.put_cd[k],
                                                  _mm512_permutex2var_ps(ga, pp.put[k], gb),
                                                  _mm512_permutex2var_ps(gc, pp.put[k], gd)));
    }
    return o;
}
#else
static int pool_simd_usable(int H, int W)
{
    (void)H, (void)W;
    return 0;
}
static size_t pool2x2_forward_avx512(float *out, const float *in, size_t n_out, int W)
{
    (void)out, (void)in, (void)n_out, (void)W;
    return 0;
}
static size_t pool2x2_backward_avx512(float *din, const float *dout, const float *in, size_t n_out,
                                      int W, int relu)
{
    (void)din, (void)dout, (void)in, (void)n_out, (void)W, (void)relu;
    return 0;
}
#endif

CFX_SIMD_CLONES static void maxpool2x2_forward(float *out, const float *in, int planes, int H,
                                               int W)
{
    int OH = H / 2, OW = W / 2;
    for (int p = 0; p < planes; p++) {
        const float *src = in + (size_t)p * H * W;
        float *dst = out + (size_t)p * OH * OW;
        for (int oh = 0; oh < OH; oh++) {
            const float *r0 = src + (size_t)2 * oh * W, *r1 = r0 + W;
            float *o = dst + (size_t)oh * OW;
            for (int ow = 0; ow < OW; ow++) {
                float a = r0[2 * ow], b = r0[2 * ow + 1], c = r1[2 * ow], d = r1[2 * ow + 1];
                float top = b > a ? b : a, bottom = d > c ? d : c;
                o[ow] = bottom > top ? bottom : top;
            }
        }
    }
}

/* Writes every element of din once: the gradient at the window's first
 * maximum (row-major order, as PyTorch), zero elsewhere. */
static void maxpool2x2_backward(float *din, const float *dout, const float *in, int planes, int H,
                                int W, int relu)
{
    int OH = H / 2, OW = W / 2;
    for (int p = 0; p < planes; p++) {
        const float *src = in + (size_t)p * H * W;
        float *dsrc = din + (size_t)p * H * W;
        const float *d = dout + (size_t)p * OH * OW;
        for (int oh = 0; oh < OH; oh++) {
            const float *r0 = src + (size_t)2 * oh * W, *r1 = r0 + W;
            float *g0 = dsrc + (size_t)2 * oh * W, *g1 = g0 + W;
            for (int ow = 0; ow < OW; ow++) {
                float a = r0[2 * ow], b = r0[2 * ow + 1], c = r1[2 * ow], e = r1[2 * ow + 1];
                float g = d[oh * OW + ow];
                /* Branch-free first-maximum selection (the loop vectorises). */
                float top = b > a ? b : a, bottom = e > c ? e : c;
                if (relu) /* the input is a ReLU output: no gradient where the max is 0 */
                    g = (bottom > top ? bottom : top) > 0.0f ? g : 0.0f;
                int use_bottom = bottom > top, use_top = 1 - use_bottom;
                int top_b = b > a, bottom_e = e > c;
                g0[2 * ow] = g * (float)(use_top * (1 - top_b));
                g0[2 * ow + 1] = g * (float)(use_top * top_b);
                g1[2 * ow] = g * (float)(use_bottom * (1 - bottom_e));
                g1[2 * ow + 1] = g * (float)(use_bottom * bottom_e);
            }
            if (W % 2) /* the last column is in no window */
                g0[W - 1] = g1[W - 1] = 0.0f;
        }
        if (H % 2) /* the last row is in no window */
            memset(dsrc + (size_t)(H - 1) * W, 0, (size_t)W * sizeof *dsrc);
    }
}

static void maxpool_forward(float *out, const float *in, int planes, int H, int W, int K,
                            int stride)
{
    if (K == 2 && stride == 2) {
        if (pool_simd_usable(H, W)) {
            /* whole row pairs: the rest is whole row pairs too */
            size_t n_out = (size_t)planes * (H / 2) * (W / 2);
            size_t done = pool2x2_forward_avx512(out, in, n_out, W);
            maxpool2x2_forward(out + done, in + 4 * done, 1, (int)(2 * (n_out - done) / (W / 2)),
                               W);
            return;
        }
        maxpool2x2_forward(out, in, planes, H, W);
        return;
    }
    int OH = cfx_window_out(H, K, stride, 0), OW = cfx_window_out(W, K, stride, 0);
    for (int p = 0; p < planes; p++) {
        const float *src = in + (size_t)p * H * W;
        float *dst = out + (size_t)p * OH * OW;
        for (int oh = 0; oh < OH; oh++)
            for (int ow = 0; ow < OW; ow++) {
                const float *win = src + (size_t)oh * stride * W + ow * stride;
                float best = win[0];
                for (int kh = 0; kh < K; kh++)
                    for (int kw = 0; kw < K; kw++)
                        if (win[kh * W + kw] > best)
                            best = win[kh * W + kw];
                dst[oh * OW + ow] = best;
            }
    }
}

static void maxpool_backward(float *din, const float *dout, const float *in, int planes, int H,
                             int W, int K, int stride, int relu)
{
    if (K == 2 && stride == 2) {
        if (pool_simd_usable(H, W)) {
            size_t n_out = (size_t)planes * (H / 2) * (W / 2);
            size_t done = pool2x2_backward_avx512(din, dout, in, n_out, W, relu);
            maxpool2x2_backward(din + 4 * done, dout + done, in + 4 * done, 1,
                                (int)(2 * (n_out - done) / (W / 2)), W, relu);
            return;
        }
        maxpool2x2_backward(din, dout, in, planes, H, W, relu);
        return;
    }
    int OH = cfx_window_out(H, K, stride, 0), OW = cfx_window_out(W, K, stride, 0);
    memset(din, 0, (size_t)planes * H * W * sizeof *din);
    for (int p = 0; p < planes; p++) {
        const float *src = in + (size_t)p * H * W;
        float *dsrc = din + (size_t)p * H * W;
        const float *d = dout + (size_t)p * OH * OW;
        for (int oh = 0; oh < OH; oh++)
            for (int ow = 0; ow < OW; ow++) {
                size_t base = (size_t)oh * stride * W + (size_t)ow * stride, arg = base;
                float best = src[base];
                for (int kh = 0; kh < K; kh++)
                    for (int kw = 0; kw < K; kw++) {
                        size_t at = base + (size_t)kh * W + kw;
                        if (src[at] > best) {
                            best = src[at];
                            arg = at;
                        }
                    }
                if (!relu || best > 0.0f)
                    dsrc[arg] += d[oh * OW + ow];
            }
    }
}

/* The passes split over planes on cfx_threads(). */
void cfx_maxpool_forward(float *out, const float *in, int planes, int H, int W, int K, int stride)
{
    const size_t hw = (size_t)H * W;
    const size_t ohw = (size_t)cfx_window_out(H, K, stride, 0) * cfx_window_out(W, K, stride, 0);
    const int blocks = cfx_blocks((size_t)planes * hw);
    CFX_PARALLEL_FOR_IF(blocks > 1)
    for (int b = 0; b < blocks; b++) {
        int p0 = (int)((long)planes * b / blocks), p1 = (int)((long)planes * (b + 1) / blocks);
        maxpool_forward(out + p0 * ohw, in + p0 * hw, p1 - p0, H, W, K, stride);
    }
}

static void maxpool_backward_parallel(float *din, const float *dout, const float *in, int planes,
                                      int H, int W, int K, int stride, int relu)
{
    const size_t hw = (size_t)H * W;
    const size_t ohw = (size_t)cfx_window_out(H, K, stride, 0) * cfx_window_out(W, K, stride, 0);
    const int blocks = cfx_blocks((size_t)planes * hw);
    CFX_PARALLEL_FOR_IF(blocks > 1)
    for (int b = 0; b < blocks; b++) {
        int p0 = (int)((long)planes * b / blocks), p1 = (int)((long)planes * (b + 1) / blocks);
        maxpool_backward(din + p0 * hw, dout + p0 * ohw, in + p0 * hw, p1 - p0, H, W, K, stride,
                         relu);
    }
}

void cfx_maxpool_backward(float *din, const float *dout, const float *in, int planes, int H, int W,
                          int K, int stride)
{
    maxpool_backward_parallel(din, dout, in, planes, H, W, K, stride, 0);
}

void cfx_maxpool_relu_backward(float *din, const float *dout, const float *in, int planes, int H,
                               int W, int K, int stride)
{
    maxpool_backward_parallel(din, dout, in, planes, H, W, K, stride, 1);
}

/* ---- the layer: maxpool2d kernel=K [stride=S] (S defaults to K) ---------- */

static const cfx_layer_option maxpool_options[] = {
    {"kernel", CFX_OPT_INT, offsetof(cfx_layer_spec, kernel), 0, 1, 65536,
     CFX_OPT_REQUIRED | CFX_OPT_SHOWN, "K"},
    {"stride", CFX_OPT_INT, offsetof(cfx_layer_spec, stride), 0, 1, 65536, CFX_OPT_SHOWN, "S"},
};

static int maxpool_finish(cfx_layer_spec *s, cfx_error *err)
{
    (void)err;
    if (s->stride == 0)
        s->stride = s->kernel; /* PyTorch's default */
    return 0;
}

static int maxpool_infer(cfx_layer *L, const cfx_shape *in, int max_batch, cfx_error *err)
{
    (void)max_batch;
    const cfx_layer_spec *s = &L->spec;
    if (cfx_layer_need_spatial(in, "maxpool2d", err) != 0)
        return -1;
    if (s->kernel > in->h || s->kernel > in->w)
        return cfx_fail(err, "kernel %d does not fit its %dx%d input", s->kernel, in->h, in->w);
    L->out_c = in->c;
    L->out_h = cfx_window_out(in->h, s->kernel, s->stride, 0);
    L->out_w = cfx_window_out(in->w, s->kernel, s->stride, 0);
    return 0;
}

static void maxpool_layer_forward(cfx_model *m, cfx_layer *L, int n)
{
    cfx_maxpool_forward(cfx_layer_output(m, L), cfx_layer_input(m, L, 0), L->in_c * n, L->in_h,
                        L->in_w, L->spec.kernel, L->spec.stride);
}

static void maxpool_layer_backward(cfx_model *m, cfx_layer *L, int n, float *const *din)
{
    if (din[0])
        (L->fused ? cfx_maxpool_relu_backward : cfx_maxpool_backward)(
            din[0], cfx_layer_dout(m, L), cfx_layer_input(m, L, 0), L->in_c * n, L->in_h, L->in_w,
            L->spec.kernel, L->spec.stride);
}

static int maxpool_attrs(const cfx_layer *L, cfx_attr *a)
{
    a[0] = (cfx_attr){"kernel_size", L->spec.kernel, 1};
    a[1] = (cfx_attr){"stride", L->spec.stride, 1};
    return 2;
}

const cfx_layer_kind cfx_kind_maxpool2d = {
    .name = "maxpool2d",
    .torch_name = "MaxPool2d",
    .help = "max pooling, no padding (stride defaults to kernel)",
    .options = maxpool_options,
    .n_options = sizeof maxpool_options / sizeof maxpool_options[0],
    .n_inputs = 1,
    .flags = CFX_KIND_FOLDS_RELU_BACKWARD,
    .finish = maxpool_finish,
    .infer = maxpool_infer,
    .forward = maxpool_layer_forward,
    .backward = maxpool_layer_backward,
    .attrs = maxpool_attrs,
};
