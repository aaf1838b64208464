/* SPDX-License-Identifier: MIT */
/*
 * testutil.h: what every engine test shares: a counting, fault-injecting allocation hook
 * (fail the N-th allocation, count live allocations so a test can assert nothing leaked),
 * and short helpers for making objects.
 */
#ifndef HD_TESTUTIL_H
#define HD_TESTUTIL_H

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "heap.h"

/* Installs the counting hook (idempotent). */
void tu_hook_install(void);
/* Makes the hook's arena mappings start at multiples of align (0: wherever mmap puts them), so
 * that two heaps map alike even where mmap places at random (ASan). */
void tu_map_align(size_t align);
/* Fail the n-th allocation from now (1 = the next one; 0 = never). Maps count too. */
void tu_fail_nth(uint64_t n);
/* 1 if the armed failure has fired since the last tu_fail_nth. */
int tu_failed(void);
/* Allocations (malloc + map) outstanding through the hook. */
int64_t tu_live_allocs(void);

/* A cmocka fixture: a fresh heap per test (tu_heap) and the hook's live allocation count
 * before it; teardown frees the heap and asserts nothing leaked. Use
 * cmocka_unit_test_setup_teardown(test, tu_setup, tu_teardown) and TU_HEAP(state). */
typedef struct tu_fixture_s {
    hd_heap_t *h;
    int64_t live0;
} tu_fixture_t;
int tu_setup(void **state);
int tu_teardown(void **state);
#define TU_HEAP(state) (((tu_fixture_t *)*(state))->h)

/* A new heap with defaults but automatic collection disabled (tests call collect). */
hd_heap_t *tu_heap(void);
/* Allocates an object with n slots and size payload bytes; asserts success. */
hd_handle_t tu_obj(hd_heap_t *h, uint32_t nslots, uint32_t size);
/* Allocates with a tag. */
hd_handle_t tu_obj_tag(hd_heap_t *h, uint32_t nslots, const char *tag);
/* The object's refcount, asserting success. */
uint64_t tu_refcnt(hd_heap_t *h, hd_handle_t o);
/* 1 if the handle still names a live object. */
int tu_alive(hd_heap_t *h, hd_handle_t o);

#endif
