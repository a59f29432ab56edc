/*
 * pi N [THREADS] -- approximate pi by midpoint-rule integration of
 * 4 / (1 + x^2) over [0, 1] with N intervals, split across THREADS pthreads.
 *
 * The reduction is deterministic: every thread owns a fixed contiguous slice
 * and the partial sums are added in thread order after joining.  Output is
 * printed to 10 decimals; timing goes to stderr so stdout stays reproducible.
 */
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>

#include "timer.h"

#define MAX_THREADS 64
#define PI_REF 3.14159265358979323846

struct slice {
    long begin;
    long end;
    double step;
    double sum;
};

static void *integrate(void *arg)
{
    struct slice *s = arg;
    double sum = 0.0;
    for (long i = s->begin; i < s->end; i++) {
        double x = ((double)i + 0.5) * s->step;
        sum += 4.0 / (1.0 + x * x);
    }
    s->sum = sum;
    return NULL;
}

int main(int argc, char **argv)
{
    if (argc < 2 || argc > 3) {
        fprintf(stderr, "usage: %s N [THREADS]\n", argv[0]);
        return 2;
    }
    long n = strtol(argv[1], NULL, 10);
    int nthreads = argc > 2 ? atoi(argv[2]) : 4;
    if (n <= 0 || nthreads <= 0 || nthreads > MAX_THREADS) {
        fprintf(stderr, "%s: need N > 0 and 1 <= THREADS <= %d\n", argv[0], MAX_THREADS);
        return 2;
    }

    pthread_t tid[MAX_THREADS];
    struct slice slices[MAX_THREADS];
    double step = 1.0 / (double)n;
    double t0 = timer_now();

    for (int t = 0; t < nthreads; t++) {
        slices[t].begin = n * t / nthreads;
        slices[t].end = n * (t + 1) / nthreads;
        slices[t].step = step;
        slices[t].sum = 0.0;
        if (pthread_create(&tid[t], NULL, integrate, &slices[t]) != 0) {
            fprintf(stderr, "%s: pthread_create failed\n", argv[0]);
            return 1;
        }
    }

    double total = 0.0;
    for (int t = 0; t < nthreads; t++) {
        pthread_join(tid[t], NULL);
        total += slices[t].sum; /* in thread order: deterministic */
    }
    double pi = total * step;
    double elapsed = timer_now() - t0;

    /* Midpoint-rule error is at most h^2/3 for this integrand. */
    double tol = step * step / 3.0 + 1e-9;
    int ok = fabs(pi - PI_REF) <= tol;

    printf("pi = %.10f\n", pi);
    printf("check: %s\n", ok ? "ok" : "FAILED");
    fprintf(stderr, "n=%ld threads=%d time=%.3fs\n", n, nthreads, elapsed);
    return ok ? 0 : 1;
}
