/* pith-bench --compare: a saved run (its JSON, docs/bench-json.md) beside this run or another
 * saved one, row by row: both medians, the ratio, which way is better, and a verdict that
 * takes each side's spread into account. Reads JSON with a small parser of its own (the whole
 * grammar, no extensions); knows nothing about the engine. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "compare.h"

/* ---- a JSON reader: values into a tree ---- */

enum jtype { J_NULL, J_BOOL, J_NUM, J_STR, J_ARR, J_OBJ };

struct jval {
    enum jtype t;
    double num;        /* J_NUM, J_BOOL (0/1) */
    char *str;         /* J_STR */
    char *key;         /* a member's name in an object */
    struct jval *kids; /* J_ARR, J_OBJ: the first element or member */
    struct jval *next; /* the next sibling */
};

struct jin {
    const char *p, *end;
    int depth;
};

static void jfree(struct jval *v)
{
    while (v != NULL) {
        struct jval *next = v->next;
        jfree(v->kids);
        free(v->str);
        free(v->key);
        free(v);
        v = next;
    }
}

static void ws(struct jin *in)
{
    while (in->p < in->end && (*in->p == ' ' || *in->p == '\t' || *in->p == '\n' || *in->p == '\r'))
        in->p++;
}

/* A string's contents after its opening quote; \u escapes above ASCII become '?' (names and
 * figures here are ASCII). NULL on a syntax error. */
static char *jstring(struct jin *in)
{
    size_t cap = 16, n = 0;
    char *s = malloc(cap);
    while (s != NULL && in->p < in->end && *in->p != '"') {
        char c = *in->p++;
        if ((unsigned char)c < 0x20)
            break;
        if (c == '\\') {
            if (in->p >= in->end)
                break;
            char e = *in->p++;
            const char *map = "\"\"\\\\//b\bf\fn\nr\rt\t";
            const char *m = strchr(map, e);
            if (e == 'u') {
                if (in->end - in->p < 4)
                    break;
                unsigned cp = 0;
                for (int i = 0; i < 4; i++) {
                    char h = *in->p++;
                    cp = cp * 16 + (unsigned)(h >= '0' && h <= '9'   ? h - '0'
                                              : h >= 'a' && h <= 'f' ? h - 'a' + 10
                                              : h >= 'A' && h <= 'F' ? h - 'A' + 10
                                                                     : 99);
                }
                if (cp > 0xFFFF)
                    break;
                c = cp < 0x80 ? (char)cp : '?';
            } else if (m != NULL && ((m - map) & 1) == 0) {
                c = m[1];
            } else {
                break;
            }
        }
        if (n + 2 > cap) {
            char *t = realloc(s, cap *= 2);
            if (t == NULL) {
                free(s);
                return NULL;
            }
            s = t;
        }
        s[n++] = c;
    }
    if (s == NULL || in->p >= in->end || *in->p != '"') {
        free(s);
        return NULL;
    }
    in->p++;
    s[n] = '\0';
    return s;
}

static struct jval *jvalue(struct jin *in);

static struct jval *jnew(enum jtype t)
{
    struct jval *v = calloc(1, sizeof(*v));
    if (v != NULL)
        v->t = t;
    return v;
}

static struct jval *jcontainer(struct jin *in, bool obj)
{
    struct jval *v = jnew(obj ? J_OBJ : J_ARR), **tail = v != NULL ? &v->kids : NULL;
    if (v == NULL || ++in->depth > 64)
        goto bad;
    ws(in);
    if (in->p < in->end && *in->p == (obj ? '}' : ']')) {
        in->p++;
        in->depth--;
        return v;
    }
    for (;;) {
        char *key = NULL;
        ws(in);
        if (obj) {
            if (in->p >= in->end || *in->p != '"')
                goto bad;
            in->p++;
            if ((key = jstring(in)) == NULL)
                goto bad;
            ws(in);
            if (in->p >= in->end || *in->p != ':') {
                free(key);
                goto bad;
            }
            in->p++;
        }
        struct jval *k = jvalue(in);
        if (k == NULL) {
            free(key);
            goto bad;
        }
        k->key = key;
        *tail = k;
        tail = &k->next;
        ws(in);
        if (in->p < in->end && *in->p == ',') {
            in->p++;
            continue;
        }
        if (in->p < in->end && *in->p == (obj ? '}' : ']')) {
            in->p++;
            in->depth--;
            return v;
        }
        goto bad;
    }
bad:
    jfree(v);
    return NULL;
}

