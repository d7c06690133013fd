/* exact_sum_mpi: run under mpirun with any number of ranks. The same 11
 * chunks of adversarial values are spread over the ranks in four ways
 * (contiguous slices, round robin, all on the last rank, none on rank 0);
 * cfx_exact_sum must give, on every rank and for every layout, bitwise the
 * sum that the steps compute in one process over all chunks. The per-chunk
 * statistics through cfx_exact_sum_double must agree bitwise across layouts,
 * and a NaN in one chunk must be reported by every rank. The same sums in
 * gradient buckets (cfx_buckets, a communication thread, with other
 * collectives on the main thread meanwhile) must give the same bits and
 * find the same NaN. Rank 0 prints a
 * digest of the results, which tests/exact_sum_mpi.sh compares across rank
 * counts. Exit status 0 if all holds, 1 otherwise. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <mpi.h>

#include "cfx/buckets.h"   /* defines: cfx_buckets */
#include "cfx/dist.h"      /* defines: cfx_dist_slice */
#include "cfx/exact_sum.h" /* defines: cfx_exact, cfx_exact_sum, cfx_exact_sum_double */
#include "cfx/rng.h"       /* defines: cfx_rng */

enum { K = 11, N = 3000, N_SEGS = 5, N_STATS = 3, N_LAYOUTS = 4 };
static const size_t seg_len[N_SEGS] = {1200, 16, 0, 1000, 784};

/* Chunk j: segment 0 mixed magnitudes 2^-40..2^40, segment 1 zeros,
 * segment 3 cancelling huge values plus tiny ones, segment 4 denormals
 * except in chunk 5, which holds 1e30 there. */
static void fill_chunk(float *c, int j)
{
    cfx_rng rng;
    cfx_rng_seed(&rng, 100 + (uint64_t)j);
    for (size_t i = 0; i < N; i++) {
        float u = cfx_rng_float(&rng), sign = cfx_rng_float(&rng) < 0.5f ? -1.0f : 1.0f;
        if (i < 1200)
            c[i] = sign * ldexpf(1.0f + u, (int)(80 * cfx_rng_float(&rng)) - 40);
        else if (i < 1216)
            c[i] = 0.0f;
        else if (i < 2216)
            c[i] = (j % 2 ? -3e37f : 3e37f) + sign * u;
        else
            c[i] = j == 5 ? 1e30f : sign * ldexpf(u, -130);
    }
}

/* Which rank owns chunk j in layout l with `size` ranks. */
static int owner(int l, int j, int size)
{
    switch (l) {
    case 0: /* contiguous slices */
        for (int r = 0; r < size; r++) {
            int start, count;
            cfx_dist_slice(K, r, size, &start, &count);
            if (j >= start && j < start + count)
                return r;
        }
        return -1;
    case 1: return j % size;                                  /* round robin */
    case 2: return size - 1;                                  /* all on the last rank */
    default: return size == 1 ? 0 : 1 + (j * 7) % (size - 1); /* none on rank 0 */
    }
}

static uint64_t fnv1a(const void *p, size_t bytes, uint64_t h)
{
    const unsigned char *b = p;
    for (size_t i = 0; i < bytes; i++)
        h = (h ^ b[i]) * 0x100000001b3u;
    return h;
}

/* The sum over all chunks in one process, with the steps. */
static void reference(float **chunks, float *ref)
{
    cfx_exact x;
    cfx_exact_create(&x, N, seg_len, N_SEGS, NULL);
    cfx_exact_scan(&x, (const float *const *)chunks, K);
    cfx_exact_accumulate(&x, (const float *const *)chunks, K, K);
    cfx_exact_finish(&x, K, ref);
    cfx_exact_free(&x);
}

/* The sum of `mine` through gradient buckets, each segment a layer (layer 2
 * has no floats), with bucket_bytes 0 (a bucket per layer) or 5000 (layers
 * 3-4, then 0-2); between layers the main thread runs a statistics sum, as
 * BatchNorm does during a backward pass. Returns the status, *bad_segment. */
static int sum_in_buckets(cfx_exact *x, const float **mine, int m, size_t bucket_bytes, float *out,
                          int *bad_segment)
{
    static const int layer_seg[N_SEGS + 1] = {0, 1, 2, 3, 4, 5};
    cfx_buckets *b = NULL;
    if (cfx_buckets_create(&b, x, layer_seg, N_SEGS, bucket_bytes, NULL) != 0)
        return -1;
    cfx_buckets_begin(b, mine, m, K, out);
    for (int i = N_SEGS - 1; i >= 0; i--) {
        double stat = 1.0, total = 0.0;
        cfx_exact_sum_double(x, &stat, 1, 1, K, &total);
        cfx_buckets_layer_done(b, i);
    }
    int status = cfx_buckets_end(b, bad_segment);
    int sent = (int)cfx_buckets_sent(b),
        planned = cfx_buckets_count(x, layer_seg, N_SEGS, bucket_bytes);
    cfx_buckets_free(b);
    if (sent != planned || sent != (bucket_bytes ? 2 : 4)) {
        fprintf(stderr, "%zu bytes: %d buckets sent, %d planned\n", bucket_bytes, sent, planned);
        return -1;
    }
    return status;
}

