/* cfx-viz --compare RUN_A RUN_B: two runs (any two architectures) side by
 * side: learning curves on shared axes, both confusion matrices and their
 * difference, per-class F1 of both, which test images each gets right (with
 * examples), the attribution maps of both on the same images, both sanity
 * checks; compare.html and compare.h5 under the output directory. */
#include <errno.h>
#include <hdf5.h>
#include <hdf5_hl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "store.h" /* defines: viz_compare, viz_html_* */

#define K CFX_NUM_CLASSES
#define S CFX_IMAGE_SIZE
#define PATH_MAX_CMP (CFX_PATH_LEN + 64) /* --out is at most CFX_PATH_LEN long */

enum { CMP_SEC_TRAINING, CMP_SEC_TEST, CMP_SEC_AGREEMENT, CMP_SEC_EXPLAIN };
enum { BOTH, ONLY_A, ONLY_B, NEITHER, N_AGREE };
static const char *const AGREE_LABEL[N_AGREE] = {"both right", "only A right", "only B right",
                                                 "both wrong"};
static const viz_color RUN_COLOR[2] = {{0x1f / 255.0, 0x77 / 255.0, 0xb4 / 255.0},
                                       {0xff / 255.0, 0x7f / 255.0, 0x0e / 255.0}};

/* "A: outputs/seed" for legends and headings. */
static void run_name(const viz_run *r, int which, char *buf, size_t len)
{
    snprintf(buf, len, "%c: %s", which ? 'B' : 'A', r->run_dir);
}

static int agreement_of(const viz_run *a, const viz_run *b, int i)
{
    int ra = a->preds[i] == a->labels[i], rb = b->preds[i] == b->labels[i];
    return ra && rb ? BOTH : ra ? ONLY_A : rb ? ONLY_B : NEITHER;
}

/* Train (dashed) and validation (solid) accuracy or loss of both runs. */
static int curves(viz_out *o, const viz_run *const r[2], int accuracy, cfx_error *err)
{
    viz_fig f;
    viz_fig_init(&f, 860, 520);
    double lo = INFINITY, hi = -INFINITY, x1 = 1;
    for (int w = 0; w < 2; w++)
        for (int i = 0; i < r[w]->n_rows; i++) {
            const cfx_epoch_metrics *m = &r[w]->rows[i];
            double t = accuracy ? 100 * m->train_accuracy : m->train_loss;
            double v = accuracy ? 100 * m->validation_accuracy : m->validation_loss;
            lo = fmin(lo, fmin(t, v)), hi = fmax(hi, fmax(t, v)), x1 = fmax(x1, m->epoch);
        }
    double dy = hi - lo > 0 ? hi - lo : 1.0;
    const char *title = accuracy ? "Accuracy per epoch, both runs" : "Loss per epoch, both runs";
    const char *yl = accuracy ? "accuracy (%)" : "cross-entropy loss";
    viz_axes ax = {0};
    viz_axes_layout(&ax, &f, 0, 0, f.width, f.height, 0.5, x1 + 0.5, lo - 0.06 * dy,
                    hi + 0.06 * dy, 1, title, "epoch", yl);
    viz_axes_draw(&ax, title, "epoch", yl);
    viz_legend_entry e[4];
    static char names[4][CFX_PATH_LEN + 32];
    for (int w = 0; w < 2; w++) {
        int n = r[w]->n_rows;
        double *x = cfx_malloc((size_t)n * sizeof *x), *t = cfx_malloc((size_t)n * sizeof *t),
               *v = cfx_malloc((size_t)n * sizeof *v);
        for (int i = 0; i < n; i++) {
            const cfx_epoch_metrics *m = &r[w]->rows[i];
            x[i] = m->epoch;
            t[i] = accuracy ? 100 * m->train_accuracy : m->train_loss;
            v[i] = accuracy ? 100 * m->validation_accuracy : m->validation_loss;
        }
        viz_axes_line(&ax, x, t, n, RUN_COLOR[w], 1.8, VIZ_DASHED, VIZ_NO_MARKER);
        viz_axes_line(&ax, x, v, n, RUN_COLOR[w], 2.2, VIZ_SOLID, VIZ_CIRCLE);
        free(x), free(t), free(v);
        char rn[CFX_PATH_LEN + 8];
        run_name(r[w], w, rn, sizeof rn);
        snprintf(names[2 * w], sizeof names[0], "%s, validation", rn);
        snprintf(names[2 * w + 1], sizeof names[0], "%s, train", rn);
        e[2 * w] = (viz_legend_entry){names[2 * w], RUN_COLOR[w], VIZ_SOLID, VIZ_CIRCLE, NULL};
        e[2 * w + 1] = (viz_legend_entry){names[2 * w + 1], RUN_COLOR[w], VIZ_DASHED, 0, NULL};
    }
    viz_axes_legend(&ax, e, 4, NULL, NULL, 0);
    int rc = viz_out_save(o, &f, accuracy ? "plots/compare_accuracy" : "plots/compare_loss",
                          CMP_SEC_TRAINING, title,
                          "Both runs on shared axes: validation solid with markers, train dashed.",
                          err);
    viz_fig_free(&f);
    return rc;
}

