/* The exact gradient sum overlapped with the backward pass; see
 * include/cfx/buckets.h. */
#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <sys/prctl.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <mpi.h>

#include "cfx/buckets.h" /* defines: cfx_buckets */
#include "cfx/common.h"  /* defines: cfx_malloc, cfx_fail, cfx_now */

#define POLL_NS 50000 /* the thread tests its requests this often while waiting */

struct cfx_buckets {
    cfx_exact *x;
    MPI_Comm comm; /* the buckets' own: their collectives never meet the main thread's */
    int *layer_seg;
    size_t bucket_bytes;
    /* this step (set by begin, read by the thread) */
    const float *const *chunks;
    int n_chunks, max_terms;
    float *out;
    int unsent; /* segments [0, unsent) are not in a bucket yet */
    /* the queue of buckets: bucket k is segments [lo[k], hi[k]) */
    int *lo, *hi, n_queued, n_done, quit;
    atomic_int ending; /* the main thread waits in cfx_buckets_end */
    int bad;           /* the first non-finite segment of this step, or -1 (the thread's) */
    long sent;
    double busy;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    pthread_t thread;
};

/* Waits for req, testing it every POLL_NS while the backward pass runs (the
 * thread then neither spins on a core the compute threads need nor stalls
 * MPI's progress for long), without pause once the main thread waits too. */
static void wait_polling(cfx_buckets *b, MPI_Request *req)
{
    int done = 0;
    const struct timespec pause = {0, POLL_NS};
    for (MPI_Test(req, &done, MPI_STATUS_IGNORE); !done; MPI_Test(req, &done, MPI_STATUS_IGNORE))
        if (!atomic_load_explicit(&b->ending, memory_order_relaxed))
            nanosleep(&pause, NULL);
}

/* In-place MPI_SUM of n int64 on comm, in pieces of at most INT_MAX. */
static void sum_int64(cfx_buckets *b, int64_t *buf, size_t n)
{
    while (n > 0) {
        int piece = n > (size_t)INT_MAX ? INT_MAX : (int)n;
        MPI_Request req;
        MPI_Iallreduce(MPI_IN_PLACE, buf, piece, MPI_INT64_T, MPI_SUM, b->comm, &req);
        wait_polling(b, &req);
        buf += piece;
        n -= (size_t)piece;
    }
}

/* cfx_exact_sum of segments [s0, s1) (on the thread). */
static void sum_bucket(cfx_buckets *b, int s0, int s1)
{
    cfx_exact *x = b->x;
    double t0 = cfx_now();
    cfx_exact_scan_segments(x, b->chunks, b->n_chunks, s0, s1);
    MPI_Request req;
    MPI_Iallreduce(MPI_IN_PLACE, x->bits + s0, s1 - s0, MPI_UINT32_T, MPI_MAX, b->comm, &req);
    wait_polling(b, &req);
    int bad = cfx_exact_first_nonfinite_segments(x, s0, s1);
    if (bad < 0) {
        cfx_exact_accumulate_segments(x, b->chunks, b->n_chunks, b->max_terms, s0, s1);
        sum_int64(b, x->acc + x->bounds[s0], x->bounds[s1] - x->bounds[s0]);
        bad = cfx_exact_finish_segments(x, b->max_terms, b->out, s0, s1);
    }
    if (bad >= 0 && (b->bad < 0 || bad < b->bad))
        b->bad = bad;
    b->busy += cfx_now() - t0;
}

static void *thread_main(void *arg)
{
    cfx_buckets *b = arg;
    prctl(PR_SET_TIMERSLACK, 1UL); /* POLL_NS, not the default 50 us more */
    pthread_mutex_lock(&b->mu);
    for (;;) {
        while (b->n_done == b->n_queued && !b->quit)
            pthread_cond_wait(&b->cv, &b->mu);
        if (b->n_done == b->n_queued) /* quit, nothing left */
            break;
        int s0 = b->lo[b->n_done], s1 = b->hi[b->n_done];
        pthread_mutex_unlock(&b->mu);
        sum_bucket(b, s0, s1);
        pthread_mutex_lock(&b->mu);
        b->n_done++;
        pthread_cond_broadcast(&b->cv);
    }
    pthread_mutex_unlock(&b->mu);
    return NULL;
}

