/* Direct AVX-512 kernels for stride-1 "same" convolutions (K odd, padding
 * (K-1)/2, output size = input size), the layers of every CNN of the seed's
 * kind. No im2col: the accumulators are a block of output channels times a
 * few 16-pixel vectors and stay in registers over all input channels and
 * taps; the edge of the image is handled by masked loads.
 *
 * In the [C][N][H][W] layout the N planes of one channel are contiguous, so
 * a channel is one flat array of N*H*W floats, cut into 16-float vectors.
 * A tap (kh, kw) reads the vector at a fixed offset (kh-p)*W + (kw-p); a lane
 * is masked off when its shifted pixel falls outside its own image, so the
 * vectors may straddle rows and images freely. This needs H*W % 16 == 0. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "cfx/nn.h" /* defines: cfx_conv2d_direct_* */

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>

#define CFX_AVX512 __attribute__((target("avx512f,fma")))
#define CFX_AVX512_INLINE __attribute__((target("avx512f,fma"), always_inline)) static inline

/* Vectors per register block of the forward kernel; output channels per block. */
enum { FWD_VECTORS = 3, FWD_CHANNELS = 8 };
/* Weight gradient blocks: 4 output x 6 input channels. */
enum { WGT_CHANNELS = 4, WGT_TAPS = 6 };

/* Tap offsets and per-vector masks for planes of H x W and a K x K kernel. */
typedef struct {
    int K2, vectors_per_plane;
    int offset[CFX_DIRECT_MAX_K * CFX_DIRECT_MAX_K];
    uint16_t *mask; /* [vectors_per_plane][K2] */
} tap_table;

static int tap_table_init(tap_table *t, int H, int W, int K)
{
    const int p = (K - 1) / 2, hw = H * W;
    t->K2 = K * K;
    t->vectors_per_plane = hw / 16;
    t->mask = malloc((size_t)t->vectors_per_plane * t->K2 * sizeof *t->mask);
    if (!t->mask)
        return -1;
    for (int kh = 0; kh < K; kh++)
        for (int kw = 0; kw < K; kw++)
            t->offset[kh * K + kw] = (kh - p) * W + (kw - p);
    for (int v = 0; v < t->vectors_per_plane; v++)
        for (int tap = 0; tap < t->K2; tap++) {
            int dy = tap / K - p, dx = tap % K - p;
            uint16_t m = 0;
            for (int lane = 0; lane < 16; lane++) {
                int pix = v * 16 + lane, y = pix / W + dy, x = pix % W + dx;
                if (y >= 0 && y < H && x >= 0 && x < W)
                    m |= (uint16_t)(1u << lane);
            }
            t->mask[v * t->K2 + tap] = m;
        }
    return 0;
}

/* out[oc0 .. oc0+OCB)[vectors g0 .. g0+VB) of one block: bias, then the sum
 * over taps and input channels, then the optional ReLU. w is [OC][C][K2]. */
CFX_AVX512_INLINE void forward_block(float *out, const float *in, const float *w, const float *bias,
                                     size_t plane, int C, const tap_table *t, size_t g0, int oc0,
                                     const int OCB, const int VB, int relu)
{
    const int K2 = t->K2, vpp = t->vectors_per_plane;
    __m512 acc[FWD_CHANNELS][FWD_VECTORS];
    __mmask16 m[FWD_VECTORS];
    for (int i = 0; i < OCB; i++)
        for (int j = 0; j < VB; j++)
            acc[i][j] = _mm512_set1_ps(bias ? bias[oc0 + i] : 0.0f);
    for (int tap = 0; tap < K2; tap++) {
        for (int j = 0; j < VB; j++)
            m[j] = t->mask[((g0 + j) % vpp) * K2 + tap];
        const float *src = in + g0 * 16 + t->offset[tap];
        const float *wt = w + (size_t)oc0 * C * K2 + tap;
        for (int c = 0; c < C; c++, src += plane, wt += K2) {
            __m512 x[FWD_VECTORS];
            for (int j = 0; j < VB; j++)
                x[j] = _mm512_maskz_loadu_ps(m[j], src + 16 * j);
            for (int i = 0; i < OCB; i++) {
                __m512 wv = _mm512_set1_ps(wt[(size_t)i * C * K2]);
                for (int j = 0; j < VB; j++)
                    acc[i][j] = _mm512_fmadd_ps(wv, x[j], acc[i][j]);
            }
        }
    }
    for (int i = 0; i < OCB; i++)
        for (int j = 0; j < VB; j++) {
            __m512 v = relu ? _mm512_max_ps(acc[i][j], _mm512_setzero_ps()) : acc[i][j];
            _mm512_storeu_ps(out + (size_t)(oc0 + i) * plane + (g0 + j) * 16, v);
        }
}

