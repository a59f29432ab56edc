/* A dot product that picks its SIMD path in the preprocessor, as much fast
 * C code does (#ifdef __AVX2__): a capture for a generic CPU keeps only the
 * SSE2 path unless bakery captures this unit per ISA level. */
#include <stddef.h>
#include "dot.h"

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#if defined(__AVX512F__)
const char *dot_path = "avx512";

float dot(const float *x, const float *y, size_t n) {
  __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();
  size_t i = 0;
  for (; i + 32 <= n; i += 32) {
    a0 = _mm512_fmadd_ps(_mm512_loadu_ps(x + i), _mm512_loadu_ps(y + i), a0);
    a1 = _mm512_fmadd_ps(_mm512_loadu_ps(x + i + 16), _mm512_loadu_ps(y + i + 16), a1);
  }
  float s = _mm512_reduce_add_ps(_mm512_add_ps(a0, a1));
  for (; i < n; i++) s += x[i] * y[i];
  return s;
}
#elif defined(__AVX2__) && defined(__FMA__)
const char *dot_path = "avx2";

float dot(const float *x, const float *y, size_t n) {
  __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
  size_t i = 0;
  for (; i + 16 <= n; i += 16) {
    a0 = _mm256_fmadd_ps(_mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i), a0);
    a1 = _mm256_fmadd_ps(_mm256_loadu_ps(x + i + 8), _mm256_loadu_ps(y + i + 8), a1);
  }
  __m256 a = _mm256_add_ps(a0, a1);
  __m128 h = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
  h = _mm_add_ps(h, _mm_movehl_ps(h, h));
  h = _mm_add_ss(h, _mm_shuffle_ps(h, h, 1));
  float s = _mm_cvtss_f32(h);
  for (; i < n; i++) s += x[i] * y[i];
  return s;
}
#elif defined(__ARM_FEATURE_SVE)
#include <arm_sve.h>
const char *dot_path = "sve";

float dot(const float *x, const float *y, size_t n) {
  svfloat32_t acc = svdup_f32(0.0f);
  for (size_t i = 0; i < n; i += svcntw()) {
    svbool_t pg = svwhilelt_b32((uint64_t)i, (uint64_t)n);
    acc = svmla_f32_m(pg, acc, svld1_f32(pg, x + i), svld1_f32(pg, y + i));
  }
  return svaddv_f32(svptrue_b32(), acc);
}
#elif defined(__ARM_NEON)
#include <arm_neon.h>
const char *dot_path = "neon";

float dot(const float *x, const float *y, size_t n) {
  float32x4_t a0 = vdupq_n_f32(0.0f), a1 = vdupq_n_f32(0.0f);
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    a0 = vfmaq_f32(a0, vld1q_f32(x + i), vld1q_f32(y + i));
    a1 = vfmaq_f32(a1, vld1q_f32(x + i + 4), vld1q_f32(y + i + 4));
  }
  float s = vaddvq_f32(vaddq_f32(a0, a1));
  for (; i < n; i++) s += x[i] * y[i];
  return s;
}
#else
const char *dot_path = "sse2";

float dot(const float *x, const float *y, size_t n) {
  __m128 a0 = _mm_setzero_ps(), a1 = _mm_setzero_ps();
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    a0 = _mm_add_ps(a0, _mm_mul_ps(_mm_loadu_ps(x + i), _mm_loadu_ps(y + i)));
    a1 = _mm_add_ps(a1, _mm_mul_ps(_mm_loadu_ps(x + i + 4), _mm_loadu_ps(y + i + 4)));
  }
  __m128 h = _mm_add_ps(a0, a1);
  h = _mm_add_ps(h, _mm_movehl_ps(h, h));
  h = _mm_add_ss(h, _mm_shuffle_ps(h, h, 1));
  float s = _mm_cvtss_f32(h);
  for (; i < n; i++) s += x[i] * y[i];
  return s;
}
#endif
