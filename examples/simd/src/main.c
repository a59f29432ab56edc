/* dotbench REPS [N]: repeated dot products of L1-resident vectors. The
 * result goes to stdout (rounded: the SIMD paths sum in different orders),
 * the path taken and the time to stderr. */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include "dot.h"

int main(int argc, char **argv) {
  long reps = argc > 1 ? atol(argv[1]) : 100000;
  size_t n = argc > 2 ? (size_t)atol(argv[2]) : 2048;
  float *x = malloc(n * sizeof *x), *y = malloc(n * sizeof *y);
  if (!x || !y) return 1;
  for (size_t i = 0; i < n; i++) {
    x[i] = (float)((i % 17) + 1) / 16.0f;
    y[i] = (float)((i % 5) + 1) / 4.0f;
  }
  struct timespec t0, t1;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  double acc = 0;
  for (long r = 0; r < reps; r++) {
    x[r % n] += 1e-7f;
    acc += dot(x, y, n);
  }
  clock_gettime(CLOCK_MONOTONIC, &t1);
  double secs = (t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) * 1e-9;
  fprintf(stderr, "dot: path=%s %ld x %zu in %.3f s (%.2f GFLOP/s)\n", dot_path, reps, n, secs,
          2.0 * reps * n / secs * 1e-9);
  printf("n=%zu reps=%ld mean=%.2e\n", n, reps, acc / reps);  /* SIMD widths sum in different orders */
  free(x);
  free(y);
  return 0;
}
