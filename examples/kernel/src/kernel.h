#ifndef KERNEL_H
#define KERNEL_H

#include <stddef.h>

#define POLY_DEGREE 10

/*
 * Apply the degree-10 polynomial p(t) = c[0] + c[1] t + ... + c[10] t^10 to
 * every element of x, in place, `passes` times (x <- p(x)), using Horner's
 * rule.
 */
void poly_kernel(float *restrict x, size_t n, const float *restrict c, int passes);

#endif
