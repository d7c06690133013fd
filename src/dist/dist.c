/* MPI data parallelism; see include/cfx/dist.h. */
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <mpi.h>

#include "cfx/common.h" /* defines: cfx_now */
#include "cfx/dist.h"   /* defines: cfx_dist, cfx_dist_slice, cfx_dist_allreduce_sum */

void cfx_dist_init(cfx_dist *d, int *argc, char ***argv)
{
    int initialised = 0, provided = MPI_THREAD_SINGLE;
    MPI_Initialized(&initialised);
    if (!initialised) /* threads for cfx_buckets' communication thread */
        MPI_Init_thread(argc, argv, MPI_THREAD_MULTIPLE, &provided);
    else
        MPI_Query_thread(&provided);
    d->thread_multiple = provided >= MPI_THREAD_MULTIPLE;
    MPI_Comm_rank(MPI_COMM_WORLD, &d->rank);
    MPI_Comm_size(MPI_COMM_WORLD, &d->size);
    MPI_Comm node;
    MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, d->rank, MPI_INFO_NULL, &node);
    MPI_Comm_rank(node, &d->local_rank);
    MPI_Comm_size(node, &d->local_size);
    MPI_Comm_free(&node);
    d->allreduce_seconds = 0.0;
}

void cfx_dist_finalize(void)
{
    int finalised = 0;
    MPI_Finalized(&finalised);
    if (!finalised)
        MPI_Finalize();
}

void cfx_dist_slice(int n, int rank, int size, int *start, int *count)
{
    int base = n / size, extra = n % size;
    *count = base + (rank < extra);
    *start = rank * base + (rank < extra ? rank : extra);
}

void cfx_dist_allreduce_sum(cfx_dist *d, float *buf, size_t n)
{
    double t0 = cfx_now();
    while (n > 0) {
        int chunk = n > (size_t)INT_MAX ? INT_MAX : (int)n;
        MPI_Allreduce(MPI_IN_PLACE, buf, chunk, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
        buf += chunk;
        n -= (size_t)chunk;
    }
    d->allreduce_seconds += cfx_now() - t0;
}

void cfx_dist_allreduce_sum_double(double *buf, int n)
{
    MPI_Allreduce(MPI_IN_PLACE, buf, n, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
}

void cfx_dist_gather_double(const double *mine, int n, double *all)
{
    MPI_Gather(mine, n, MPI_DOUBLE, all, n, MPI_DOUBLE, 0, MPI_COMM_WORLD);
}

void cfx_dist_bcast(void *buf, size_t bytes)
{
    char *p = buf;
    while (bytes > 0) {
        int chunk = bytes > (size_t)INT_MAX ? INT_MAX : (int)bytes;
        MPI_Bcast(p, chunk, MPI_BYTE, 0, MPI_COMM_WORLD);
        p += chunk;
        bytes -= (size_t)chunk;
    }
}

void cfx_dist_allreduce_max_int(int *buf, int n)
{
    MPI_Allreduce(MPI_IN_PLACE, buf, n, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
}

int cfx_dist_all_ok(int ok)
{
    int mine = ok != 0, all = 0;
    MPI_Allreduce(&mine, &all, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
    return all;
}

void cfx_dist_first_error(const cfx_dist *d, const char *msg, char *out, size_t len)
{
    char mine[CFX_ERROR_LEN];
    snprintf(mine, sizeof mine, "%s", msg ? msg : "");
    char *all = d->rank == 0 ? cfx_malloc((size_t)d->size * CFX_ERROR_LEN) : NULL;
    MPI_Gather(mine, CFX_ERROR_LEN, MPI_CHAR, all, CFX_ERROR_LEN, MPI_CHAR, 0, MPI_COMM_WORLD);
    if (len)
        out[0] = '\0';
    if (d->rank != 0)
        return;
    for (int r = 0; r < d->size; r++) {
        const char *m = all + (size_t)r * CFX_ERROR_LEN;
        if (m[0]) {
            if (r == 0)
                snprintf(out, len, "%s", m);
            else
                snprintf(out, len, "rank %d: %s", r, m);
            break;
        }
    }
    free(all);
}

enum { HOST_LEN = 64 };

/* Appends ", host (rank a)" or "(ranks a-b)" for the run of ranks [a, b]. */
static void append_run(char *out, size_t len, const char *host, int a, int b)
{
    size_t used = strlen(out);
    if (used + 1 >= len)
        return;
    if (a == b)
        snprintf(out + used, len - used, "%s%s (rank %d)", used ? ", " : "", host, a);
    else
        snprintf(out + used, len - used, "%s%s (ranks %d-%d)", used ? ", " : "", host, a, b);
}

int cfx_dist_hosts(const cfx_dist *d, char *out, size_t len)
{
    char mine[HOST_LEN] = "";
    if (gethostname(mine, sizeof mine - 1) != 0)
        snprintf(mine, sizeof mine, "?");
    char *all = cfx_malloc((size_t)d->size * HOST_LEN);
    MPI_Allgather(mine, HOST_LEN, MPI_CHAR, all, HOST_LEN, MPI_CHAR, MPI_COMM_WORLD);
    int distinct = 0;
    for (int r = 0; r < d->size; r++) {
        int seen = 0;
        for (int q = 0; q < r && !seen; q++)
            seen = !strcmp(all + (size_t)q * HOST_LEN, all + (size_t)r * HOST_LEN);
        distinct += !seen;
    }
    if (len)
        out[0] = '\0';
    for (int a = 0, b; d->rank == 0 && a < d->size; a = b + 1) {
        const char *host = all + (size_t)a * HOST_LEN;
        for (b = a; b + 1 < d->size && !strcmp(all + (size_t)(b + 1) * HOST_LEN, host); b++)
            ;
        append_run(out, len, host, a, b);
    }
    free(all);
    return distinct;
}
