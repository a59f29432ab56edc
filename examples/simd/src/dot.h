#ifndef DOT_H
#define DOT_H
#include <stddef.h>
extern const char *dot_path;
float dot(const float *x, const float *y, size_t n);
#endif
