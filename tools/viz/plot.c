/* The plotting layer of cfx-viz: figures on a cairo recording surface,
 * pango text, nice ticks, axes, legends, images, viridis and colorbars. */
#include "plot.h" /* defines: viz_fig, viz_axes, viz_text, viz_nice_ticks, viz_viridis */

#include <cairo-pdf.h>
#include <cairo-svg.h>
#include <errno.h>
#include <fontconfig/fontconfig.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifndef M_PI
#define M_PI 3.14159265358979323846
#endif

#define FONT_FAMILY "DejaVu Sans"

const viz_color VIZ_BLUE = {0x1f / 255.0, 0x77 / 255.0, 0xb4 / 255.0};
const viz_color VIZ_ORANGE = {0xff / 255.0, 0x7f / 255.0, 0x0e / 255.0};
const viz_color VIZ_GREEN = {0x2c / 255.0, 0xa0 / 255.0, 0x2c / 255.0};
const viz_color VIZ_RED = {0xd6 / 255.0, 0x27 / 255.0, 0x28 / 255.0};
const viz_color VIZ_PURPLE = {0x94 / 255.0, 0x67 / 255.0, 0xbd / 255.0};
const viz_color VIZ_GREY = {0x7f / 255.0, 0x7f / 255.0, 0x7f / 255.0};
const viz_color VIZ_BLACK = {0.0, 0.0, 0.0};
const viz_color VIZ_WHITE = {1.0, 1.0, 1.0};
const viz_color VIZ_TEXT = {0.13, 0.13, 0.13};

const char *viz_format_ext(viz_format f)
{
    return f == VIZ_SVG ? "svg" : f == VIZ_PDF ? "pdf" : "png";
}

const char *viz_format_mime(viz_format f)
{
    return f == VIZ_SVG ? "image/svg+xml" : f == VIZ_PDF ? "application/pdf" : "image/png";
}

/* ---- colour ----------------------------------------------------------- */

/* viridis (matplotlib's default colormap) at t = 0, 1/9, ..., 1: the ten
 * published anchor colours #440154 ... #fde725, linearly interpolated.
 * Lightness rises monotonically between them, so the map stays perceptual. */
static const unsigned char VIRIDIS[10][3] = {
    {0x44, 0x01, 0x54}, {0x48, 0x28, 0x78}, {0x3e, 0x4a, 0x89}, {0x31, 0x68, 0x8e},
    {0x26, 0x82, 0x8e}, {0x1f, 0x9e, 0x89}, {0x35, 0xb7, 0x79}, {0x6d, 0xcd, 0x59},
    {0xb4, 0xde, 0x2c}, {0xfd, 0xe7, 0x25},
};

viz_color viz_viridis(double t)
{
    if (!(t > 0.0)) /* also NaN */
        t = 0.0;
    if (t > 1.0)
        t = 1.0;
    double s = t * 9.0;
    int i = (int)s;
    if (i > 8)
        i = 8;
    double u = s - i;
    viz_color c;
    c.r = ((1 - u) * VIRIDIS[i][0] + u * VIRIDIS[i + 1][0]) / 255.0;
    c.g = ((1 - u) * VIRIDIS[i][1] + u * VIRIDIS[i + 1][1]) / 255.0;
    c.b = ((1 - u) * VIRIDIS[i][2] + u * VIRIDIS[i + 1][2]) / 255.0;
    return c;
}

viz_color viz_text_on_viridis(double t) { return t < 0.6 ? VIZ_WHITE : VIZ_BLACK; }

static void set_color(cairo_t *cr, viz_color c) { cairo_set_source_rgb(cr, c.r, c.g, c.b); }

/* ---- figures ---------------------------------------------------------- */

void viz_fig_init(viz_fig *f, double width, double height)
{
    f->width = ceil(width);
    f->height = ceil(height);
    cairo_rectangle_t extents = {0, 0, f->width, f->height};
    f->rec = cairo_recording_surface_create(CAIRO_CONTENT_COLOR_ALPHA, &extents);
    f->cr = cairo_create(f->rec);
    cairo_font_options_t *fo = cairo_font_options_create();
    cairo_font_options_set_antialias(fo, CAIRO_ANTIALIAS_GRAY);
    cairo_font_options_set_hint_style(fo, CAIRO_HINT_STYLE_SLIGHT);
    cairo_font_options_set_hint_metrics(fo, CAIRO_HINT_METRICS_OFF);
    cairo_set_font_options(f->cr, fo);
    cairo_font_options_destroy(fo);
    f->layout = pango_cairo_create_layout(f->cr);
    pango_context_set_round_glyph_positions(pango_layout_get_context(f->layout), FALSE);
    set_color(f->cr, VIZ_WHITE);
    cairo_paint(f->cr);
    cairo_set_line_join(f->cr, CAIRO_LINE_JOIN_ROUND);
    cairo_set_line_cap(f->cr, CAIRO_LINE_CAP_BUTT);
}

