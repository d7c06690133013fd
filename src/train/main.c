/* cfx-train: train a CNN on CIFAR-10 with MPI data parallelism.
 *
 *   mpirun -np N cfx-train --config configs/seed.ini [--set section.key=value ...]
 */
#include "cfx_build_info.h" /* defines: CFX_GIT_COMMIT (generated at build time) */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cfx/config.h" /* defines: cfx_config, cfx_config_load */
#include "cfx/dist.h"   /* defines: cfx_dist_init */
#include "cfx/train.h"  /* defines: cfx_train, cfx_blas_select_kernels, exit codes */

#ifndef CFX_VERSION
#define CFX_VERSION "0.0.0"
#endif

#define MAX_OVERRIDES 256

static void usage(FILE *out)
{
    fprintf(out,
            "usage: cfx-train --config FILE [--set section.key=value ...] [--resume PATH]\n"
            "                 [--eval PATH] [--quiet] [--progress | --no-progress]\n"
            "       mpirun -np N cfx-train --config FILE ...\n"
            "\n"
            "Trains the CNN described in FILE on CIFAR-10; every MPI rank trains a replica\n"
            "on its share of each global batch and gradients are averaged by allreduce.\n"
            "\n"
            "options:\n"
            "  --config FILE         INI run configuration (see configs/reference.ini)\n"
            "  --set KEY=VALUE       override a config key, e.g. --set optim.lr=3e-4\n"
            "  --resume PATH         continue training from a checkpoint (checkpoints/last.h5)\n"
            "  --eval PATH           print the test loss and accuracy of a checkpoint and exit\n"
            "  --quiet               print only errors\n"
            "  --progress            draw a progress bar during each epoch even when the\n"
            "                        output is not a terminal\n"
            "  --no-progress         never draw it (default: only on a terminal)\n"
            "  --print-config        print the effective configuration and exit\n"
            "  --help-config         print every config key with its default and meaning\n"
            "  --version             print the version and exit\n"
            "  --help                print this help and exit\n"
            "\n"
            "exit codes: 0 success, 1 runtime failure (data, I/O, divergence),\n"
            "            2 bad command line or configuration,\n"
            "            3 stopped by SIGTERM/SIGINT/SIGUSR1 after writing last.h5 (resume)\n");
}

/* This process's rank as the MPI launcher set it, before MPI_Init: messages
 * printed before MPI starts (help, version, usage and config errors) come
 * from rank 0 only, not once per rank. */
static int launcher_rank(void)
{
    static const char *const vars[] = {"OMPI_COMM_WORLD_RANK", "PMIX_RANK", "PMI_RANK"};
    for (size_t i = 0; i < sizeof vars / sizeof vars[0]; i++) {
        const char *v = getenv(vars[i]);
        if (v && *v)
            return atoi(v);
    }
    return 0;
}

/* Prints a command-line or config error and returns the usage exit code.
 * Every rank finds the same error; ranks other than 0 wait three seconds
 * first, so that mpirun, which stops the other ranks about a second after
 * the first one fails, shows rank 0's line alone (and a rank that fails
 * alone still says why). */
static int usage_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int usage_error(const char *fmt, ...)
{
    int rank = launcher_rank();
    if (rank != 0)
        sleep(3);
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, rank != 0 ? "cfx-train (rank %d): " : "cfx-train: ", rank);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    return CFX_EXIT_USAGE;
}

/* Whether standard output reaches a terminal. Open MPI gives every rank a
 * pseudo-terminal as stdout even when mpirun's own output goes to a file (a
 * SLURM log), so under a launcher the answer is the parent's (mpirun's)
 * stdout; where that cannot be read (another node, no /proc), it is no. */
static int stdout_is_terminal(void)
{
    if (!isatty(STDOUT_FILENO))
        return 0;
    if (!getenv("OMPI_COMM_WORLD_SIZE") && !getenv("PMIX_RANK") && !getenv("PMI_RANK"))
        return 1;
    char link[64], target[256];
    snprintf(link, sizeof link, "/proc/%ld/fd/1", (long)getppid());
    ssize_t n = readlink(link, target, sizeof target - 1);
    if (n <= 0)
        return 0;
    target[n] = '\0';
    return strncmp(target, "/dev/pts/", 9) == 0 || strncmp(target, "/dev/tty", 8) == 0;
}

/* The command line. */
typedef struct {
    const char *config_path, *resume_path, *eval_path;
    const char *overrides[MAX_OVERRIDES];
    int n_overrides, quiet, print_config, progress; /* progress: -1 = decide later */
} train_args;

/* Parses argv into *a. Returns -1 to go on, otherwise the exit code: after
 * --help, --version or --help-config (printed to out), or a usage error. */