/* One confusion-matrix panel at (x, y): counts; colour = share of the row
 * (viridis), or for the difference B - A red (fewer) to blue (more). */
static void matrix_panel(viz_fig *f, const long *cm, int diff, double x, double y, double cell,
                         const char *title)
{
    long big = 1;
    for (int j = 0; j < K * K; j++)
        big = labs(cm[j]) > big ? labs(cm[j]) : big;
    viz_text(f, x + K * cell / 2, y - 8.0, title, VIZ_FONT_LABEL, 0.5, 1.0, 0, VIZ_BOLD, VIZ_TEXT);
    for (int t = 0; t < K; t++) {
        long row = 0;
        for (int p = 0; p < K; p++)
            row += labs(cm[t * K + p]);
        for (int p = 0; p < K; p++) {
            long c = cm[t * K + p];
            viz_color col;
            viz_color ink = VIZ_TEXT;
            if (diff) {
                double s = (double)c / big; /* -1..1 */
                col = s >= 0 ? (viz_color){1 - 0.8 * s, 1 - 0.5 * s, 1} : (viz_color){1, 1 + 0.8 * s, 1 + 0.8 * s};
            } else {
                double share = row ? (double)c / row : 0.0;
                col = viz_viridis(share);
                ink = viz_text_on_viridis(share);
            }
            cairo_set_source_rgb(f->cr, col.r, col.g, col.b);
            cairo_rectangle(f->cr, x + p * cell, y + t * cell, cell, cell);
            cairo_fill(f->cr);
            char num[24];
            snprintf(num, sizeof num, diff && c > 0 ? "+%ld" : "%ld", c);
            viz_text(f, x + (p + 0.5) * cell, y + (t + 0.5) * cell, num, 10.5, 0.5, 0.5, 0,
                     t == p ? VIZ_BOLD : 0, ink);
        }
    }
    viz_frame(f, x, y, K * cell, K * cell, VIZ_TEXT, 1.0);
    for (int k = 0; k < K; k++) {
        viz_text(f, x - 6.0, y + (k + 0.5) * cell, CFX_CIFAR10_CLASSES[k], 11.0, 1.0, 0.5, 0, 0,
                 VIZ_TEXT);
        viz_text(f, x + (k + 0.5) * cell, y + K * cell + 6.0, CFX_CIFAR10_CLASSES[k], 11.0, 1.0,
                 0.5, 60.0, 0, VIZ_TEXT);
    }
}

