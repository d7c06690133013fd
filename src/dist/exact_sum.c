/* Exact, order-independent sums over MPI ranks in int64 fixed point; the
 * method and its bound are in include/cfx/exact_sum.h. */
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <mpi.h>

#include "cfx/common.h"    /* defines: cfx_malloc, cfx_fail, cfx_now, CFX_SIMD_CLONES */
#include "cfx/exact_sum.h" /* defines: cfx_exact, cfx_exact_sum, cfx_exact_sum_double */

#define FINITE_LIMIT 0x7f800000u /* bits of |x| at or above: infinity or NaN */
#define BLOCK 2048               /* int64 sums per block (16 KB) in cfx_exact_accumulate */

int cfx_exact_create(cfx_exact *x, size_t n, const size_t *seg_len, int n_segs, cfx_error *err)
{
    memset(x, 0, sizeof *x);
    if (n_segs < 1)
        return cfx_fail(err, "exact sum: %d segments (need at least 1)", n_segs);
    size_t total = 0;
    for (int s = 0; s < n_segs; s++)
        total += seg_len[s];
    if (total != n)
        return cfx_fail(err, "exact sum: segments add up to %zu floats, not %zu", total, n);
    x->n = n;
    x->n_segs = n_segs;
    x->bounds = cfx_malloc(((size_t)n_segs + 1) * sizeof *x->bounds);
    x->bounds[0] = 0;
    for (int s = 0; s < n_segs; s++)
        x->bounds[s + 1] = x->bounds[s] + seg_len[s];
    x->bits = cfx_calloc((size_t)n_segs, sizeof *x->bits);
    x->acc = cfx_zalloc_aligned(n + 1, sizeof *x->acc);
    x->bad_segment = -1;
    return 0;
}

void cfx_exact_free(cfx_exact *x)
{
    free(x->bounds);
    free(x->bits);
    free(x->acc);
    memset(x, 0, sizeof *x);
}

/* ceil(log2(t)) for t >= 1. */
static int ceil_log2(int t)
{
    int l = 0;
    while (l < 31 && (1L << l) < (long)t)
        l++;
    return l;
}

int cfx_exact_shift(uint32_t max_bits, int max_terms)
{
    float m;
    memcpy(&m, &max_bits, sizeof m);
    int e = 0;
    frexpf(m, &e); /* m < 2^e */
    return 62 - ceil_log2(max_terms) - e;
}

/* ---- the loops over whole segments (vectorised) ------------------------ */

/* Largest bit pattern of |x[i]|: the largest magnitude, or >= FINITE_LIMIT
 * if there is an infinity or a NaN. */
CFX_SIMD_CLONES static uint32_t max_abs_bits(const float *restrict x, size_t n)
{
    uint32_t m = 0;
    for (size_t i = 0; i < n; i++) {
        uint32_t b;
        memcpy(&b, &x[i], sizeof b);
        b &= 0x7fffffffu;
        m = b > m ? b : m;
    }
    return m;
}

/* acc[i] = rint(x[i] * scale) (set) or acc[i] += it; x * scale is exact in
 * double and below 2^62 in magnitude, so rounding is the only loss. */
CFX_SIMD_CLONES static void fixed_set(int64_t *restrict acc, const float *restrict x, size_t n,
                                      double scale)
{
    for (size_t i = 0; i < n; i++)
        acc[i] = (int64_t)nearbyint((double)x[i] * scale);
}

CFX_SIMD_CLONES static void fixed_add(int64_t *restrict acc, const float *restrict x, size_t n,
                                      double scale)
{
    for (size_t i = 0; i < n; i++)
        acc[i] += (int64_t)nearbyint((double)x[i] * scale);
}

/* out[i] = acc[i] * 2^-S as s1 * s2 (2^-S may not be a float). */
CFX_SIMD_CLONES static void fixed_to_float(float *restrict out, const int64_t *restrict acc,
                                           size_t n, float s1, float s2)
{
    for (size_t i = 0; i < n; i++)
        out[i] = (float)acc[i] * s1 * s2;
}