/* All output channels (blocks of 8, 4, 2, 1) of VB vectors from g. */
#define FORWARD_COLUMN(g, vb)                                                                      \
    do {                                                                                           \
        int oc0 = 0;                                                                               \
        for (; oc0 + 8 <= OC; oc0 += 8)                                                            \
            forward_block(out, in, w, bias, plane, C, &t, g, oc0, 8, vb, relu);                    \
        for (; oc0 + 4 <= OC; oc0 += 4)                                                            \
            forward_block(out, in, w, bias, plane, C, &t, g, oc0, 4, vb, relu);                    \
        for (; oc0 + 2 <= OC; oc0 += 2)                                                            \
            forward_block(out, in, w, bias, plane, C, &t, g, oc0, 2, vb, relu);                    \
        for (; oc0 < OC; oc0++)                                                                    \
            forward_block(out, in, w, bias, plane, C, &t, g, oc0, 1, vb, relu);                    \
    } while (0)

/* The whole convolution, split over the threads by columns of vectors (each
 * output is computed by one thread alone, so any thread count gives the
 * same bits). */
CFX_AVX512 static int direct_conv(float *out, const float *in, const float *w, const float *bias,
                                  int N, int C, int H, int W, int OC, int K, int relu)
{
    tap_table t;
    if (tap_table_init(&t, H, W, K) != 0)
        return -1;
    const size_t plane = (size_t)N * H * W, G = plane / 16;
    const long columns = (long)((G + FWD_VECTORS - 1) / FWD_VECTORS);
    const int threads = cfx_threads();
#ifdef _OPENMP
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1)
#endif
    for (long col = 0; col < columns; col++) {
        size_t g = (size_t)col * FWD_VECTORS;
        if (g + FWD_VECTORS <= G)
            FORWARD_COLUMN(g, FWD_VECTORS);
        else
            for (; g < G; g++)
                FORWARD_COLUMN(g, 1);
    }
    free(t.mask);
    return 0;
}

/* Adds to the 16-lane partial sums part[i][j] (OCB output channels from oc0,
 * TB input channels from c0, one tap) the products dout[oc] * (in[c] shifted
 * by the tap) over vectors g0 .. g1. The TB loads share one mask. */
CFX_AVX512_INLINE void weight_block(__m512 *part, const float *dout, const float *in, size_t plane,
                                    const tap_table *t, int tap, size_t g0, size_t g1, int oc0,
                                    int c0, const int OCB, const int TB)
{
    const int K2 = t->K2, vpp = t->vectors_per_plane;
    __m512 acc[WGT_CHANNELS][WGT_TAPS];
    for (int i = 0; i < OCB; i++)
        for (int j = 0; j < TB; j++)
            acc[i][j] = part[i * TB + j];
    const float *d = dout + (size_t)oc0 * plane;
    const float *src = in + (size_t)c0 * plane + t->offset[tap];
    const uint16_t *mk = t->mask + tap;
    int v = (int)(g0 % vpp);
    for (size_t g = g0; g < g1; g++) {
        __m512 dv[WGT_CHANNELS];
        for (int i = 0; i < OCB; i++)
            dv[i] = _mm512_loadu_ps(d + (size_t)i * plane + g * 16);
        const __mmask16 m = mk[v * K2];
        for (int j = 0; j < TB; j++) {
            __m512 x = _mm512_maskz_loadu_ps(m, src + (size_t)j * plane + g * 16);
            for (int i = 0; i < OCB; i++)
                acc[i][j] = _mm512_fmadd_ps(dv[i], x, acc[i][j]);
        }
        if (++v == vpp)
            v = 0;
    }
    for (int i = 0; i < OCB; i++)
        for (int j = 0; j < TB; j++)
            part[i * TB + j] = acc[i][j];
}

