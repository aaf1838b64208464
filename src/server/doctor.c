/* SPDX-License-Identifier: MIT */
/*
 * doctor.c: the memory doctor's rules (see doctor.h).
 *
 * Each rule reads the summaries of a view and writes a finding with its evidence, the figures
 * that tripped it, and advice in the vocabulary of CPython's gc and tracemalloc, which
 * heapd's clients know. A rule that needs a history (uncollectable objects found in the last
 * minute, full collections in the last minute, a site's traced bytes over its last samples)
 * reads what the worker keeps for it in the summary (metrics.c:summarize). Nothing here
 * allocates or touches a heap.
 */
#include "doctor.h"

#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

typedef struct ctx_s {
    const hd_doctor_in_t *in;
    hd_finding_t *out;
    size_t max, n;
} ctx_t;

#define MIB(x) ((double)(x) / 1048576.0)

static hd_finding_t *add(ctx_t *c, const char *rule, const char *severity, const char *title,
                         const char *session) {
    size_t k = c->n++;
    if (k >= c->max) return NULL;
    hd_finding_t *f = &c->out[k];
    memset(f, 0, sizeof *f);
    f->rule = rule;
    f->severity = severity;
    f->title = title;
    snprintf(f->session, sizeof f->session, "%s", session ? session : "");
    return f;
}

static void say(char *buf, size_t len, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void say(char *buf, size_t len, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, len, fmt, ap);
    va_end(ap);
}

