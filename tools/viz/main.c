/* cfx-viz: every figure of a cfx-train run, drawn from its HDF5 files.
 *
 *   cfx-viz --run OUTPUT_DIR [--data DIR] [--images i,j,k] [--format png|svg|pdf] [...]
 *   cfx-viz --compare RUN_A RUN_B [--out DIR] [...]
 *
 * Reads OUTPUT_DIR/checkpoints/best.h5 and OUTPUT_DIR/logs/metrics.h5, runs
 * libcfx's forward and backward passes on the test set and writes plots/
 * (training, test set, eight attribution methods, the sanity check, channel
 * top images, activation maximisation, the PCA embedding), featuremaps/,
 * per_class.csv, analysis.h5 and report.html under OUTPUT_DIR; --compare
 * puts two runs side by side in compare.html and compare.h5 (compare.c). */
#include <cblas.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cfx/train.h" /* defines: cfx_blas_select_kernels, cfx_blas_core, exit codes */
#include "explorer.h"  /* defines: viz_write_explorer */
#include "figures.h"   /* defines: viz_out, viz_fig_* */
#include "run.h"       /* defines: viz_run, viz_run_load, viz_run_compute */
#include "store.h"     /* defines: viz_store_analysis, viz_write_report */

#ifndef CFX_VERSION
#define CFX_VERSION "0.0.0"
#endif

static void usage(FILE *out)
{
    fprintf(out,
            "usage: cfx-viz --run OUTPUT_DIR [--data DIR] [--images i,j,k] [--layer NAME]\n"
            "               [--format png|svg|pdf] [--quiet] [--ig-steps N]\n"
            "               [--smoothgrad-noise F] [--smoothgrad-samples N]\n"
            "               [--occlusion-patch N] [--occlusion-stride N]\n"
            "               [--layers LIST] [--channel-stat mean|max] [--actmax-steps N]\n"
            "               [--explorer-images N]\n"
            "       cfx-viz --compare RUN_A RUN_B [--out DIR] [the options above]\n"
            "\n"
            "Draws every figure of a cfx-train run from OUTPUT_DIR/checkpoints/best.h5 and\n"
            "OUTPUT_DIR/logs/metrics.h5 and writes them under OUTPUT_DIR: plots/, featuremaps/,\n"
            "per_class.csv, analysis.h5 (the numbers), report.html (everything on one page) and\n"
            "explorer.html (every test image, filtered and opened one by one, offline).\n"
            "\n"
            "options:\n"
            "  --run DIR          the run's output directory (output.dir of its config)\n"
            "  --compare A B      two runs side by side (any two architectures): compare.html,\n"
            "                     compare.h5, explorer.html and plots/ under --out (default:\n"
            "                     compare)\n"
            "  --data DIR         CIFAR-10 binary folder (default: data.dir of the checkpoint)\n"
            "  --images LIST      test images to explain, e.g. 0,1,3 (default: the first %d\n"
            "                     test images of distinct classes; at most %d); the feature\n"
            "                     maps show the first\n"
            "  --layer NAME       the layer Grad-CAM explains, by name (layer3.1) or index\n"
            "                     (default: the last convolution, or the block holding it)\n"
            "  --format FMT       png (default), svg or pdf\n"
            "  --ig-steps N       Integrated Gradients: points on the path (default 32)\n"
            "  --smoothgrad-noise F    SmoothGrad: noise sigma / image range (default 0.15)\n"
            "  --smoothgrad-samples N  SmoothGrad: noisy copies (default 16)\n"
            "  --occlusion-patch N     occlusion: side of the square, pixels (default 8)\n"
            "  --occlusion-stride N    occlusion: step between squares (default 4)\n"
            "  --layers LIST      layers whose channels get their top-9 test images, by name\n"
            "                     or index (default: every conv2d)\n"
            "  --channel-stat S   rank a channel's images by its mean (default) or max activation\n"
            "  --actmax-steps N   activation maximisation: gradient steps (default 128)\n"
            "  --explorer-images N  test images whose attribution and feature maps\n"
            "                     explorer.html shows, spread over true classes and right or\n"
            "                     wrong predictions (default %d; 0 to %d)\n"
            "  --quiet            print only errors\n"
            "  --version, --help\n"
            "\n"
            "environment: CFX_BLAS_THREADS=N sets the OpenBLAS threads (default: all cores)\n"
            "\n"
            "exit codes: 0 success, 1 missing/bad files or I/O error, 2 bad command line\n",
            VIZ_DEFAULT_IMAGES, VIZ_MAX_IMAGES, VIZ_EXPLORER_DETAILS, VIZ_EXPLORER_MAX_DETAILS);
}

