/* The SVG of pith-bench --plot: bars of a log-bucket histogram on a log x axis, percentile
 * markers, axes with units, a caption. Written with fprintf; every text node is escaped. */
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <string.h>

#include "plot.h"

/* The canvas and the plot area inside it, in SVG user units (pixels). */
#define W      880.0
#define H      500.0
#define LEFT   90.0
#define RIGHT  30.0
#define TOP    70.0
#define BOTTOM 130.0
#define X0     LEFT
#define X1     (W - RIGHT)
#define Y0     TOP /* the top of the plot area; counts grow upwards from Y1 */
#define Y1     (H - BOTTOM)

/* Text as XML character data or an attribute value. */
static void xml_text(FILE *f, const char *s)
{
    for (; *s; s++) {
        switch (*s) {
        case '&':
            fputs("&amp;", f);
            break;
        case '<':
            fputs("&lt;", f);
            break;
        case '>':
            fputs("&gt;", f);
            break;
        case '"':
            fputs("&quot;", f);
            break;
        default:
            /* Control characters are not allowed in XML 1.0, tab and newline aside. */
            fputc((unsigned char)*s < 0x20 && *s != '\t' && *s != '\n' ? ' ' : *s, f);
        }
    }
}

/* 1, 2, 5, 10, ..., 1k, 2k, 5k, ..., 1M: an axis label. */
static void fmt_si(char *buf, size_t len, double v)
{
    static const char *const suffix[] = {"", "k", "M", "G", "T", "P", "E"};
    unsigned i = 0;
    while (fabs(v) >= 1000.0 && i + 1 < sizeof(suffix) / sizeof(suffix[0])) {
        v /= 1000.0;
        i++;
    }
    if (v == floor(v))
        snprintf(buf, len, "%.0f%s", v, suffix[i]);
    else
        snprintf(buf, len, "%.3g%s", v, suffix[i]);
}

/* The x axis: log2 of the value between lx0 and lx1; a value outside is drawn at the edge. */
struct xaxis {
    double lx0, lx1;
};

static double xpos(const struct xaxis *ax, double v)
{
    double l = log2(v > 0.5 ? v : 0.5);
    double x = X0 + (X1 - X0) * (l - ax->lx0) / (ax->lx1 - ax->lx0);
    return x < X0 ? X0 : x > X1 ? X1 : x;
}

static void x_ticks(FILE *f, const struct xaxis *ax)
{
    double lo = exp2(ax->lx0), hi = exp2(ax->lx1);
    /* Fewer than three decades: 1, 2 and 5 of each; else the decades alone. */
    bool fine = ax->lx1 - ax->lx0 < 3.0 * log2(10.0);
    static const double mult[] = {1.0, 2.0, 5.0};
    for (double d = pow(10.0, floor(log10(lo))); d <= hi; d *= 10.0) {
        for (unsigned i = 0; i < (fine ? 3u : 1u); i++) {
            double v = d * mult[i];
            if (v < lo || v > hi)
                continue;
            double x = xpos(ax, v);
            char label[32];
            fmt_si(label, sizeof(label), v);
            fprintf(f,
                    "<line class=\"tick\" x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\"/>\n"
                    "<line class=\"grid\" x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\"/>\n"
                    "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">%s</text>\n",
                    x, Y1, x, Y1 + 5, x, Y0, x, Y1, x, Y1 + 18, label);
        }
    }
}

/* The count axis: log10 of the count between ly0 (just under 1, so that a bucket of one
 * sample shows) and ly1 (above the fullest bucket, room for the markers' labels). Log scale: the
 * tail's buckets of a few samples are what a latency histogram is read for, and a linear axis
 * draws them as nothing beside the mode's hundreds of thousands. */
struct yaxis {
    double ly0, ly1;
};

static double ypos(const struct yaxis *ay, double c)
{
    double l = log10(c > 0 ? c : 1e-9);
    if (l < ay->ly0)
        l = ay->ly0;
    return Y1 - (Y1 - Y0) * (l - ay->ly0) / (ay->ly1 - ay->ly0);
}

static void y_ticks(FILE *f, const struct yaxis *ay)
{
    for (double v = 1.0; log10(v) <= ay->ly1; v *= 10.0) {
        double y = ypos(ay, v);
        char label[32];
        fmt_si(label, sizeof(label), v);
        fprintf(f,
                "<line class=\"tick\" x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\"/>\n"
                "<line class=\"grid\" x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\"/>\n"
                "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"end\">%s</text>\n",
                X0 - 5, y, X0, y, X0, y, X1, y, X0 - 8, y + 4, label);
    }
}

/* A percentile's dashed line and its label, stacked by `row` so that close ones stay legible. */
static void marker(FILE *f, const struct xaxis *ax, const char *name, double v, const char *unit,
                   const char *color, unsigned row)
{
    if (isnan(v))
        return;
    double x = xpos(ax, v);
    double y = Y0 + 14.0 + 15.0 * row;
    bool left = x > X1 - 140.0; /* near the right edge: the label goes to the line's left */
    fprintf(f,
            "<line class=\"marker\" stroke=\"%s\" x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" "
            "y2=\"%.1f\"/>\n"
            "<text class=\"marker-label\" fill=\"%s\" x=\"%.1f\" y=\"%.1f\" "
            "text-anchor=\"%s\">%s %.0f ",
            color, x, Y0, x, Y1, color, left ? x - 4 : x + 4, y, left ? "end" : "start", name, v);
    xml_text(f, unit);
    fputs("</text>\n", f);
}