/* dweight for OCB output channels from oc0 and TB input channels from c0:
 * the vectors go by in chunks that stay in L1 while every tap uses them. */
CFX_AVX512_INLINE void weight_pair(float *dweight, __m512 *part, const float *dout, const float *in,
                                   size_t plane, int C, const tap_table *t, size_t chunk, int oc0,
                                   int c0, const int OCB, const int TB)
{
    const int K2 = t->K2, n = OCB * TB;
    const size_t G = plane / 16;
    for (int k = 0; k < K2 * n; k++)
        part[k] = _mm512_setzero_ps();
    for (size_t g0 = 0; g0 < G; g0 += chunk) {
        size_t g1 = g0 + chunk < G ? g0 + chunk : G;
        for (int tap = 0; tap < K2; tap++)
            weight_block(part + tap * n, dout, in, plane, t, tap, g0, g1, oc0, c0, OCB, TB);
    }
    for (int tap = 0; tap < K2; tap++)
        for (int i = 0; i < OCB; i++)
            for (int j = 0; j < TB; j++)
                dweight[((size_t)(oc0 + i) * C + c0 + j) * K2 + tap] =
                    _mm512_reduce_add_ps(part[tap * n + i * TB + j]);
}

/* Vectors per chunk of the weight gradient: the chunk's dout and input
 * vectors of one block (at most 10 channels) stay in L1 for all taps. */
#define WGT_CHUNK 24

/* One (output channel block, input channel block) of the weight gradient. */
typedef struct {
    int oc0, ocb, c0, cb;
} weight_task;

CFX_AVX512 static int direct_weight_grad(float *dweight, const float *dout, const float *in, int N,
                                         int C, int H, int W, int OC, int K)
{
    tap_table t;
    if (tap_table_init(&t, H, W, K) != 0)
        return -1;
    const size_t plane = (size_t)N * H * W, chunk = WGT_CHUNK;
    /* Blocks of 4, 2, 1 output x 6, 2, 1 input channels. */
    weight_task *tasks = malloc(((size_t)OC * C + 1) * sizeof *tasks);
    int n_tasks = 0;
    for (int oc0 = 0; oc0 < OC;) {
        int ocb = OC - oc0 >= 4 ? 4 : OC - oc0 >= 2 ? 2 : 1;
        for (int c0 = 0; c0 < C;) {
            int cb = C - c0 >= 6 ? 6 : C - c0 >= 2 ? 2 : 1;
            if (tasks)
                tasks[n_tasks++] = (weight_task){oc0, ocb, c0, cb};
            c0 += cb;
        }
        oc0 += ocb;
    }
    const int threads = cfx_threads();
    const size_t part_bytes = (size_t)t.K2 * WGT_CHANNELS * WGT_TAPS * sizeof(__m512);
    int failed = !tasks;
#ifdef _OPENMP
#pragma omp parallel num_threads(threads) if (threads > 1) reduction(| : failed)
#endif
    {
        __m512 *part = failed ? NULL : _mm_malloc(part_bytes, 64);
        failed |= !part;
#ifdef _OPENMP
#pragma omp for schedule(dynamic)
#endif
        for (int k = 0; k < n_tasks; k++) {
            if (!part)
                continue;
            const weight_task *q = &tasks[k];
            /* the register block sizes must be constants */
#define WEIGHT_CASE(o, c)                                                                          \
    case o * 8 + c:                                                                                \
        weight_pair(dweight, part, dout, in, plane, C, &t, chunk, q->oc0, q->c0, o, c);            \
        break
            switch (q->ocb * 8 + q->cb) {
                WEIGHT_CASE(4, 6);
                WEIGHT_CASE(4, 2);
                WEIGHT_CASE(4, 1);
                WEIGHT_CASE(2, 6);
                WEIGHT_CASE(2, 2);
                WEIGHT_CASE(2, 1);
                WEIGHT_CASE(1, 6);
                WEIGHT_CASE(1, 2);
                WEIGHT_CASE(1, 1);
            }
#undef WEIGHT_CASE
        }
        _mm_free(part);
    }
    free(tasks);
    free(t.mask);
    return failed ? -1 : 0;
}

