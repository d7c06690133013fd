/* Error messages, checked allocation, directories, atomic file writes, clocks
 * and the threads of cfx's own loops. */
#include "cfx/common.h" /* defines: cfx_fail, cfx_malloc_check, cfx_mkdir_p, cfx_sum, cfx_now */

#include <cblas.h> /* defines: openblas_set_num_threads */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#ifdef _OPENMP
#include <omp.h>
#endif

int cfx_fail(cfx_error *err, const char *fmt, ...)
{
    if (err) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err->msg, sizeof err->msg, fmt, ap);
        va_end(ap);
    }
    return -1;
}

void *cfx_malloc_check(size_t size, const char *file, int line)
{
    void *p = malloc(size ? size : 1);
    if (!p) {
        fprintf(stderr, "cfx: out of memory allocating %zu bytes at %s:%d\n", size, file, line);
        abort();
    }
    return p;
}

void *cfx_calloc_check(size_t count, size_t size, const char *file, int line)
{
    void *p = calloc(count ? count : 1, size ? size : 1);
    if (!p) {
        fprintf(stderr, "cfx: out of memory allocating %zu x %zu bytes at %s:%d\n", count, size,
                file, line);
        abort();
    }
    return p;
}

void *cfx_zalloc_aligned_check(size_t count, size_t size, const char *file, int line)
{
    size_t bytes = (count ? count : 1) * (size ? size : 1);
    void *p = NULL;
    int overflow = count && size && bytes / size != count;
    if (overflow || posix_memalign(&p, 64, bytes) != 0)
        p = NULL;
    if (!p) {
        fprintf(stderr, "cfx: out of memory allocating %zu x %zu bytes at %s:%d\n", count, size,
                file, line);
        abort();
    }
    return memset(p, 0, bytes);
}

int cfx_mkdir_p(const char *path, cfx_error *err)
{
    char buf[4096];
    size_t len = strlen(path);
    if (len == 0 || len >= sizeof buf)
        return cfx_fail(err, "%s: invalid directory path", path);
    memcpy(buf, path, len + 1);
    for (size_t i = 1; i <= len; i++) {
        if (buf[i] != '/' && buf[i] != '\0')
            continue;
        char saved = buf[i];
        buf[i] = '\0';
        if (mkdir(buf, 0777) != 0 && errno != EEXIST)
            return cfx_fail(err, "%s: cannot create directory: %s", buf, strerror(errno));
        struct stat st;
        if (stat(buf, &st) != 0 || !S_ISDIR(st.st_mode))
            return cfx_fail(err, "%s: exists and is not a directory", buf);
        buf[i] = saved;
    }
    return 0;
}

CFX_SIMD_CLONES double cfx_sum(const float *x, size_t n)
{
    double lanes[8] = {0};
    size_t j = 0;
    for (; j + 8 <= n; j += 8)
        for (int k = 0; k < 8; k++)
            lanes[k] += x[j + k];
    double s = 0.0;
    for (int k = 0; k < 8; k++)
        s += lanes[k];
    for (; j < n; j++)
        s += x[j];
    return s;
}

static int thread_count = 1;

void cfx_set_threads(int n)
{
    thread_count = n < 1 ? 1 : n > CFX_MAX_THREADS ? CFX_MAX_THREADS : n;
    /* Every SGEMM of the layers runs inside one of cfx's pieces, on one
     * thread. (The OpenMP build of OpenBLAS would otherwise follow OpenMP's
     * default thread count outside a parallel region, and a single-threaded
     * run would not give the bits of a threaded one.) */
    openblas_set_num_threads(1);
#ifdef _OPENMP
    /* a region inside a parallel one (a layer's loop inside the replicas'
     * threads) runs on its thread alone */
    omp_set_max_active_levels(1);
#endif
}

int cfx_thread_id(void)
{
#ifdef _OPENMP
    for (int level = omp_get_level(); level > 0; level--)
        if (omp_get_team_size(level) > 1)
            return omp_get_ancestor_thread_num(level);
    return 0;
#else
    return 0;
#endif
}

int cfx_threads(void) { return thread_count; }

int cfx_blocks(size_t n) { return n >= CFX_PARALLEL_MIN ? thread_count : 1; }

/* Start of block b of `blocks` over n elements (multiples of 16 floats, so
 * two threads never write one cache line); block `blocks` starts at n. */
static size_t block_start(size_t n, int blocks, int b)
{
    if (b >= blocks)
        return n;
    return (n * (size_t)b / (size_t)blocks) & ~(size_t)15;
}

void cfx_parallel_elementwise(cfx_elementwise_fn f, float *out, const float *a, const float *b,
                              size_t n)
{
    const int blocks = cfx_blocks(n);
    CFX_PARALLEL_FOR_IF(blocks > 1)
    for (int k = 0; k < blocks; k++) {
        size_t lo = block_start(n, blocks, k), hi = block_start(n, blocks, k + 1);
        f(out + lo, a + lo, b ? b + lo : NULL, hi - lo);
    }
}

double cfx_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

int cfx_write_file_atomic(const char *path, const void *data, size_t size, cfx_error *err)
{
    char tmp[4096];
    if (snprintf(tmp, sizeof tmp, "%s.tmp", path) >= (int)sizeof tmp)
        return cfx_fail(err, "%s: path too long", path);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0)
        return cfx_fail(err, "%s: cannot create: %s", tmp, strerror(errno));
    const char *p = data;
    size_t left = size;
    while (left > 0) {
        ssize_t w = write(fd, p, left);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0) {
            int e = errno;
            close(fd);
            unlink(tmp);
            return cfx_fail(err, "%s: write failed: %s", tmp, strerror(e));
        }
        p += w, left -= (size_t)w;
    }
    if (fsync(fd) != 0 || close(fd) != 0) {
        int e = errno;
        unlink(tmp);
        return cfx_fail(err, "%s: write failed: %s", tmp, strerror(e));
    }
    if (rename(tmp, path) != 0) {
        int e = errno;
        unlink(tmp);
        return cfx_fail(err, "%s: cannot rename into place: %s", path, strerror(e));
    }
    char dir[4096];
    snprintf(dir, sizeof dir, "%s", path);
    char *slash = strrchr(dir, '/');
    if (!slash)
        snprintf(dir, sizeof dir, ".");
    else
        slash[slash == dir] = '\0'; /* "/name" keeps "/" */
    int dfd = open(dir, O_RDONLY | O_DIRECTORY);
    if (dfd >= 0) { /* make the rename durable */
        fsync(dfd);
        close(dfd);
    }
    return 0;
}