static struct jval *jvalue(struct jin *in)
{
    ws(in);
    if (in->p >= in->end)
        return NULL;
    char c = *in->p;
    if (c == '{' || c == '[') {
        in->p++;
        return jcontainer(in, c == '{');
    }
    if (c == '"') {
        in->p++;
        char *s = jstring(in);
        struct jval *v = s != NULL ? jnew(J_STR) : NULL;
        if (v == NULL) {
            free(s);
            return NULL;
        }
        v->str = s;
        return v;
    }
    static const struct {
        const char *word;
        enum jtype t;
        double num;
    } words[] = {{"true", J_BOOL, 1}, {"false", J_BOOL, 0}, {"null", J_NULL, 0}};
    for (size_t i = 0; i < 3; i++) {
        size_t l = strlen(words[i].word);
        if ((size_t)(in->end - in->p) >= l && memcmp(in->p, words[i].word, l) == 0) {
            in->p += l;
            struct jval *v = jnew(words[i].t);
            if (v != NULL)
                v->num = words[i].num;
            return v;
        }
    }
    /* A number, as JSON writes them: -?digits(.digits)?([eE][+-]?digits)? */
    const char *q = in->p;
    if (q < in->end && *q == '-')
        q++;
    if (q >= in->end || *q < '0' || *q > '9')
        return NULL;
    while (q < in->end && ((*q >= '0' && *q <= '9') || *q == '.' || *q == 'e' || *q == 'E' ||
                           *q == '+' || *q == '-'))
        q++;
    char buf[64];
    if ((size_t)(q - in->p) >= sizeof(buf))
        return NULL;
    memcpy(buf, in->p, (size_t)(q - in->p));
    buf[q - in->p] = '\0';
    char *end;
    double x = strtod(buf, &end);
    if (*end != '\0')
        return NULL;
    in->p = q;
    struct jval *v = jnew(J_NUM);
    if (v != NULL)
        v->num = x;
    return v;
}

static const struct jval *jget(const struct jval *obj, const char *key)
{
    if (obj == NULL || obj->t != J_OBJ)
        return NULL;
    for (const struct jval *k = obj->kids; k != NULL; k = k->next)
        if (k->key != NULL && strcmp(k->key, key) == 0)
            return k;
    return NULL;
}

static double jnum(const struct jval *obj, const char *key)
{
    const struct jval *v = jget(obj, key);
    return v != NULL && v->t == J_NUM ? v->num : NAN;
}

static const char *jstr(const struct jval *obj, const char *key)
{
    const struct jval *v = jget(obj, key);
    return v != NULL && v->t == J_STR ? v->str : NULL;
}

/* ---- a run: its rows ---- */

struct crow {
    const char *name;
    double median, mad;
    unsigned reps;
    bool higher; /* higher is better */
};

struct crun {
    struct jval *root;
    struct crow *rows;
    size_t n;
    const char *model, *git, *date;
    bool quick;
};

static void run_free(struct crun *r)
{
    free(r->rows);
    jfree(r->root);
}