void viz_fig_free(viz_fig *f)
{
    if (f->layout)
        g_object_unref(f->layout);
    if (f->cr)
        cairo_destroy(f->cr);
    if (f->rec)
        cairo_surface_destroy(f->rec);
    memset(f, 0, sizeof *f);
}

typedef struct {
    unsigned char *data;
    size_t len, cap;
} membuf;

static cairo_status_t membuf_write(void *closure, const unsigned char *data, unsigned int len)
{
    membuf *b = closure;
    if (b->len + len > b->cap) {
        size_t cap = b->cap ? b->cap : 65536;
        while (cap < b->len + len)
            cap *= 2;
        unsigned char *p = realloc(b->data, cap);
        if (!p)
            return CAIRO_STATUS_NO_MEMORY;
        b->data = p, b->cap = cap;
    }
    memcpy(b->data + b->len, data, len);
    b->len += len;
    return CAIRO_STATUS_SUCCESS;
}

int viz_fig_encode(viz_fig *f, viz_format fmt, unsigned char **data, size_t *len, cfx_error *err)
{
    membuf b = {0};
    cairo_status_t st;
    cairo_surface_t *s;
    if (fmt == VIZ_PNG)
        s = cairo_image_surface_create(CAIRO_FORMAT_RGB24, (int)f->width, (int)f->height);
    else if (fmt == VIZ_SVG)
        s = cairo_svg_surface_create_for_stream(membuf_write, &b, f->width, f->height);
    else
        s = cairo_pdf_surface_create_for_stream(membuf_write, &b, f->width, f->height);
    /* The SVG backend keeps a snapshot of a live recording surface that it
     * never frees; of a finished one it does not. A finished recording can
     * be replayed once, and SVG figures are encoded once. */
    if (fmt == VIZ_SVG)
        cairo_surface_finish(f->rec);
    cairo_t *cr = cairo_create(s);
    cairo_set_source_surface(cr, f->rec, 0, 0);
    cairo_paint(cr);
    st = cairo_status(cr);
    cairo_destroy(cr);
    if (st == CAIRO_STATUS_SUCCESS && fmt == VIZ_PNG)
        st = cairo_surface_write_to_png_stream(s, membuf_write, &b);
    cairo_surface_finish(s);
    if (st == CAIRO_STATUS_SUCCESS)
        st = cairo_surface_status(s);
    cairo_surface_destroy(s);
    if (st != CAIRO_STATUS_SUCCESS) {
        free(b.data);
        return cfx_fail(err, "drawing a %s figure failed: %s", viz_format_ext(fmt),
                        cairo_status_to_string(st));
    }
    *data = b.data;
    *len = b.len;
    return 0;
}

int viz_write_file(const char *path, const void *data, size_t len, cfx_error *err)
{
    FILE *fp = fopen(path, "wb");
    if (!fp)
        return cfx_fail(err, "%s: cannot write: %s", path, strerror(errno));
    size_t wrote = fwrite(data, 1, len, fp);
    int bad = wrote != len || ferror(fp);
    if (fclose(fp) != 0 || bad)
        return cfx_fail(err, "%s: write failed: %s", path, strerror(errno ? errno : EIO));
    return 0;
}

void viz_plot_shutdown(void)
{
    pango_cairo_font_map_set_default(NULL);
    FcFini();
}

/* ---- text ------------------------------------------------------------- */

static void set_text(viz_fig *f, const char *text, double size, int flags, double ax)
{
    PangoFontDescription *d = pango_font_description_from_string(FONT_FAMILY);
    pango_font_description_set_absolute_size(d, size * PANGO_SCALE);
    if (flags & VIZ_BOLD)
        pango_font_description_set_weight(d, PANGO_WEIGHT_BOLD);
    pango_layout_set_font_description(f->layout, d);
    pango_font_description_free(d);
    pango_layout_set_alignment(f->layout, ax > 0.75   ? PANGO_ALIGN_RIGHT
                                          : ax > 0.25 ? PANGO_ALIGN_CENTER
                                                      : PANGO_ALIGN_LEFT);
    if (flags & VIZ_MARKUP)
        pango_layout_set_markup(f->layout, text, -1);
    else
        pango_layout_set_text(f->layout, text, -1);
}

void viz_text_size(viz_fig *f, const char *text, double size, int flags, double *w, double *h)
{
    set_text(f, text, size, flags, 0.0);
    PangoRectangle logical;
    pango_layout_get_extents(f->layout, NULL, &logical);
    if (w)
        *w = (double)logical.width / PANGO_SCALE;
    if (h)
        *h = (double)logical.height / PANGO_SCALE;
}

