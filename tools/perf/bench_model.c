/* cfx-bench-model: where one training step's time goes, layer by layer.
 *
 *   cfx-bench-model [--config FILE] [--batch N] [--steps N] [--threads N]
 *                   [--conv direct|gemm]
 *   mpirun -np N cfx-bench-model --allreduce
 *   mpirun -np N cfx-bench-model --reduce [--config FILE] [--batch N] [--chunk N]
 *
 * --conv picks the convolution kernel: the direct AVX-512 one (the default
 * where the CPU has it) or im2col + SGEMM, to compare the two.
 * Runs forward + loss + backward + Adam on random images for the model of
 * the config (default configs/seed.ini) and prints per-layer milliseconds and
 * GFLOP/s, the whole step, and the SGEMM peak measured on this machine.
 * With --allreduce it times MPI_Allreduce over a range of sizes instead and
 * fits the latency-bandwidth model t = a + b * bytes.
 * With --reduce it compares, per step, today's float MPI_Allreduce of the
 * gradient with the exact sum (cfx_exact_sum) of this rank's chunks of the
 * global batch (batch / chunk chunks over all ranks, default 64 / 8), for
 * the model of the config and for 2 M floats (a larger model). */
#include <cblas.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <mpi.h>

#include "cfx/config.h"    /* defines: cfx_config_load */
#include "cfx/dist.h"      /* defines: cfx_dist_slice */
#include "cfx/exact_sum.h" /* defines: cfx_exact, cfx_exact_sum */
#include "cfx/nn.h"        /* defines: cfx_model */
#include "cfx/optim.h"     /* defines: cfx_optim */
#include "cfx/rng.h"       /* defines: cfx_rng */
#include "cfx/train.h"     /* defines: cfx_blas_select_kernels, cfx_blas_core */

static double cpu_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static double sgemm_peak(int n, int reps)
{
    float *a = cfx_calloc((size_t)n * n, sizeof(float)), *b = cfx_calloc((size_t)n * n, 4),
          *c = cfx_calloc((size_t)n * n, 4);
    for (size_t i = 0; i < (size_t)n * n; i++)
        a[i] = b[i] = 1e-3f * (float)(i % 97);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1, a, n, b, n, 0, c, n);
    double t = cfx_now();
    for (int r = 0; r < reps; r++)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1, a, n, b, n, 0, c, n);
    t = cfx_now() - t;
    free(a), free(b), free(c);
    return 2.0 * n * (double)n * n * reps / t * 1e-9;
}

/* Repetitions of an allreduce of n floats that take about `budget` seconds,
 * from one timed call on rank 0 (at least 3, at most 2000), on every rank. */