/* ---- the steps ----------------------------------------------------------- */

void cfx_exact_scan_segments(cfx_exact *x, const float *const *chunks, int n_chunks, int s0, int s1)
{
    for (int s = s0; s < s1; s++) {
        size_t off = x->bounds[s], len = x->bounds[s + 1] - off;
        uint32_t m = 0;
        for (int c = 0; c < n_chunks; c++) {
            uint32_t b = max_abs_bits(chunks[c] + off, len);
            m = b > m ? b : m;
        }
        x->bits[s] = m;
    }
}

void cfx_exact_scan(cfx_exact *x, const float *const *chunks, int n_chunks)
{
    cfx_exact_scan_segments(x, chunks, n_chunks, 0, x->n_segs);
}

int cfx_exact_first_nonfinite_segments(const cfx_exact *x, int s0, int s1)
{
    for (int s = s0; s < s1; s++)
        if (x->bits[s] >= FINITE_LIMIT)
            return s;
    return -1;
}

int cfx_exact_first_nonfinite(const cfx_exact *x)
{
    return cfx_exact_first_nonfinite_segments(x, 0, x->n_segs);
}

void cfx_exact_accumulate_segments(cfx_exact *x, const float *const *chunks, int n_chunks,
                                   int max_terms, int s0, int s1)
{
    for (int s = s0; s < s1; s++) {
        size_t off = x->bounds[s], len = x->bounds[s + 1] - off;
        if (x->bits[s] == 0 || n_chunks == 0) { /* all zeros on every rank, or no chunk here */
            memset(x->acc + off, 0, len * sizeof *x->acc);
            continue;
        }
        double scale = ldexp(1.0, cfx_exact_shift(x->bits[s], max_terms));
        for (size_t b = off; b < off + len; b += BLOCK) { /* acc[b..) stays in cache */
            size_t m = off + len - b < BLOCK ? off + len - b : BLOCK;
            fixed_set(x->acc + b, chunks[0] + b, m, scale);
            for (int c = 1; c < n_chunks; c++)
                fixed_add(x->acc + b, chunks[c] + b, m, scale);
        }
    }
}

void cfx_exact_accumulate(cfx_exact *x, const float *const *chunks, int n_chunks, int max_terms)
{
    x->acc[x->n] = n_chunks;
    if (n_chunks > max_terms) { /* too many: finish reports it */
        memset(x->acc, 0, x->n * sizeof *x->acc);
        return;
    }
    cfx_exact_accumulate_segments(x, chunks, n_chunks, max_terms, 0, x->n_segs);
}

int cfx_exact_finish_segments(const cfx_exact *x, int max_terms, float *out, int s0, int s1)
{
    int bad = -1;
    for (int s = s0; s < s1; s++) {
        size_t off = x->bounds[s], len = x->bounds[s + 1] - off;
        int shift = x->bits[s] ? cfx_exact_shift(x->bits[s], max_terms) : 0;
        int a = shift < 126 ? shift : 126; /* 2^-a and 2^-(shift - a) are normal floats */
        fixed_to_float(out + off, x->acc + off, len, ldexpf(1.0f, -a), ldexpf(1.0f, a - shift));
        /* |sum| < 2^(e + L): only e + L >= 128 can round to infinity */
        int e_plus_l = 62 - shift;
        if (x->bits[s] && e_plus_l >= 128 && bad < 0 &&
            max_abs_bits(out + off, len) >= FINITE_LIMIT)
            bad = s;
    }
    return bad;
}

int cfx_exact_finish(cfx_exact *x, int max_terms, float *out)
{
    if (max_terms < 1 || x->acc[x->n] > max_terms)
        return CFX_EXACT_TOO_MANY;
    x->bad_segment = cfx_exact_finish_segments(x, max_terms, out, 0, x->n_segs);
    return x->bad_segment < 0 ? CFX_EXACT_OK : CFX_EXACT_NONFINITE;
}

/* ---- MPI ------------------------------------------------------------------ */