static int confusion(viz_out *o, const viz_run *const r[2], const long *d, cfx_error *err)
{
    const double cell = 36.0, left = 90.0, gap = 110.0, top = 90.0;
    viz_fig f;
    viz_fig_init(&f, left + 3 * (K * cell) + 2 * gap + 20.0, top + K * cell + 100.0);
    const char *title = "Confusion matrices: A, B and the difference B − A";
    viz_title_block(&f, f.width / 2, 10.0, title,
                    "rows: true class, columns: predicted; blue: B has more images in the cell, "
                    "red: fewer",
                    0);
    char ta[64], tb[64];
    snprintf(ta, sizeof ta, "A (accuracy %.2f %%)", 100 * r[0]->test_accuracy);
    snprintf(tb, sizeof tb, "B (accuracy %.2f %%)", 100 * r[1]->test_accuracy);
    matrix_panel(&f, r[0]->cm, 0, left, top, cell, ta);
    matrix_panel(&f, r[1]->cm, 0, left + K * cell + gap, top, cell, tb);
    matrix_panel(&f, d, 1, left + 2 * (K * cell + gap), top, cell, "B − A");
    int rc = viz_out_save(o, &f, "plots/compare_confusion", CMP_SEC_TEST, title,
                          "Both test-set confusion matrices (colour: share of the true class) "
                          "and their difference in images: off the diagonal, blue is a mistake B "
                          "makes more often than A.",
                          err);
    viz_fig_free(&f);
    return rc;
}

static int per_class(viz_out *o, const viz_run *const r[2], cfx_error *err)
{
    viz_fig f;
    viz_fig_init(&f, 960, 520);
    const char *title = "F1 per class, both runs";
    viz_axes ax = {0};
    const char *names[K];
    for (int k = 0; k < K; k++)
        names[k] = CFX_CIFAR10_CLASSES[k];
    ax.xcat = names, ax.n_xcat = K, ax.xcat_angle = 30.0;
    viz_axes_layout(&ax, &f, 0, 0, f.width, f.height, -0.6, K - 0.4, 0.0, 1.05, 1, title,
                    "class", "F1 on the test set");
    viz_axes_draw(&ax, title, "class", "F1 on the test set");
    for (int w = 0; w < 2; w++)
        for (int k = 0; k < K; k++)
            viz_axes_bar(&ax, k + (w ? 0.19 : -0.19), 0.36, r[w]->per_class[k].f1, RUN_COLOR[w]);
    char na[CFX_PATH_LEN + 8], nb[CFX_PATH_LEN + 8];
    run_name(r[0], 0, na, sizeof na);
    run_name(r[1], 1, nb, sizeof nb);
    viz_legend_entry e[2] = {{na, RUN_COLOR[0], -1, 0, NULL}, {nb, RUN_COLOR[1], -1, 0, NULL}};
    viz_legend_draw(&f, e, 2, ax.x + 10, ax.y + 8);
    int rc = viz_out_save(o, &f, "plots/compare_per_class", CMP_SEC_TEST, title,
                          "F1 of every class for both runs; compare.html and compare.h5 also "
                          "have precision and recall.",
                          err);
    viz_fig_free(&f);
    return rc;
}

