/* Error reporting and checked allocation shared by every cfx module.
 *
 * Library functions that can fail return 0 on success and -1 on failure,
 * filling a cfx_error with one line that names the file and the cause.
 * Programs print that line and exit; the library never calls exit(). */
#ifndef CFX_COMMON_H
#define CFX_COMMON_H

#include <stddef.h>
#include <stdio.h>

#define CFX_ERROR_LEN 512

typedef struct {
    char msg[CFX_ERROR_LEN];
} cfx_error;

/* Formats a message into err (if not NULL) and returns -1. */
int cfx_fail(cfx_error *err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* malloc/calloc that abort with the call site on out-of-memory: running out
 * of memory is not an input error the caller could report better. */
void *cfx_malloc_check(size_t size, const char *file, int line);
void *cfx_calloc_check(size_t count, size_t size, const char *file, int line);
#define cfx_malloc(size) cfx_malloc_check((size), __FILE__, __LINE__)
#define cfx_calloc(count, size) cfx_calloc_check((count), (size), __FILE__, __LINE__)
/* Zeroed memory aligned to a 64-byte cache line (release with free). */
void *cfx_zalloc_aligned_check(size_t count, size_t size, const char *file, int line);
#define cfx_zalloc_aligned(count, size) \
    cfx_zalloc_aligned_check((count), (size), __FILE__, __LINE__)

/* Creates a directory and its parents (like mkdir -p). */
int cfx_mkdir_p(const char *path, cfx_error *err);

/* Replaces path with data whole: path.tmp, fsync, rename, fsync of the
 * directory. On failure the previous file at path is untouched. */
int cfx_write_file_atomic(const char *path, const void *data, size_t size, cfx_error *err);

/* Compiles a hot loop three times (AVX-512, AVX2, baseline x86-64) and picks
 * the one the CPU runs at load time, so one binary is fast everywhere.  Only
 * for loops without multiplies: FMA contraction would make clones differ. */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(CFX_NO_CLONES)
#define CFX_SIMD_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define CFX_SIMD_CLONES
#endif

/* Threads of cfx's own loops (OpenMP; OpenBLAS built on OpenMP shares the
 * pool). Set once with the BLAS threads; 1 until then. Every loop split
 * over them computes each output on one thread in a fixed order, so the
 * bits do not depend on the thread count. */
void cfx_set_threads(int n);
int cfx_threads(void);

/* At most this many (cfx_set_threads caps the count). */
#define CFX_MAX_THREADS 64
/* This thread's number in the running parallel region with more than one
 * thread (0 outside one): regions nested in it run on their thread alone. */
int cfx_thread_id(void);

/* CFX_PARALLEL_FOR_IF(cond): runs the for loop that follows on cfx_threads()
 * OpenMP threads when cond holds (use it to keep small loops on one thread).
 * CFX_PARALLEL(n): the block that follows on n threads, where CFX_FOR_STATIC
 * splits a for loop over them in contiguous runs and CFX_BARRIER waits for
 * all of them. */
#ifdef _OPENMP
#define CFX_PRAGMA(x) _Pragma(#x)
#define CFX_PARALLEL_FOR_IF(cond)                                                                  \
    CFX_PRAGMA(omp parallel for schedule(static) num_threads(cfx_threads()) if (cond))
#define CFX_PARALLEL(n) CFX_PRAGMA(omp parallel num_threads(n) if ((n) > 1))
#define CFX_FOR_STATIC CFX_PRAGMA(omp for schedule(static))
#define CFX_BARRIER CFX_PRAGMA(omp barrier)
#else
#define CFX_BARRIER
#define CFX_PARALLEL_FOR_IF(cond)
#define CFX_PARALLEL(n)
#define CFX_FOR_STATIC
#endif
/* Element counts below this stay on one thread. */
#define CFX_PARALLEL_MIN 32768
/* How many blocks to split n elements into: one per thread, or 1 when small. */
int cfx_blocks(size_t n);

/* An element-wise kernel over n elements: out[i] from a[i] (and b[i]). */
typedef void (*cfx_elementwise_fn)(float *out, const float *a, const float *b, size_t n);
/* Runs f over [0, n) in cfx_blocks(n) blocks on cfx_threads() (b may be NULL). */
void cfx_parallel_elementwise(cfx_elementwise_fn f, float *out, const float *a, const float *b,
                              size_t n);

/* Sum of x[0..n) in double precision (8 lanes the compiler vectorises). */
double cfx_sum(const float *x, size_t n);

/* Seconds from a monotonic clock. */
double cfx_now(void);

#endif