/* Creates dir/sub and checks that it can be written. */
static int out_dir(const char *dir, const char *sub, cfx_error *err)
{
    char path[CFX_PATH_LEN + 32];
    snprintf(path, sizeof path, "%s%s%s", dir, sub[0] ? "/" : "", sub);
    if (cfx_mkdir_p(path, err) != 0)
        return -1;
    if (access(path, W_OK) != 0)
        return cfx_fail(err, "%s: not writable: %s", path, strerror(errno));
    return 0;
}

/* A numeric flag's value within [lo, hi], or a one-line error. */
static int number_flag(const char *flag, const char *text, double lo, double hi, int integer,
                       double *out)
{
    char *end;
    double v = strtod(text, &end);
    if (end == text || *end || !(v >= lo && v <= hi) || (integer && v != floor(v))) {
        fprintf(stderr, "cfx-viz: %s: '%s' is not %s from %g to %g\n", flag, text,
                integer ? "a whole number" : "a number", lo, hi);
        return -1;
    }
    *out = v;
    return 0;
}

/* The attribution flags: --ig-steps N, ...; 1 if argv[*i] is one (consumed), 0 if not, -1 bad. */
static int attribution_flag(int argc, char **argv, int *i, viz_attr_opts *o)
{
    static const struct {
        const char *flag;
        double lo, hi;
        int integer;
    } flags[] = {{"--ig-steps", 1, 4096, 1},         {"--smoothgrad-noise", 0, 10, 0},
                 {"--smoothgrad-samples", 1, 4096, 1}, {"--occlusion-patch", 1, 32, 1},
                 {"--occlusion-stride", 1, 32, 1},    {"--actmax-steps", 1, 10000, 1},
                 {"--explorer-images", 0, VIZ_EXPLORER_MAX_DETAILS, 1}};
    for (int k = 0; k < (int)(sizeof flags / sizeof flags[0]); k++) {
        if (strcmp(argv[*i], flags[k].flag) != 0)
            continue;
        double v;
        if (*i + 1 >= argc) {
            fprintf(stderr, "cfx-viz: %s needs a value (see --help)\n", flags[k].flag);
            return -1;
        }
        if (number_flag(flags[k].flag, argv[++*i], flags[k].lo, flags[k].hi, flags[k].integer, &v))
            return -1;
        if (k == 0)
            o->ig_steps = (int)v;
        else if (k == 1)
            o->sg_noise = v;
        else if (k == 2)
            o->sg_samples = (int)v;
        else if (k == 3)
            o->occ_patch = (int)v;
        else if (k == 4)
            o->occ_stride = (int)v;
        else if (k == 5)
            o->actmax_steps = (int)v;
        else
            o->explorer_images = (int)v;
        return 1;
    }
    return 0;
}

/* CFX_BLAS_THREADS=N as cfx-train's; else all cores (OpenBLAS's count).
 * OpenBLAS itself stays at one thread, as in cfx-train: the layers split
 * their work, and the PCA's LAPACK runs on one thread (0.8 s for
 * the seed CNN's 1,024 features; 20 s on two threads when another process
 * kept the cores busy). */
static void set_threads(void)
{
    const char *threads = getenv("CFX_BLAS_THREADS");
    cfx_set_threads(threads && atoi(threads) > 0 ? atoi(threads) : openblas_get_num_threads());
}

/* Loads and computes run B of a comparison with A's settings and test images. */
static int compare_load(viz_run *r, const char *dir, const char *data_dir, const viz_run *like,
                        cfx_error *err)
{
    if (viz_run_load(r, dir, data_dir, err) != 0)
        return CFX_EXIT_FAILURE;
    r->attr = like->attr, r->actmax_steps = like->actmax_steps;
    r->channel_max = like->channel_max;
    char list[VIZ_MAX_IMAGES * 12] = "";
    for (int i = 0; i < like->n_images; i++)
        snprintf(list + strlen(list), sizeof list - strlen(list), "%s%d", i ? "," : "",
                 like->images[i]);
    if (viz_run_choose_images(r, list, err) != 0)
        return CFX_EXIT_USAGE;
    return viz_run_compute(r, err) == 0 ? CFX_EXIT_OK : CFX_EXIT_FAILURE;
}