/* In-place MPI_SUM of n int64 over all ranks, in pieces of at most INT_MAX. */
static void allreduce_int64_sum(int64_t *buf, size_t n)
{
    while (n > 0) {
        int piece = n > (size_t)INT_MAX ? INT_MAX : (int)n;
        MPI_Allreduce(MPI_IN_PLACE, buf, piece, MPI_INT64_T, MPI_SUM, MPI_COMM_WORLD);
        buf += piece;
        n -= (size_t)piece;
    }
}

int cfx_exact_sum(cfx_exact *x, const float *const *chunks, int n_chunks, int max_terms, float *out)
{
    double t0 = cfx_now();
    cfx_exact_scan(x, chunks, n_chunks);
    MPI_Allreduce(MPI_IN_PLACE, x->bits, x->n_segs, MPI_UINT32_T, MPI_MAX, MPI_COMM_WORLD);
    int status = CFX_EXACT_NONFINITE;
    x->bad_segment = cfx_exact_first_nonfinite(x);
    if (x->bad_segment < 0) {
        cfx_exact_accumulate(x, chunks, n_chunks, max_terms);
        allreduce_int64_sum(x->acc, x->n + 1);
        status = cfx_exact_finish(x, max_terms, out);
    }
    x->seconds += cfx_now() - t0;
    return status;
}

/* ---- a few doubles -------------------------------------------------------- */

/* Like cfx_exact_shift for a double whose |v| has the bit pattern max_bits. */
static int shift_double(uint64_t max_bits, int max_terms)
{
    double m;
    memcpy(&m, &max_bits, sizeof m);
    int e = 0;
    frexp(m, &e); /* m < 2^e */
    return 62 - ceil_log2(max_terms) - e;
}

/* bits[i] = the largest bit pattern of |vals[c * n + i]| over the chunks c. */
static void max_abs_bits_double(uint64_t *bits, const double *vals, int n_chunks, int n)
{
    for (int i = 0; i < n; i++) {
        uint64_t m = 0;
        for (int c = 0; c < n_chunks; c++) {
            uint64_t b;
            memcpy(&b, &vals[(size_t)c * n + i], sizeof b);
            b &= 0x7fffffffffffffffu;
            m = b > m ? b : m;
        }
        bits[i] = m;
    }
}

int cfx_exact_sum_double(cfx_exact *x, const double *vals, int n_chunks, int n, int max_terms,
                         double *out)
{
    double t0 = cfx_now();
    uint64_t *bits = cfx_calloc((size_t)n + 1, sizeof *bits);
    int64_t *acc = cfx_calloc((size_t)n + 1, sizeof *acc);
    max_abs_bits_double(bits, vals, n_chunks, n);
    MPI_Allreduce(MPI_IN_PLACE, bits, n, MPI_UINT64_T, MPI_MAX, MPI_COMM_WORLD);
    int status = CFX_EXACT_OK;
    x->bad_segment = -1;
    for (int i = 0; i < n && x->bad_segment < 0; i++)
        if (bits[i] >= 0x7ff0000000000000u)
            x->bad_segment = i, status = CFX_EXACT_NONFINITE;
    if (status == CFX_EXACT_OK) {
        acc[n] = n_chunks;
        for (int i = 0; i < n && n_chunks <= max_terms; i++) {
            int shift = bits[i] ? shift_double(bits[i], max_terms) : 0;
            for (int c = 0; c < n_chunks && bits[i]; c++)
                acc[i] += (int64_t)nearbyint(ldexp(vals[(size_t)c * n + i], shift));
        }
        allreduce_int64_sum(acc, (size_t)n + 1);
        if (max_terms < 1 || acc[n] > max_terms)
            status = CFX_EXACT_TOO_MANY;
        for (int i = 0; i < n && status == CFX_EXACT_OK; i++) {
            out[i] = bits[i] ? ldexp((double)acc[i], -shift_double(bits[i], max_terms)) : 0.0;
            if (isinf(out[i])) /* the sum overflowed double */
                x->bad_segment = i, status = CFX_EXACT_NONFINITE;
        }
    }
    free(bits);
    free(acc);
    x->seconds += cfx_now() - t0;
    return status;
}
