/* viz_check: assertions on cfx-viz's output files for the end-to-end tests.
 *
 *   viz_check png FILE WIDTH HEIGHT     the PNG has exactly this size and is not blank
 *   viz_check png-min FILE WIDTH HEIGHT at least this size and not blank (screenshots)
 *   viz_check confusion ANALYSIS_H5 N ACCURACY
 *       the confusion matrix sums to N and its diagonal share equals ACCURACY
 *       (as printed with 4 decimals), as does /test's accuracy attribute
 *   viz_check agreement COMPARE_H5 A_ANALYSIS_H5 B_ANALYSIS_H5 N
 *       compare.h5's agreement categories and counts against both runs
 *   viz_check shown ANALYSIS_H5 INDEX CLASS PROB
 *       what explorer.html showed: test image INDEX is predicted CLASS (a
 *       name) with probability PROB (3 decimals), as /test holds
 *   viz_check count ANALYSIS_H5 CLASS N
 *       N test images of true class CLASS (a name) are misclassified
 *
 * Prints one line naming the file and the failed check, exits 1 on failure. */
#include <cairo.h>
#include <hdf5.h>
#include <hdf5_hl.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cfx/data.h" /* defines: CFX_CIFAR10_CLASSES, CFX_NUM_CLASSES */

/* Not blank: at least 2% of the pixels differ from the corner pixel (the
 * background) and there are at least 8 distinct colours. */
static int check_png(const char *path, int w, int h, int exact)
{
    cairo_surface_t *s = cairo_image_surface_create_from_png(path);
    if (cairo_surface_status(s) != CAIRO_STATUS_SUCCESS) {
        printf("%s: not a readable PNG (%s)\n", path,
               cairo_status_to_string(cairo_surface_status(s)));
        cairo_surface_destroy(s);
        return 1;
    }
    int W = cairo_image_surface_get_width(s), H = cairo_image_surface_get_height(s);
    int rc = 0;
    if (exact ? (W != w || H != h) : (W < w || H < h)) {
        printf("%s: %d x %d pixels, expected %s%d x %d\n", path, W, H, exact ? "" : "at least ", w,
               h);
        rc = 1;
    }
    cairo_surface_flush(s);
    const unsigned char *data = cairo_image_surface_get_data(s);
    int stride = cairo_image_surface_get_stride(s);
    uint32_t bg = *(const uint32_t *)data & 0xffffff;
    long differ = 0;
    int n_colors = 0;
    uint32_t colors[8];
    for (int y = 0; y < H; y++) {
        const uint32_t *row = (const uint32_t *)(data + (size_t)y * stride);
        for (int x = 0; x < W; x++) {
            uint32_t c = row[x] & 0xffffff;
            differ += c != bg;
            int seen = 0;
            for (int k = 0; k < n_colors; k++)
                seen |= colors[k] == c;
            if (!seen && n_colors < 8)
                colors[n_colors++] = c;
        }
    }
    if (differ < 0.02 * W * H || n_colors < 8) {
        printf("%s: looks blank (%.2f%% of the pixels differ from the background, %d%s "
               "colours)\n",
               path, 100.0 * differ / ((double)W * H), n_colors, n_colors == 8 ? "+" : "");
        rc = 1;
    }
    cairo_surface_destroy(s);
    if (rc == 0)
        printf("%s: %d x %d, not blank\n", path, W, H);
    return rc;
}