void viz_text(viz_fig *f, double x, double y, const char *text, double size, double ax, double ay,
              double angle, int flags, viz_color color)
{
    set_text(f, text, size, flags, ax);
    PangoRectangle logical;
    pango_layout_get_extents(f->layout, NULL, &logical);
    double w = (double)logical.width / PANGO_SCALE, h = (double)logical.height / PANGO_SCALE;
    cairo_t *cr = f->cr;
    cairo_save(cr);
    cairo_translate(cr, x, y);
    if (angle != 0.0)
        cairo_rotate(cr, -angle * M_PI / 180.0);
    cairo_move_to(cr, -ax * w - (double)logical.x / PANGO_SCALE,
                  -ay * h - (double)logical.y / PANGO_SCALE);
    set_color(cr, color);
    pango_cairo_update_layout(cr, f->layout);
    pango_cairo_show_layout(cr, f->layout);
    cairo_restore(cr);
}

/* ---- ticks ------------------------------------------------------------ */

/* The nice step for [lo, hi] with at most max_ticks ticks; *decimals gets
 * the decimals its labels need. */
static double nice_step(double lo, double hi, int max_ticks, int integer_only, int *decimals)
{
    static const double mult[] = {1.0, 2.0, 2.5, 5.0, 10.0};
    double range = hi - lo;
    if (max_ticks < 2)
        max_ticks = 2;
    double rough = range / (max_ticks - 1);
    double mag = pow(10.0, floor(log10(rough)));
    double step = 10.0 * mag;
    for (int i = 0; i < 5; i++) {
        if (integer_only && mult[i] * mag < 1.0)
            continue;
        if (mult[i] == 2.5 && (integer_only || mag < 1e-12))
            continue;
        if (range / (mult[i] * mag) <= max_ticks - 1 + 1e-9) {
            step = mult[i] * mag;
            break;
        }
    }
    if (integer_only && step < 1.0)
        step = 1.0;
    int e = (int)floor(log10(step) + 1e-9);
    double m = step / pow(10.0, e);
    int d = -e + (fabs(m - 2.5) < 1e-6 ? 1 : 0);
    *decimals = d > 0 ? d : 0;
    return step;
}

void viz_nice_ticks(double lo, double hi, int max_ticks, int integer_only, viz_ticks *t)
{
    memset(t, 0, sizeof *t);
    if (!(hi > lo)) {
        double c = lo;
        lo = c - 0.5, hi = c + 0.5;
    }
    if (max_ticks > VIZ_MAX_TICKS)
        max_ticks = VIZ_MAX_TICKS;
    int decimals;
    double step = nice_step(lo, hi, max_ticks, integer_only, &decimals);
    double first = ceil(lo / step - 1e-9) * step;
    for (int i = 0; t->n < VIZ_MAX_TICKS; i++) {
        double v = first + i * step;
        if (v > hi + 1e-9 * step)
            break;
        if (fabs(v) < 1e-9 * step)
            v = 0.0; /* no "-0" */
        t->v[t->n] = v;
        /* a real minus sign (U+2212), as typeset numbers have */
        snprintf(t->label[t->n], sizeof t->label[t->n], "%s%.*f", v < 0 ? "\u2212" : "", decimals,
                 fabs(v));
        t->n++;
    }
}

void viz_nice_limits(double *lo, double *hi, int max_ticks)
{
    if (!(*hi > *lo)) {
        *lo -= 0.5, *hi += 0.5;
    }
    int decimals;
    double step = nice_step(*lo, *hi, max_ticks, 0, &decimals);
    *lo = floor(*lo / step + 1e-9) * step;
    *hi = ceil(*hi / step - 1e-9) * step;
}

/* ---- axes ------------------------------------------------------------- */

#define TICK_LEN 5.0
#define PAD 6.0

static int ticks_for(double length, double spacing)
{
    int n = (int)(length / spacing) + 1;
    return n < 3 ? 3 : n > 11 ? 11 : n;
}

