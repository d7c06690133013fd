/* analysis.h5 and report.html: what cfx-viz computed, as numbers and as a
 * self-contained web page. */
#ifndef CFX_VIZ_STORE_H
#define CFX_VIZ_STORE_H

#include <stdio.h>

#include "figures.h" /* defines: viz_out */
#include "run.h"     /* defines: viz_run */

/* Writes the test predictions, confusion matrix, per-class metrics,
 * explanation maps and sanity-check correlations to path (via path.tmp). */
int viz_store_analysis(const viz_run *r, const char *path, cfx_error *err);

/* Writes report.html: every figure of o embedded as base64, the per-class
 * table, the sanity-check table and the run's metadata. seconds is the
 * time taken so far (printed in the footer). */
int viz_write_report(const viz_run *r, const viz_out *o, const char *path, double seconds,
                     cfx_error *err);

/* Pieces of cfx-viz's pages (report.html, compare.html): the head with the
 * style sheet, the <h1> title + what and the link to explorer.html; every
 * figure of section sec, embedded; text with HTML's special characters
 * escaped; the sanity check's Spearman table of a run. */
void viz_html_head(FILE *fp, const char *title, const char *what);
void viz_html_section(FILE *fp, const viz_out *o, int sec);
void viz_html_escaped(FILE *fp, const char *s);
void viz_html_sanity_table(FILE *fp, const viz_run *r, const char *id);
/* s as a JSON string literal (quotes, backslashes, control characters and
 * '<' escaped); n bytes as base64. */
void viz_json_string(FILE *fp, const char *s);
void viz_put_base64(FILE *fp, const unsigned char *d, size_t n);

/* cfx-viz --compare RUN_A RUN_B: compare.c */
int viz_compare(viz_run *a, viz_run *b, const char *out_dir, viz_format fmt, int quiet,
                cfx_error *err);

#endif
