/* report.html: one self-contained page with every cfx-viz figure (base64
 * data URIs), the per-class table, the sanity-check table and the run's
 * metadata. */
#include "store.h" /* defines: viz_write_report */

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifndef CFX_VERSION
#define CFX_VERSION "0.0.0"
#endif

#define K CFX_NUM_CLASSES

void viz_html_escaped(FILE *fp, const char *s)
{
    for (; *s; s++) {
        switch (*s) {
        case '<': fputs("&lt;", fp); break;
        case '>': fputs("&gt;", fp); break;
        case '&': fputs("&amp;", fp); break;
        case '"': fputs("&quot;", fp); break;
        default: fputc(*s, fp);
        }
    }
}

void viz_json_string(FILE *fp, const char *s)
{
    fputc('"', fp);
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\')
            fprintf(fp, "\\%c", c);
        else if (c < 0x20 || c == '<') /* '<': no "</script>" inside a script */
            fprintf(fp, "\\u%04x", c);
        else
            fputc(c, fp);
    }
    fputc('"', fp);
}

void viz_put_base64(FILE *fp, const unsigned char *d, size_t n)
{
    static const char tab[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    char out[4];
    for (size_t i = 0; i < n; i += 3) {
        unsigned v = (unsigned)d[i] << 16;
        if (i + 1 < n)
            v |= (unsigned)d[i + 1] << 8;
        if (i + 2 < n)
            v |= d[i + 2];
        out[0] = tab[(v >> 18) & 63];
        out[1] = tab[(v >> 12) & 63];
        out[2] = i + 1 < n ? tab[(v >> 6) & 63] : '=';
        out[3] = i + 2 < n ? tab[v & 63] : '=';
        fwrite(out, 1, 4, fp);
    }
}

static void figure(FILE *fp, const viz_item *it)
{
    fprintf(fp, "<figure id=\"%s\">\n<img alt=\"", it->rel);
    viz_html_escaped(fp, it->title);
    fprintf(fp, "\" width=\"%d\" height=\"%d\" src=\"data:%s;base64,", it->width, it->height,
            it->mime);
    viz_put_base64(fp, it->data, it->len);
    fputs("\">\n<figcaption><b>", fp);
    viz_html_escaped(fp, it->title);
    fputs("</b> — ", fp);
    viz_html_escaped(fp, it->caption);
    fputs(" <code>", fp);
    viz_html_escaped(fp, it->rel);
    fputs("</code></figcaption>\n</figure>\n", fp);
}

void viz_html_section(FILE *fp, const viz_out *o, int sec)
{
    for (int i = 0; i < o->n; i++)
        if (o->items[i].section == sec)
            figure(fp, &o->items[i]);
}

static void meta_row(FILE *fp, const char *name, const char *value)
{
    fputs("<tr><th>", fp);
    viz_html_escaped(fp, name);
    fputs("</th><td>", fp);
    viz_html_escaped(fp, value);
    fputs("</td></tr>\n", fp);
}

static const char *STYLE =
    "body{font-family:'DejaVu Sans',Verdana,sans-serif;color:#222;max-width:1180px;"
    "margin:0 auto;padding:8px 20px 40px;line-height:1.45}\n"
    "h1{font-size:1.6em;border-bottom:2px solid #1f77b4;padding-bottom:6px}\n"
    "h2{font-size:1.3em;margin-top:2em;border-bottom:1px solid #ddd}\n"
    "figure{margin:22px 0}\n"
    "img{max-width:100%;height:auto;border:1px solid #e4e4e4}\n"
    "figcaption{color:#555;font-size:.92em;margin-top:4px}\n"
    "table{border-collapse:collapse;margin:10px 0;font-size:.95em}\n"
    "th,td{padding:3px 12px;border-bottom:1px solid #e4e4e4;text-align:left}\n"
    "td.n{text-align:right;font-variant-numeric:tabular-nums}\n"
    "table.meta th{color:#555;font-weight:normal}\n"
    "pre{background:#f6f6f6;padding:10px;overflow-x:auto;font-size:.9em}\n"
    "code{font-size:.9em;color:#666}\n"
    ".summary{font-size:1.05em}\n";

void viz_html_head(FILE *fp, const char *title, const char *what)
{
    fputs("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n", fp);
    fputs("<meta name=\"viewport\" content=\"width=device-width, "
          "initial-scale=1\">\n<title>",
          fp);
    viz_html_escaped(fp, title);
    viz_html_escaped(fp, what);
    fprintf(fp, "</title>\n<style>\n%s</style>\n</head>\n<body>\n<h1>", STYLE);
    viz_html_escaped(fp, title);
    viz_html_escaped(fp, what);
    fputs("</h1>\n<p><a id=\"explorer-link\" href=\"explorer.html\">Open the explorer</a>: "
          "every test image, filtered by class, prediction and confidence, each with its "
          "probabilities, attribution maps, feature maps and the channels' top images.</p>\n",
          fp);
}

void viz_html_sanity_table(FILE *fp, const viz_run *r, const char *id)
{
    const viz_sanity *sa = &r->sanity;
    fprintf(fp, "<table id=\"%s\">\n<tr><th>step</th><th>re-initialised down to</th>", id);
    for (int k = 0; k < VIZ_N_METHODS; k++)
        fprintf(fp, "<th>%s ρ</th>", VIZ_METHOD_LABEL[k]);
    fprintf(fp, "</tr>\n");
    for (int s = 0; s < sa->n_steps; s++) {
        char lab[64];
        viz_sanity_step_label(r, s, lab, sizeof lab);
        fprintf(fp, "<tr><td class=\"n\">%d</td><td>", s);
        viz_html_escaped(fp, lab);
        fprintf(fp, "</td>");
        for (int k = 0; k < VIZ_N_METHODS; k++) {
            char v[16];
            viz_sanity_mean_text(sa, k, s, v, sizeof v);
            fprintf(fp, "<td class=\"n\">%s</td>", v);
        }
        fprintf(fp, "</tr>\n");
    }
    fprintf(fp, "</table>\n<p>Mean over the %d images; re-initialisation seed %llu.</p>\n",
            sa->n_images, (unsigned long long)r->sanity_seed);
}

int viz_write_report(const viz_run *r, const viz_out *o, const char *path, double seconds,
                     cfx_error *err)
{
    char tmp[CFX_PATH_LEN + 64];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    FILE *fp = fopen(tmp, "w");
    if (!fp)
        return cfx_fail(err, "%s: cannot write: %s", tmp, strerror(errno));
    viz_html_head(fp, "cfx-viz report: ", r->run_dir);

    /* summary and metadata */
    fprintf(fp,
            "<p class=\"summary\">Best validation accuracy <b>%.2f %%</b> at epoch %d of %d; "
            "with those weights the test accuracy is <b>%.2f %%</b> (loss %.4f, %d images",
            100.0 * r->state.best_validation_accuracy, r->state.best_epoch,
            r->rows[r->n_rows - 1].epoch, 100.0 * r->test_accuracy, r->test_loss, r->n_test);
    if (r->has_log_test)
        fprintf(fp, "; cfx-train logged %.2f %%", 100.0 * r->log_test_accuracy);
    fputs(").</p>\n<h2 id=\"run\">Run</h2>\n<table class=\"meta\">\n", fp);
    meta_row(fp, "run directory", r->run_dir);
    meta_row(fp, "checkpoint", r->ckpt_path);
    meta_row(fp, "metrics log", r->metrics_path);
    meta_row(fp, "test set", r->data_dir);
    for (int i = 0; i < r->n_meta; i++)
        if (strcmp(r->meta[i].name, "config") && strcmp(r->meta[i].name, "layers"))
            meta_row(fp, r->meta[i].name, r->meta[i].value);
    fputs("</table>\n<p>Model:</p>\n<pre>", fp);
    for (int l = 0; l < r->model.n_layers; l++) {
        const cfx_layer *L = &r->model.layers[l];
        char spec[256];
        cfx_layer_spec_format(&L->spec, spec, sizeof spec);
        char line[512];
        if (L->flat_out)
            snprintf(line, sizeof line, "%2d  %-10s %-44s -> %d\n", l, L->kind->torch_name, spec,
                     L->out_c);
        else
            snprintf(line, sizeof line, "%2d  %-10s %-44s -> %d x %d x %d\n", l,
                     L->kind->torch_name, spec, L->out_c, L->out_h, L->out_w);
        viz_html_escaped(fp, line);
    }
    fprintf(fp, "%zu parameters</pre>\n", r->model.n_params);
    fputs("<details><summary>Effective configuration (root attribute <code>config</code>)"
          "</summary>\n<pre>",
          fp);
    viz_html_escaped(fp, r->config_text);
    fputs("</pre>\n</details>\n", fp);

    fputs("<h2 id=\"training\">Training</h2>\n", fp);
    viz_html_section(fp, o, VIZ_SEC_TRAINING);

    fputs("<h2 id=\"test\">Test set</h2>\n", fp);
    viz_html_section(fp, o, VIZ_SEC_TEST);
    fputs("<table id=\"per-class\">\n<tr><th>class</th><th>precision</th><th>recall</th>"
          "<th>F1</th><th>images</th></tr>\n",
          fp);
    double mp = 0, mr = 0, mf = 0;
    for (int k = 0; k < K; k++) {
        const viz_class_metrics *m = &r->per_class[k];
        fprintf(fp,
                "<tr><td>%s</td><td class=\"n\">%.4f</td><td class=\"n\">%.4f</td>"
                "<td class=\"n\">%.4f</td><td class=\"n\">%ld</td></tr>\n",
                CFX_CIFAR10_CLASSES[k], m->precision, m->recall, m->f1, m->support);
        mp += m->precision / K, mr += m->recall / K, mf += m->f1 / K;
    }
    fprintf(fp,
            "<tr><th>mean</th><td class=\"n\">%.4f</td><td class=\"n\">%.4f</td>"
            "<td class=\"n\">%.4f</td><td class=\"n\">%d</td></tr>\n</table>\n",
            mp, mr, mf, r->n_test);

    fputs("<h2 id=\"explanations\">What the network looks at</h2>\n", fp);
    viz_html_section(fp, o, VIZ_SEC_EXPLAIN);

    fputs("<h2 id=\"sanity\">Sanity check</h2>\n", fp);
    viz_html_section(fp, o, VIZ_SEC_SANITY);
    viz_html_sanity_table(fp, r, "sanity-table");

    fputs("<h2 id=\"channels\">What the channels respond to</h2>\n", fp);
    viz_html_section(fp, o, VIZ_SEC_CHANNELS);

    fputs("<h2 id=\"features\">Feature maps</h2>\n", fp);
    viz_html_section(fp, o, VIZ_SEC_FEATURES);

    fprintf(fp,
            "<footer><p>Generated by cfx-viz %s in %.2f s. The numbers behind every figure are "
            "in <code>analysis.h5</code>.</p></footer>\n</body>\n</html>\n",
            CFX_VERSION, seconds);
    int bad = ferror(fp);
    if (fclose(fp) != 0 || bad) {
        remove(tmp);
        return cfx_fail(err, "%s: write failed: %s", tmp, strerror(errno ? errno : EIO));
    }
    if (rename(tmp, path) != 0) {
        remove(tmp);
        return cfx_fail(err, "%s: cannot rename into place: %s", path, strerror(errno));
    }
    return 0;
}