static int parse_args(int argc, char **argv, FILE *out, train_args *a)
{
    *a = (train_args){.progress = -1};
    for (int i = 1; i < argc; i++) {
        const char *arg = argv[i];
        int has_value = i + 1 < argc;
        if (!strcmp(arg, "--help") || !strcmp(arg, "-h")) {
            usage(out);
            return CFX_EXIT_OK;
        } else if (!strcmp(arg, "--version")) {
            fprintf(out, "cfx-train %s (%s)\n", CFX_VERSION, CFX_GIT_COMMIT);
            return CFX_EXIT_OK;
        } else if (!strcmp(arg, "--help-config")) {
            char *ref = cfx_config_reference();
            fputs(ref, out);
            free(ref);
            return CFX_EXIT_OK;
        } else if (!strcmp(arg, "--progress")) {
            a->progress = 1;
        } else if (!strcmp(arg, "--no-progress")) {
            a->progress = 0;
        } else if (!strcmp(arg, "--config") && has_value) {
            a->config_path = argv[++i];
        } else if (!strcmp(arg, "--set") && has_value) {
            if (a->n_overrides == MAX_OVERRIDES)
                return usage_error("more than %d --set options", MAX_OVERRIDES);
            a->overrides[a->n_overrides++] = argv[++i];
        } else if (!strcmp(arg, "--resume") && has_value) {
            a->resume_path = argv[++i];
        } else if (!strcmp(arg, "--eval") && has_value) {
            a->eval_path = argv[++i];
        } else if (!strcmp(arg, "--quiet") || !strcmp(arg, "-q")) {
            a->quiet = 1;
        } else if (!strcmp(arg, "--print-config")) {
            a->print_config = 1;
        } else {
            return usage_error("unknown or incomplete option '%s' (see --help)", arg);
        }
    }
    if (!a->config_path)
        return usage_error("--config FILE is required (see --help)");
    if (a->resume_path && a->eval_path)
        return usage_error("--resume and --eval cannot be combined");
    return -1;
}

/* Rank 0's first lines: version, ranks, threads, BLAS core, and the hosts
 * when there are several. Every rank must call it (it gathers host names). */
static void print_banner(const cfx_dist *dist, int threads, int quiet)
{
    if (dist->rank == 0 && !quiet) {
        printf("cfx-train %s (%s): %d rank%s, %d BLAS thread%s per rank, OpenBLAS core %s\n",
               CFX_VERSION, CFX_GIT_COMMIT, dist->size, dist->size == 1 ? "" : "s", threads,
               threads == 1 ? "" : "s", cfx_blas_core());
        if (threads > 1 && strcmp(cfx_blas_threading(), "OpenMP") != 0)
            printf("note: OpenBLAS is its %s build; several threads per rank run faster with "
                   "the OpenMP build (Debian: libopenblas-openmp-dev, then rebuild cfx)\n",
                   cfx_blas_threading());
    }
    char hosts[1024];
    int n_hosts = cfx_dist_hosts(dist, hosts, sizeof hosts);
    if (dist->rank == 0 && !quiet) {
        if (n_hosts > 1)
            printf("hosts: %s\n", hosts);
        fflush(stdout);
    }
}

int main(int argc, char **argv)
{
    cfx_blas_select_kernels(argv); /* may re-execute this program; before MPI_Init */

    /* Rank 0 alone prints help, version and configs (see usage_error for
     * errors): under mpirun every rank would print the same text. */
    FILE *out = stdout;
    if (launcher_rank() != 0 && !(out = fopen("/dev/null", "w")))
        return CFX_EXIT_FAILURE;
    train_args args;
    int rc = parse_args(argc, argv, out, &args);
    if (rc >= 0)
        return rc;

    cfx_config cfg;
    cfx_error err = {{0}};
    if (cfx_config_load(&cfg, args.config_path, args.n_overrides, args.overrides, &err) != 0)
        return usage_error("%s", err.msg);
    if (args.print_config) {
        char *text = cfx_config_to_ini(&cfg);
        fputs(text, out);
        free(text);
        return CFX_EXIT_OK;
    }

    int progress = args.progress;
    if (progress < 0)
        progress = stdout_is_terminal(); /* before MPI_Init, which may set launcher variables */
    /* Before MPI_Init: a signal during start-up is not lost. */
    if (!args.eval_path)
        cfx_install_stop_handlers();
    cfx_dist dist;
    cfx_dist_init(&dist, &argc, &argv);
    print_banner(&dist, cfx_blas_setup(&cfg, &dist), args.quiet);
    int exit_code;
    if (args.eval_path) {
        rc = cfx_eval_checkpoint(&cfg, &dist, args.eval_path, &err);
        exit_code = rc == 0 ? CFX_EXIT_OK : CFX_EXIT_FAILURE;
    } else {
        char *config_text = cfx_config_to_ini(&cfg);
        cfx_train_options opt = {.quiet = args.quiet,
                                 .progress = progress,
                                 .resume_path = args.resume_path,
                                 .config_text = config_text};
        rc = cfx_train(&cfg, &dist, &opt, &err);
        free(config_text);
        exit_code = rc == 0 ? CFX_EXIT_OK : rc == 1 ? CFX_EXIT_STOPPED : CFX_EXIT_FAILURE;
    }
    char first[CFX_ERROR_LEN + 32];
    cfx_dist_first_error(&dist, rc < 0 ? err.msg : "", first, sizeof first);
    if (first[0])
        fprintf(stderr, "cfx-train: %s\n", first);
    if (rc < 0 || first[0])
        exit_code = CFX_EXIT_FAILURE;
    cfx_dist_finalize();
    return exit_code;
}
