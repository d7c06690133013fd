/* The exact gradient sum overlapped with the backward pass (dist.overlap).
 *
 * The parameter tensors (segments of a cfx_exact) are cut at layer
 * boundaries into buckets of at least bucket_bytes of gradients. As soon as
 * the backward pass has finished every layer of a bucket (the last layers
 * come first), a communication thread sums the bucket over all ranks (the
 * steps of cfx_exact_sum on its segments, with nonblocking allreduces on a
 * communicator of its own) while the compute threads go on with the earlier
 * layers. Each segment keeps its own scale, so the result is bitwise that of
 * one cfx_exact_sum after the backward pass. The bucket boundaries depend
 * only on the model and bucket_bytes, so every rank issues the same
 * collectives in the same order.
 *
 * Needs MPI_THREAD_MULTIPLE (cfx_dist.thread_multiple): the main thread keeps
 * calling MPI (BatchNorm's batch sums) while buckets are in flight. */
#ifndef CFX_BUCKETS_H
#define CFX_BUCKETS_H

#include <stddef.h>

#include "cfx/common.h"    /* defines: cfx_error */
#include "cfx/exact_sum.h" /* defines: cfx_exact */

typedef struct cfx_buckets cfx_buckets;

/* The buckets a step sends (1: nothing overlaps, the thread only adds a
 * hand-over). Arguments as cfx_buckets_create's. */
int cfx_buckets_count(const cfx_exact *x, const int *layer_seg, int n_layers, size_t bucket_bytes);

/* Collective. x: the segments; layer_seg[0..n_layers]: the first segment of
 * each layer, then x->n_segs. Starts the communication thread. */
int cfx_buckets_create(cfx_buckets **b, cfx_exact *x, const int *layer_seg, int n_layers,
                       size_t bucket_bytes, cfx_error *err);
/* Collective: stops the thread. Before MPI_Finalize. */
void cfx_buckets_free(cfx_buckets *b);

/* Before a backward pass: this rank's n_chunks gradients (read by the
 * thread until cfx_buckets_end) and where the sums go. */
void cfx_buckets_begin(cfx_buckets *b, const float *const *chunks, int n_chunks, int max_terms,
                       float *out);
/* The backward pass has finished layer i and every later one. */
void cfx_buckets_layer_done(cfx_buckets *b, int layer);
/* Sends what is left, waits for every bucket. CFX_EXACT_OK, or
 * CFX_EXACT_NONFINITE with the first non-finite segment in *bad_segment. */
int cfx_buckets_end(cfx_buckets *b, int *bad_segment);

/* Buckets sent so far, and the thread's seconds spent summing them. */
long cfx_buckets_sent(const cfx_buckets *b);
double cfx_buckets_busy_seconds(const cfx_buckets *b);

#endif