int plot_svg(FILE *f, const result_t *r, const char *const *caption, size_t ncaption)
{
    const hist_t *h = &r->hist;
    const char *unit = result_unit(r->name);
    unsigned first = 0, last = 0;
    bool any = hist_span(h, &first, &last);
    uint64_t max = 0;
    for (unsigned b = first; any && b <= last; b++)
        if (h->count[b] > max)
            max = h->count[b];

    struct xaxis ax = {0.0, 1.0};
    struct yaxis ay = {log10(0.5), 1.0};
    double lmax = log10(max > 0 ? (double)max : 1.0);
    ay.ly1 = lmax + fmax(0.5, 0.25 * (lmax - ay.ly0));
    if (any) {
        double lo = (double)hist_lower(first), hi = (double)hist_upper(last);
        if (hist_upper(last) == UINT64_MAX)
            hi = 2.0 * (double)hist_lower(last);
        ax.lx0 = log2(lo > 0.5 ? lo : 0.5);
        ax.lx1 = log2(hi);
    }

    fprintf(f,
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%.0f\" height=\"%.0f\" "
            "viewBox=\"0 0 %.0f %.0f\" font-family=\"sans-serif\" font-size=\"12\">\n"
            "<style>\n"
            ".bar { fill: #4a7ab5; stroke: #2c4f7c; stroke-width: 0.5; }\n"
            ".axis { stroke: #000; stroke-width: 1; }\n"
            ".tick { stroke: #000; stroke-width: 1; }\n"
            ".grid { stroke: #ddd; stroke-width: 0.5; }\n"
            ".marker { stroke-width: 1.5; stroke-dasharray: 5 3; }\n"
            ".title { font-size: 16px; font-weight: bold; }\n"
            ".caption { font-size: 11px; fill: #444; }\n"
            "</style>\n"
            "<rect x=\"0\" y=\"0\" width=\"%.0f\" height=\"%.0f\" fill=\"#fff\"/>\n",
            W, H, W, H, W, H);

    fprintf(f, "<text class=\"title\" x=\"%.1f\" y=\"24\" text-anchor=\"middle\">", W / 2);
    xml_text(f, r->name);
    fprintf(f, ": %" PRIu64 " samples</text>\n", h->total);
    fprintf(f, "<text x=\"%.1f\" y=\"44\" text-anchor=\"middle\">", W / 2);
    fputs("log buckets, 4 per power of two", f);
    if (h->per > 1)
        fprintf(f, "; a sample is the mean of %u operations", h->per);
    if (r->reps > 1)
        fprintf(f, "; the repetition nearest the median of %u", r->reps);
    if (h->below > 0)
        fprintf(f, "; %" PRIu64 " samples below 0 not drawn", h->below);
    fputs("</text>\n", f);

    if (any) {
        x_ticks(f, &ax);
        y_ticks(f, &ay);
        uint64_t seen = h->below;
        for (unsigned b = first; b <= last; b++) {
            seen += h->count[b];
            if (h->count[b] == 0)
                continue;
            double lo = (double)hist_lower(b);
            double hi = hist_upper(b) == UINT64_MAX ? 2.0 * lo : (double)hist_upper(b);
            double xa = xpos(&ax, lo), xb = xpos(&ax, hi);
            double y = ypos(&ay, (double)h->count[b]);
            fprintf(f,
                    "<rect class=\"bar\" x=\"%.2f\" y=\"%.2f\" width=\"%.2f\" height=\"%.2f\">"
                    "<title>[%.0f, %.0f) ",
                    xa, y, xb - xa, Y1 - y, lo, hi);
            xml_text(f, unit);
            fprintf(f, ": %" PRIu64 " (%.2f%% at or below)</title></rect>\n", h->count[b],
                    100.0 * (double)seen / (double)h->total);
        }
        marker(f, &ax, "p50", r->p50, unit, "#1a7f37", 0);
        marker(f, &ax, "p99", r->p99, unit, "#c2410c", 1);
        marker(f, &ax, "p999", r->p999, unit, "#b91c1c", 2);
    } else {
        fprintf(f,
                "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">no samples at or above "
                "0</text>\n",
                (X0 + X1) / 2, (Y0 + Y1) / 2);
    }

    fprintf(f,
            "<line class=\"axis\" x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\"/>\n"
            "<line class=\"axis\" x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\"/>\n",
            X0, Y1, X1, Y1, X0, Y0, X0, Y1);
    fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">", (X0 + X1) / 2, Y1 + 38);
    xml_text(f, unit);
    fputs(" (log scale)</text>\n", f);
    fprintf(f,
            "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\" "
            "transform=\"rotate(-90 %.1f %.1f)\">samples in the bucket (log scale)</text>\n",
            LEFT - 60, (Y0 + Y1) / 2, LEFT - 60, (Y0 + Y1) / 2);
    for (size_t i = 0; i < ncaption; i++) {
        fprintf(f, "<text class=\"caption\" x=\"%.1f\" y=\"%.1f\">", LEFT - 60,
                Y1 + 68 + 16.0 * (double)i);
        xml_text(f, caption[i]);
        fputs("</text>\n", f);
    }
    fputs("</svg>\n", f);
    return ferror(f) ? -EIO : 0;
}