/* cfx-viz's command line; NULL or 0 where a flag is not given. */
typedef struct {
    const char *run_dir, *data_dir, *images, *cam_layer, *channel_layers;
    const char *cmp_a, *cmp_b, *cmp_out; /* --compare A B [--out DIR] */
    int channel_max, quiet;
    viz_format fmt;
    viz_attr_opts attr;
} viz_args;

static int compare_mode(const viz_args *args)
{
    double t0 = cfx_now();
    cfx_error err = {{0}};
    viz_run a, b;
    memset(&a, 0, sizeof a), memset(&b, 0, sizeof b);
    int code =
        viz_run_load(&a, args->cmp_a, args->data_dir, &err) != 0 ? CFX_EXIT_FAILURE : CFX_EXIT_OK;
    if (code == CFX_EXIT_OK) {
        a.attr = args->attr, a.actmax_steps = args->attr.actmax_steps;
        a.channel_max = args->channel_max;
        code = viz_run_choose_images(&a, args->images, &err) != 0 ? CFX_EXIT_USAGE
               : viz_run_compute(&a, &err) != 0                   ? CFX_EXIT_FAILURE
                                                                  : CFX_EXIT_OK;
    }
    if (code == CFX_EXIT_OK)
        code = compare_load(&b, args->cmp_b, args->data_dir, &a, &err);
    if (code == CFX_EXIT_OK && a.test.n != b.test.n) {
        cfx_fail(&err, "%s, %s: the runs' test sets differ (%d and %d images)", args->cmp_a,
                 args->cmp_b, a.test.n, b.test.n);
        code = CFX_EXIT_FAILURE;
    }
    if (code == CFX_EXIT_OK && viz_compare(&a, &b, args->cmp_out, args->fmt, args->quiet, &err))
        code = CFX_EXIT_FAILURE;
    viz_run *runs[2] = {&a, &b};
    if (code == CFX_EXIT_OK &&
        viz_write_explorer(runs, 2, args->cmp_out, args->attr.explorer_images, &err))
        code = CFX_EXIT_FAILURE;
    if (code == CFX_EXIT_OK && !args->quiet)
        printf("cfx-viz --compare: %.2f s\n", cfx_now() - t0);
    if (code != CFX_EXIT_OK)
        fprintf(stderr, "cfx-viz: %s\n", err.msg);
    viz_run_free(&a);
    viz_run_free(&b);
    viz_plot_shutdown();
    return code;
}

/* --format and --channel-stat; 1 if argv[*i] is one (consumed), 0 if not, -1 bad. */
static int choice_flag(int argc, char **argv, int *i, viz_args *a)
{
    int is_format = !strcmp(argv[*i], "--format");
    if (!is_format && strcmp(argv[*i], "--channel-stat") != 0)
        return 0;
    if (*i + 1 >= argc) {
        fprintf(stderr, "cfx-viz: %s needs a value (see --help)\n", argv[*i]);
        return -1;
    }
    const char *v = argv[++*i];
    if (is_format) {
        static const char *names[] = {"png", "svg", "pdf"};
        static const viz_format formats[] = {VIZ_PNG, VIZ_SVG, VIZ_PDF};
        for (int k = 0; k < 3; k++)
            if (!strcmp(v, names[k])) {
                a->fmt = formats[k];
                return 1;
            }
        fprintf(stderr, "cfx-viz: --format: '%s' is not png, svg or pdf\n", v);
        return -1;
    }
    if (strcmp(v, "mean") != 0 && strcmp(v, "max") != 0) {
        fprintf(stderr, "cfx-viz: --channel-stat: '%s' is not mean or max\n", v);
        return -1;
    }
    a->channel_max = !strcmp(v, "max");
    return 1;
}

/* The flags that take one path or list; 1 if argv[*i] is one (consumed), 0 if not. */
static int text_flag(int argc, char **argv, int *i, viz_args *a)
{
    const struct {
        const char *flag;
        const char **value;
    } flags[] = {{"--run", &a->run_dir},   {"--data", &a->data_dir},
                 {"--images", &a->images}, {"--layer", &a->cam_layer},
                 {"--out", &a->cmp_out},   {"--layers", &a->channel_layers}};
    for (int k = 0; k < (int)(sizeof flags / sizeof flags[0]); k++)
        if (!strcmp(argv[*i], flags[k].flag) && *i + 1 < argc) {
            *flags[k].value = argv[++*i];
            return 1;
        }
    return 0;
}

/* Parses the command line into a; -1 to go on, else the exit code to return
 * (--help, --version or a bad command line, already reported). */