/* Examples of each agreement category: up to 8 test images each, with both predictions. */
static int agreement(viz_out *o, const viz_run *const r[2], const long count[N_AGREE],
                     cfx_error *err)
{
    enum { PER = 8 };
    const double tile = 64.0, gap = 10.0, left = 150.0, head = 70.0, row_h = tile + 44.0;
    viz_fig f;
    viz_fig_init(&f, left + PER * (tile + gap) + 10.0, head + N_AGREE * row_h + 10.0);
    const char *title = "Which test images each run gets right";
    viz_title_block(&f, f.width / 2, 10.0, title, "examples of each case, the first in test order", 0);
    for (int c = 0; c < N_AGREE; c++) {
        double y = head + c * row_h;
        char lab[64];
        snprintf(lab, sizeof lab, "%s\n%ld images", AGREE_LABEL[c], count[c]);
        viz_text(&f, left - 12.0, y + tile / 2, lab, VIZ_FONT, 1.0, 0.5, 0, 0, VIZ_TEXT);
        int shown = 0;
        for (int i = 0; i < r[0]->n_test && shown < PER; i++) {
            if (agreement_of(r[0], r[1], i) != c)
                continue;
            double x = left + shown * (tile + gap);
            uint8_t rgb[CFX_IMAGE_PIXELS];
            viz_test_rgb(r[0], i, rgb);
            viz_image_rgb(&f, rgb, S, S, x, y, tile, tile);
            viz_frame(&f, x, y, tile, tile, VIZ_GREY, 1.0);
            char cap[96];
            snprintf(cap, sizeof cap, "%s\nA %s · B %s", CFX_CIFAR10_CLASSES[r[0]->labels[i]],
                     CFX_CIFAR10_CLASSES[r[0]->preds[i]], CFX_CIFAR10_CLASSES[r[1]->preds[i]]);
            viz_text(&f, x + tile / 2, y + tile + 3.0, cap, 9.0, 0.5, 0.0, 0, 0, VIZ_TEXT);
            shown++;
        }
    }
    int rc = viz_out_save(o, &f, "plots/agreement", CMP_SEC_AGREEMENT, title,
                          "Test images by which run classifies them correctly; under each: the "
                          "true class, then A's and B's predictions.",
                          err);
    viz_fig_free(&f);
    return rc;
}

/* The same images explained by both models: per image, each method of
 * both runs side by side. */
static int attributions(viz_out *o, const viz_run *const r[2], cfx_error *err)
{
    static const viz_method methods[] = {VIZ_SALIENCY, VIZ_GRADCAM, VIZ_IG_BLUR, VIZ_SMOOTHGRAD,
                                         VIZ_OCCLUSION, VIZ_GUIDED_GRADCAM};
    const int nm = (int)(sizeof methods / sizeof methods[0]), n = r[0]->n_images;
    const double tile = 96.0, gap = 8.0, left = 150.0, head = 96.0, row_h = tile + 26.0;
    viz_fig f;
    viz_fig_init(&f, left + (1 + 2 * nm) * (tile + gap) + 10.0, head + n * row_h + 10.0);
    const char *title = "The same images through both models";
    viz_title_block(&f, f.width / 2, 10.0, title,
                    "for each method A's map then B's, each scaled to its maximum (viridis)", 0);
    for (int m = 0; m < nm; m++) {
        double x = left + (1 + 2 * m) * (tile + gap);
        viz_text(&f, x + tile + gap / 2, head - 26.0, VIZ_METHOD_LABEL[methods[m]], 11.0, 0.5, 1.0,
                 0, VIZ_BOLD, VIZ_TEXT);
        viz_text(&f, x + tile / 2, head - 6.0, "A", 11.0, 0.5, 1.0, 0, 0, RUN_COLOR[0]);
        viz_text(&f, x + tile + gap + tile / 2, head - 6.0, "B", 11.0, 0.5, 1.0, 0, 0, RUN_COLOR[1]);
    }
    for (int i = 0; i < n; i++) {
        double y = head + i * row_h;
        char lab[160];
        snprintf(lab, sizeof lab, "test #%d, %s\nA: %s (%.2f)\nB: %s (%.2f)", r[0]->images[i],
                 CFX_CIFAR10_CLASSES[r[0]->img_label[i]], CFX_CIFAR10_CLASSES[r[0]->img_pred[i]],
                 r[0]->img_prob[i], CFX_CIFAR10_CLASSES[r[1]->img_pred[i]], r[1]->img_prob[i]);
        viz_text(&f, left - 10.0, y + tile / 2, lab, 10.5, 1.0, 0.5, 0, 0, VIZ_TEXT);
        viz_image_rgb(&f, r[0]->img_rgb[i], S, S, left, y, tile, tile);
        for (int m = 0; m < nm; m++)
            for (int w = 0; w < 2; w++) {
                viz_method k = methods[m];
                int mh = k == VIZ_GRADCAM ? r[w]->cam_h : S, mw = k == VIZ_GRADCAM ? r[w]->cam_w : S;
                const float *map = viz_run_map(r[w], k) + (size_t)i * mh * mw;
                float hi = 0.0f;
                for (int p = 0; p < mh * mw; p++)
                    hi = map[p] > hi ? map[p] : hi;
                double x = left + (1 + 2 * m + w) * (tile + gap);
                viz_image_map(&f, map, mh, mw, 0.0, hi > 0 ? hi : 1.0, x, y, tile, tile, 1.0, 0);
                viz_frame(&f, x, y, tile, tile, VIZ_GREY, 1.0);
            }
    }
    int rc = viz_out_save(o, &f, "plots/compare_attributions", CMP_SEC_EXPLAIN, title,
                          "Attribution maps of each model's own predicted class for the same "
                          "test images: saliency, Grad-CAM (each on its own last convolution), "
                          "Integrated Gradients from the blurred image, SmoothGrad, occlusion and "
                          "Guided Grad-CAM.",
                          err);
    viz_fig_free(&f);
    return rc;
}

