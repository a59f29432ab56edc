/* wordstat [FILE] -- word count, unique words, mean word length, top 5 words. */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "wordstat.h"

#define TOP 5

int main(int argc, char **argv)
{
    if (argc > 2) {
        fprintf(stderr, "usage: %s [FILE]\n", argv[0]);
        return 2;
    }
    FILE *in = stdin;
    if (argc == 2 && strcmp(argv[1], "-") != 0) {
        in = fopen(argv[1], "r");
        if (!in) {
            fprintf(stderr, "%s: %s: %s\n", argv[0], argv[1], strerror(errno));
            return 1;
        }
    }

    ws_table *t = ws_new();
    if (!t || ws_add_stream(t, in) != 0) {
        fprintf(stderr, "%s: failed to read input\n", argv[0]);
        return 1;
    }
    if (in != stdin)
        fclose(in);

    printf("words: %zu\n", ws_total(t));
    printf("unique: %zu\n", ws_unique(t));
    printf("mean length: %.4f\n", ws_mean_length(t));
    printf("stddev length: %.4f\n", ws_stddev_length(t));
    ws_entry top[TOP];
    size_t n = ws_top(t, top, TOP);
    printf("top %zu:\n", n);
    for (size_t i = 0; i < n; i++)
        printf("%5zu %s\n", top[i].count, top[i].word);
    ws_free(t);
    return 0;
}
