/* OpenBLAS kernel selection and thread count. */
#define _GNU_SOURCE /* sched_getaffinity, CPU_COUNT */
#include <cblas.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "cfx/common.h" /* defines: cfx_set_threads */
#include "cfx/train.h" /* defines: cfx_blas_select_kernels, cfx_blas_setup */

void cfx_blas_select_kernels(char **argv)
{
    if (getenv("OPENBLAS_CORETYPE") || getenv("CFX_KEEP_BLAS_CORE"))
        return;
    if (strcasecmp(openblas_get_corename(), "prescott") != 0)
        return; /* OpenBLAS recognised this CPU */
    __builtin_cpu_init();
    const char *core = NULL;
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq"))
        core = "SkylakeX";
    else if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
        core = "Haswell";
    else if (__builtin_cpu_supports("avx"))
        core = "Sandybridge";
    if (!core)
        return;
    setenv("OPENBLAS_CORETYPE", core, 1);
    /* The binary's own path, not /proc/self/exe: exec names the process
     * after the file, and ps, top and pkill -x must still see cfx-train. */
    char self[4096];
    ssize_t len = readlink("/proc/self/exe", self, sizeof self - 1);
    if (len > 0) {
        self[len] = '\0';
        execv(self, argv);
    }
    execv("/proc/self/exe", argv);
    /* exec failed: go on with the fallback kernels */
    unsetenv("OPENBLAS_CORETYPE");
}

int cfx_blas_setup(const cfx_config *cfg, const cfx_dist *d)
{
    int threads = cfg->blas_threads;
    const char *env = getenv("CFX_BLAS_THREADS");
    if (threads <= 0 && env && atoi(env) > 0)
        threads = atoi(env);
    if (threads <= 0) {
        long cores = sysconf(_SC_NPROCESSORS_ONLN);
        threads = (int)(cores / (d->local_size > 0 ? d->local_size : 1));
        /* no more threads than the cores this rank may run on (mpirun binds
         * each of 1 or 2 ranks to one core unless told --bind-to none) */
        cpu_set_t allowed;
        if (sched_getaffinity(0, sizeof allowed, &allowed) == 0 && CPU_COUNT(&allowed) < threads)
            threads = CPU_COUNT(&allowed);
        if (threads < 1)
            threads = 1;
    }
    /* cfx splits the layers' work itself in pieces whose sizes do not depend
     * on the thread count, so neither do the results: OpenBLAS runs each
     * piece's SGEMM on one thread (cfx_set_threads sets it so). */
    cfx_set_threads(threads);
    return threads;
}

const char *cfx_blas_core(void) { return openblas_get_corename(); }

const char *cfx_blas_threading(void)
{
    switch (openblas_get_parallel()) {
    case 0: return "sequential";
    case 2: return "OpenMP";
    default: return "pthreads";
    }
}

int cfx_blas_threads(void) { return cfx_threads(); }