void viz_axes_layout(viz_axes *ax, viz_fig *f, double bx, double by, double bw, double bh,
                     double x0, double x1, double y0, double y1, int integer_x, const char *title,
                     const char *xlabel, const char *ylabel)
{
    ax->fig = f;
    ax->x0 = x0, ax->x1 = x1, ax->y0 = y0, ax->y1 = y1;
    viz_nice_ticks(y0, y1, ticks_for(bh, 55.0), 0, &ax->yt);
    if (!ax->xcat)
        viz_nice_ticks(x0, x1, ticks_for(bw, 90.0), integer_x, &ax->xt);

    double ytw = 0.0, th;
    for (int i = 0; i < ax->yt.n; i++) {
        double w;
        viz_text_size(f, ax->yt.label[i], VIZ_FONT, 0, &w, &th);
        ytw = w > ytw ? w : ytw;
    }
    double left = PAD + ytw + PAD + TICK_LEN;
    if (ylabel && *ylabel) {
        double lh;
        viz_text_size(f, ylabel, VIZ_FONT_LABEL, 0, NULL, &lh);
        left += lh + PAD;
    }
    double bottom = TICK_LEN + 4.0 + PAD;
    double right = 14.0;
    if (ax->xcat) {
        double s = sin(ax->xcat_angle * M_PI / 180.0), c = cos(ax->xcat_angle * M_PI / 180.0);
        double ext = 0.0;
        for (int i = 0; i < ax->n_xcat; i++) {
            double w, h;
            viz_text_size(f, ax->xcat[i], VIZ_FONT, 0, &w, &h);
            double e = w * s + h * c;
            ext = e > ext ? e : ext;
        }
        bottom += ext;
    } else {
        double w = 0.0;
        viz_text_size(f, ax->xt.n ? ax->xt.label[ax->xt.n - 1] : "0", VIZ_FONT, 0, &w, &th);
        bottom += th;
        right = w / 2 + 8.0 > right ? w / 2 + 8.0 : right;
    }
    if (xlabel && *xlabel) {
        double lh;
        viz_text_size(f, xlabel, VIZ_FONT_LABEL, 0, NULL, &lh);
        bottom += lh + 4.0;
    }
    double top = 10.0;
    if (title && *title) {
        double tw, tt;
        viz_text_size(f, title, VIZ_FONT_TITLE, VIZ_BOLD, &tw, &tt);
        top += tt + 4.0;
    }
    ax->x = bx + left;
    ax->y = by + top;
    ax->w = bw - left - right;
    ax->h = bh - top - bottom;
}

double viz_axes_px(const viz_axes *ax, double x)
{
    return ax->x + (x - ax->x0) / (ax->x1 - ax->x0) * ax->w;
}

double viz_axes_py(const viz_axes *ax, double y)
{
    return ax->y + ax->h - (y - ax->y0) / (ax->y1 - ax->y0) * ax->h;
}

void viz_axes_draw(viz_axes *ax, const char *title, const char *xlabel, const char *ylabel)
{
    viz_fig *f = ax->fig;
    cairo_t *cr = f->cr;
    /* grid */
    cairo_set_line_width(cr, 1.0);
    cairo_set_source_rgb(cr, 0.92, 0.92, 0.92);
    for (int i = 0; i < ax->yt.n; i++) {
        double y = round(viz_axes_py(ax, ax->yt.v[i])) + 0.5;
        cairo_move_to(cr, ax->x, y);
        cairo_line_to(cr, ax->x + ax->w, y);
    }
    for (int i = 0; !ax->xcat && i < ax->xt.n; i++) {
        double x = round(viz_axes_px(ax, ax->xt.v[i])) + 0.5;
        cairo_move_to(cr, x, ax->y);
        cairo_line_to(cr, x, ax->y + ax->h);
    }
    cairo_stroke(cr);
    /* frame and ticks */
    set_color(cr, VIZ_TEXT);
    cairo_set_line_width(cr, 1.0);
    cairo_rectangle(cr, round(ax->x) + 0.5, round(ax->y) + 0.5, round(ax->w), round(ax->h));
    cairo_stroke(cr);
    double yb = round(ax->y + ax->h) + 0.5;
    for (int i = 0; i < ax->yt.n; i++) {
        double y = round(viz_axes_py(ax, ax->yt.v[i])) + 0.5;
        cairo_move_to(cr, round(ax->x) + 0.5, y);
        cairo_line_to(cr, round(ax->x) + 0.5 - TICK_LEN, y);
        viz_text(f, ax->x - TICK_LEN - PAD / 2, y, ax->yt.label[i], VIZ_FONT, 1.0, 0.5, 0, 0,
                 VIZ_TEXT);
    }
    double label_bottom = yb + TICK_LEN + 3.0;
    if (ax->xcat) {
        double ext = 0.0, s = sin(ax->xcat_angle * M_PI / 180.0),
               c = cos(ax->xcat_angle * M_PI / 180.0);
        for (int i = 0; i < ax->n_xcat; i++) {
            double x = round(viz_axes_px(ax, i)) + 0.5;
            cairo_move_to(cr, x, yb);
            cairo_line_to(cr, x, yb + TICK_LEN);
            double w, h;
            viz_text_size(f, ax->xcat[i], VIZ_FONT, 0, &w, &h);
            if (ax->xcat_angle != 0.0) {
                viz_text(f, x + h * s / 2, yb + TICK_LEN + 3.0, ax->xcat[i], VIZ_FONT, 1.0, 0.0,
                         ax->xcat_angle, 0, VIZ_TEXT);
            } else {
                viz_text(f, x, yb + TICK_LEN + 3.0, ax->xcat[i], VIZ_FONT, 0.5, 0.0, 0, 0,
                         VIZ_TEXT);
            }
            double e = w * s + h * c;
            ext = e > ext ? e : ext;
        }
        label_bottom += ext;
    } else {
        double th = 0.0;
        for (int i = 0; i < ax->xt.n; i++) {
            double x = round(viz_axes_px(ax, ax->xt.v[i])) + 0.5;
            cairo_move_to(cr, x, yb);
            cairo_line_to(cr, x, yb + TICK_LEN);
            viz_text(f, x, yb + TICK_LEN + 3.0, ax->xt.label[i], VIZ_FONT, 0.5, 0.0, 0, 0,
                     VIZ_TEXT);
            viz_text_size(f, ax->xt.label[i], VIZ_FONT, 0, NULL, &th);
        }
        label_bottom += th;
    }
    set_color(cr, VIZ_TEXT);
    cairo_stroke(cr);
    if (xlabel && *xlabel)
        viz_text(f, ax->x + ax->w / 2, label_bottom + 4.0, xlabel, VIZ_FONT_LABEL, 0.5, 0.0, 0, 0,
                 VIZ_TEXT);
    if (ylabel && *ylabel) {
        double ytw = 0.0;
        for (int i = 0; i < ax->yt.n; i++) {
            double w;
            viz_text_size(f, ax->yt.label[i], VIZ_FONT, 0, &w, NULL);
            ytw = w > ytw ? w : ytw;
        }
        viz_text(f, ax->x - TICK_LEN - PAD - ytw - PAD, ax->y + ax->h / 2, ylabel, VIZ_FONT_LABEL,
                 0.5, 1.0, 90.0, 0, VIZ_TEXT);
    }
    if (title && *title)
        viz_text(f, ax->x + ax->w / 2, ax->y - 8.0, title, VIZ_FONT_TITLE, 0.5, 1.0, 0, VIZ_BOLD,
                 VIZ_TEXT);
}

