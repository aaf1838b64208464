/* SPDX-License-Identifier: MIT */
/*
 * observe.h: what operators watch of the requests: the slowlog, the monitors, and the text a
 * request is shown as in both.
 *
 * conn.c times a request only when someone would look (the slowlog is on, or a monitor is
 * attached) and then hands it to hd__observe_request, once, after its response. The slowlog
 * (slowlog.c) keeps the slowest in a ring any worker adds to under a lock; the monitors
 * (monitor.c) each get every request as a framed record, queued in a buffer of
 * monitor_buffer bytes and written by the monitor's own worker as its socket drains. A
 * producer never waits for a monitor: when the buffer is full the record is dropped and
 * counted, and the next record says how many went.
 *
 * This file owns none of the connections: conn.c starts and stops monitors and writes their
 * records (hd__conn_monitor_ready), as it writes everything else.
 */
#ifndef HD_SERVER_OBSERVE_H
#define HD_SERVER_OBSERVE_H

#include <time.h>

#include "server.h"

/* reqtext.c */
/* The request in payload, for people: its op's name into *op (static, "?" when it does not
 * decode) and its fields into args (cap bytes, always NUL-terminated, cut with "..."):
 * `size=16 slots=2 tag="Node"`; bytes as their length, long strings and lists cut short,
 * nested requests (batch, session_op) by their ops. Returns the op case, or 0. */
int hd__request_text(const uint8_t *payload, size_t len, const char **op, char *args, size_t cap);

/* slowlog.c */
int hd__slowlog_init(hd_slowlog_t *l);
void hd__slowlog_free(hd_slowlog_t *l);
/* Adds e (its id and nothing else is set here) to a ring of at most max_len entries, dropping
 * the oldest. max_len 0 adds nothing. Any thread. */
void hd__slowlog_add(hd_slowlog_t *l, uint64_t max_len, hd_slow_entry_t *e);
/* Copies the newest count entries, newest first, into *out (malloc'd, caller frees; NULL
 * when there are none); *len and *total as SlowlogResult. Returns 0 or HD_ENOMEM. */
int hd__slowlog_get(hd_slowlog_t *l, size_t count, hd_slow_entry_t **out, size_t *n, uint64_t *len,
                    uint64_t *total);
void hd__slowlog_reset(hd_slowlog_t *l);
/* Entries kept now, and ever added. */
void hd__slowlog_counts(hd_slowlog_t *l, uint64_t *len, uint64_t *total);

/* monitor.c */
/* What a monitor sees of one request. */
typedef struct hd_request_seen_s {
    uint64_t time_unix_us;
    uint64_t duration_us;
    const char *session_id, *client_name, *peer, *op;
    const char *args; /* hd__request_text's */
    uint32_t status;
} hd_request_seen_t;

/* c's request in payload has been answered, dispatch having taken duration_ns: the slowlog
 * and the monitors get it if they want it. On c's worker. */
void hd__observe_request(hd_conn_t *c, const uint8_t *payload, size_t len, uint64_t duration_ns);
/* Whether a request on worker w needs timing: the slowlog is on or a monitor is attached. */
int hd__observing(const hd_worker_t *w);
/* The clock requests on w are timed with. CLOCK_MONOTONIC_COARSE (the time of the kernel's
 * last tick, read without the time stamp counter: a third of CLOCK_MONOTONIC's cost here)
 * while only the slowlog looks and slowlog_threshold_us is at least twice its resolution
 * (clock_getres: 4 ms on this kernel); else CLOCK_MONOTONIC, as a monitor shows every
 * request's duration. On the coarse clock a duration is a whole number of ticks, within one
 * tick of the true one: a request is logged once it measures at least the threshold, so every
 * request that took the threshold plus one tick is, none that took less than the threshold
 * less one tick is, and the logged duration_us is a multiple of the tick (config/heapd.yaml,
 * slowlog_threshold_us). */
clockid_t hd__observe_clock(const hd_worker_t *w);
/* clock's time in nanoseconds. */
static inline uint64_t hd__observe_now(clockid_t clock) {
    struct timespec ts;
    clock_gettime(clock, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* Makes c a monitor: registered, its records written by conn.c when they come. On c's
 * worker. Returns 0, HD_EINVAL (already one) or HD_ENOMEM. */
int hd__monitor_start(hd_conn_t *c);
/* c closes: its monitor is unregistered (no producer reaches it afterwards) and freed once
 * its doorbell has closed. On c's worker. */
void hd__monitor_stop(hd_conn_t *c);
/* Moves the records waiting for c's monitor into out, whole frames, at most room bytes (at
 * least one frame if any waits). Returns the bytes moved. On c's worker. */
size_t hd__monitor_take(hd_monitor_t *m, hd_buf_t *out, size_t room);
/* Monitors now; records dropped for slow ones, ever. */
unsigned hd__monitor_count(hd_server_t *srv);

#endif /* HD_SERVER_OBSERVE_H */
