#include "ctrend.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    char key[24];
    size_t n, cap;
    double *v;
} bucket;

typedef struct {
    size_t count, cap, last;
    bucket *b;
    int failed;
} trend;

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static int cmp_bucket(const void *a, const void *b) {
    return strcmp(((const bucket *)a)->key, ((const bucket *)b)->key);
}

static bucket *find(trend *t, const char *key) {
    if (t->count && strcmp(t->b[t->last].key, key) == 0) return &t->b[t->last];
    for (size_t i = t->count; i-- > 0;) {
        if (strcmp(t->b[i].key, key) == 0) { t->last = i; return &t->b[i]; }
    }
    if (t->count == t->cap) {
        size_t cap = t->cap ? t->cap * 2 : 64;
        bucket *nb = realloc(t->b, cap * sizeof *nb);
        if (!nb) return NULL;
        t->b = nb;
        t->cap = cap;
    }
    bucket *b = &t->b[t->count];
    memset(b, 0, sizeof *b);
    strcpy(b->key, key);
    t->last = t->count++;
    return b;
}

static void release(trend *t) {
    for (size_t i = 0; i < t->count; i++) free(t->b[i].v);
    free(t->b);
    t->b = NULL;
    t->count = t->cap = 0;
}

static void step(sqlite3_context *ctx, int argc, sqlite3_value **argv) {
    (void)argc;
    trend *t = sqlite3_aggregate_context(ctx, sizeof(trend));
    if (!t) { sqlite3_result_error_nomem(ctx); return; }
    if (t->failed) return;
    int type = sqlite3_value_numeric_type(argv[1]);
    if (type != SQLITE_INTEGER && type != SQLITE_FLOAT) return;
    double v = sqlite3_value_double(argv[1]);
    if (!isfinite(v)) return;
    int width = sqlite3_value_int(argv[2]);
    const unsigned char *at = sqlite3_value_text(argv[0]);
    if (!at || width < 4 || width > 19 || sqlite3_value_bytes(argv[0]) < width) return;
    char key[24];
    memcpy(key, at, (size_t)width);
    key[width] = 0;
    if (width > 10 && key[10] == 'T') key[10] = ' ';
    bucket *b = find(t, key);
    if (!b) { t->failed = 1; return; }
    if (b->n == b->cap) {
        size_t cap = b->cap ? b->cap * 2 : 256;
        double *nv = realloc(b->v, cap * sizeof *nv);
        if (!nv) { t->failed = 1; return; }
        b->v = nv;
        b->cap = cap;
    }
    b->v[b->n++] = v;
}

static void final(sqlite3_context *ctx) {
    trend *t = sqlite3_aggregate_context(ctx, 0);
    if (!t || t->count == 0) { if (t) release(t); sqlite3_result_null(ctx); return; }
    if (t->failed) { release(t); sqlite3_result_error_nomem(ctx); return; }
    qsort(t->b, t->count, sizeof *t->b, cmp_bucket);
    size_t cap = t->count * 160 + 1, len = 0;
    char *out = malloc(cap);
    if (!out) { release(t); sqlite3_result_error_nomem(ctx); return; }
    for (size_t i = 0; i < t->count; i++) {
        bucket *b = &t->b[i];
        qsort(b->v, b->n, sizeof *b->v, cmp_double);
        size_t r50 = (b->n * 50 + 99) / 100, r95 = (b->n * 95 + 99) / 100;
        int w = snprintf(out + len, cap - len, "%s %zu %.17g %.17g %.17g\n", b->key, b->n,
                         b->v[r50 - 1], b->v[r95 - 1], b->v[b->n - 1]);
        if (w < 0 || (size_t)w >= cap - len) { free(out); release(t); sqlite3_result_error(ctx, "sp_trend: output", -1); return; }
        len += (size_t)w;
    }
    release(t);
    sqlite3_result_text(ctx, out, (int)len, free);
}

int sp_register_trend(sqlite3 *db) {
    return sqlite3_create_function_v2(db, "sp_trend", 3, SQLITE_UTF8 | SQLITE_DETERMINISTIC, NULL, NULL, step, final, NULL);
}
