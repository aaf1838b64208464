/* SPDX-License-Identifier: MIT */
/*
 * common.h: what every file of the daemon shares: the one assertion macro, the sanitizer
 * switch and the allocation hook (smem.h: every allocation of src/server goes through it).
 *
 * HD_ASSERT(x) states an invariant that is cheap to check (a flag, a count, a return value
 * that cannot fail). It is checked in debug builds and in every sanitizer build (the CI's
 * `.ci/test --sanitize` and the fuzz targets, whose RelWithDebInfo flags define NDEBUG), and
 * compiled out of the release build. A failed assertion prints the file, line and expression
 * and aborts: it is a bug in heapd, never a client's doing. Every file of src/server uses
 * this, not <assert.h>; the engine has its own (src/heap/internal.h), which the daemon never
 * includes.
 *
 * This file owns no state and includes neither libuv nor protobuf, so the protocol layer
 * (hdwire) and the daemon share it.
 */
#ifndef HD_SERVER_COMMON_H
#define HD_SERVER_COMMON_H

#include <stdio.h>
#include <stdlib.h>

#include "smem.h"

/* HD_ASAN: built with AddressSanitizer (gcc says so with __SANITIZE_ADDRESS__, clang with
 * __has_feature). */
#if defined(__SANITIZE_ADDRESS__)
#define HD_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define HD_ASAN 1
#endif
#endif

/* HEAPD_ASSERTS is defined by CMake for the sanitizer builds (HEAPD_ASAN, HEAPD_UBSAN). */
#if !defined(NDEBUG) || defined(HEAPD_ASSERTS) || defined(HD_ASAN)
#define HD_ASSERTS_ON 1
#endif

static inline _Noreturn void hd__assert_failed(const char *file, int line, const char *what) {
    fprintf(stderr, "heapd: %s:%d: assertion failed: %s\n", file, line, what);
    abort();
}

#ifdef HD_ASSERTS_ON
#define HD_ASSERT(x) ((x) ? (void)0 : hd__assert_failed(__FILE__, __LINE__, #x))
#else
#define HD_ASSERT(x) ((void)sizeof(!(x)))
#endif

#endif /* HD_SERVER_COMMON_H */
