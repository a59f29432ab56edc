#include "wordstat.h"

#include <ctype.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

struct node {
    char *word;
    size_t count;
    struct node *next;
};

struct ws_table {
    struct node **buckets;
    size_t nbuckets;
    size_t unique;
    size_t total;
    double len_sum;    /* sum of word lengths */
    double len_sq_sum; /* sum of squared word lengths */
};

static uint64_t hash(const char *s, size_t len)
{
    uint64_t h = 1469598103934665603ULL; /* FNV-1a */
    for (size_t i = 0; i < len; i++) {
        h ^= (unsigned char)s[i];
        h *= 1099511628211ULL;
    }
    return h;
}

ws_table *ws_new(void)
{
    ws_table *t = calloc(1, sizeof *t);
    if (!t)
        return NULL;
    t->nbuckets = 256;
    t->buckets = calloc(t->nbuckets, sizeof *t->buckets);
    if (!t->buckets) {
        free(t);
        return NULL;
    }
    return t;
}

void ws_free(ws_table *t)
{
    if (!t)
        return;
    for (size_t b = 0; b < t->nbuckets; b++) {
        struct node *n = t->buckets[b];
        while (n) {
            struct node *next = n->next;
            free(n->word);
            free(n);
            n = next;
        }
    }
    free(t->buckets);
    free(t);
}

static int grow(ws_table *t)
{
    size_t nb = t->nbuckets * 2;
    struct node **nbk = calloc(nb, sizeof *nbk);
    if (!nbk)
        return -1;
    for (size_t b = 0; b < t->nbuckets; b++) {
        struct node *n = t->buckets[b];
        while (n) {
            struct node *next = n->next;
            size_t i = hash(n->word, strlen(n->word)) & (nb - 1);
            n->next = nbk[i];
            nbk[i] = n;
            n = next;
        }
    }
    free(t->buckets);
    t->buckets = nbk;
    t->nbuckets = nb;
    return 0;
}

int ws_add_word(ws_table *t, const char *word, size_t len)
{
    size_t i = hash(word, len) & (t->nbuckets - 1);
    struct node *n;
    for (n = t->buckets[i]; n; n = n->next)
        if (strlen(n->word) == len && memcmp(n->word, word, len) == 0)
            break;
    if (!n) {
        if (t->unique + 1 > t->nbuckets * 3 / 4) {
            if (grow(t) != 0)
                return -1;
            i = hash(word, len) & (t->nbuckets - 1);
        }
        n = calloc(1, sizeof *n);
        if (!n)
            return -1;
        n->word = malloc(len + 1);
        if (!n->word) {
            free(n);
            return -1;
        }
        memcpy(n->word, word, len);
        n->word[len] = '\0';
        n->next = t->buckets[i];
        t->buckets[i] = n;
        t->unique++;
    }
    n->count++;
    t->total++;
    t->len_sum += (double)len;
    t->len_sq_sum += (double)len * (double)len;
    return 0;
}

static int is_word_char(int c)
{
    return isalnum(c) || c == '\'';
}

int ws_add_stream(ws_table *t, FILE *in)
{
    char buf[256];
    size_t len = 0;
    int c;
    while ((c = getc(in)) != EOF) {
        if (c < 128 && is_word_char(c)) {
            if (len < sizeof buf)
                buf[len++] = (char)tolower(c);
            continue;
        }
        if (len) {
            /* Strip leading/trailing apostrophes (quotes), keep "don't". */
            size_t b = 0, e = len;
            while (b < e && buf[b] == '\'')
                b++;
            while (e > b && buf[e - 1] == '\'')
                e--;
            if (e > b && ws_add_word(t, buf + b, e - b) != 0)
                return -1;
            len = 0;
        }
    }
    if (len) {
        size_t b = 0, e = len;
        while (b < e && buf[b] == '\'')
            b++;
        while (e > b && buf[e - 1] == '\'')
            e--;
        if (e > b && ws_add_word(t, buf + b, e - b) != 0)
            return -1;
    }
    return ferror(in) ? -1 : 0;
}

size_t ws_total(const ws_table *t) { return t->total; }
size_t ws_unique(const ws_table *t) { return t->unique; }

double ws_mean_length(const ws_table *t)
{
    return t->total ? t->len_sum / (double)t->total : 0.0;
}

double ws_stddev_length(const ws_table *t)
{
    if (!t->total)
        return 0.0;
    double mean = ws_mean_length(t);
    double var = t->len_sq_sum / (double)t->total - mean * mean;
    return var > 0.0 ? sqrt(var) : 0.0;
}

static int cmp_entry(const void *pa, const void *pb)
{
    const ws_entry *a = pa, *b = pb;
    if (a->count != b->count)
        return a->count > b->count ? -1 : 1;
    return strcmp(a->word, b->word);
}

size_t ws_top(const ws_table *t, ws_entry *out, size_t n)
{
    if (!t->unique || !n)
        return 0;
    ws_entry *all = malloc(t->unique * sizeof *all);
    if (!all)
        return 0;
    size_t k = 0;
    for (size_t b = 0; b < t->nbuckets; b++)
        for (struct node *nd = t->buckets[b]; nd; nd = nd->next)
            all[k++] = (ws_entry){nd->word, nd->count};
    qsort(all, k, sizeof *all, cmp_entry);
    if (n > k)
        n = k;
    memcpy(out, all, n * sizeof *out);
    free(all);
    return n;
}