/* Reads a saved run. Returns 0, or -errno with why[] filled. */
static int run_load(const char *path, struct crun *r, char *why, size_t whylen)
{
    memset(r, 0, sizeof(*r));
    FILE *f = fopen(path, "rb");
    if (f == NULL) {
        snprintf(why, whylen, "%s: %s", path, strerror(errno));
        return -errno;
    }
    size_t cap = 1 << 16, len = 0;
    char *buf = malloc(cap);
    size_t got;
    while (buf != NULL && (got = fread(buf + len, 1, cap - len, f)) > 0) {
        len += got;
        if (len == cap && len < (64u << 20)) {
            char *t = realloc(buf, cap *= 2);
            if (t == NULL) {
                free(buf);
                buf = NULL;
            } else {
                buf = t;
            }
        } else if (len == cap) {
            break;
        }
    }
    fclose(f);
    if (buf == NULL) {
        snprintf(why, whylen, "%s: out of memory", path);
        return -ENOMEM;
    }
    struct jin in = {buf, buf + len, 0};
    r->root = jvalue(&in);
    ws(&in);
    bool trailing = in.p != in.end;
    free(buf);
    if (r->root == NULL || trailing || r->root->t != J_OBJ) {
        snprintf(why, whylen, "%s: not a JSON object", path);
        run_free(r);
        return -EINVAL;
    }
    double schema = jnum(r->root, "pith_bench");
    const struct jval *results = jget(r->root, "results");
    if (isnan(schema) || results == NULL || results->t != J_ARR) {
        snprintf(why, whylen, "%s: not a pith-bench --json run (no pith_bench or results)", path);
        run_free(r);
        return -EINVAL;
    }
    for (const struct jval *k = results->kids; k != NULL; k = k->next)
        r->n++;
    r->rows = calloc(r->n ? r->n : 1, sizeof(*r->rows));
    if (r->rows == NULL) {
        run_free(r);
        return -ENOMEM;
    }
    size_t i = 0;
    for (const struct jval *k = results->kids; k != NULL; k = k->next) {
        struct crow *c = &r->rows[i];
        c->name = jstr(k, "name");
        if (c->name == NULL)
            continue;
        /* Schema 1 has one value and no spread. */
        c->median = !isnan(jnum(k, "median")) ? jnum(k, "median") : jnum(k, "value");
        c->mad = jnum(k, "mad");
        double reps = jnum(k, "reps");
        c->reps = isnan(reps) ? 1 : (unsigned)reps;
        const struct jval *hb = jget(k, "higher_is_better");
        c->higher = hb != NULL && hb->t == J_BOOL ? hb->num != 0 : result_higher_better(c->name);
        i++;
    }
    r->n = i;
    const struct jval *m = jget(r->root, "machine");
    r->model = jstr(m, "cpu_model");
    r->git = jstr(r->root, "git");
    r->date = jstr(r->root, "date");
    const struct jval *q = jget(r->root, "quick");
    r->quick = q != NULL && q->t == J_BOOL && q->num != 0;
    return 0;
}

/* ---- the verdict ---- */

/* The spread both sides allow, as a fraction: three MADs of the noisier side, at least 3% (a
 * MAD of a few repetitions understates run-to-run drift); NAN when a side has fewer than 3
 * repetitions (no spread known). */
static double noise_of(const struct crow *a, const struct crow *b)
{
    if (a->reps < 3 || b->reps < 3 || !(a->median != 0) || !(b->median != 0))
        return NAN;
    double na = 3 * a->mad / fabs(a->median), nb = 3 * b->mad / fabs(b->median);
    double n = na > nb ? na : nb;
    return n > 0.03 ? n : 0.03;
}

const char *compare_verdict(double base, double now, bool higher, double noise, char *buf,
                            size_t len)
{
    if (!(base > 0) || !isfinite(now)) {
        snprintf(buf, len, "no ratio");
        return buf;
    }
    double ratio = now / base, change = higher ? ratio - 1 : 1 - ratio;
    if (isnan(noise)) {
        /* No spread: 10% either way is called a change, marked unsure. */
        if (fabs(ratio - 1) <= 0.10)
            snprintf(buf, len, "same? (no spread: --repetitions 3 or more)");
        else
            snprintf(buf, len, "%s? (no spread: --repetitions 3 or more)",
                     change > 0 ? "better" : "worse");
    } else if (fabs(ratio - 1) <= noise) {
        snprintf(buf, len, "same (within noise, +-%.1f%%)", 100 * noise);
    } else {
        snprintf(buf, len, "%s (noise +-%.1f%%)", change > 0 ? "better" : "worse", 100 * noise);
    }
    return buf;
}

