/* analysis.h5 and report.html: what cfx-viz computed, as numbers and as a
 * self-contained web page. */
#ifndef CFX_VIZ_STORE_H
#define CFX_VIZ_STORE_H

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

#endif
