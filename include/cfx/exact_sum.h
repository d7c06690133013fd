/* Exact, order-independent sums over MPI ranks (issue 15).
 *
 * Every rank holds zero or more chunks of a global batch, each chunk a float
 * array of n (a gradient); cfx_exact_sum gives every rank the sum over all
 * chunks of all ranks, bitwise the same however the chunks are spread over
 * the ranks and whatever the rank count. Each tensor (segment) gets a
 * power-of-two scale from the largest |x| of that segment over all chunks of
 * all ranks; values become int64 fixed point, are added exactly (integer
 * addition is associative) and converted back to float once.
 *
 * The bound. Let T = max_terms (the number of chunks of the global batch,
 * the same on every rank), L = ceil(log2 T), P = 62 - L, and 2^(E-1) <= M <
 * 2^E where M is the segment's largest |x|. A value x becomes the integer
 * q = rint(x * 2^(P-E)), |q| <= 2^P, so a sum of at most T of them is at most
 * 2^L * 2^P = 2^62 < 2^63 in magnitude: it cannot overflow int64. What is
 * lost: the bits of each x below the quantum 2^(E-P) <= M * 2^(L-61)
 * (rounded to nearest, ties to even); floats within a factor 2^(38-L) of M
 * are exact. The result is the float nearest to the exact fixed-point sum:
 * |result - exact sum| <= 1/2 ulp(result) + T * 2^(E-P-1) (in the normal
 * range; tiny results may round twice, still the same on every rank).
 *
 * Non-finite values are never converted: if any chunk of any rank holds a
 * NaN or an infinity, or the sum overflows float, every rank gets
 * CFX_EXACT_NONFINITE. Every status is the same on every rank. -0 sums to
 * +0. Assumes the default rounding mode (to nearest) and the same binary on
 * every rank (the loops have AVX-512, AVX2 and baseline clones, which give
 * the same bits: no multiply-add is contracted). */
#ifndef CFX_EXACT_SUM_H
#define CFX_EXACT_SUM_H

#include <stddef.h>
#include <stdint.h>

#include "cfx/common.h" /* defines: cfx_error */

enum {
    CFX_EXACT_OK = 0,
    CFX_EXACT_NONFINITE = 1, /* a NaN or infinity in segment x->bad_segment (out unwritten),
                                or its sum overflows to infinity */
    CFX_EXACT_TOO_MANY = 2,  /* more chunks over all ranks than max_terms (or max_terms
                                < 1): the sum may have overflowed; out unwritten */
};

typedef struct {
    size_t n;        /* floats per chunk */
    int n_segs;      /* segments (tensors), each with its own scale */
    size_t *bounds;  /* n_segs + 1: segment s is [bounds[s], bounds[s+1]) */
    uint32_t *bits;  /* per segment: bit pattern of the largest |x| (>= 0x7f800000:
                        not finite) */
    int64_t *acc;    /* n + 1: fixed-point sums, then the number of chunks */
    double seconds;  /* time spent in cfx_exact_sum and cfx_exact_sum_double */
    int bad_segment; /* after CFX_EXACT_NONFINITE: the first non-finite segment */
} cfx_exact;

/* Sets x up for chunks of n floats cut into n_segs segments of seg_len[0..)
 * floats, in order (zero lengths allowed); they must add up to n. */
int cfx_exact_create(cfx_exact *x, size_t n, const size_t *seg_len, int n_segs, cfx_error *err);
void cfx_exact_free(cfx_exact *x);

/* Collective (MPI_COMM_WORLD): out[0..n) = sum of chunks[0..n_chunks) over
 * all ranks, bitwise independent of which rank holds which chunk and of
 * the rank count. n_chunks may be 0 (chunks may then be NULL). max_terms
 * must be the same on every rank and at least the total number of chunks.
 * out may be one of the chunks. Returns CFX_EXACT_*, the same on every rank.
 * Two small allreduces (MAX of n_segs ints, SUM of n + 1 int64). */
int cfx_exact_sum(cfx_exact *x, const float *const *chunks, int n_chunks, int max_terms,
                  float *out);

/* Collective: out[i] = sum over the chunks of all ranks of vals[c * n + i]
 * (vals holds n_chunks rows of n doubles), each i with its own scale, for
 * a few statistics (loss sums, correct counts, BatchNorm sums). The same
 * bound with double values: P = 62 - L bits of each value are kept. Returns
 * CFX_EXACT_* (x->bad_segment = the first non-finite i); x is only timed. */
int cfx_exact_sum_double(cfx_exact *x, const double *vals, int n_chunks, int n, int max_terms,
                         double *out);

/* The steps of cfx_exact_sum, without MPI, for tests and other transports:
 * scan sets x->bits to this rank's maxima, which the caller then replaces
 * by their maximum over ranks; accumulate converts this rank's chunks with
 * the scales of those maxima into x->acc (acc[n] = n_chunks), which the
 * caller sums over ranks; finish converts the sums into out. */
void cfx_exact_scan(cfx_exact *x, const float *const *chunks, int n_chunks);
/* The first segment whose maximum is not finite, or -1. */
int cfx_exact_first_nonfinite(const cfx_exact *x);
void cfx_exact_accumulate(cfx_exact *x, const float *const *chunks, int n_chunks, int max_terms);
int cfx_exact_finish(cfx_exact *x, int max_terms, float *out);

/* The same steps for segments [s0, s1) alone, which touch only those
 * segments' bits, acc and out, so disjoint ranges may be summed one after
 * another (cfx_buckets) and give the bits of a whole sum. The caller checks
 * the chunk count (n_chunks <= max_terms); finish returns the first segment
 * of the range whose sum is not finite, or -1. */
void cfx_exact_scan_segments(cfx_exact *x, const float *const *chunks, int n_chunks, int s0,
                             int s1);
int cfx_exact_first_nonfinite_segments(const cfx_exact *x, int s0, int s1);
void cfx_exact_accumulate_segments(cfx_exact *x, const float *const *chunks, int n_chunks,
                                   int max_terms, int s0, int s1);
int cfx_exact_finish_segments(const cfx_exact *x, int max_terms, float *out, int s0, int s1);

/* The power-of-two exponent S of a segment whose largest |x| has the float
 * bit pattern max_bits (finite): values are stored as rint(x * 2^S). */
int cfx_exact_shift(uint32_t max_bits, int max_terms);

#endif
