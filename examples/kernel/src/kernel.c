#include "kernel.h"

/*
 * The hot loop: one Horner evaluation per element, written as a single
 * expression so that -ffp-contract=on (clang's default) turns each step into
 * an FMA when the target has one.  The element loop has no loop-carried
 * dependence and `restrict` pointers, so clang -O2 vectorizes it: SSE2 (xmm)
 * for generic x86-64, ymm for x86-64-v3, zmm for x86-64-v4.
 *
 * Kept in its own translation unit and marked noinline so that the function
 * exists as a symbol whose disassembly can be inspected.
 */
__attribute__((noinline)) void poly_kernel(float *restrict x, size_t n, const float *restrict c,
                                           int passes)
{
    const float c0 = c[0], c1 = c[1], c2 = c[2], c3 = c[3], c4 = c[4], c5 = c[5];
    const float c6 = c[6], c7 = c[7], c8 = c[8], c9 = c[9], c10 = c[10];

    for (int p = 0; p < passes; p++) {
        for (size_t i = 0; i < n; i++) {
            float t = x[i];
            x[i] = ((((((((((c10 * t + c9) * t + c8) * t + c7) * t + c6) * t + c5) * t + c4) * t
                        + c3) * t + c2) * t + c1) * t + c0);
        }
    }
}