static int allreduce_reps(float *buf, int n, double budget)
{
    for (int r = 0; r < 3; r++)
        MPI_Allreduce(MPI_IN_PLACE, buf, n, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
    MPI_Barrier(MPI_COMM_WORLD);
    double t = cfx_now();
    MPI_Allreduce(MPI_IN_PLACE, buf, n, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
    t = cfx_now() - t;
    int reps = t > 0 ? (int)(budget / t) : 2000;
    reps = reps < 3 ? 3 : reps > 2000 ? 2000 : reps;
    MPI_Bcast(&reps, 1, MPI_INT, 0, MPI_COMM_WORLD);
    return reps;
}

/* Times in-place MPI_Allreduce(SUM) of floats from 1 KB to --max-bytes
 * (default 4 MB), about 0.25 s per size; rank 0 prints each size and a fit of
 * t = alpha + beta * bytes that weighs every size by 1/t^2 (relative error),
 * so the small sizes set alpha and the large ones beta. */
static int bench_allreduce(int *argc, char ***argv)
{
    MPI_Init(argc, argv);
    int rank, size;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    long max_floats = 1 << 20;
    for (int i = 1; i + 1 < *argc; i++)
        if (!strcmp((*argv)[i], "--max-bytes"))
            max_floats = atol((*argv)[i + 1]) / 4;
    if (max_floats < 256 || max_floats > (1L << 28)) {
        if (rank == 0)
            fprintf(stderr, "cfx-bench-model: --max-bytes must be 1024 to 1 GiB\n");
        MPI_Finalize();
        return 2;
    }
    float *buf = cfx_calloc((size_t)max_floats, sizeof(float));
    double sw = 0, sx = 0, sy = 0, sxx = 0, sxy = 0;
    if (rank == 0)
        printf("MPI_Allreduce(SUM, float) over %d ranks\n%12s %12s %10s %8s\n", size, "bytes",
               "microseconds", "GB/s", "reps");
    for (long n = 256; n <= max_floats; n *= 2) {
        int reps = allreduce_reps(buf, (int)n, 0.25);
        MPI_Barrier(MPI_COMM_WORLD);
        double t = cfx_now();
        for (int r = 0; r < reps; r++)
            MPI_Allreduce(MPI_IN_PLACE, buf, (int)n, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
        t = (cfx_now() - t) / reps;
        MPI_Bcast(&t, 1, MPI_DOUBLE, 0, MPI_COMM_WORLD);
        double bytes = 4.0 * (double)n, w = 1.0 / (t * t);
        if (rank == 0)
            printf("%12.0f %12.1f %10.3f %8d\n", bytes, t * 1e6, bytes / t * 1e-9, reps);
        sw += w, sx += w * bytes, sy += w * t, sxx += w * bytes * bytes, sxy += w * bytes * t;
    }
    double beta = (sw * sxy - sx * sy) / (sw * sxx - sx * sx);
    double alpha = (sy - beta * sx) / sw;
    if (rank == 0)
        printf("fit: t = %.1f us + bytes / (%.3f GB/s)\n", alpha * 1e6, 1e-9 / beta);
    free(buf);
    MPI_Finalize();
    return 0;
}

/* Microseconds per call of today's float allreduce of n floats and of the
 * exact sum of `mine` chunks (segments seg_len), averaged over reps after a
 * warm-up, with rank 0's clock; rank 0 prints one line. */
static void bench_reduce_size(const char *name, const size_t *seg_len, int n_segs, size_t n,
                              int mine, int total, int reps)
{
    int rank;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    cfx_rng rng;
    cfx_rng_seed(&rng, 3 + (uint64_t)rank);
    float **chunk = cfx_malloc(((size_t)mine + 1) * sizeof *chunk), *out = cfx_malloc(n * 4);
    for (int c = 0; c < mine; c++) {
        chunk[c] = cfx_malloc(n * sizeof(float));
        for (size_t i = 0; i < n; i++) /* gradient-like: signed, magnitudes 1e-9..1e-3 */
            chunk[c][i] =
                (cfx_rng_float(&rng) - 0.5f) * 2e-3f * powf(10.0f, -6 * cfx_rng_float(&rng));
    }
    cfx_exact x;
    cfx_error err;
    if (cfx_exact_create(&x, n, seg_len, n_segs, &err) != 0) {
        fprintf(stderr, "cfx-bench-model: %s\n", err.msg);
        MPI_Abort(MPI_COMM_WORLD, 2);
    }
    double t_float = 0, t_exact = 0, t_local = 0;
    for (int r = -5; r < reps; r++) {
        if (r == 0)
            t_float = t_exact = t_local = 0;
        MPI_Barrier(MPI_COMM_WORLD);
        double t = cfx_now();
        MPI_Allreduce(MPI_IN_PLACE, out, (int)n, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
        t_float += cfx_now() - t;
        MPI_Barrier(MPI_COMM_WORLD);
        t = cfx_now();
        cfx_exact_sum(&x, (const float *const *)chunk, mine, total, out);
        t_exact += cfx_now() - t;
        t = cfx_now(); /* the same work without MPI: scan, convert, convert back */
        cfx_exact_scan(&x, (const float *const *)chunk, mine);
        cfx_exact_accumulate(&x, (const float *const *)chunk, mine, total);
        cfx_exact_finish(&x, total, out);
        t_local += cfx_now() - t;
    }
    if (rank == 0)
        printf("%-24s %10zu %8d %14.1f %14.1f %12.1f %8.2f\n", name, n, mine, 1e6 * t_float / reps,
               1e6 * t_exact / reps, 1e6 * t_local / reps, t_exact / t_float);
    for (int c = 0; c < mine; c++)
        free(chunk[c]);
    free(chunk);
    free(out);
    cfx_exact_free(&x);
}

/* --reduce: the config's model (one segment per weight and bias) and 2 M
 * floats in 8 weights and 8 biases. */
/* One row per layer: forward and backward ms and GFLOP/s; returns FLOPs per step. */
static double print_layers(const cfx_model *m, int batch, int steps)
{
    printf("%-3s %-42s %9s %9s %9s %9s\n", "#", "layer", "fwd ms", "bwd ms", "fwd GF/s",
           "bwd GF/s");
    double flops_step = 0;
    for (int i = 0; i < m->n_layers; i++) {
        const cfx_layer *L = &m->layers[i];
        char spec[256];
        cfx_layer_spec_format(&L->spec, spec, sizeof spec);
        double f = L->kind->flops ? L->kind->flops(L) * batch : 0.0;
        double fb = i == 0 ? f : 2 * f; /* the first layer needs no input gradient */
        flops_step += f + fb;
        double fms = 1e3 * L->forward_seconds / steps, bms = 1e3 * L->backward_seconds / steps;
        printf("%-3d %-42s %9.3f %9.3f %9.1f %9.1f\n", i, spec, fms, bms,
               f ? f / (fms * 1e6) : 0.0, f ? fb / (bms * 1e6) : 0.0);
    }
    return flops_step;
}

/* Where a step goes: forward + backward ms of each layer type, the loss, the optimizer. */
static void print_by_kind(const cfx_model *m, int steps, double step_ms, double loss_ms,
                          double optim_ms)
{
    printf("by layer type (ms per step, share of the step):");
    for (int i = 0; i < m->n_layers; i++) {
        const cfx_layer_kind *kind = m->layers[i].kind;
        int first = 1;
        for (int j = 0; j < i; j++)
            first &= m->layers[j].kind != kind;
        if (!first)
            continue;
        double sec = 0;
        for (int j = i; j < m->n_layers; j++)
            if (m->layers[j].kind == kind)
                sec += m->layers[j].forward_seconds + m->layers[j].backward_seconds;
        double ms = 1e3 * sec / steps;
        printf(" %s %.1f (%.0f %%),", kind->name, ms, 100 * ms / step_ms);
    }
    printf(" loss %.1f (%.0f %%), optimizer %.1f (%.0f %%)\n", loss_ms, 100 * loss_ms / step_ms,
           optim_ms, 100 * optim_ms / step_ms);
}

static int bench_reduce(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    const char *config = "configs/seed.ini";
    int batch = 64, chunk = 8, rank, size;
    for (int i = 2; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--config"))
            config = argv[i + 1];
        else if (!strcmp(argv[i], "--batch"))
            batch = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--chunk"))
            chunk = atoi(argv[i + 1]);
    }
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    cfx_config cfg;
    cfx_model m;
    cfx_error err;
    if (chunk < 1 || batch < chunk || cfx_config_load(&cfg, config, 0, NULL, &err) != 0 ||
        cfx_model_create(&m, cfg.layers, cfg.n_layers, 3, 32, 32, 1, 0, &err) != 0) {
        fprintf(stderr, "cfx-bench-model: %s\n",
                chunk < 1 || batch < chunk ? "bad --chunk" : err.msg);
        MPI_Abort(MPI_COMM_WORLD, 2);
    }
    size_t seg[2 * CFX_MAX_LAYERS];
    int n_segs = 0;
    for (int i = 0; i < m.n_layers; i++)
        if (m.layers[i].n_weight + m.layers[i].n_bias)
            seg[n_segs++] = m.layers[i].n_weight, seg[n_segs++] = m.layers[i].n_bias;
    int total = (batch + chunk - 1) / chunk, start, mine;
    cfx_dist_slice(total, rank, size, &start, &mine);
    if (rank == 0)
        printf("float MPI_Allreduce vs cfx_exact_sum, %d ranks, %d chunks of %d images per "
               "batch of %d (rank 0 holds %d); microseconds per step\n"
               "%-24s %10s %8s %14s %14s %12s %8s\n",
               size, total, chunk, batch, mine, "model", "floats", "chunks", "float allreduce",
               "exact sum", "of it local", "ratio");
    bench_reduce_size(config, seg, n_segs, m.n_params, mine, total, 2000);
    size_t big[16];
    for (int i = 0; i < 16; i++)
        big[i] = i % 2 ? 64 : 262080;
    bench_reduce_size("2 M floats (16 tensors)", big, 16, 1u << 21, mine, total, 50);
    cfx_model_free(&m);
    MPI_Finalize();
    return 0;
}

/* Seconds spent in the loss, the optimizer, in all (wall) and on every thread (CPU). */
typedef struct {
    double loss, opt, total, cpu;
} step_times;

/* Runs 3 warm-up steps, then times `steps` training steps on m's input
 * (acts[0]); the layers' own clocks count only the timed steps. */
static step_times time_steps(cfx_model *m, cfx_optim *opt, const int *labels, int batch, int steps)
{
    step_times t = {0};
    for (int s = -3; s < steps; s++) {
        if (s == 0) { /* warm-up done: reset the layer clocks */
            for (int i = 0; i < m->n_layers; i++)
                m->layers[i].forward_seconds = m->layers[i].backward_seconds = 0;
            t.loss = t.opt = 0;
            t.total = cfx_now();
            t.cpu = cpu_seconds();
        }
        const float *logits = cfx_model_forward(m, batch);
        double t0 = cfx_now(), loss = 0;
        long correct = 0;
        cfx_softmax_xent(logits, labels, batch, m->n_classes, 1.0f / batch, m->dacts[m->n_layers],
                         &loss, &correct);
        t.loss += cfx_now() - t0;
        cfx_model_backward(m, batch);
        t0 = cfx_now();
        cfx_optim_step(opt, m->params, m->grads);
        t.opt += cfx_now() - t0;
    }
    t.total = cfx_now() - t.total;
    t.cpu = cpu_seconds() - t.cpu;
    return t;
}

int main(int argc, char **argv)
{
    if (argc > 1 && !strcmp(argv[1], "--allreduce"))
        return bench_allreduce(&argc, &argv);
    if (argc > 1 && !strcmp(argv[1], "--reduce"))
        return bench_reduce(argc, argv);
    cfx_blas_select_kernels(argv);
    const char *config = "configs/seed.ini";
    int batch = 64, steps = 50, threads = 1;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--config") && i + 1 < argc)
            config = argv[++i];
        else if (!strcmp(argv[i], "--batch") && i + 1 < argc)
            batch = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--steps") && i + 1 < argc)
            steps = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--threads") && i + 1 < argc)
            threads = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--conv") && i + 1 < argc &&
                 (!strcmp(argv[i + 1], "direct") || !strcmp(argv[i + 1], "gemm")))
            cfx_conv2d_use_direct(!strcmp(argv[++i], "direct"));
        else {
            fprintf(stderr, "usage: cfx-bench-model [--config FILE] [--batch N] [--steps N] "
                            "[--threads N] [--conv direct|gemm]\n"
                            "       mpirun -np N cfx-bench-model --allreduce | --reduce "
                            "[--config FILE] [--batch N] [--chunk N]\n");
            return 2;
        }
    }
    cfx_config cfg;
    cfx_error err;
    if (cfx_config_load(&cfg, config, 0, NULL, &err) != 0) {
        fprintf(stderr, "cfx-bench-model: %s\n", err.msg);
        return 2;
    }
    cfx_set_threads(threads); /* OpenBLAS at one thread: the layers split their work */
    cfx_model m;
    cfx_optim opt;
    if (cfx_model_create(&m, cfg.layers, cfg.n_layers, 3, 32, 32, batch, 0, &err) != 0 ||
        cfx_optim_create(&opt, &cfg, m.n_params, &err) != 0) {
        fprintf(stderr, "cfx-bench-model: %s\n", err.msg);
        return 2;
    }
    cfx_model_init_params(&m, 1);
    cfx_rng rng;
    cfx_rng_seed(&rng, 7);
    for (int i = 0; i < 3 * 32 * 32 * batch; i++)
        m.acts[0][i] = 2.0f * cfx_rng_float(&rng) - 1.0f;
    int *labels = cfx_malloc((size_t)batch * sizeof *labels);
    for (int i = 0; i < batch; i++)
        labels[i] = i % m.n_classes;

    step_times t = time_steps(&m, &opt, labels, batch, steps);

    printf("OpenBLAS core %s (%s), %d thread(s), batch %d, %d steps, convolutions: %s\n",
           cfx_blas_core(), cfx_blas_threading(), threads, batch, steps,
           cfx_conv2d_direct_usable(batch, 32, 32, 3, 1, 1) ? "direct AVX-512" : "im2col + SGEMM");
    double flops_step = print_layers(&m, batch, steps);
    double ms = 1e3 * t.total / steps;
    print_by_kind(&m, steps, ms, 1e3 * t.loss / steps, 1e3 * t.opt / steps);
    printf("CPU time %.3f ms per step (all threads; wall time below)\n", 1e3 * t.cpu / steps);
    openblas_set_num_threads(threads); /* the peak: one SGEMM on every thread */
    double peak = sgemm_peak(1024, 10);
    printf("step %.3f ms = %.0f images/s, %.1f GFLOP/s (%.2f MFLOP/image)\n", ms,
           batch / (ms * 1e-3), flops_step / (ms * 1e6), flops_step / batch * 1e-6);
    printf("SGEMM peak (1024^3, %d thread(s)): %.1f GFLOP/s; the step reaches %.0f %% of it\n",
           threads, peak, 100.0 * flops_step / (ms * 1e6) / peak);
    free(labels);
    cfx_optim_free(&opt);
    cfx_model_free(&m);
    return 0;
}