static void set_dash(cairo_t *cr, int dash, double width)
{
    if (dash == VIZ_DASHED) {
        double d[2] = {3.7 * width, 1.6 * width};
        cairo_set_dash(cr, d, 2, 0);
    } else if (dash == VIZ_DOTTED) {
        double d[2] = {1.0 * width, 1.65 * width};
        cairo_set_dash(cr, d, 2, 0);
    } else {
        cairo_set_dash(cr, NULL, 0, 0);
    }
}

static void clip_to(viz_axes *ax)
{
    cairo_rectangle(ax->fig->cr, ax->x, ax->y, ax->w, ax->h);
    cairo_clip(ax->fig->cr);
}

static void marker_path(cairo_t *cr, double x, double y, int marker, double size)
{
    if (marker == VIZ_CIRCLE) {
        cairo_new_sub_path(cr);
        cairo_arc(cr, x, y, size / 2, 0, 2 * M_PI);
    } else if (marker == VIZ_STAR) {
        double ro = size / 2 * 1.25, ri = ro * 0.42;
        for (int k = 0; k < 10; k++) {
            double r = k % 2 ? ri : ro, a = -M_PI / 2 + k * M_PI / 5;
            if (k == 0)
                cairo_move_to(cr, x + r * cos(a), y + r * sin(a));
            else
                cairo_line_to(cr, x + r * cos(a), y + r * sin(a));
        }
        cairo_close_path(cr);
    }
}

void viz_axes_line(viz_axes *ax, const double *x, const double *y, int n, viz_color c, double width,
                   int dash, int marker)
{
    cairo_t *cr = ax->fig->cr;
    cairo_save(cr);
    clip_to(ax);
    set_color(cr, c);
    cairo_set_line_width(cr, width);
    set_dash(cr, dash, width);
    for (int i = 0; i < n; i++) {
        if (i == 0)
            cairo_move_to(cr, viz_axes_px(ax, x[i]), viz_axes_py(ax, y[i]));
        else
            cairo_line_to(cr, viz_axes_px(ax, x[i]), viz_axes_py(ax, y[i]));
    }
    cairo_stroke(cr);
    if (marker) {
        for (int i = 0; i < n; i++)
            marker_path(cr, viz_axes_px(ax, x[i]), viz_axes_py(ax, y[i]), marker, 6.0);
        cairo_fill(cr);
    }
    cairo_restore(cr);
}

void viz_axes_vline(viz_axes *ax, double x, viz_color c, double width, int dash)
{
    double xs[2] = {x, x}, ys[2] = {ax->y0, ax->y1};
    viz_axes_line(ax, xs, ys, 2, c, width, dash, 0);
}

void viz_axes_hline(viz_axes *ax, double y, viz_color c, double width, int dash)
{
    double xs[2] = {ax->x0, ax->x1}, ys[2] = {y, y};
    viz_axes_line(ax, xs, ys, 2, c, width, dash, 0);
}

void viz_axes_marker(viz_axes *ax, double x, double y, int marker, double size, viz_color c)
{
    cairo_t *cr = ax->fig->cr;
    cairo_save(cr);
    marker_path(cr, viz_axes_px(ax, x), viz_axes_py(ax, y), marker, size);
    set_color(cr, c);
    cairo_fill_preserve(cr);
    cairo_set_source_rgb(cr, 0.15, 0.15, 0.15);
    cairo_set_line_width(cr, 0.8);
    cairo_stroke(cr);
    cairo_restore(cr);
}

