#ifndef PI_TIMER_H
#define PI_TIMER_H

/* Monotonic wall-clock time in seconds. */
double timer_now(void);

#endif
