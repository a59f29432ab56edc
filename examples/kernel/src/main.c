/*
 * kernel REPS [N [PASSES]] -- compute-bound, vectorizable polynomial benchmark.
 *
 * Each rep calls poly_kernel(), which iterates x <- p(x) PASSES times (default
 * 64) over an array of N floats (default 8192 = 32 KiB: stays in L1/L2).  p is
 * the degree-10 Taylor polynomial of 0.9*cos(t + 0.3); it maps [-1, 1] into
 * [0.2, 0.9] and is a contraction there (|p'| < 0.9), so the iteration is
 * stable: rounding differences between ISAs (FMA vs. mul+add, -ffast-math)
 * are damped instead of amplified, and the printed (rounded) checksum is the
 * same for every build.
 *
 * stdout: the checksum and a self-check (deterministic).
 * stderr: the elapsed time of the REPS kernel calls.
 */
#define _POSIX_C_SOURCE 199309L
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "kernel.h"

#define DEFAULT_PASSES 64

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

int main(int argc, char **argv)
{
    if (argc < 2 || argc > 4) {
        fprintf(stderr, "usage: %s REPS [N [PASSES]]\n", argv[0]);
        return 2;
    }
    long reps = strtol(argv[1], NULL, 10);
    long n = argc > 2 ? strtol(argv[2], NULL, 10) : 8192;
    long passes = argc > 3 ? strtol(argv[3], NULL, 10) : DEFAULT_PASSES;
    if (reps < 0 || reps > 100000000L || n < 1 || n > (1L << 26) || passes < 1 || passes > 1000000) {
        fprintf(stderr, "%s: need 0 <= REPS <= 1e8, 1 <= N <= 2^26, 1 <= PASSES <= 1e6\n", argv[0]);
        return 2;
    }

    /* Taylor coefficients of A*cos(t + B): c_k = A*cos(B + k*pi/2)/k!. */
    const double A = 0.9, B = 0.3, HALF_PI = 1.57079632679489661923;
    float c[POLY_DEGREE + 1];
    double fact = 1.0;
    for (int k = 0; k <= POLY_DEGREE; k++) {
        if (k > 0)
            fact *= k;
        c[k] = (float)(A * cos(B + k * HALF_PI) / fact);
    }

    float *x = malloc((size_t)n * sizeof *x);
    if (!x) {
        fprintf(stderr, "%s: out of memory\n", argv[0]);
        return 1;
    }
    for (long i = 0; i < n; i++)
        x[i] = -1.0f + 2.0f * (float)i / (float)n; /* spread over [-1, 1) */

    double t0 = now();
    for (long r = 0; r < reps; r++)
        poly_kernel(x, (size_t)n, c, (int)passes);
    double elapsed = now() - t0;

    double sum = 0.0;
    for (long i = 0; i < n; i++)
        sum += x[i];

    /* The iteration converges to the fixed point of 0.9*cos(t + 0.3). */
    double fixed = 0.5;
    for (int k = 0; k < 200; k++)
        fixed = A * cos(fixed + B);
    double lo = x[0], hi = x[0];
    for (long i = 1; i < n; i++) {
        if (x[i] < lo)
            lo = x[i];
        if (x[i] > hi)
            hi = x[i];
    }
    int ok = lo >= -1.0 && hi <= 1.0;
    if (reps * passes >= 100) /* every element has reached the fixed point */
        ok = ok && fabs(lo - fixed) < 1e-4 && fabs(hi - fixed) < 1e-4;

    printf("n=%ld reps=%ld passes=%ld\n", n, reps, reps * passes);
    printf("checksum=%.3e\n", sum);
    printf("mean=%.4f fixed_point=%.4f\n", sum / (double)n, fixed);
    printf("check: %s\n", ok ? "ok" : "FAILED");
    fprintf(stderr, "poly_kernel: %ld reps x %ld passes x %ld elements: %.3f s\n", reps, passes, n,
            elapsed);
    free(x);
    return ok ? 0 : 1;
}