void viz_axes_dots(viz_axes *ax, const float *xy, int n, double radius, viz_color c, double alpha,
                   int ring)
{
    cairo_t *cr = ax->fig->cr;
    cairo_save(cr);
    clip_to(ax);
    cairo_set_source_rgba(cr, c.r, c.g, c.b, alpha);
    cairo_set_line_width(cr, 0.9);
    for (int i = 0; i < n; i++) {
        cairo_new_sub_path(cr);
        cairo_arc(cr, viz_axes_px(ax, xy[2 * i]), viz_axes_py(ax, xy[2 * i + 1]), radius, 0,
                  2 * M_PI);
    }
    if (ring)
        cairo_stroke(cr);
    else
        cairo_fill(cr);
    cairo_restore(cr);
}

void viz_axes_bar(viz_axes *ax, double x, double width, double y, viz_color c)
{
    cairo_t *cr = ax->fig->cr;
    cairo_save(cr);
    clip_to(ax);
    double px0 = viz_axes_px(ax, x - width / 2), px1 = viz_axes_px(ax, x + width / 2);
    double py0 = viz_axes_py(ax, 0.0), py1 = viz_axes_py(ax, y);
    cairo_rectangle(cr, px0, py1, px1 - px0, py0 - py1);
    set_color(cr, c);
    cairo_fill(cr);
    cairo_restore(cr);
}

#define LEG_SAMPLE 26.0
#define LEG_GAP 7.0
#define LEG_PAD 8.0
#define LEG_ROWGAP 4.0

static double legend_row_h(viz_fig *f, const viz_legend_entry *e, int n, double *tw)
{
    double th = 0.0;
    *tw = 0.0;
    for (int i = 0; i < n; i++) {
        double w, h;
        viz_text_size(f, e[i].label, VIZ_FONT, 0, &w, &h);
        *tw = w > *tw ? w : *tw;
        th = h > th ? h : th;
    }
    return th;
}

void viz_legend_size(viz_fig *f, const viz_legend_entry *e, int n, double *w, double *h)
{
    double tw, th = legend_row_h(f, e, n, &tw);
    *w = LEG_PAD + LEG_SAMPLE + LEG_GAP + tw + LEG_PAD;
    *h = LEG_PAD + n * th + (n - 1) * LEG_ROWGAP + LEG_PAD;
}

void viz_legend_draw(viz_fig *f, const viz_legend_entry *e, int n, double x, double y)
{
    cairo_t *cr = f->cr;
    double tw, th = legend_row_h(f, e, n, &tw), bw, bh, r = 4.0;
    viz_legend_size(f, e, n, &bw, &bh);
    cairo_save(cr);
    cairo_new_sub_path(cr);
    cairo_arc(cr, x + bw - r, y + r, r, -M_PI / 2, 0);
    cairo_arc(cr, x + bw - r, y + bh - r, r, 0, M_PI / 2);
    cairo_arc(cr, x + r, y + bh - r, r, M_PI / 2, M_PI);
    cairo_arc(cr, x + r, y + r, r, M_PI, 3 * M_PI / 2);
    cairo_close_path(cr);
    cairo_set_source_rgba(cr, 1, 1, 1, 0.85);
    cairo_fill_preserve(cr);
    cairo_set_source_rgb(cr, 0.8, 0.8, 0.8);
    cairo_set_line_width(cr, 1.0);
    cairo_stroke(cr);
    for (int i = 0; i < n; i++) {
        double yc = y + LEG_PAD + i * (th + LEG_ROWGAP) + th / 2, x0 = x + LEG_PAD;
        set_color(cr, e[i].color);
        if (e[i].dash < 0) {
            cairo_rectangle(cr, x0 + 4, yc - th * 0.35, LEG_SAMPLE - 8, th * 0.7);
            cairo_fill(cr);
        } else {
            cairo_set_line_width(cr, 2.0);
            set_dash(cr, e[i].dash, 2.0);
            cairo_move_to(cr, x0, yc);
            cairo_line_to(cr, x0 + LEG_SAMPLE, yc);
            cairo_stroke(cr);
            cairo_set_dash(cr, NULL, 0, 0);
            if (e[i].marker) {
                int star = e[i].marker == VIZ_STAR;
                marker_path(cr, x0 + LEG_SAMPLE / 2, yc, e[i].marker, star ? 12.0 : 6.0);
                set_color(cr, e[i].marker_fill ? *e[i].marker_fill : e[i].color);
                if (star) {
                    cairo_fill_preserve(cr);
                    cairo_set_source_rgb(cr, 0.15, 0.15, 0.15);
                    cairo_set_line_width(cr, 0.8);
                    cairo_stroke(cr);
                } else {
                    cairo_fill(cr);
                }
            }
        }
        viz_text(f, x0 + LEG_SAMPLE + LEG_GAP, yc, e[i].label, VIZ_FONT, 0.0, 0.5, 0, 0, VIZ_TEXT);
    }
    cairo_restore(cr);
}

