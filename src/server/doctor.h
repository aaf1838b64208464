/* SPDX-License-Identifier: MIT */
/*
 * doctor.h: the memory doctor, heapd's MEMORY DOCTOR: findings about the server and its
 * sessions, each with its evidence (the figures) and what to do about it.
 *
 * The doctor is a set of rules over what the workers publish (metrics.h: one summary per
 * session, refreshed every second), run on any thread: it never touches a heap. Each rule
 * looks at one thing and fills at most one finding per session (or one for the server). The
 * rules and their thresholds are one list, HD_DOCTOR_RULES, which /api/doctor, heapctl doctor
 * and docs/DEPLOYMENT.md share.
 */
#ifndef HD_SERVER_DOCTOR_H
#define HD_SERVER_DOCTOR_H

#include <stddef.h>
#include <stdint.h>

#include "metrics.h"

/* Thresholds, each explained where a rule uses it (doctor.c). */
#define HD_DOC_FRAG_RATIO       4u                  /* available blocks over allocated ones */
#define HD_DOC_FRAG_MIN         (1u << 20)          /* ... and at least this many bytes free */
#define HD_DOC_SPARSE_ARENAS    4u                  /* arenas, of which ... */
#define HD_DOC_SPARSE_PERCENT   10u                 /* ... at most this share holds blocks */
#define HD_DOC_GC2_PER_MINUTE   10u                 /* full collections in a minute ... */
#define HD_DOC_GC2_CONTAINERS   50000u              /* ... of at least this many containers */
#define HD_DOC_PAUSE_NS         20000000u           /* 20 ms: a collection this long */
#define HD_DOC_NEAR_PERCENT     90u                 /* of a limit or the cap */
#define HD_DOC_GC_OFF_PENDING   10u                 /* thresholds' worth of pending containers */
#define HD_DOC_TRACING_MS       (10u * 60u * 1000u) /* tracing on this long */
#define HD_DOC_LEAK_MIN         (1u << 20)          /* a site grown this much over two samples */
#define HD_DOC_DETACHED_MIN     10u                 /* detached sessions, at least, ... */
#define HD_DOC_DETACHED_PERCENT 50u                 /* ... and this share of all sessions */

/* XX(name, severity, title): every rule, in the order findings are listed. */
#define HD_DOCTOR_RULES(XX)                                                                        \
    XX(memory_cap, "critical", "the server is near its memory cap")                                \
    XX(snapshot_failing, "critical", "session snapshots cannot be written")                        \
    XX(snapshot_refused, "warning", "snapshot files were refused at start")                        \
    XX(near_limit, "warning", "a session is near its limit")                                       \
    XX(fragmentation, "warning", "heavy fragmentation")                                            \
    XX(sparse_arenas, "warning", "arenas held by few blocks")                                      \
    XX(uncollectable, "warning", "uncollectable garbage is growing")                               \
    XX(saveall_garbage, "warning", "gc.garbage fills under DEBUG_SAVEALL")                         \
    XX(gc_disabled, "warning", "automatic collection is off while containers pile up")             \
    XX(gc2_frequent, "warning", "full collections too frequent for the heap's size")               \
    XX(long_pause, "warning", "collection pauses are long")                                        \
    XX(leak, "warning", "a site's traced bytes keep growing")                                      \
    XX(tracing_long, "info", "tracing has been on for long")                                       \
    XX(detached, "warning", "many detached sessions linger")

typedef struct hd_finding_s {
    const char *rule;     /* the rule's name */
    const char *severity; /* "info", "warning", "critical" */
    const char *title;
    char session[HD_ID_LEN]; /* "" for the server */
    char evidence[384];
    char advice[384];
} hd_finding_t;

/* What the rules look at: a view (hd__metrics_view) and the settings it ran under. */
typedef struct hd_doctor_in_s {
    const hd_mview_t *view;
    uint64_t session_linger_ms;
    const char *session; /* only this session's findings (and none of the server's), or NULL */
} hd_doctor_in_t;

/* Runs every rule; writes at most max findings to out and returns how many there were (which
 * may be more than max). */
size_t hd__doctor_run(const hd_doctor_in_t *in, hd_finding_t *out, size_t max);

#endif /* HD_SERVER_DOCTOR_H */