static int parse_args(int argc, char **argv, viz_args *a)
{
    memset(a, 0, sizeof *a);
    a->cmp_out = "compare";
    a->fmt = VIZ_PNG;
    viz_attr_defaults(&a->attr);
    for (int i = 1; i < argc; i++) {
        const char *arg = argv[i];
        int used = attribution_flag(argc, argv, &i, &a->attr);
        if (used == 0)
            used = choice_flag(argc, argv, &i, a);
        if (used < 0)
            return CFX_EXIT_USAGE;
        if (used || text_flag(argc, argv, &i, a))
            continue;
        if (!strcmp(arg, "--help") || !strcmp(arg, "-h")) {
            usage(stdout);
            return CFX_EXIT_OK;
        } else if (!strcmp(arg, "--version")) {
            printf("cfx-viz %s\n", CFX_VERSION);
            return CFX_EXIT_OK;
        } else if (!strcmp(arg, "--compare") && i + 2 < argc) {
            a->cmp_a = argv[++i];
            a->cmp_b = argv[++i];
        } else if (!strcmp(arg, "--quiet") || !strcmp(arg, "-q")) {
            a->quiet = 1;
        } else {
            fprintf(stderr, "cfx-viz: unknown or incomplete option '%s' (see --help)\n", arg);
            return CFX_EXIT_USAGE;
        }
    }
    if (strlen(a->cmp_out) >= CFX_PATH_LEN) {
        fprintf(stderr, "cfx-viz: --out: path longer than %d characters\n", CFX_PATH_LEN - 1);
        return CFX_EXIT_USAGE;
    }
    if (a->cmp_a && a->run_dir) {
        fprintf(stderr, "cfx-viz: --run and --compare exclude each other (see --help)\n");
        return CFX_EXIT_USAGE;
    }
    if (!a->cmp_a && !a->run_dir) {
        fprintf(stderr, "cfx-viz: --run OUTPUT_DIR is required (see --help)\n");
        return CFX_EXIT_USAGE;
    }
    return -1;
}

typedef int (*figure_fn)(viz_out *, const viz_run *, cfx_error *);

static void print_sanity(const viz_run *r)
{
    const viz_sanity *sa = &r->sanity;
    printf("sanity check: Spearman rank correlation with the trained model's map (mean over %d "
           "images)\n",
           sa->n_images);
    int width = 22; /* of the layer column: the longest label */
    for (int s = 0; s < sa->n_steps; s++) {
        char lab[96];
        viz_sanity_step_label(r, s, lab, sizeof lab);
        width = (int)strlen(lab) > width ? (int)strlen(lab) : width;
    }
    printf("  step  %-*s", width, "re-initialised down to");
    for (int k = 0; k < VIZ_N_METHODS; k++)
        printf(" %10s", VIZ_METHOD_SHORT[k]);
    printf("\n");
    for (int s = 0; s < sa->n_steps; s++) {
        char lab[96];
        viz_sanity_step_label(r, s, lab, sizeof lab);
        printf("  %4d  %-*s", s, width, lab);
        for (int k = 0; k < VIZ_N_METHODS; k++) {
            char v[16];
            viz_sanity_mean_text(sa, k, s, v, sizeof v);
            printf(" %10s", v);
        }
        printf("\n");
    }
}

/* What a run's computation found: accuracy, the sanity check, IG's completeness. */
static void print_findings(const viz_run *r)
{
    printf("cfx-viz %s: %s: best.h5 of epoch %d (validation accuracy %.4f); test accuracy "
           "%.4f, loss %.4f (%d images); OpenBLAS core %s, %d thread%s\n",
           CFX_VERSION, r->run_dir, r->state.best_epoch, r->state.best_validation_accuracy,
           r->test_accuracy, r->test_loss, r->n_test, cfx_blas_core(), cfx_blas_threads(),
           cfx_blas_threads() == 1 ? "" : "s");
    print_sanity(r);
    for (int b = 0; b < 2; b++) {
        printf("Integrated Gradients from the %s image, completeness (sum of attributions "
               "vs score change):",
               b ? "blurred" : "black");
        for (int i = 0; i < r->n_images; i++)
            printf(" %.4f/%.4f", r->ig_check[b][i][0], r->ig_check[b][i][1]);
        printf("\n");
    }
}