static int cpu_has_avx512(void) { return __builtin_cpu_supports("avx512f"); }
#else
static int cpu_has_avx512(void) { return 0; }
#endif

/* -1 until first asked: then on when the CPU has AVX-512, unless CFX_CONV=gemm. */
static int direct_enabled = -1;

static int have_avx512(void)
{
    if (direct_enabled < 0) {
        const char *force = getenv("CFX_CONV");
        direct_enabled = cpu_has_avx512() && !(force && strcmp(force, "gemm") == 0);
    }
    return direct_enabled;
}

int cfx_conv2d_use_direct(int on)
{
    direct_enabled = on && cpu_has_avx512();
    return direct_enabled;
}

int cfx_conv2d_direct_usable(int N, int H, int W, int K, int stride, int pad)
{
    return have_avx512() && N > 0 && stride == 1 && K % 2 == 1 && K <= CFX_DIRECT_MAX_K &&
           pad == (K - 1) / 2 && (H * W) % 16 == 0;
}

#if defined(__x86_64__) && defined(__GNUC__)
int cfx_conv2d_direct_forward(float *out, const float *in, const float *weight, const float *bias,
                              int N, int C, int H, int W, int OC, int K, int relu)
{
    return direct_conv(out, in, weight, bias, N, C, H, W, OC, K, relu);
}

int cfx_conv2d_direct_weight_grad(float *dweight, const float *dout, const float *in, int N, int C,
                                  int H, int W, int OC, int K)
{
    return direct_weight_grad(dweight, dout, in, N, C, H, W, OC, K);
}

int cfx_conv2d_direct_input_grad(float *din, const float *dout, const float *weight, int N, int C,
                                 int H, int W, int OC, int K)
{
    /* din is the same convolution of dout with the kernel transposed
     * (in <-> out channels) and rotated by 180 degrees. */
    const int K2 = K * K;
    float *wflip = malloc((size_t)OC * C * K2 * sizeof *wflip);
    if (!wflip)
        return -1;
    for (int oc = 0; oc < OC; oc++)
        for (int c = 0; c < C; c++)
            for (int tap = 0; tap < K2; tap++)
                wflip[((size_t)c * OC + oc) * K2 + (K2 - 1 - tap)] =
                    weight[((size_t)oc * C + c) * K2 + tap];
    int rc = direct_conv(din, dout, wflip, NULL, N, OC, H, W, C, K, 0);
    free(wflip);
    return rc;
}
#else
int cfx_conv2d_direct_forward(float *out, const float *in, const float *weight, const float *bias,
                              int N, int C, int H, int W, int OC, int K, int relu)
{
    (void)out, (void)in, (void)weight, (void)bias, (void)N, (void)C, (void)H, (void)W;
    (void)OC, (void)K, (void)relu;
    return -1;
}

int cfx_conv2d_direct_weight_grad(float *dweight, const float *dout, const float *in, int N, int C,
                                  int H, int W, int OC, int K)
{
    (void)dweight, (void)dout, (void)in, (void)N, (void)C, (void)H, (void)W, (void)OC, (void)K;
    return -1;
}

int cfx_conv2d_direct_input_grad(float *din, const float *dout, const float *weight, int N, int C,
                                 int H, int W, int OC, int K)
{
    (void)din, (void)dout, (void)weight, (void)N, (void)C, (void)H, (void)W, (void)OC, (void)K;
    return -1;
}
#endif
