/* GELU, exact form: x * Phi(x) = x/2 * (1 + erf(x / sqrt 2)) (torch.nn.GELU()).
 *
 * Phi comes from erfc by the Chebyshev fit of Numerical Recipes' erfcc
 * (relative error < 1.2e-7 for every argument, so Phi(x) of large negative x
 * keeps its relative accuracy) and a branch-free expf, so the loops vectorise
 * (built without FMA contraction, so every clone gives the same bits, and
 * without trapping math, so the selects vectorise on AVX2 too):
 * libm's erff is a call per element and made GELU a sixth of a fast.ini step. */
#include <stdint.h>
#include <string.h>

#include "cfx/nn.h" /* defines: cfx_gelu_forward, cfx_gelu_backward */

/* e^x for x <= 0 (larger x are not asked for), max 2 ulp; x < -87 gives ~1e-38. */
static inline float exp_nonpositive(float x)
{
    x = x < -87.0f ? -87.0f : x; /* NaN stays NaN */
    const float magic = 12582912.0f; /* 1.5 * 2^23: adding it rounds to an integer */
    float j = x * 1.44269504088896341f + magic;
    uint32_t jbits; /* unsigned: NaN's garbage exponent must not overflow */
    memcpy(&jbits, &j, sizeof jbits);
    float k = j - magic;
    float r = x - k * 0.693359375f; /* Cody-Waite ln 2, high and low parts */
    r = r - k * -2.12194440e-4f;
    float p = 1.9875691500e-4f; /* Cephes expf on [-ln2/2, ln2/2] */
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    uint32_t scale_bits = (jbits - 0x4B400000u + 127u) << 23; /* 2^k, k = round(x log2 e) */
    float scale;
    memcpy(&scale, &scale_bits, sizeof scale);
    return p * scale;
}

/* Phi(-|x|) = erfc(|x| / sqrt 2) / 2. */
static inline float lower_tail(float x)
{
    float z = (x < 0.0f ? -x : x) * 0.70710678118654752f;
    float t = 1.0f / (1.0f + 0.5f * z);
    float p = 0.17087277f;
    p = p * t - 0.82215223f;
    p = p * t + 1.48851587f;
    p = p * t - 1.13520398f;
    p = p * t + 0.27886807f;
    p = p * t - 0.18628806f;
    p = p * t + 0.09678418f;
    p = p * t + 0.37409196f;
    p = p * t + 1.00002368f;
    p = p * t - 1.26551223f;
    return 0.5f * t * exp_nonpositive(p - z * z);
}

static inline float normal_cdf(float x)
{
    float q = lower_tail(x);
    return x >= 0.0f ? 1.0f - q : q;
}

CFX_SIMD_CLONES static void gelu_forward(float *out, const float *in, const float *unused, size_t n)
{
    (void)unused;
    for (size_t i = 0; i < n; i++)
        out[i] = in[i] * normal_cdf(in[i]);
}

/* GELU'(x) = Phi(x) + x * phi(x). */
CFX_SIMD_CLONES static void gelu_backward(float *din, const float *dout, const float *in, size_t n)
{
    const float inv_sqrt_2pi = 0.3989422804014327f;
    for (size_t i = 0; i < n; i++) {
        float x = in[i];
        float pdf = inv_sqrt_2pi * exp_nonpositive(-0.5f * x * x);
        din[i] = dout[i] * (normal_cdf(x) + x * pdf);
    }
}

CFX_SIMD_CLONES static void gelu_guided_backward(float *din, const float *dout, const float *in,
                                                 size_t n)
{
    const float inv_sqrt_2pi = 0.3989422804014327f;
    for (size_t i = 0; i < n; i++) {
        float x = in[i], g = dout[i];
        float pdf = inv_sqrt_2pi * exp_nonpositive(-0.5f * x * x);
        float d = g * (normal_cdf(x) + x * pdf);
        din[i] = x > 0.0f && g > 0.0f ? d : 0.0f;
    }
}

/* The passes, split into blocks on cfx_threads(). */
void cfx_gelu_forward(float *out, const float *in, size_t n)
{
    cfx_parallel_elementwise(gelu_forward, out, in, NULL, n);
}

void cfx_gelu_backward(float *din, const float *dout, const float *in, size_t n)
{
    cfx_parallel_elementwise(gelu_backward, din, dout, in, n);
}

void cfx_gelu_guided_backward(float *din, const float *dout, const float *in, size_t n)
{
    cfx_parallel_elementwise(gelu_guided_backward, din, dout, in, n);
}

/* ---- the layer: gelu -------------------------------------------------------- */

static void gelu_layer_forward(cfx_model *m, cfx_layer *L, int n)
{
    cfx_gelu_forward(cfx_layer_output(m, L), cfx_layer_input(m, L, 0), cfx_layer_out_size(L, n));
}

static void gelu_layer_backward(cfx_model *m, cfx_layer *L, int n, float *const *din)
{
    if (din[0])
        (m->guided ? cfx_gelu_guided_backward : cfx_gelu_backward)(
            din[0], cfx_layer_dout(m, L), cfx_layer_input(m, L, 0), cfx_layer_out_size(L, n));
}

const cfx_layer_kind cfx_kind_gelu = {
    .name = "gelu",
    .torch_name = "GELU",
    .help = "GELU, exact erf form",
    .n_inputs = 1,
    .infer = cfx_layer_same_shape,
    .forward = gelu_layer_forward,
    .backward = gelu_layer_backward,
};