void viz_axes_legend(viz_axes *ax, const viz_legend_entry *e, int n, const double *px,
                     const double *py, int n_points)
{
    double bw, bh;
    viz_legend_size(ax->fig, e, n, &bw, &bh);
    /* Candidate corners: upper right, upper left, lower right, lower left,
     * then centre right; the first with the fewest points under it wins. */
    double m = 10.0;
    double cx[5] = {ax->x + ax->w - m - bw, ax->x + m, ax->x + ax->w - m - bw, ax->x + m,
                    ax->x + ax->w - m - bw};
    double cy[5] = {ax->y + m, ax->y + m, ax->y + ax->h - m - bh, ax->y + ax->h - m - bh,
                    ax->y + (ax->h - bh) / 2};
    int best = 0, best_count = -1;
    for (int k = 0; k < 5; k++) {
        int count = 0;
        for (int i = 0; i < n_points; i++) {
            double x = viz_axes_px(ax, px[i]), y = viz_axes_py(ax, py[i]);
            if (x >= cx[k] - 6 && x <= cx[k] + bw + 6 && y >= cy[k] - 6 && y <= cy[k] + bh + 6)
                count++;
        }
        if (best_count < 0 || count < best_count)
            best = k, best_count = count;
    }
    viz_legend_draw(ax->fig, e, n, cx[best], cy[best]);
}

/* ---- images ----------------------------------------------------------- */

/* Paints surface s (sw x sh pixels) into (x, y, w, h). */
static void paint_surface(viz_fig *f, cairo_surface_t *s, int sw, int sh, double x, double y,
                          double w, double h, double alpha, cairo_filter_t filter)
{
    cairo_t *cr = f->cr;
    cairo_save(cr);
    cairo_rectangle(cr, x, y, w, h);
    cairo_clip(cr);
    cairo_translate(cr, x, y);
    cairo_scale(cr, w / sw, h / sh);
    cairo_set_source_surface(cr, s, 0, 0);
    cairo_pattern_set_filter(cairo_get_source(cr), filter);
    cairo_pattern_set_extend(cairo_get_source(cr), CAIRO_EXTEND_PAD);
    cairo_paint_with_alpha(cr, alpha);
    cairo_restore(cr);
}

/* Integer upscale factor: images are enlarged in pixels before they are
 * recorded, so every output format shows crisp nearest-neighbour blocks. */
static int upscale(double target, int size)
{
    int k = (int)floor(target / size + 0.5);
    return k < 1 ? 1 : k > 32 ? 32 : k;
}

void viz_image_rgb(viz_fig *f, const uint8_t *rgb, int H, int W, double x, double y, double w,
                   double h)
{
    int k = upscale(w, W);
    cairo_surface_t *s = cairo_image_surface_create(CAIRO_FORMAT_RGB24, W * k, H * k);
    unsigned char *data = cairo_image_surface_get_data(s);
    int stride = cairo_image_surface_get_stride(s);
    cairo_surface_flush(s);
    for (int r = 0; r < H * k; r++) {
        uint32_t *row = (uint32_t *)(data + (size_t)r * stride);
        for (int c = 0; c < W * k; c++) {
            const uint8_t *p = rgb + ((size_t)(r / k) * W + (c / k)) * 3;
            row[c] = 0xff000000u | (uint32_t)p[0] << 16 | (uint32_t)p[1] << 8 | p[2];
        }
    }
    cairo_surface_mark_dirty(s);
    paint_surface(f, s, W * k, H * k, x, y, w, h, 1.0, CAIRO_FILTER_NEAREST);
    cairo_surface_destroy(s);
}

void viz_image_map(viz_fig *f, const float *v, int H, int W, double vmin, double vmax, double x,
                   double y, double w, double h, double alpha, int smooth)
{
    int k = smooth ? 1 : upscale(w, W);
    cairo_surface_t *s = cairo_image_surface_create(CAIRO_FORMAT_RGB24, W * k, H * k);
    unsigned char *data = cairo_image_surface_get_data(s);
    int stride = cairo_image_surface_get_stride(s);
    double span = vmax - vmin > 0 ? vmax - vmin : 1.0;
    cairo_surface_flush(s);
    for (int r = 0; r < H * k; r++) {
        uint32_t *row = (uint32_t *)(data + (size_t)r * stride);
        for (int c = 0; c < W * k; c++) {
            viz_color col = viz_viridis((v[(size_t)(r / k) * W + c / k] - vmin) / span);
            row[c] = 0xff000000u | (uint32_t)lround(col.r * 255) << 16 |
                     (uint32_t)lround(col.g * 255) << 8 | (uint32_t)lround(col.b * 255);
        }
    }
    cairo_surface_mark_dirty(s);
    paint_surface(f, s, W * k, H * k, x, y, w, h, alpha,
                  smooth ? CAIRO_FILTER_BILINEAR : CAIRO_FILTER_NEAREST);
    cairo_surface_destroy(s);
}