/* Loads run a->run_dir, picks its test images and computes everything the figures show. */
static int load_run(viz_run *r, const viz_args *a, cfx_error *err)
{
    if (viz_run_load(r, a->run_dir, a->data_dir, err) != 0)
        return CFX_EXIT_FAILURE;
    if (a->cam_layer)
        snprintf(r->cam_request, sizeof r->cam_request, "%s", a->cam_layer);
    r->attr = a->attr;
    r->actmax_steps = a->attr.actmax_steps;
    r->channel_max = a->channel_max;
    if (a->channel_layers)
        snprintf(r->layers_request, sizeof r->layers_request, "%s", a->channel_layers);
    if (viz_run_choose_images(r, a->images, err) != 0)
        return CFX_EXIT_USAGE;
    if (out_dir(r->run_dir, "", err) != 0 || out_dir(r->run_dir, "plots", err) != 0 ||
        out_dir(r->run_dir, "featuremaps", err) != 0 || out_dir(r->run_dir, "explorer", err) != 0)
        return CFX_EXIT_FAILURE;
    return viz_run_compute(r, err) != 0 ? CFX_EXIT_FAILURE : CFX_EXIT_OK;
}

/* Every figure, analysis.h5, report.html and explorer.html of one run. */
static int write_run(viz_run *r, viz_out *out, const viz_args *a, double t0, cfx_error *err)
{
    double t_draw = cfx_now();
    static const figure_fn figures[] = {
        viz_fig_loss_curves,   viz_fig_accuracies,      viz_fig_confusion,     viz_fig_per_class,
        viz_fig_misclassified, viz_fig_confusion_pairs, viz_fig_conv1_filters, viz_fig_saliency,
        viz_fig_gradcam,       viz_fig_integrated_gradients, viz_fig_smoothgrad, viz_fig_occlusion,
        viz_fig_guided_backprop, viz_fig_guided_gradcam, viz_fig_sanity, viz_fig_channels,
        viz_fig_activation_maximization, viz_fig_embedding, viz_fig_featuremaps,
    };
    for (size_t i = 0; i < sizeof figures / sizeof figures[0]; i++)
        if (figures[i](out, r, err) != 0)
            return -1;
    t_draw = cfx_now() - t_draw;
    double t_files = cfx_now();
    char path[CFX_PATH_LEN + 32];
    snprintf(path, sizeof path, "%s/analysis.h5", r->run_dir);
    if (viz_store_analysis(r, path, err) != 0)
        return -1;
    snprintf(path, sizeof path, "%s/report.html", r->run_dir);
    if (viz_write_report(r, out, path, cfx_now() - t0, err) != 0)
        return -1;
    t_files = cfx_now() - t_files;
    double t_explorer = cfx_now();
    viz_run *runs[1] = {r};
    if (viz_write_explorer(runs, 1, r->run_dir, a->attr.explorer_images, err) != 0)
        return -1;
    t_explorer = cfx_now() - t_explorer;
    if (!a->quiet)
        printf("cfx-viz: %d figures, per_class.csv, analysis.h5, report.html and explorer.html "
               "in %s/ in %.2f s (load %.2f, test set and channel statistics %.2f, feature maps "
               "and IG check %.2f, %d methods at %d sanity steps %.2f, PCA %.2f, activation "
               "maximisation %.2f, drawing %.2f, analysis.h5 + report %.2f, explorer with %d "
               "images' maps %.2f)\n",
               out->n, r->run_dir, cfx_now() - t0, r->t_load, r->t_eval, r->t_explain,
               VIZ_N_METHODS, r->sanity.n_steps, r->t_sanity, r->t_embedding, r->t_actmax, t_draw,
               t_files, a->attr.explorer_images, t_explorer);
    return 0;
}

static int run_mode(const viz_args *a)
{
    double t0 = cfx_now();
    cfx_error err = {{0}};
    viz_run r;
    viz_out out = {0};
    int code = load_run(&r, a, &err);
    if (code == CFX_EXIT_OK && !a->quiet)
        print_findings(&r);
    out.dir = r.run_dir;
    out.fmt = a->fmt;
    if (code == CFX_EXIT_OK && write_run(&r, &out, a, t0, &err) != 0)
        code = CFX_EXIT_FAILURE;
    if (code != CFX_EXIT_OK)
        fprintf(stderr, "cfx-viz: %s\n", err.msg);
    viz_out_free(&out);
    viz_run_free(&r);
    viz_plot_shutdown();
    return code;
}

int main(int argc, char **argv)
{
    cfx_blas_select_kernels(argv); /* may re-execute this program */
    viz_args args;
    int code = parse_args(argc, argv, &args);
    if (code >= 0)
        return code;
    set_threads();
    return args.cmp_a ? compare_mode(&args) : run_mode(&args);
}
