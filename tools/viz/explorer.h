/* explorer.html: one offline page to browse the whole test set of one run
 * (or of two, side by side), filter it and open any image's probabilities,
 * attribution maps, feature maps and the channels' top images.
 *
 * Files beside the page, loaded by <script> and <img> tags (they work from
 * file://, unlike fetch()):
 *   explorer/index.js        classes, labels, every run's predictions and
 *                            probabilities, layers, top images, PCA
 *   explorer/thumbs_NN.png   the test images, 500 per sprite sheet
 *   explorer/<a|b>/NNNNN.js  one detail image of run a (b): its attribution
 *                            maps and feature maps, loaded when opened */
#ifndef CFX_VIZ_EXPLORER_H
#define CFX_VIZ_EXPLORER_H

#include "run.h" /* defines: viz_run */

#define VIZ_EXPLORER_MAX_DETAILS 10000
#define VIZ_EXPLORER_CHANNELS 32 /* feature maps per layer of a detail image */
#define VIZ_EXPLORER_PER_SHEET 500
#define VIZ_EXPLORER_SHEET_COLS 25

/* The detail images: the runs' figure images, then round robin over the
 * groups (true class x which runs get it right), each in test order, until
 * n_details; sorted. Returns their number; idx holds at least n_details
 * + VIZ_MAX_IMAGES entries. */
int viz_explorer_choose(viz_run *const runs[], int n_runs, int n_details, int *idx);

/* Writes out_dir/explorer.html and out_dir/explorer/ for runs[0..n_runs-1]
 * (1 or 2, computed with viz_run_compute) with n_details detail images. */
int viz_write_explorer(viz_run *const runs[], int n_runs, const char *out_dir, int n_details,
                       cfx_error *err);

#endif
