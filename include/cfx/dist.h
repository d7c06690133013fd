/* Data parallelism over MPI: rank layout, the per-rank slice of a global
 * batch, broadcast of initial weights and the gradient allreduce. */
#ifndef CFX_DIST_H
#define CFX_DIST_H

#include <stddef.h>

typedef struct {
    int rank, size;             /* in MPI_COMM_WORLD */
    int local_rank, local_size; /* among the ranks on this node */
    double allreduce_seconds;   /* time spent in cfx_dist_allreduce_sum */
    int thread_multiple;        /* MPI allows calls from several threads at once */
} cfx_dist;

/* MPI_Init_thread asking for MPI_THREAD_MULTIPLE (unless already
 * initialised) and the rank layout. */
void cfx_dist_init(cfx_dist *d, int *argc, char ***argv);
void cfx_dist_finalize(void);

/* The images [*start, *start + *count) of a global batch of n that rank r
 * of `size` processes: contiguous, sizes differ by at most one, possibly 0. */
void cfx_dist_slice(int n, int rank, int size, int *start, int *count);

/* In-place sum over all ranks. */
void cfx_dist_allreduce_sum(cfx_dist *d, float *buf, size_t n);
/* In-place sum over all ranks of a few doubles (statistics). */
void cfx_dist_allreduce_sum_double(double *buf, int n);
/* Gathers n doubles from every rank into all (size * n, rank 0 only). */
void cfx_dist_gather_double(const double *mine, int n, double *all);
/* Broadcast from rank 0. */
void cfx_dist_bcast(void *buf, size_t bytes);
/* In-place maximum over all ranks of n ints (flags). */
void cfx_dist_allreduce_max_int(int *buf, int n);
/* 1 on every rank if ok is non-zero on every rank. */
int cfx_dist_all_ok(int ok);

/* Collective: on rank 0, the hosts of the ranks in rank order, each once
 * with its ranks ("a (ranks 0-1), b (rank 2)"), cut to len; returns the
 * number of distinct hosts on every rank. */
int cfx_dist_hosts(const cfx_dist *d, char *out, size_t len);

/* Collective: gathers each rank's error message (empty = none, or the
 * failure was another rank's) and returns on rank 0 the first non-empty one,
 * prefixed with "rank k: " when k != 0, in out; out is empty when no rank
 * has a message. Lets rank 0 alone print. */
void cfx_dist_first_error(const cfx_dist *d, const char *msg, char *out, size_t len);

#endif