/* Queues segments [s0, b->unsent) as a bucket. */
static void send_from(cfx_buckets *b, int s0)
{
    if (s0 >= b->unsent)
        return;
    pthread_mutex_lock(&b->mu);
    b->lo[b->n_queued] = s0;
    b->hi[b->n_queued] = b->unsent;
    b->n_queued++;
    pthread_cond_broadcast(&b->cv);
    pthread_mutex_unlock(&b->mu);
    b->unsent = s0;
    b->sent++;
}

/* Segments [s0, unsent) hold enough gradients to go as a bucket. */
static int bucket_full(const cfx_exact *x, int s0, int unsent, size_t bucket_bytes)
{
    size_t floats = x->bounds[unsent] - x->bounds[s0];
    return floats > 0 && floats * sizeof(float) >= bucket_bytes;
}

int cfx_buckets_count(const cfx_exact *x, const int *layer_seg, int n_layers, size_t bucket_bytes)
{
    int count = 0, unsent = x->n_segs;
    for (int i = n_layers - 1; i >= 0; i--)
        if (bucket_full(x, layer_seg[i], unsent, i == 0 ? 0 : bucket_bytes))
            count++, unsent = layer_seg[i];
    return count;
}

int cfx_buckets_create(cfx_buckets **out, cfx_exact *x, const int *layer_seg, int n_layers,
                       size_t bucket_bytes, cfx_error *err)
{
    if (n_layers < 1 || layer_seg[n_layers] != x->n_segs)
        return cfx_fail(err, "gradient buckets: %d layers do not cover %d segments", n_layers,
                        x->n_segs);
    cfx_buckets *b = cfx_calloc(1, sizeof *b);
    b->x = x;
    b->bucket_bytes = bucket_bytes;
    b->layer_seg = cfx_malloc(((size_t)n_layers + 1) * sizeof *b->layer_seg);
    memcpy(b->layer_seg, layer_seg, ((size_t)n_layers + 1) * sizeof *layer_seg);
    b->lo = cfx_malloc(((size_t)n_layers + 1) * sizeof *b->lo);
    b->hi = cfx_malloc(((size_t)n_layers + 1) * sizeof *b->hi);
    MPI_Comm_dup(MPI_COMM_WORLD, &b->comm);
    pthread_mutex_init(&b->mu, NULL);
    pthread_cond_init(&b->cv, NULL);
    if (pthread_create(&b->thread, NULL, thread_main, b) != 0) {
        cfx_buckets_free(b);
        return cfx_fail(err, "gradient buckets: cannot start the communication thread");
    }
    *out = b;
    return 0;
}

void cfx_buckets_free(cfx_buckets *b)
{
    if (!b)
        return;
    pthread_mutex_lock(&b->mu);
    b->quit = 1;
    pthread_cond_broadcast(&b->cv);
    pthread_mutex_unlock(&b->mu);
    if (b->thread)
        pthread_join(b->thread, NULL);
    pthread_cond_destroy(&b->cv);
    pthread_mutex_destroy(&b->mu);
    MPI_Comm_free(&b->comm);
    free(b->layer_seg);
    free(b->lo);
    free(b->hi);
    free(b);
}

void cfx_buckets_begin(cfx_buckets *b, const float *const *chunks, int n_chunks, int max_terms,
                       float *out)
{
    b->chunks = chunks;
    b->n_chunks = n_chunks;
    b->max_terms = max_terms;
    b->out = out;
    b->unsent = b->x->n_segs;
    b->n_queued = b->n_done = 0;
    b->bad = -1;
}

void cfx_buckets_layer_done(cfx_buckets *b, int layer)
{
    if (bucket_full(b->x, b->layer_seg[layer], b->unsent, b->bucket_bytes))
        send_from(b, b->layer_seg[layer]);
}

int cfx_buckets_end(cfx_buckets *b, int *bad_segment)
{
    send_from(b, 0);
    atomic_store(&b->ending, 1);
    pthread_mutex_lock(&b->mu);
    while (b->n_done < b->n_queued)
        pthread_cond_wait(&b->cv, &b->mu);
    pthread_mutex_unlock(&b->mu);
    atomic_store(&b->ending, 0);
    *bad_segment = b->bad;
    return b->bad < 0 ? CFX_EXACT_OK : CFX_EXACT_NONFINITE;
}

long cfx_buckets_sent(const cfx_buckets *b) { return b->sent; }

double cfx_buckets_busy_seconds(const cfx_buckets *b) { return b->busy; }