/* Buckets of both sizes give ref's bits; with a NaN in chunk 7 (segment 3)
 * they report segment 3. Returns 1 if anything is wrong. */
static int check_buckets(cfx_exact *x, const float **mine, int m, float **chunks, const float *ref,
                         float *out, int rank, int l)
{
    int wrong = 0;
    for (size_t bytes = 0; bytes <= 5000; bytes += 5000) {
        int bad = -1;
        memset(out, 0xff, N * sizeof *out);
        int status = sum_in_buckets(x, mine, m, bytes, out, &bad);
        if (status != CFX_EXACT_OK || memcmp(out, ref, N * sizeof *out)) {
            fprintf(stderr, "rank %d, layout %d, buckets of %zu bytes: status %d, %s\n", rank, l,
                    bytes, status, status ? "" : "not the one-process sum");
            wrong = 1;
        }
        float keep = chunks[7][1500];
        chunks[7][1500] = NAN;
        status = sum_in_buckets(x, mine, m, bytes, out, &bad);
        chunks[7][1500] = keep;
        if (status != CFX_EXACT_NONFINITE || bad != 3) {
            fprintf(stderr, "rank %d, buckets of %zu bytes: a NaN gives status %d, segment %d\n",
                    rank, bytes, status, bad);
            wrong = 1;
        }
    }
    return wrong;
}

int main(int argc, char **argv)
{
    int provided = 0;
    MPI_Init_thread(&argc, &argv, MPI_THREAD_MULTIPLE, &provided);
    if (provided < MPI_THREAD_MULTIPLE) {
        fprintf(stderr, "exact_sum_mpi: this MPI gives no MPI_THREAD_MULTIPLE (cfx_buckets)\n");
        return 1;
    }
    int rank, size, bad = 0;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    float *chunks[K], *ref = malloc(N * sizeof *ref), *out = malloc(N * sizeof *out);
    const float *mine[K];
    double stats[K][N_STATS], my_stats[K][N_STATS], dsum[N_LAYOUTS][N_STATS];
    for (int j = 0; j < K; j++) {
        chunks[j] = malloc(N * sizeof(float));
        fill_chunk(chunks[j], j);
        stats[j][0] = 1e15 * (j % 2 ? -1 : 1) + 0.1 * j; /* a loss sum with cancellation */
        stats[j][1] = 8 - j % 3;                         /* correct predictions */
        stats[j][2] = ldexp(1.0 + j, -1060);             /* denormal */
    }
    reference(chunks, ref);
    cfx_exact x;
    if (cfx_exact_create(&x, N, seg_len, N_SEGS, NULL) != 0)
        return 1;
    uint64_t digest = 0xcbf29ce484222325u;
    for (int l = 0; l < N_LAYOUTS; l++) {
        int m = 0;
        for (int j = 0; j < K; j++)
            if (owner(l, j, size) == rank) {
                memcpy(my_stats[m], stats[j], sizeof stats[j]);
                mine[m++] = chunks[j];
            }
        bad |= check_buckets(&x, mine, m, chunks, ref, out, rank, l);
        memset(out, 0xff, N * sizeof *out);
        int status = cfx_exact_sum(&x, mine, m, K, out);
        if (status != CFX_EXACT_OK || memcmp(out, ref, N * sizeof *out)) {
            fprintf(stderr, "rank %d of %d, layout %d (%d chunks here): status %d, %s\n", rank,
                    size, l, m, status, status ? "" : "not the one-process sum");
            bad = 1;
        }
        status = cfx_exact_sum_double(&x, &my_stats[0][0], m, N_STATS, K, dsum[l]);
        if (status != CFX_EXACT_OK || memcmp(dsum[l], dsum[0], sizeof dsum[0])) {
            fprintf(stderr,
                    "rank %d of %d, layout %d: statistics status %d or differ: %.17g %.17g %.17g\n",
                    rank, size, l, status, dsum[l][0], dsum[l][1], dsum[l][2]);
            bad = 1;
        }
        if (l == 1) { /* a NaN in chunk 7 (segment 3), wherever it sits */
            float keep = chunks[7][1500];
            chunks[7][1500] = NAN;
            status = cfx_exact_sum(&x, mine, m, K, out);
            chunks[7][1500] = keep;
            if (status != CFX_EXACT_NONFINITE || x.bad_segment != 3) {
                fprintf(stderr, "rank %d of %d: a NaN gives status %d, segment %d\n", rank, size,
                        status, x.bad_segment);
                bad = 1;
            }
        }
    }
    digest = fnv1a(out, N * sizeof *out, digest);
    digest = fnv1a(dsum[0], sizeof dsum[0], digest);
    int any_bad = 0;
    MPI_Allreduce(&bad, &any_bad, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
    if (rank == 0)
        printf("%d ranks: digest %016llx, loss sum %.17g, correct %.17g; %s\n", size,
               (unsigned long long)digest, dsum[0][0], dsum[0][1], any_bad ? "FAIL" : "ok");
    cfx_exact_free(&x);
    for (int j = 0; j < K; j++)
        free(chunks[j]);
    free(ref);
    free(out);
    MPI_Finalize();
    return any_bad;
}