/* compare.h5: the numbers behind the comparison, written via a .tmp file. */
static int write_h5(const viz_run *const r[2], const long *diff, const long count[N_AGREE],
                    const char *path, cfx_error *err)
{
    char tmp[PATH_MAX_CMP];
    if (snprintf(tmp, sizeof tmp, "%s.tmp", path) >= (int)sizeof tmp)
        return cfx_fail(err, "%s: path too long", path);
    hid_t f = H5Fcreate(tmp, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    if (f < 0)
        return cfx_fail(err, "%s: cannot create", tmp);
    int bad = 0;
    const int n = r[0]->n_test, ni = r[0]->n_images;
    hsize_t dk[2] = {K, K}, dn[1] = {(hsize_t)n}, dc[1] = {K}, da[1] = {N_AGREE};
    bad |= H5LTmake_dataset(f, "confusion_difference", 2, dk, H5T_NATIVE_LONG, diff) < 0;
    bad |= H5LTmake_dataset(f, "agreement_counts", 1, da, H5T_NATIVE_LONG, count) < 0;
    bad |= H5LTset_attribute_string(f, "agreement_counts", "columns",
                                    "both right, only A right, only B right, both wrong") < 0;
    int *cat = cfx_malloc((size_t)n * sizeof *cat);
    for (int i = 0; i < n; i++)
        cat[i] = agreement_of(r[0], r[1], i);
    bad |= H5LTmake_dataset(f, "agreement", 1, dn, H5T_NATIVE_INT, cat) < 0;
    bad |= H5LTset_attribute_string(f, "agreement", "values",
                                    "0 both right, 1 only A right, 2 only B right, 3 both wrong") < 0;
    free(cat);
    hsize_t dim[1] = {(hsize_t)ni};
    bad |= H5LTmake_dataset(f, "image_indices", 1, dim, H5T_NATIVE_INT, r[0]->images) < 0;
    for (int w = 0; w < 2; w++) {
        hid_t g = H5Gcreate2(f, w ? "b" : "a", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
        if (g < 0) {
            bad = 1;
            break;
        }
        double p[K], rc[K], f1[K];
        for (int k = 0; k < K; k++)
            p[k] = r[w]->per_class[k].precision, rc[k] = r[w]->per_class[k].recall,
            f1[k] = r[w]->per_class[k].f1;
        bad |= H5LTset_attribute_string(g, ".", "run", r[w]->run_dir) < 0;
        bad |= H5LTset_attribute_double(g, ".", "test_accuracy", &r[w]->test_accuracy, 1) < 0;
        bad |= H5LTmake_dataset(g, "confusion_matrix", 2, dk, H5T_NATIVE_LONG, r[w]->cm) < 0;
        bad |= H5LTmake_dataset(g, "precision", 1, dc, H5T_NATIVE_DOUBLE, p) < 0;
        bad |= H5LTmake_dataset(g, "recall", 1, dc, H5T_NATIVE_DOUBLE, rc) < 0;
        bad |= H5LTmake_dataset(g, "f1", 1, dc, H5T_NATIVE_DOUBLE, f1) < 0;
        bad |= H5LTmake_dataset(g, "predictions", 1, dn, H5T_NATIVE_INT, r[w]->preds) < 0;
        for (int k = 0; k < VIZ_N_METHODS; k++) {
            int mh = k == VIZ_GRADCAM ? r[w]->cam_h : S, mw = k == VIZ_GRADCAM ? r[w]->cam_w : S;
            hsize_t dm[3] = {(hsize_t)ni, (hsize_t)mh, (hsize_t)mw};
            bad |= H5LTmake_dataset(g, VIZ_METHOD_KEY[k], 3, dm, H5T_NATIVE_FLOAT,
                                    viz_run_map(r[w], (viz_method)k)) < 0;
        }
        H5Gclose(g);
    }
    bad |= H5Fclose(f) < 0;
    if (bad || rename(tmp, path) != 0) {
        unlink(tmp);
        return cfx_fail(err, "%s: cannot write", path);
    }
    return 0;
}

static void class_table(FILE *fp, const viz_run *const r[2])
{
    fputs("<table id=\"per-class\">\n<tr><th>class</th><th>A precision</th><th>B precision</th>"
          "<th>A recall</th><th>B recall</th><th>A F1</th><th>B F1</th></tr>\n",
          fp);
    for (int k = 0; k < K; k++) {
        const viz_class_metrics *a = &r[0]->per_class[k], *b = &r[1]->per_class[k];
        fprintf(fp,
                "<tr><th>%s</th><td class=\"n\">%.4f</td><td class=\"n\">%.4f</td>"
                "<td class=\"n\">%.4f</td><td class=\"n\">%.4f</td><td class=\"n\">%.4f</td>"
                "<td class=\"n\">%.4f</td></tr>\n",
                CFX_CIFAR10_CLASSES[k], a->precision, b->precision, a->recall, b->recall, a->f1,
                b->f1);
    }
    fputs("</table>\n", fp);
}

static int write_html(const viz_run *const r[2], const viz_out *o, const viz_out *sanity,
                      const long count[N_AGREE], const char *path, cfx_error *err)
{
    char tmp[PATH_MAX_CMP];
    if (snprintf(tmp, sizeof tmp, "%s.tmp", path) >= (int)sizeof tmp)
        return cfx_fail(err, "%s: path too long", path);
    FILE *fp = fopen(tmp, "w");
    if (!fp)
        return cfx_fail(err, "%s: cannot write: %s", tmp, strerror(errno));
    char what[2 * CFX_PATH_LEN + 16];
    snprintf(what, sizeof what, "%s vs %s", r[0]->run_dir, r[1]->run_dir);
    viz_html_head(fp, "cfx-viz comparison: ", what);
    fputs("<table class=\"meta\">\n", fp);
    for (int w = 0; w < 2; w++) {
        fprintf(fp, "<tr><th>%c</th><td>", w ? 'B' : 'A');
        viz_html_escaped(fp, r[w]->run_dir);
        fprintf(fp, "</td><td>%zu parameters, %d layers, best epoch %d, test accuracy %.2f %%</td></tr>\n",
                r[w]->model.n_params, r[w]->model.n_layers, r[w]->state.best_epoch,
                100 * r[w]->test_accuracy);
    }
    fputs("</table>\n<h2 id=\"training\">Training</h2>\n", fp);
    viz_html_section(fp, o, CMP_SEC_TRAINING);
    fputs("<h2 id=\"test\">Test set</h2>\n", fp);
    viz_html_section(fp, o, CMP_SEC_TEST);
    class_table(fp, r);
    fputs("<h2 id=\"agreement\">Agreement</h2>\n<table id=\"agreement-table\">\n"
          "<tr><th></th><th>B right</th><th>B wrong</th></tr>\n",
          fp);
    fprintf(fp, "<tr><th>A right</th><td class=\"n\">%ld</td><td class=\"n\">%ld</td></tr>\n",
            count[BOTH], count[ONLY_A]);
    fprintf(fp, "<tr><th>A wrong</th><td class=\"n\">%ld</td><td class=\"n\">%ld</td></tr>\n</table>\n",
            count[ONLY_B], count[NEITHER]);
    viz_html_section(fp, o, CMP_SEC_AGREEMENT);
    fputs("<h2 id=\"explanations\">What each network looks at</h2>\n", fp);
    viz_html_section(fp, o, CMP_SEC_EXPLAIN);
    for (int w = 0; w < 2; w++) {
        fprintf(fp, "<h2 id=\"sanity-%c\">Sanity check of %c</h2>\n", w ? 'b' : 'a', w ? 'B' : 'A');
        viz_html_section(fp, &sanity[w], VIZ_SEC_SANITY);
        viz_html_sanity_table(fp, r[w], w ? "sanity-table-b" : "sanity-table-a");
    }
    fputs("<footer><p>Generated by cfx-viz --compare; the numbers are in "
          "<code>compare.h5</code>.</p></footer>\n</body>\n</html>\n",
          fp);
    int bad = ferror(fp);
    if (fclose(fp) != 0 || bad || rename(tmp, path) != 0) {
        remove(tmp);
        return cfx_fail(err, "%s: cannot write", path);
    }
    return 0;
}

int viz_compare(viz_run *a, viz_run *b, const char *out_dir, viz_format fmt, int quiet,
                cfx_error *err)
{
    const viz_run *const r[2] = {a, b};
    long diff[K * K], count[N_AGREE] = {0};
    for (int j = 0; j < K * K; j++)
        diff[j] = b->cm[j] - a->cm[j];
    for (int i = 0; i < a->n_test; i++)
        count[agreement_of(a, b, i)]++;
    char path[PATH_MAX_CMP];
    viz_out o = {0}, sanity[2] = {{0}, {0}};
    o.dir = out_dir, o.fmt = fmt;
    int rc = -1;
    snprintf(path, sizeof path, "%s/plots", out_dir);
    if (cfx_mkdir_p(path, err) != 0)
        goto done;
    if (curves(&o, r, 0, err) || curves(&o, r, 1, err) || confusion(&o, r, diff, err) ||
        per_class(&o, r, err) || agreement(&o, r, count, err) || attributions(&o, r, err))
        goto done;
    for (int w = 0; w < 2; w++) { /* each run's own sanity figure, under run_a/ and run_b/ */
        static char dirs[2][PATH_MAX_CMP];
        if (snprintf(dirs[w], sizeof dirs[w], "%s/run_%c", out_dir, w ? 'b' : 'a') >= PATH_MAX_CMP - 16 ||
            snprintf(path, sizeof path, "%s/plots", dirs[w]) >= (int)sizeof path) {
            cfx_fail(err, "%s: path too long", out_dir);
            goto done;
        }
        sanity[w].dir = dirs[w], sanity[w].fmt = fmt;
        if (cfx_mkdir_p(path, err) != 0 || viz_fig_sanity(&sanity[w], r[w], err) != 0)
            goto done;
    }
    snprintf(path, sizeof path, "%s/compare.h5", out_dir);
    if (write_h5(r, diff, count, path, err) != 0)
        goto done;
    snprintf(path, sizeof path, "%s/compare.html", out_dir);
    if (write_html(r, &o, sanity, count, path, err) != 0)
        goto done;
    if (!quiet)
        printf("cfx-viz --compare: A %.2f %%, B %.2f %% test accuracy; both right %ld, only A "
               "%ld, only B %ld, neither %ld; %d figures, compare.h5 and compare.html in %s/\n",
               100 * a->test_accuracy, 100 * b->test_accuracy, count[BOTH], count[ONLY_A],
               count[ONLY_B], count[NEITHER], o.n + 2, out_dir);
    rc = 0;
done:
    viz_out_free(&o);
    viz_out_free(&sanity[0]);
    viz_out_free(&sanity[1]);
    return rc;
}
