#ifndef WORDSTAT_H
#define WORDSTAT_H

#include <stddef.h>
#include <stdio.h>

/* Word statistics over a text stream.  A word is a maximal run of ASCII
 * letters, digits or apostrophes, folded to lower case. */

typedef struct ws_table ws_table;

typedef struct {
    const char *word;
    size_t count;
} ws_entry;

ws_table *ws_new(void);
void ws_free(ws_table *t);

/* Tokenize the stream and add every word; returns 0, or -1 on read error. */
int ws_add_stream(ws_table *t, FILE *in);
/* Add one word (already normalized); returns 0, or -1 on allocation failure. */
int ws_add_word(ws_table *t, const char *word, size_t len);

size_t ws_total(const ws_table *t);
size_t ws_unique(const ws_table *t);
double ws_mean_length(const ws_table *t);
/* Standard deviation of word length (population). */
double ws_stddev_length(const ws_table *t);

/* Fill up to n entries, most frequent first (ties: alphabetical); returns how many. */
size_t ws_top(const ws_table *t, ws_entry *out, size_t n);

#endif