void viz_image_map_overlay(viz_fig *f, const float *v, int H, int W, double vmin, double vmax,
                           double x, double y, double w, double h, double max_alpha, int smooth)
{
    int k = smooth ? 1 : upscale(w, W);
    cairo_surface_t *s = cairo_image_surface_create(CAIRO_FORMAT_ARGB32, W * k, H * k);
    unsigned char *data = cairo_image_surface_get_data(s);
    int stride = cairo_image_surface_get_stride(s);
    double span = vmax - vmin > 0 ? vmax - vmin : 1.0;
    cairo_surface_flush(s);
    for (int r = 0; r < H * k; r++) {
        uint32_t *row = (uint32_t *)(data + (size_t)r * stride);
        for (int c = 0; c < W * k; c++) {
            double t = (v[(size_t)(r / k) * W + c / k] - vmin) / span;
            t = t < 0 ? 0 : t > 1 ? 1 : t;
            viz_color col = viz_viridis(t);
            double a = max_alpha * t; /* premultiplied ARGB */
            row[c] = (uint32_t)lround(a * 255) << 24 | (uint32_t)lround(a * col.r * 255) << 16 |
                     (uint32_t)lround(a * col.g * 255) << 8 | (uint32_t)lround(a * col.b * 255);
        }
    }
    cairo_surface_mark_dirty(s);
    paint_surface(f, s, W * k, H * k, x, y, w, h, 1.0,
                  smooth ? CAIRO_FILTER_BILINEAR : CAIRO_FILTER_NEAREST);
    cairo_surface_destroy(s);
}

void viz_frame(viz_fig *f, double x, double y, double w, double h, viz_color c, double width)
{
    cairo_t *cr = f->cr;
    cairo_save(cr);
    set_color(cr, c);
    cairo_set_line_width(cr, width);
    cairo_rectangle(cr, x - width / 2, y - width / 2, w + width, h + width);
    cairo_stroke(cr);
    cairo_restore(cr);
}

double viz_colorbar_extra(viz_fig *f, double vmin, double vmax, double h, const char *label)
{
    viz_ticks t;
    viz_nice_ticks(vmin, vmax, ticks_for(h, 45.0), 0, &t);
    double tw = 0.0;
    for (int i = 0; i < t.n; i++) {
        double w;
        viz_text_size(f, t.label[i], VIZ_FONT, 0, &w, NULL);
        tw = w > tw ? w : tw;
    }
    double extra = TICK_LEN + 3.0 + tw;
    if (label && *label) {
        double lh;
        viz_text_size(f, label, VIZ_FONT_LABEL, 0, NULL, &lh);
        extra += PAD + lh;
    }
    return extra + 2.0;
}

double viz_colorbar(viz_fig *f, double x, double y, double w, double h, double vmin, double vmax,
                    const char *label)
{
    float ramp[256];
    for (int i = 0; i < 256; i++)
        ramp[i] = (float)(255 - i) / 255.0f; /* top = vmax */
    viz_image_map(f, ramp, 256, 1, 0.0, 1.0, x, y, w, h, 1.0, 1);
    viz_frame(f, x, y, w, h, VIZ_TEXT, 1.0);
    viz_ticks t;
    viz_nice_ticks(vmin, vmax, ticks_for(h, 45.0), 0, &t);
    cairo_t *cr = f->cr;
    double tw = 0.0;
    set_color(cr, VIZ_TEXT);
    cairo_set_line_width(cr, 1.0);
    for (int i = 0; i < t.n; i++) {
        double ty = y + h - (t.v[i] - vmin) / (vmax - vmin) * h;
        cairo_move_to(cr, x + w, ty);
        cairo_line_to(cr, x + w + TICK_LEN, ty);
        cairo_stroke(cr);
        viz_text(f, x + w + TICK_LEN + 3.0, ty, t.label[i], VIZ_FONT, 0.0, 0.5, 0, 0, VIZ_TEXT);
        double lw;
        viz_text_size(f, t.label[i], VIZ_FONT, 0, &lw, NULL);
        tw = lw > tw ? lw : tw;
    }
    double extra = TICK_LEN + 3.0 + tw;
    if (label && *label) {
        double lh;
        viz_text_size(f, label, VIZ_FONT_LABEL, 0, NULL, &lh);
        viz_text(f, x + w + extra + PAD, y + h / 2, label, VIZ_FONT_LABEL, 0.5, 0.0, 90.0, 0,
                 VIZ_TEXT);
        extra += PAD + lh;
    }
    return extra + 2.0;
}
