/* A small plotting layer on cairo + pango for cfx-viz: figures recorded once
 * and saved as PNG, SVG or PDF; axes with nice ticks, line plots with a
 * legend, bar charts, heatmaps with a colorbar, images scaled with
 * nearest-neighbour filtering, and the viridis colormap.
 *
 * Units are PNG pixels (1 unit = 1 px; 1 pt in SVG and PDF). Figure
 * functions lay out their axes from measured text, so labels are not
 * clipped. */
#ifndef CFX_VIZ_PLOT_H
#define CFX_VIZ_PLOT_H

#include <cairo.h>
#include <pango/pangocairo.h>
#include <stddef.h>
#include <stdint.h>

#include "cfx/common.h" /* defines: cfx_error */

typedef enum { VIZ_PNG, VIZ_SVG, VIZ_PDF } viz_format;

/* File extension ("png") and MIME type ("image/png") of a format. */
const char *viz_format_ext(viz_format f);
const char *viz_format_mime(viz_format f);

typedef struct {
    double r, g, b;
} viz_color;

/* matplotlib's default colour cycle (tab10) and a few greys. */
extern const viz_color VIZ_BLUE, VIZ_ORANGE, VIZ_GREEN, VIZ_RED, VIZ_PURPLE, VIZ_GREY, VIZ_BLACK,
    VIZ_WHITE, VIZ_TEXT;

/* viridis at t in [0, 1] (clamped). */
viz_color viz_viridis(double t);
/* Black or white, whichever reads better on viridis(t). */
viz_color viz_text_on_viridis(double t);

/* ---- figures ---------------------------------------------------------- */

typedef struct {
    double width, height;
    cairo_surface_t *rec; /* recording surface: drawn once, replayed per format */
    cairo_t *cr;
    PangoLayout *layout; /* reused for every text */
} viz_fig;

/* A figure of width x height units on a white background. */
void viz_fig_init(viz_fig *f, double width, double height);
void viz_fig_free(viz_fig *f);

/* Encodes the figure; *data is malloc'd (caller frees). */
int viz_fig_encode(viz_fig *f, viz_format fmt, unsigned char **data, size_t *len, cfx_error *err);

/* Writes len bytes to path (replacing it). */
int viz_write_file(const char *path, const void *data, size_t len, cfx_error *err);

/* Releases the font caches of pango and fontconfig (call once at
 * exit, after every figure is freed, so leak checkers see a clean exit). */
void viz_plot_shutdown(void);

/* ---- text ------------------------------------------------------------- */

enum {
    VIZ_BOLD = 1,   /* bold weight */
    VIZ_MARKUP = 2, /* text is pango markup */
};

/* Draws text with its box anchored at (x, y): ax, ay = 0 left/top, 0.5
 * centre, 1 right/bottom of the (unrotated) box; the box is rotated by
 * angle degrees (counter-clockwise) about the anchor. Multi-line text is
 * centred when ax = 0.5, right-aligned when ax = 1. */
void viz_text(viz_fig *f, double x, double y, const char *text, double size, double ax, double ay,
              double angle, int flags, viz_color color);
/* Width and height of the text's box. */
void viz_text_size(viz_fig *f, const char *text, double size, int flags, double *w, double *h);

/* ---- ticks ------------------------------------------------------------ */

#define VIZ_MAX_TICKS 16

typedef struct {
    int n;
    double v[VIZ_MAX_TICKS];
    char label[VIZ_MAX_TICKS][24];
} viz_ticks;

/* "Nice" ticks inside [lo, hi]: steps of 1, 2, 2.5 or 5 times a power of
 * ten, at most max_ticks of them (at least 2 when the range allows);
 * integer_only keeps steps >= 1 (epochs). Labels use as few decimals as the
 * step needs. */
void viz_nice_ticks(double lo, double hi, int max_ticks, int integer_only, viz_ticks *t);
/* Widens [*lo, *hi] to the enclosing multiples of the nice step. */
void viz_nice_limits(double *lo, double *hi, int max_ticks);

/* ---- axes ------------------------------------------------------------- */

typedef struct {
    viz_fig *fig;
    double x, y, w, h;     /* plot area in figure units */
    double x0, x1, y0, y1; /* data limits */
    viz_ticks xt, yt;
    const char **xcat; /* category labels at x = 0..n_xcat-1 instead of numbers */
    int n_xcat;
    double xcat_angle; /* rotation of category labels (degrees) */
} viz_axes;