static int check_confusion(const char *path, long n, double accuracy)
{
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
    hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    if (f < 0) {
        printf("%s: cannot open\n", path);
        return 1;
    }
    long cm[100];
    int rank = 0;
    hsize_t dims[2] = {0, 0};
    double attr = NAN;
    int rc = 0;
    if (H5LTget_dataset_ndims(f, "/confusion_matrix", &rank) < 0 || rank != 2 ||
        H5LTget_dataset_info(f, "/confusion_matrix", dims, NULL, NULL) < 0 || dims[0] != 10 ||
        dims[1] != 10 || H5LTread_dataset(f, "/confusion_matrix", H5T_NATIVE_LONG, cm) < 0 ||
        H5LTget_attribute_double(f, "/test", "accuracy", &attr) < 0) {
        printf("%s: no 10 x 10 /confusion_matrix or /test accuracy attribute\n", path);
        H5Fclose(f);
        return 1;
    }
    H5Fclose(f);
    long sum = 0, diag = 0;
    for (int i = 0; i < 10; i++)
        for (int j = 0; j < 10; j++) {
            sum += cm[i * 10 + j];
            diag += i == j ? cm[i * 10 + j] : 0;
        }
    double share = sum ? (double)diag / sum : 0.0;
    if (sum != n) {
        printf("%s: the confusion matrix sums to %ld, the test set has %ld images\n", path, sum, n);
        rc = 1;
    }
    /* the expected accuracy was printed with 4 decimals */
    if (fabs(share - accuracy) > 0.5e-4 + 1e-12) {
        printf("%s: diagonal share %.6f differs from the accuracy %.4f\n", path, share, accuracy);
        rc = 1;
    }
    if (fabs(attr - share) > 1e-12) {
        printf("%s: /test accuracy %.6f differs from the diagonal share %.6f\n", path, attr, share);
        rc = 1;
    }
    if (rc == 0)
        printf("%s: confusion matrix sums to %ld, diagonal share %.6f matches %.4f\n", path, sum,
               share, accuracy);
    return rc;
}

/* n ints of dataset name in file path, malloc'd; NULL if absent or another size. */
static int *read_ints(const char *path, const char *name, int n)
{
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
    hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    hsize_t dims[1] = {0};
    int rank = 0, *v = malloc((size_t)n * sizeof *v);
    if (f < 0 || H5LTget_dataset_ndims(f, name, &rank) < 0 || rank != 1 ||
        H5LTget_dataset_info(f, name, dims, NULL, NULL) < 0 || dims[0] != (hsize_t)n ||
        H5LTread_dataset_int(f, name, v) < 0) {
        printf("%s: no %d-element %s\n", path, n, name);
        free(v);
        v = NULL;
    }
    if (f >= 0)
        H5Fclose(f);
    return v;
}

/* compare.h5's agreement against the two runs' own analysis.h5: every test
 * image in the right category, the counts their sums. */
static int check_agreement(const char *cmp, const char *a_h5, const char *b_h5, int n)
{
    int *labels = read_ints(a_h5, "/test/labels", n), *pa = read_ints(a_h5, "/test/predictions", n);
    int *pb = read_ints(b_h5, "/test/predictions", n), *cat = read_ints(cmp, "/agreement", n);
    int *counts = read_ints(cmp, "/agreement_counts", 4);
    int rc = !(labels && pa && pb && cat && counts);
    long want[4] = {0, 0, 0, 0};
    for (int i = 0; !rc && i < n; i++) {
        int ra = pa[i] == labels[i], rb = pb[i] == labels[i];
        int c = ra && rb ? 0 : ra ? 1 : rb ? 2 : 3;
        want[c]++;
        if (cat[i] != c) {
            printf("%s: test image %d in category %d, expected %d\n", cmp, i, cat[i], c);
            rc = 1;
        }
    }
    for (int c = 0; !rc && c < 4; c++)
        if (counts[c] != want[c]) {
            printf("%s: agreement count %d is %d, expected %ld\n", cmp, c, counts[c], want[c]);
            rc = 1;
        }
    if (rc == 0)
        printf("%s: agreement of %d images matches both runs (%ld %ld %ld %ld)\n", cmp, n,
               want[0], want[1], want[2], want[3]);
    free(labels), free(pa), free(pb), free(cat), free(counts);
    return rc;
}