static void print_rows(FILE *out, const struct crun *base, const struct crow *now, size_t nnow,
                       const char *what)
{
    size_t w = strlen("name");
    for (size_t i = 0; i < base->n; i++)
        if (strlen(base->rows[i].name) > w)
            w = strlen(base->rows[i].name);
    for (size_t i = 0; i < nnow; i++)
        if (strlen(now[i].name) > w)
            w = strlen(now[i].name);
    fprintf(out, "%-*s %12s %12s %8s  %-6s  %s\n", (int)w, "name", "base", what, "ratio", "better",
            "verdict");
    for (size_t i = 0; i < nnow; i++) {
        const struct crow *b = NULL;
        for (size_t j = 0; j < base->n && b == NULL; j++)
            if (strcmp(base->rows[j].name, now[i].name) == 0)
                b = &base->rows[j];
        char v[96];
        if (b == NULL) {
            fprintf(out, "%-*s %12s %12.4g %8s  %-6s  only in %s\n", (int)w, now[i].name, "-",
                    now[i].median, "-", now[i].higher ? "higher" : "lower", what);
            continue;
        }
        compare_verdict(b->median, now[i].median, now[i].higher, noise_of(b, &now[i]), v,
                        sizeof(v));
        fprintf(out, "%-*s %12.4g %12.4g %7.3fx  %-6s  %s\n", (int)w, now[i].name, b->median,
                now[i].median, b->median > 0 ? now[i].median / b->median : NAN,
                now[i].higher ? "higher" : "lower", v);
    }
    for (size_t j = 0; j < base->n; j++) {
        bool seen = false;
        for (size_t i = 0; i < nnow && !seen; i++)
            seen = strcmp(base->rows[j].name, now[i].name) == 0;
        if (!seen)
            fprintf(out, "%-*s %12.4g %12s %8s  %-6s  only in base\n", (int)w, base->rows[j].name,
                    base->rows[j].median, "-", "-", base->rows[j].higher ? "higher" : "lower");
    }
}

static void print_heads(FILE *out, const struct crun *base, const char *base_path,
                        const char *now_model, bool now_quick, const char *what)
{
    fprintf(out, "compare: base %s (git %s, %s), %s\n", base_path, base->git ? base->git : "?",
            base->date ? base->date : "no date", what);
    if (base->model != NULL && now_model != NULL && strcmp(base->model, now_model) != 0)
        fprintf(out, "compare: other CPUs: base \"%s\", %s \"%s\": ratios compare machines too\n",
                base->model, what, now_model);
    if (base->quick != now_quick)
        fprintf(out, "compare: base ran %s, %s %s: sizes differ\n",
                base->quick ? "--quick" : "full", what, now_quick ? "--quick" : "full");
}

int compare_with_results(FILE *out, const char *base_path, const result_t *rows, size_t n,
                         const char *cpu_model, bool quick, char *why, size_t whylen)
{
    struct crun base;
    int err = run_load(base_path, &base, why, whylen);
    if (err != 0)
        return err;
    struct crow *now = calloc(n ? n : 1, sizeof(*now));
    if (now == NULL) {
        run_free(&base);
        return -ENOMEM;
    }
    for (size_t i = 0; i < n; i++)
        now[i] = (struct crow){rows[i].name, rows[i].value, rows[i].mad, rows[i].reps,
                               result_higher_better(rows[i].name)};
    print_heads(out, &base, base_path, cpu_model, quick, "this run");
    print_rows(out, &base, now, n, "this run");
    free(now);
    run_free(&base);
    return 0;
}

int compare_files(FILE *out, const char *base_path, const char *new_path, char *why, size_t whylen)
{
    struct crun base, now;
    int err = run_load(base_path, &base, why, whylen);
    if (err != 0)
        return err;
    if ((err = run_load(new_path, &now, why, whylen)) != 0) {
        run_free(&base);
        return err;
    }
    char what[512];
    snprintf(what, sizeof(what), "%s", new_path);
    print_heads(out, &base, base_path, now.model, now.quick, what);
    print_rows(out, &base, now.rows, now.n, "new");
    run_free(&now);
    run_free(&base);
    return 0;
}
