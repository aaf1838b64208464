/* SPDX-License-Identifier: MIT */
/*
 * bench_clock.h: the benches' two clocks, shared so that every bench turns time into cycles the
 * same way: bench_cpu_ns, this thread's CPU time (what an operation costs, without the time
 * other processes of a shared machine took the core away), and bench_clock_ghz, the core's
 * real clock measured in the same run (/proc/cpuinfo shows the nominal one). Header only:
 * each bench is one file, built on its own.
 */
#ifndef HD_BENCH_CLOCK_H
#define HD_BENCH_CLOCK_H

#include <stdint.h>
#include <time.h>

static inline double bench_cpu_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

/* The core's clock in GHz: 8 dependent 64-bit multiplies take 24 cycles on every x86-64 core
 * of the last fifteen years (imul r64, r64: 3 cycles on Intel since Nehalem, on AMD since
 * Zen), whatever the other threads of the machine do. A chain of "add $1" does not do: Intel's
 * Golden Cove cores fold small immediate adds into the renamer and run several a cycle (the
 * benches read 10 GHz on a 2.3 GHz Xeon with them). About 0.2 s at 2.5 GHz. */
static inline double bench_clock_ghz(void) {
    uint64_t x = 1, m = 3;
    const long n = 20000000;
    double t0 = bench_cpu_ns();
    for (long i = 0; i < n; i++) {
#if defined(__x86_64__)
        __asm__ volatile("imul %1, %0\n\timul %1, %0\n\timul %1, %0\n\timul %1, %0\n\t"
                         "imul %1, %0\n\timul %1, %0\n\timul %1, %0\n\timul %1, %0"
                         : "+r"(x)
                         : "r"(m));
#else
        __asm__ volatile("" : "+r"(x));
        x *= m;
#endif
    }
    return 24.0 * (double)n / (bench_cpu_ns() - t0);
}

#endif