#define FINDING(c, name, session, ...)                                                             \
    hd_finding_t *f = add(c, #name, rule_##name##_sev, rule_##name##_title, session);              \
    if (f)

/* The severity and title of each rule, from the list. */
#define RULE_STRINGS(name, sev, title)                                                             \
    static const char rule_##name##_sev[] = sev, rule_##name##_title[] = title;
HD_DOCTOR_RULES(RULE_STRINGS)
#undef RULE_STRINGS

/* ------------------------------------------------------------------------------------------ */
/* Per-session rules.                                                                          */
/* ------------------------------------------------------------------------------------------ */

static void near_limit(ctx_t *c, const hd_sess_summary_t *s) {
    const hd_heap_stats_t *h = &s->heap;
    int bytes = s->max_bytes && h->object_bytes * 100 >= s->max_bytes * HD_DOC_NEAR_PERCENT;
    int objs = s->max_objects && h->objects * 100 >= s->max_objects * HD_DOC_NEAR_PERCENT;
    if (!bytes && !objs) return;
    FINDING(c, near_limit, s->id) {
        if (bytes)
            say(f->evidence, sizeof f->evidence,
                "%.1f MiB of objects, %" PRIu64 "%% of session_max_bytes (%.1f MiB)",
                MIB(h->object_bytes), h->object_bytes * 100 / s->max_bytes, MIB(s->max_bytes));
        else
            say(f->evidence, sizeof f->evidence,
                "%" PRIu64 " objects, %" PRIu64 "%% of session_max_objects (%" PRIu64 ")",
                h->objects, h->objects * 100 / s->max_objects, s->max_objects);
        say(f->advice, sizeof f->advice,
            "its next allocations will fail with ELIMIT: free what it no longer needs "
            "(decref, gc.collect()), or raise session_max_%s in heapd.yaml and reload",
            bytes ? "bytes" : "objects");
    }
}

/* Fragmentation: free blocks in the pools in use far outnumber the allocated ones, in one size
 * class (the pools of a class freed in a burst stay spread over the arenas) or in all. */
static void fragmentation(ctx_t *c, const hd_sess_summary_t *s) {
    const hd_heap_stats_t *h = &s->heap;
    const hd_class_stats_t *worst = NULL;
    uint64_t worst_free = 0;
    for (int i = 0; i < HD_NCLASSES; i++) {
        const hd_class_stats_t *k = &h->classes[i];
        uint64_t freeb = k->blocks_available * k->block_size;
        if (freeb > worst_free) worst_free = freeb, worst = k;
    }
    if (h->bytes_available_blocks < HD_DOC_FRAG_MIN ||
        h->bytes_available_blocks < HD_DOC_FRAG_RATIO * h->bytes_allocated_blocks)
        return;
    FINDING(c, fragmentation, s->id) {
        say(f->evidence, sizeof f->evidence,
            "%.1f MiB free in used pools for %.1f MiB allocated (%.1fx); worst: %u-byte blocks, "
            "%" PRIu64 " free for %" PRIu64 " in use in %" PRIu64 " pools",
            MIB(h->bytes_available_blocks), MIB(h->bytes_allocated_blocks),
            h->bytes_allocated_blocks
                ? (double)h->bytes_available_blocks / (double)h->bytes_allocated_blocks
                : 0.0,
            worst->block_size, worst->blocks_available, worst->blocks_in_use, worst->pools);
        say(f->advice, sizeof f->advice,
            "the survivors of a burst pin their pools: allocate long-lived objects apart from "
            "short-lived ones (another session), or rebuild the heap's long-lived objects so "
            "they pack into fewer pools; freed pools are reused, whole empty arenas returned");
    }
}

static void sparse_arenas(ctx_t *c, const hd_sess_summary_t *s) {
    const hd_heap_stats_t *h = &s->heap;
    if (h->arenas_current < HD_DOC_SPARSE_ARENAS ||
        h->bytes_allocated_blocks * 100 > h->arena_bytes * HD_DOC_SPARSE_PERCENT)
        return;
    FINDING(c, sparse_arenas, s->id) {
        say(f->evidence, sizeof f->evidence,
            "%" PRIu64 " arenas (%.0f MiB) hold %.2f MiB of blocks (%.1f%%); %.1f MiB in unused "
            "pools",
            h->arenas_current, MIB(h->arena_bytes), MIB(h->bytes_allocated_blocks),
            100.0 * (double)h->bytes_allocated_blocks / (double)h->arena_bytes,
            MIB(h->bytes_unused_pools));
        say(f->advice, sizeof f->advice,
            "an arena goes back to the system only when its last block is freed: a few "
            "long-lived objects keep whole arenas; free or reallocate them");
    }
}

static void uncollectable(ctx_t *c, const hd_sess_summary_t *s) {
    if (!s->uncollectable_growth) return;
    FINDING(c, uncollectable, s->id) {
        say(f->evidence, sizeof f->evidence,
            "%" PRIu64 " uncollectable objects found in the last minute; gc.garbage holds %" PRIu64,
            s->uncollectable_growth, s->garbage);
        say(f->advice, sizeof f->advice,
            "cycles holding an object with a legacy finalizer (OBJ_LEGACY_FINALIZER) are never "
            "freed: break them before dropping them, or clear gc.garbage (gc_garbage_clear) "
            "after inspecting it");
    }
}

static void saveall_garbage(ctx_t *c, const hd_sess_summary_t *s) {
    if (!(s->gc_debug & HD_GC_DEBUG_SAVEALL) || !s->garbage) return;
    FINDING(c, saveall_garbage, s->id) {
        say(f->evidence, sizeof f->evidence,
            "gc.set_debug(DEBUG_SAVEALL) is set and gc.garbage holds %" PRIu64 " objects",
            s->garbage);
        say(f->advice, sizeof f->advice,
            "with DEBUG_SAVEALL every collected object is kept instead of freed: a debugging "
            "aid; turn it off (gc_set_debug 0) and clear gc.garbage");
    }
}

static void gc_disabled(ctx_t *c, const hd_sess_summary_t *s) {
    int t0 = s->gc_threshold[0] > 0 ? s->gc_threshold[0] : 700;
    if (s->gc_enabled && s->gc_threshold[0] != 0) return;
    if (s->gc_count[0] < (uint64_t)t0 * HD_DOC_GC_OFF_PENDING) return;
    FINDING(c, gc_disabled, s->id) {
        say(f->evidence, sizeof f->evidence,
            "automatic collection is %s, and %" PRIu64 " containers were allocated since the "
            "last collection (%d x threshold 0); %" PRIu64 " containers live",
            s->gc_enabled ? "off (threshold 0 is 0)" : "disabled (gc.disable())", s->gc_count[0],
            (int)(s->gc_count[0] / (uint64_t)t0), s->heap.containers);
        say(f->advice, sizeof f->advice,
            "cycles among them are never freed until a collection runs: call gc.collect() "
            "now and then, or gc.enable()");
    }
}

static void gc2_frequent(ctx_t *c, const hd_sess_summary_t *s) {
    if (s->gc2_recent < HD_DOC_GC2_PER_MINUTE || s->heap.containers < HD_DOC_GC2_CONTAINERS) return;
    FINDING(c, gc2_frequent, s->id) {
        say(f->evidence, sizeof f->evidence,
            "%" PRIu64 " full (generation 2) collections in the last minute, each over %" PRIu64
            " containers; thresholds %d, %d, %d",
            s->gc2_recent, s->heap.containers, s->gc_threshold[0], s->gc_threshold[1],
            s->gc_threshold[2]);
        say(f->advice, sizeof f->advice,
            "each full collection walks every container: call gc.collect(2) less often, raise "
            "threshold 2 (gc.set_threshold), or gc.freeze() the long-lived objects");
    }
}

static void long_pause(ctx_t *c, const hd_sess_summary_t *s) {
    if (s->heap.gc_pause_ns_max < HD_DOC_PAUSE_NS) return;
    FINDING(c, long_pause, s->id) {
        say(f->evidence, sizeof f->evidence,
            "the longest collection took %.1f ms (%" PRIu64 " containers now); every session "
            "of worker %u waited that long",
            (double)s->heap.gc_pause_ns_max / 1e6, s->heap.containers, s->worker);
        say(f->advice, sizeof f->advice,
            "fewer containers in the young generations per collection (gc.freeze() after "
            "start-up), or put this heap's work apart from latency-sensitive sessions");
    }
}

static void leak(ctx_t *c, const hd_sess_summary_t *s) {
    for (size_t i = 0; i < s->nsites; i++) {
        const hd_site_trend_t *t = &s->sites[i];
        if (!(t->bytes[2] < t->bytes[1] && t->bytes[1] < t->bytes[0]) ||
            t->bytes[0] - t->bytes[2] < HD_DOC_LEAK_MIN)
            continue;
        FINDING(c, leak, s->id) {
            say(f->evidence, sizeof f->evidence,
                "site \"%s\": %.1f MiB traced, up from %.1f MiB and %.1f MiB at the last two "
                "samples (%u s apart)",
                t->key[0] ? t->key : "(none)", MIB(t->bytes[0]), MIB(t->bytes[1]), MIB(t->bytes[2]),
                HD_SITE_SAMPLE_MS / 1000u);
            say(f->advice, sizeof f->advice,
                "objects allocated there are kept: compare two snapshots by traceback "
                "(tracemalloc's snapshot.compare_to) and find who holds them");
        }
        return; /* one finding per session: the fastest grower is listed first */
    }
}

static void tracing_long(ctx_t *c, const hd_sess_summary_t *s) {
    if (!s->tracing || s->tracing_ms < HD_DOC_TRACING_MS) return;
    FINDING(c, tracing_long, s->id) {
        say(f->evidence, sizeof f->evidence,
            "tracing for %" PRIu64 " min, %.1f MiB traced now (peak %.1f MiB)",
            s->tracing_ms / 60000u, MIB(s->traced_current), MIB(s->traced_peak));
        say(f->advice, sizeof f->advice,
            "tracing costs memory and time on every allocation: trace_stop when done "
            "(tracemalloc.stop())");
    }
}

/* ------------------------------------------------------------------------------------------ */
/* Server rules and the run.                                                                   */
/* ------------------------------------------------------------------------------------------ */

static void server_rules(ctx_t *c) {
    const hd_mview_t *v = c->in->view;
    if (v->memory_cap_bytes) {
        uint64_t used = v->memory_charged_bytes;
        if (used * 100 >= v->memory_cap_bytes * HD_DOC_NEAR_PERCENT || v->memory_cap_reached) {
            FINDING(c, memory_cap, NULL) {
                say(f->evidence, sizeof f->evidence,
                    "the sessions are charged %.1f MiB of the server's cap of %.1f MiB "
                    "(max_memory, %" PRIu64 "%%)%s",
                    MIB(used), MIB(v->memory_cap_bytes), used * 100 / v->memory_cap_bytes,
                    v->memory_cap_reached ? "; the cap is reached" : "");
                say(f->advice, sizeof f->advice,
                    "new sessions and allocations are refused at the cap: end idle sessions "
                    "(heapctl kill), or raise the cap");
            }
        }
    }
    /* The last save failed and none has succeeded since: a restart now would lose what the
     * sessions did after their last snapshot. */
    if (v->persist_enabled && v->persist_last_fail_unix &&
        v->persist_last_fail_unix >= v->persist_last_ok_unix) {
        FINDING(c, snapshot_failing, NULL) {
            say(f->evidence, sizeof f->evidence,
                "%" PRIu64 " save%s failed since start, the last at %" PRIu64
                " (Unix time) with none written since: %s",
                v->persist_saves_failed, v->persist_saves_failed == 1 ? "" : "s",
                v->persist_last_fail_unix,
                v->persist_last_error[0] ? v->persist_last_error : "(no reason kept)");
            say(f->advice, sizeof f->advice,
                "each session's previous snapshot is kept, but what it did since would be lost "
                "at a restart: free space in data_dir or fix its permissions, then heapctl save");
        }
    }
    if (v->persist_refused) {
        FINDING(c, snapshot_refused, NULL) {
            say(f->evidence, sizeof f->evidence,
                "%" PRIu64 " snapshot file%s in data_dir could not be read at start (truncated, "
                "corrupt, another version or not a snapshot)",
                v->persist_refused, v->persist_refused == 1 ? "" : "s");
            say(f->advice, sizeof f->advice,
                "those sessions were not restored: the log names each file and why; the files "
                "are kept as *.corrupt in data_dir, to inspect, then delete");
        }
    }
    if (v->sessions_detached >= HD_DOC_DETACHED_MIN &&
        v->sessions_detached * 100 >= v->sessions * HD_DOC_DETACHED_PERCENT) {
        FINDING(c, detached, NULL) {
            say(f->evidence, sizeof f->evidence,
                "%" PRIu64 " of %" PRIu64 " sessions are detached, each kept for session_linger "
                "(%" PRIu64 " s) with its heap",
                v->sessions_detached, v->sessions, c->in->session_linger_ms / 1000u);
            say(f->advice, sizeof f->advice,
                "clients drop connections without goodbye: end sessions with goodbye, resume "
                "them, or lower session_linger");
        }
    }
}

size_t hd__doctor_run(const hd_doctor_in_t *in, hd_finding_t *out, size_t max) {
    ctx_t c = {in, out, max, 0};
    const hd_mview_t *v = in->view;
    if (!in->session) server_rules(&c);
    static void (*const rules[])(ctx_t *, const hd_sess_summary_t *) = {
        near_limit,  fragmentation, sparse_arenas, uncollectable, saveall_garbage,
        gc_disabled, gc2_frequent,  long_pause,    leak,          tracing_long,
    };
    for (size_t r = 0; r < sizeof rules / sizeof rules[0]; r++)
        for (size_t i = 0; i < v->nsess; i++)
            if (!in->session || strcmp(in->session, v->sess[i].id) == 0) rules[r](&c, &v->sess[i]);
    return c.n;
}