#define VIZ_FONT 13.0       /* tick labels, legends */
#define VIZ_FONT_LABEL 14.0 /* axis labels */
#define VIZ_FONT_TITLE 16.0 /* titles */

/* Sets limits and ticks, then places the plot area inside the box
 * (bx, by, bw, bh) leaving room for the title, axis labels and tick labels. */
void viz_axes_layout(viz_axes *ax, viz_fig *f, double bx, double by, double bw, double bh,
                     double x0, double x1, double y0, double y1, int integer_x, const char *title,
                     const char *xlabel, const char *ylabel);
double viz_axes_px(const viz_axes *ax, double x);
double viz_axes_py(const viz_axes *ax, double y);
/* Light grid, frame, ticks, tick labels, axis labels and title. */
void viz_axes_draw(viz_axes *ax, const char *title, const char *xlabel, const char *ylabel);

enum { VIZ_SOLID = 0, VIZ_DASHED = 1, VIZ_DOTTED = 2 };
enum { VIZ_NO_MARKER = 0, VIZ_CIRCLE = 1, VIZ_STAR = 2 };

void viz_axes_line(viz_axes *ax, const double *x, const double *y, int n, viz_color c, double width,
                   int dash, int marker);
void viz_axes_vline(viz_axes *ax, double x, viz_color c, double width, int dash);
void viz_axes_hline(viz_axes *ax, double y, viz_color c, double width, int dash);
void viz_axes_marker(viz_axes *ax, double x, double y, int marker, double size, viz_color c);
/* Vertical bar centred at x, from 0 to y. */
void viz_axes_bar(viz_axes *ax, double x, double width, double y, viz_color c);
/* n points xy[n][2] (data units) as dots of the given radius (pixels) and
 * opacity, filled or (ring) outlined, without marker edges: for scatters of
 * thousands of points. */
void viz_axes_dots(viz_axes *ax, const float *xy, int n, double radius, viz_color c, double alpha,
                   int ring);

typedef struct {
    const char *label;
    viz_color color;
    int dash;                     /* VIZ_SOLID, ...; -1 = a filled square (bars) */
    int marker;                   /* VIZ_NO_MARKER, ... */
    const viz_color *marker_fill; /* NULL: the line colour */
} viz_legend_entry;

/* Size of a legend box, and the box drawn with its top-left at (x, y). */
void viz_legend_size(viz_fig *f, const viz_legend_entry *e, int n, double *w, double *h);
void viz_legend_draw(viz_fig *f, const viz_legend_entry *e, int n, double x, double y);

/* Legend in the corner of the plot area that covers the fewest of the
 * given points (x, y in data units; may be NULL). */
void viz_axes_legend(viz_axes *ax, const viz_legend_entry *e, int n, const double *px,
                     const double *py, int n_points);

/* ---- images and colour maps ------------------------------------------ */

/* RGB image rgb[H][W][3] drawn into (x, y, w, h) with nearest-neighbour
 * scaling. */
void viz_image_rgb(viz_fig *f, const uint8_t *rgb, int H, int W, double x, double y, double w,
                   double h);
/* Scalar map v[H][W] through viridis, (v - vmin) / (vmax - vmin), drawn into
 * (x, y, w, h) with opacity alpha; smooth = bilinear instead of nearest. */
void viz_image_map(viz_fig *f, const float *v, int H, int W, double vmin, double vmax, double x,
                   double y, double w, double h, double alpha, int smooth);
/* Overlay of v[H][W] through viridis whose opacity grows with the value:
 * max_alpha * (v - vmin) / (vmax - vmin), so low values leave the image
 * underneath visible. */
void viz_image_map_overlay(viz_fig *f, const float *v, int H, int W, double vmin, double vmax,
                           double x, double y, double w, double h, double max_alpha, int smooth);
/* Thin frame around a rectangle. */
void viz_frame(viz_fig *f, double x, double y, double w, double h, viz_color c, double width);

/* Vertical colorbar for viridis over [vmin, vmax] in (x, y, w, h) with
 * ticks and an optional label to its right. Returns the width used right of
 * the bar by ticks and label. */
double viz_colorbar(viz_fig *f, double x, double y, double w, double h, double vmin, double vmax,
                    const char *label);
/* The width viz_colorbar needs right of the bar for these values. */
double viz_colorbar_extra(viz_fig *f, double vmin, double vmax, double h, const char *label);

#endif
