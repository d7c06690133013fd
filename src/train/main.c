/* cfx-train: train a CNN on CIFAR-10 with MPI data parallelism.
 *
 *   mpirun -np N cfx-train --config configs/seed.ini [--set section.key=value ...]
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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
            "                 [--eval PATH] [--quiet]\n"
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
            "  --print-config        print the effective configuration and exit\n"
            "  --help-config         print every config key with its default and meaning\n"
            "  --version             print the version and exit\n"
            "  --help                print this help and exit\n"
            "\n"
            "exit codes: 0 success, 1 runtime failure (data, I/O, divergence),\n"
            "            2 bad command line or configuration,\n"
            "            3 stopped by SIGTERM/SIGINT/SIGUSR1 after writing last.h5 (resume)\n");
}

int main(int argc, char **argv)
{
    cfx_blas_select_kernels(argv); /* may re-execute this program; before MPI_Init */

    const char *config_path = NULL, *resume_path = NULL, *eval_path = NULL;
    const char *overrides[MAX_OVERRIDES];
    int n_overrides = 0, quiet = 0, print_config = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            return CFX_EXIT_OK;
        } else if (!strcmp(a, "--version")) {
            printf("cfx-train %s\n", CFX_VERSION);
            return CFX_EXIT_OK;
        } else if (!strcmp(a, "--help-config")) {
            char *ref = cfx_config_reference();
            fputs(ref, stdout);
            free(ref);
            return CFX_EXIT_OK;
        } else if (!strcmp(a, "--config") && i + 1 < argc) {
            config_path = argv[++i];
        } else if (!strcmp(a, "--set") && i + 1 < argc) {
            if (n_overrides == MAX_OVERRIDES) {
                fprintf(stderr, "cfx-train: more than %d --set options\n", MAX_OVERRIDES);
                return CFX_EXIT_USAGE;
            }
            overrides[n_overrides++] = argv[++i];
        } else if (!strcmp(a, "--resume") && i + 1 < argc) {
            resume_path = argv[++i];
        } else if (!strcmp(a, "--eval") && i + 1 < argc) {
            eval_path = argv[++i];
        } else if (!strcmp(a, "--quiet") || !strcmp(a, "-q")) {
            quiet = 1;
        } else if (!strcmp(a, "--print-config")) {
            print_config = 1;
        } else {
            fprintf(stderr, "cfx-train: unknown or incomplete option '%s' (see --help)\n", a);
            return CFX_EXIT_USAGE;
        }
    }
    if (!config_path) {
        fprintf(stderr, "cfx-train: --config FILE is required (see --help)\n");
        return CFX_EXIT_USAGE;
    }

    cfx_config cfg;
    cfx_error err = {{0}};
    if (cfx_config_load(&cfg, config_path, n_overrides, overrides, &err) != 0) {
        fprintf(stderr, "cfx-train: %s\n", err.msg);
        return CFX_EXIT_USAGE;
    }
    if (print_config) {
        char *text = cfx_config_to_ini(&cfg);
        fputs(text, stdout);
        free(text);
        return CFX_EXIT_OK;
    }

    if (resume_path && eval_path) {
        fprintf(stderr, "cfx-train: --resume and --eval cannot be combined\n");
        return CFX_EXIT_USAGE;
    }

    cfx_install_stop_handlers(); /* before MPI_Init: a signal during start-up is not lost */
    cfx_dist dist;
    cfx_dist_init(&dist, &argc, &argv);
    int threads = cfx_blas_setup(&cfg, &dist);
    if (dist.rank == 0 && !quiet) {
        printf("cfx-train %s (%s): %d rank%s, %d BLAS thread%s per rank, OpenBLAS core %s\n",
               CFX_VERSION, CFX_GIT_COMMIT, dist.size, dist.size == 1 ? "" : "s", threads,
               threads == 1 ? "" : "s", cfx_blas_core());
        fflush(stdout);
    }
    int rc, exit_code;
    if (eval_path) {
        rc = cfx_eval_checkpoint(&cfg, &dist, eval_path, &err);
        exit_code = rc == 0 ? CFX_EXIT_OK : CFX_EXIT_FAILURE;
    } else {
        char *config_text = cfx_config_to_ini(&cfg);
        cfx_train_options opt = {
            .quiet = quiet, .resume_path = resume_path, .config_text = config_text};
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