static int class_index(const char *name)
{
    for (int c = 0; c < CFX_NUM_CLASSES; c++)
        if (!strcmp(CFX_CIFAR10_CLASSES[c], name))
            return c;
    return -1;
}

static int check_shown(const char *path, int index, const char *name, double prob)
{
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
    hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    hsize_t dims[2] = {0, 0};
    int rank = 0, rc = 1;
    if (f < 0 || H5LTget_dataset_ndims(f, "/test/probabilities", &rank) < 0 || rank != 2 ||
        H5LTget_dataset_info(f, "/test/probabilities", dims, NULL, NULL) < 0 ||
        dims[1] != CFX_NUM_CLASSES || index < 0 || (hsize_t)index >= dims[0]) {
        printf("%s: no /test/probabilities with image %d\n", path, index);
        if (f >= 0)
            H5Fclose(f);
        return 1;
    }
    int n = (int)dims[0], *preds = read_ints(path, "/test/predictions", n);
    float *probs = malloc((size_t)n * CFX_NUM_CLASSES * sizeof *probs);
    if (preds && H5LTread_dataset_float(f, "/test/probabilities", probs) >= 0) {
        int p = preds[index];
        double want = probs[(size_t)index * CFX_NUM_CLASSES + p];
        if (class_index(name) != p)
            printf("%s: image %d: the page shows %s, analysis.h5 predicts %s\n", path, index,
                   name, CFX_CIFAR10_CLASSES[p]);
        else if (fabs(want - prob) > 5.001e-4)
            printf("%s: image %d: the page shows probability %.3f, analysis.h5 has %.6f\n", path,
                   index, prob, want);
        else
            printf("%s: image %d: %s %.3f as shown\n", path, index, name, prob), rc = 0;
    }
    free(preds), free(probs);
    H5Fclose(f);
    return rc;
}

static int check_count(const char *path, const char *name, int want)
{
    int c = class_index(name), n = 0, wrong = 0;
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
    hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    hsize_t dims[1] = {0};
    if (f >= 0 && H5LTget_dataset_info(f, "/test/labels", dims, NULL, NULL) >= 0)
        n = (int)dims[0];
    if (f >= 0)
        H5Fclose(f);
    int *labels = read_ints(path, "/test/labels", n), *preds = read_ints(path, "/test/predictions", n);
    for (int i = 0; labels && preds && i < n; i++)
        wrong += labels[i] == c && preds[i] != c;
    int rc = !labels || !preds || c < 0 || wrong != want;
    printf("%s: %d misclassified %s images, the page counted %d\n", path, wrong, name, want);
    free(labels), free(preds);
    return rc;
}

int main(int argc, char **argv)
{
    if (argc == 5 && (!strcmp(argv[1], "png") || !strcmp(argv[1], "png-min")))
        return check_png(argv[2], atoi(argv[3]), atoi(argv[4]), !strcmp(argv[1], "png"));
    if (argc == 5 && !strcmp(argv[1], "confusion"))
        return check_confusion(argv[2], atol(argv[3]), atof(argv[4]));
    if (argc == 6 && !strcmp(argv[1], "agreement"))
        return check_agreement(argv[2], argv[3], argv[4], atoi(argv[5]));
    if (argc == 6 && !strcmp(argv[1], "shown"))
        return check_shown(argv[2], atoi(argv[3]), argv[4], atof(argv[5]));
    if (argc == 5 && !strcmp(argv[1], "count"))
        return check_count(argv[2], argv[3], atoi(argv[4]));
    fprintf(stderr, "usage: viz_check png|png-min FILE W H | confusion ANALYSIS_H5 N ACC |\n"
                    "       agreement COMPARE_H5 A_ANALYSIS_H5 B_ANALYSIS_H5 N |\n"
                    "       shown ANALYSIS_H5 INDEX CLASS PROB | count ANALYSIS_H5 CLASS N\n");
    return 2;
}
