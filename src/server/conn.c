/* SPDX-License-Identifier: MIT */
/*
 * conn.c: one client connection on its worker: bytes in, frames, responses out.
 *
 * The life of a connection:
 *   adopted   the worker gets its socket from the listener (or from another worker, to
 *             resume a session there) and starts reading; hello must come within
 *             hello_timeout of that, however the bytes trickle, in a frame of at most
 *             HD_FRAME_HELLO_MAX bytes. Any frame must keep up min_frame_rate once it has
 *             taken frame_timeout (see "deadlines" below).
 *   hello     session.c decides (attach a session, move to the session's worker, or refuse)
 *             and this file carries it out; frames may then be max_frame_bytes.
 *   serving   each frame goes to dispatch.c; after each, the engine's events are drained so
 *             they follow the response that raised them. Responses collect in `out` and are
 *             written once per read, so pipelined requests cost one write.
 *   paused    unsent output (libuv's write queue) is over output_buffer_limit, or events are
 *             owed that would take it over: no frames are taken and no bytes read until it
 *             drains to half the limit; events become output only as it drains, so a client
 *             that reads gets every one and the server buffers no more than the limit (and
 *             one response). A client that takes none of its output for
 *             client_stall_timeout is disconnected.
 *   deferred  a request names another session (an admin's session_report, session_op):
 *             dispatch defers it, and the frame goes to the worker that owns that session
 *             (inspect.h), which runs it there and sends back the framed response. Until it is
 *             back no frames are taken and no bytes read, so responses stay in request order.
 *   busy      its session's heap belongs to a job (offload.h): a frame too long for the loop
 *             went to the thread pool with the frames behind it. No frames are taken and no
 *             events drained (they wait in order in the parser and the heap), the idle timer
 *             does not count, reading goes on up to HD_OFFLOAD_WAIT_BYTES; the job's answers
 *             are written when it is back.
 *   last write a bad frame, goodbye, a refused hello, idle timeout or shutdown: nothing more
 *             is read; the connection closes once its output is written. When the server
 *             ends it (idle, shutdown, an admin's kill) that output ends with one error
 *             response, id 0, naming the reason.
 *   closing   uv_close on the stream and the timer; the session (if any) detaches; the conn
 *             is freed when both close callbacks have run.
 *
 * TLS (a tls.listen connection): tls.c holds the session keys and the BIOs; the bytes read go
 * through it and only plaintext reaches the parser; `out` is plaintext, sealed into `sealed`
 * when flushed. The handshake has the hello's deadline. Output owed before the handshake
 * ends (a timeout's notice) cannot be sealed: it is dropped and the connection just closes.
 * Plaintext sent to a TLS port is answered in plaintext (EPROTO, once) and closed; a TLS
 * ClientHello sent to a plaintext port, likewise; each with a log line.
 *
 * This file is the only one that acts on a connection: lower layers return decisions (hello,
 * tls.c's verdict on the bytes it was given) and callbacks report (dispatch's goodbye). It does not
 * own sessions (session.c), the request table (dispatch.c) or framing (codec.c).
 */
#include "inspect.h"
#include "observe.h"
#include "offload.h"
#include "server.h"
#include "session.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/sockios.h>
#include <poll.h>
#include <sys/ioctl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Output collected past this many bytes is handed to libuv before more frames are taken. */
#define HD_FLUSH_BYTES (64u * 1024u)

/* An in-flight write owns its bytes until its callback. */
typedef struct hd_write_s {
    uv_write_t req;
    hd_buf_t buf;
    hd_conn_t *conn;
} hd_write_t;

static void process(hd_conn_t *c);

/* The structured fields of a log line about c (log.h): its peer and session, the op and the
 * error if given. A compound literal of the caller's block, so no memory is kept. */
#define conn_fields(c, op_, code_)                                                                 \
    (&(hd_log_fields_t){.session = (c)->session ? (c)->session->id : NULL,                         \
                        .peer = (c)->peer,                                                         \
                        .op = (op_),                                                               \
                        .code = (code_)})

/* Its session's heap belongs to a job: c's frames wait (offload.h). */
static inline bool job_busy(const hd_conn_t *c) {
    return c->session && hd__session_busy(c->session);
}

/* ------------------------------------------------------------------------------------------ */
/* The services dispatch calls back into (ctx is the conn).                                    */
/* ------------------------------------------------------------------------------------------ */

static void op_goodbye(void *ctx) {
    ((hd_conn_t *)ctx)->flags |= HD_CONN_GOODBYE;
}
static int op_server_stats(void *ctx, hd_server_stats_t *out) {
    return hd__sessions_server_stats(((hd_conn_t *)ctx)->worker, out);
}
static int op_list_sessions(void *ctx, hd_session_info_t **out, size_t *n) {
    return hd__sessions_list(((hd_conn_t *)ctx)->worker, out, n);
}
static int op_kill_session(void *ctx, const char *id) {
    hd_conn_t *c = ctx;
    return hd__sessions_kill(c->worker, c->peer, id);
}
static int op_server_info(void *ctx, const char *section, hd_info_item_t **out, size_t *n) {
    hd_worker_t *w = ((hd_conn_t *)ctx)->worker;
    return hd__metrics_info(w->srv, &w->cfg, section, out, n);
}
static int op_slowlog_get(void *ctx, size_t count, hd_slow_entry_t **out, size_t *n, uint64_t *len,
                          uint64_t *total) {
    return hd__slowlog_get(&((hd_conn_t *)ctx)->worker->srv->slowlog, count, out, n, len, total);
}
static int op_slowlog_reset(void *ctx) {
    hd_conn_t *c = ctx;
    hd__slowlog_reset(&c->worker->srv->slowlog);
    hd_log_infof(conn_fields(c, "slowlog_reset", 0), "%s: slowlog reset", c->peer);
    return 0;
}
static int op_monitor(void *ctx) {
    hd_conn_t *c = ctx;
    int rc = hd__monitor_start(c);
    if (rc == 0)
        hd_log_infof(conn_fields(c, "monitor", 0), "%s: monitoring every request", c->peer);
    return rc;
}

static int op_save(void *ctx, uint64_t *save_id) {
    return hd__sessions_save(((hd_conn_t *)ctx)->worker, save_id);
}

static int op_drain(void *ctx, int cancel, hd_drain_info_t *out) {
    hd_conn_t *c = ctx;
    return hd__sessions_drain(c->worker, c->peer, cancel, out);
}

static int op_elsewhere(void *ctx, const char *id, char *why, size_t whylen, char *url,
                        size_t cap) {
    return hd__session_elsewhere(((hd_conn_t *)ctx)->worker, id, why, whylen, url, cap);
}

static const hd_server_ops_t server_ops = {
    .goodbye = op_goodbye,
    .server_stats = op_server_stats,
    .list_sessions = op_list_sessions,
    .kill_session = op_kill_session,
    .server_info = op_server_info,
    .slowlog_get = op_slowlog_get,
    .slowlog_reset = op_slowlog_reset,
    .monitor = op_monitor,
    .save = op_save,
    .drain = op_drain,
    .elsewhere = op_elsewhere,
};

void hd__conn_save_done(hd_conn_t *c) {
    if (!(c->flags & HD_CONN_SAVEWAIT)) return;
    c->flags &= ~HD_CONN_SAVEWAIT;
    process(c);
}

/* ------------------------------------------------------------------------------------------ */
/* Reading, timers, closing.                                                                   */
/* ------------------------------------------------------------------------------------------ */

/* libuv's write queue (uv_stream_get_write_queue_size's field, read in place: process reads it
 * after every frame). */
static inline size_t queued(const hd_conn_t *c) {
    return c->h.stream.write_queue_size;
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf);
static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf);
static void frame_clock(hd_conn_t *c);
static void output_progress(hd_conn_t *c);
static uint64_t stall_due(const hd_conn_t *c);
static void arm_timer(hd_conn_t *c);
static void flush(hd_conn_t *c);

static void start_reading(hd_conn_t *c) {
    if (c->flags & (HD_CONN_READING | HD_CONN_PAUSED | HD_CONN_WAITING | HD_CONN_LAST_WRITE |
                    HD_CONN_CLOSING | HD_CONN_SAVEWAIT | HD_CONN_EOF))
        return;
    int rc = uv_read_start(&c->h.stream, on_alloc, on_read);
    if (rc < 0) {
        hd_log_warnf(conn_fields(c, NULL, 0), "%s: cannot read: %s", c->peer, uv_strerror(rc));
        hd__conn_close(c);
        return;
    }
    c->flags |= HD_CONN_READING;
    /* A frame half read when reading stopped gets its time from now on. */
    if (c->frame_at) {
        c->frame_at = 0;
        frame_clock(c);
    }
}

static void stop_reading(hd_conn_t *c) {
    if (c->flags & HD_CONN_READING) {
        uv_read_stop(&c->h.stream);
        c->flags &= ~HD_CONN_READING;
    }
}

/* The deadlines of a connection, in uv_now milliseconds (0 = none):
 *   hello  accepted_at + hello_timeout, until the hello is answered; bytes do not move it.
 *   frame  a frame in progress (its first byte came at frame_at) must be complete by
 *          frame_at + frame_timeout + 1 s per min_frame_rate bytes of it received so far
 *          (Apache's mod_reqtimeout rule): a client may be slow, not slower than that.
 *          Only while reading: a paused connection's clock starts again when reading does.
 *   stall  output waiting for the client since out_since, when it last took any of it:
 *          out_since + client_stall_timeout. A client that reads, however slowly, is never
 *          disconnected; one that stops reading is, with a log line.
 *   idle   last_active + idle_timeout.
 * The earliest one that has passed names the reason the connection is closed. */
typedef enum deadline_e { DL_NONE, DL_HELLO, DL_FRAME, DL_STALL, DL_IDLE } deadline_t;

static uint64_t frame_due(const hd_conn_t *c) {
    const hd_config_t *cfg = &c->worker->cfg;
    if (!c->frame_at || !cfg->frame_timeout || !(c->flags & HD_CONN_READING)) return 0;
    uint64_t got = hd_frame_parser_partial(&c->parser);
    uint64_t grace = cfg->min_frame_rate ? got * 1000 / cfg->min_frame_rate : 0;
    return c->frame_at + cfg->frame_timeout + grace;
}

static uint64_t stall_due(const hd_conn_t *c) {
    uint64_t t = c->worker->cfg.client_stall_timeout;
    return c->out_since && t ? c->out_since + t : 0;
}

/* The earliest deadline, and which it is. */
static deadline_t next_deadline(const hd_conn_t *c, uint64_t *due) {
    const hd_config_t *cfg = &c->worker->cfg;
    deadline_t which = DL_NONE;
    *due = UINT64_MAX;
    uint64_t d;
    if (!(c->flags & HD_CONN_HELLO_DONE) && (d = c->accepted_at + cfg->hello_timeout) < *due)
        *due = d, which = DL_HELLO;
    if ((d = frame_due(c)) && d < *due) *due = d, which = DL_FRAME;
    if ((d = stall_due(c)) && d < *due) *due = d, which = DL_STALL;
    if (cfg->idle_timeout && (d = c->last_active + cfg->idle_timeout) < *due)
        *due = d, which = DL_IDLE;
    return which;
}

static void on_timer(uv_timer_t *t);

/* Arms the timer for the earliest deadline. Activity does not re-arm it: when it fires it
 * looks at the deadlines again and re-arms for the remainder, which keeps a busy
 * connection's reads free of timer work. */
static void arm_timer(hd_conn_t *c) {
    uint64_t due;
    if (next_deadline(c, &due) == DL_NONE) {
        uv_timer_stop(&c->timer);
        c->timer_due = 0;
        return;
    }
    uint64_t now = uv_now(&c->worker->loop);
    c->timer_due = due;
    uv_timer_start(&c->timer, on_timer, due > now ? due - now : 0, 0);
}

/* A frame started or ended: the frame deadline appears or goes. Re-arms only when the new
 * deadline comes before the armed one. */
static void frame_clock(hd_conn_t *c) {
    if (c->flags & HD_CONN_CLOSING) return;
    if (hd_frame_parser_partial(&c->parser) == 0) {
        c->frame_at = 0;
        return;
    }
    if (c->frame_at) return;
    c->frame_at = uv_now(&c->worker->loop);
    uint64_t due = frame_due(c);
    if (due && (!c->timer_due || due < c->timer_due)) arm_timer(c);
}

static void on_timer(uv_timer_t *t) {
    hd_conn_t *c = t->data;
    if (c->flags & HD_CONN_CLOSING) return;
    uint64_t due, now = uv_now(&c->worker->loop);
    if (job_busy(c)) c->last_active = now; /* the server is the slow one: not idle */
    c->timer_due = 0;
    output_progress(c);
    deadline_t which = next_deadline(c, &due);
    if (which == DL_NONE) return;
    if (now < due) {
        arm_timer(c);
        return;
    }
    const hd_config_t *cfg = &c->worker->cfg;
    if (which == DL_HELLO) {
        hd_log_infof(conn_fields(c, NULL, HD_ETIMEDOUT),
                     "%s: no hello within %llu ms of connecting; closing", c->peer,
                     (unsigned long long)cfg->hello_timeout);
        hd__metrics_reject(c->worker->srv, HD_REJECT_HELLO_TIMEOUT);
        hd__conn_fail(c, 0, HD_ETIMEDOUT, "no hello in time (hello_timeout)");
    } else if (which == DL_FRAME) {
        hd_log_infof(conn_fields(c, NULL, HD_ETIMEDOUT),
                     "%s: a frame of %zu bytes so far took %llu ms: slower than min_frame_rate "
                     "(%llu bytes/s after frame_timeout); closing",
                     c->peer, hd_frame_parser_partial(&c->parser),
                     (unsigned long long)(now - c->frame_at),
                     (unsigned long long)cfg->min_frame_rate);
        if (!(c->flags & HD_CONN_HELLO_DONE))
            hd__metrics_reject(c->worker->srv, HD_REJECT_SLOW_FRAME);
        hd__conn_fail(c, 0, HD_ETIMEDOUT, "frame too slow (frame_timeout, min_frame_rate)");
    } else if (which == DL_STALL) {
        hd_log_warn("%s: took none of its %zu bytes of output for %llu ms (client_stall_timeout); "
                    "disconnecting",
                    c->peer, queued(c) + c->out.len, (unsigned long long)cfg->client_stall_timeout);
        hd__conn_close(c); /* nothing more can reach a client that does not read */
        return;
    } else {
        int hello = !(c->flags & HD_CONN_HELLO_DONE);
        hd_log_infof(conn_fields(c, NULL, HD_ETIMEDOUT), "%s: %s for %llu ms; closing", c->peer,
                     hello ? "no hello, idle" : "idle", (unsigned long long)cfg->idle_timeout);
        if (hello) hd__metrics_reject(c->worker->srv, HD_REJECT_HELLO_TIMEOUT);
        hd__conn_fail(c, 0, HD_ETIMEDOUT, hello ? "no hello in time" : "idle timeout");
    }
    /* A client that neither sends nor reads would hold the connection forever. */
    if (!(c->flags & HD_CONN_CLOSING) && c->writes_pending) hd__conn_close(c);
}

static void on_closed(uv_handle_t *h) {
    hd_conn_t *c = h->data;
    if (--c->closes_pending > 0) return;
    hd_worker_t *w = c->worker;
    if (c->prev)
        c->prev->next = c->next;
    else
        w->conns = c->next;
    if (c->next) c->next->prev = c->prev;
    hd__slot_release(&c->slot);
    hd_frame_parser_free(&c->parser);
    hd_buf_free(&c->out);
    hd_buf_free(&c->sealed);
    hd_tls_free(c->tls);
    hd__sfree(c);
}

/* What the connection holds for its session: its struct, its output buffer and what libuv
 * queues of it, the frame being read, and with TLS the sealed output and all OpenSSL holds
 * for it (tls.c counts each of its allocations). */
static uint64_t buffers_held(const hd_conn_t *c) {
    return sizeof *c + c->out.cap + queued(c) + c->parser.buf.cap + c->sealed.cap +
           (c->tls ? hd_tls_held(c->tls) : 0);
}

/* Brings the session's HD_CHARGE_buffers up to date (after each batch of frames, each write
 * and each trim). Never refused: what is charged here is bounded by output_buffer_limit plus
 * one response, and by max_frame_bytes; it counts against the session's max_bytes for what
 * the session may allocate next. */
static void charge_buffers(hd_conn_t *c) {
    if (!c->session) return;
    uint64_t now = buffers_held(c);
    if (now == c->charged) return;
    hd_heap_charge(c->session->heap, HD_CHARGE_buffers, (int64_t)(now - c->charged), false);
    c->charged = now;
}

/* Takes c's session from it (NULL if none): c serves no heap from here on. */
static hd_session_t *take_session(hd_conn_t *c) {
    hd_session_t *s = c->session;
    if (s && c->charged) hd_heap_charge(s->heap, HD_CHARGE_buffers, -(int64_t)c->charged, false);
    c->charged = 0;
    c->session = NULL;
    c->env.heap = NULL;
    return s;
}

void hd__conn_close(hd_conn_t *c) {
    if (c->flags & HD_CONN_CLOSING) return;
    c->flags |= HD_CONN_CLOSING;
    c->flags &= ~HD_CONN_READING;
    hd_session_t *s = take_session(c);
    if (s) hd__session_detach(s);
    hd__monitor_stop(c);
    /* A TLS stream ends with close_notify, so the client sees an end and not a cut; only
     * when nothing else is queued, since it must come last. */
    if (c->tls && !(c->flags & HD_CONN_MOVED) && c->writes_pending == 0 && queued(c) == 0 &&
        hd_tls_handshake_done(c->tls)) {
        hd_buf_truncate(&c->sealed, 0);
        hd_tls_shutdown(c->tls);
        if (hd_tls_output(c->tls, &c->sealed) == 0 && c->sealed.len) {
            uv_buf_t b = uv_buf_init((char *)c->sealed.data, (unsigned)c->sealed.len);
            uv_try_write(&c->h.stream, &b, 1);
        }
    }
    if (!(c->flags & HD_CONN_MOVED)) hd_log_debug("%s: connection closed", c->peer);
    /* The flag above makes this function idempotent; libuv's own handles must never be
     * closed twice, which would free the conn while a callback still points at it. */
    HD_ASSERT(!uv_is_closing(&c->h.handle) && !uv_is_closing((uv_handle_t *)&c->timer));
    c->closes_pending = 2;
    uv_close(&c->h.handle, on_closed);
    uv_close((uv_handle_t *)&c->timer, on_closed);
}

/* ------------------------------------------------------------------------------------------ */
/* Writing.                                                                                    */
/* ------------------------------------------------------------------------------------------ */

/* Whether the session has events the client is still owed (after the client's EOF they are
 * still sent; after the server's last word, nothing is). Not while a job has the heap: the
 * job's events wait there until it is back. */
static bool events_owed(const hd_conn_t *c) {
    return c->session && !(c->flags & HD_CONN_FAILED) && !hd__session_busy(c->session) &&
           hd_events_pending(c->session->heap);
}

/* Closes the connection once it has nothing left to write, or resumes reading. A waiting
 * connection (a deferred request) still owes an answer: it neither closes nor reads; a busy one
 * (its session's job) owes answers: it does not close, and reads while little is buffered. */
static void settle(hd_conn_t *c) {
    if (c->flags & (HD_CONN_CLOSING | HD_CONN_IN_PROCESS | HD_CONN_WAITING)) return;
    if (job_busy(c)) {
        if (hd_frame_parser_pending(&c->parser) >= HD_OFFLOAD_WAIT_BYTES)
            stop_reading(c);
        else if (!(c->flags & HD_CONN_PAUSED))
            start_reading(c);
        return;
    }
    if (c->flags & HD_CONN_EOF) c->flags |= HD_CONN_LAST_WRITE; /* every frame that came ran */
    if (c->flags & HD_CONN_LAST_WRITE) {
        stop_reading(c);
        if (c->out.len == 0 && c->writes_pending == 0 && !events_owed(c)) hd__conn_close(c);
        return;
    }
    if (!(c->flags & HD_CONN_PAUSED)) start_reading(c);
}

/* Output on its way to the client: libuv's write queue and the socket's send queue (bytes
 * not yet taken by the peer: unacknowledged on TCP, unread on a Unix socket, SIOCOUTQ). */
static size_t output_waiting(const hd_conn_t *c) {
    size_t q = queued(c);
    uv_os_fd_t fd;
    int outq = 0;
    if (uv_fileno(&c->h.handle, &fd) == 0 && ioctl(fd, SIOCOUTQ, &outq) == 0 && outq > 0)
        q += (size_t)outq;
    return q;
}

/* The stall clock: while output waits, any byte of it the client takes is progress (bytes
 * handed to the socket so far, less those still waiting, grew). Read on the timer and when a
 * write completes, never per request. */
static void output_progress(hd_conn_t *c) {
    if (queued(c) == 0 && c->writes_pending == 0) {
        c->out_since = 0;
        return;
    }
    uint64_t taken = c->out_total - output_waiting(c);
    if (taken != c->out_taken || !c->out_since) {
        c->out_since = uv_now(&c->worker->loop);
        c->out_taken = taken;
    }
}

/* Stops taking frames and bytes until the client has taken its output down to half of
 * output_buffer_limit (on_write). */
static void pause_output(hd_conn_t *c, const char *why) {
    if (c->flags & (HD_CONN_PAUSED | HD_CONN_CLOSING)) return;
    hd_log_debug("%s: %zu bytes of unsent output, %s; pausing", c->peer, queued(c), why);
    c->flags |= HD_CONN_PAUSED;
    stop_reading(c);
}

/* Turns the session's queued events into output as long as the connection holds less than
 * output_buffer_limit of it, handing it to the socket 64 KiB at a time. True when none is
 * left; false when the rest must wait for the client to read (backpressure: an event is
 * never dropped for a client that reads, and never buffered past the limit for one that
 * does not). */
static bool drain_events(hd_conn_t *c) {
    uint64_t limit = c->worker->cfg.output_buffer_limit;
    while (events_owed(c) && !(c->flags & HD_CONN_CLOSING)) {
        size_t held = queued(c);
        if (held >= limit) return false;
        size_t room = limit - held < HD_FLUSH_BYTES ? (size_t)(limit - held) : HD_FLUSH_BYTES;
        int rc = hd_dispatch_drain_events_upto(&c->env, &c->out, room);
        if (rc == 1) return true;
        if (rc < 0) {
            hd_log_warn("%s: out of memory framing events; closing", c->peer);
            hd__conn_close(c);
            return false;
        }
        flush(c);
    }
    return true;
}

static void on_write(uv_write_t *req, int status) {
    hd_write_t *wr = (hd_write_t *)req;
    hd_conn_t *c = wr->conn;
    hd_buf_free(&wr->buf);
    hd__sfree(wr);
    c->writes_pending--;
    if (c->flags & HD_CONN_CLOSING) return;
    if (status < 0) {
        hd_log_debug("%s: write: %s", c->peer, uv_strerror(status));
        hd__conn_close(c);
        return;
    }
    c->last_active = uv_now(&c->worker->loop); /* a client taking its output is alive */
    output_progress(c);
    if ((c->flags & HD_CONN_PAUSED) && queued(c) <= c->worker->cfg.output_buffer_limit / 2) {
        hd_log_debug("%s: output drained to %zu bytes; reading again", c->peer, queued(c));
        c->flags &= ~HD_CONN_PAUSED;
        process(c); /* the events owed, then the frames already buffered */
    }
    charge_buffers(c);
    if (c->monitor) hd__conn_monitor_ready(c);
    settle(c);
}

/* With TLS: seals `out` into `sealed`, after whatever the handshake has waiting. Output
 * owed before the handshake is done cannot be sealed and is dropped (the connection is
 * ending: such output is only ever a notice of why). False when c was closed. */
static bool seal(hd_conn_t *c) {
    int rc = 0;
    if (c->out.len && hd_tls_handshake_done(c->tls))
        rc = hd_tls_seal(c->tls, c->out.data, c->out.len, &c->sealed);
    if (rc == 0) {
        hd_buf_truncate(&c->out, 0);
        rc = hd_tls_output(c->tls, &c->sealed);
    }
    if (rc < 0) {
        hd_log_warnf(conn_fields(c, NULL, rc), "%s: %s sealing output; closing", c->peer,
                     rc == HD_ENOMEM ? "out of memory" : hd_tls_error(c->tls));
        hd__conn_close(c);
        return false;
    }
    return true;
}

/* Hands `out` (with TLS, `sealed`) to the socket: written at once when the socket takes it
 * all (the common case, no allocation), else queued in libuv with the buffer's ownership. */
static void flush(hd_conn_t *c) {
    if (c->flags & HD_CONN_CLOSING) return;
    hd_buf_t *o = &c->out;
    if (c->tls) {
        if (!seal(c)) return;
        o = &c->sealed;
    }
    if (o->len == 0) return;
    hd__counter_add(&c->worker->metrics.bytes_out, o->len);
    size_t off = 0;
    c->out_total += o->len;
    if (queued(c) == 0 && c->writes_pending == 0) {
        uv_buf_t b = uv_buf_init((char *)o->data, (unsigned)o->len);
        int n = uv_try_write(&c->h.stream, &b, 1);
        if (n == (int)o->len) {
            hd_buf_truncate(o, 0);
            return;
        }
        if (n < 0 && n != UV_EAGAIN) {
            hd_log_debug("%s: write: %s", c->peer, uv_strerror(n));
            hd__conn_close(c);
            return;
        }
        off = n > 0 ? (size_t)n : 0;
    }
    hd_write_t *wr = hd__smalloc(sizeof *wr);
    if (!wr) {
        hd_log_warnf(conn_fields(c, NULL, HD_ENOMEM), "%s: out of memory queueing output; closing",
                     c->peer);
        hd__conn_close(c);
        return;
    }
    wr->buf = *o;
    wr->conn = c;
    hd_buf_init(o);
    uv_buf_t b = uv_buf_init((char *)wr->buf.data + off, (unsigned)(wr->buf.len - off));
    int rc = uv_write(&wr->req, &c->h.stream, &b, 1, on_write);
    if (rc < 0) {
        hd_buf_free(&wr->buf);
        hd__sfree(wr);
        hd_log_debug("%s: write: %s", c->peer, uv_strerror(rc));
        hd__conn_close(c);
        return;
    }
    c->writes_pending++;
    /* Output is waiting on the client now: the stall clock runs from here. */
    if (!c->out_since) {
        c->out_since = uv_now(&c->worker->loop);
        c->out_taken = c->out_total - output_waiting(c);
        uint64_t due = stall_due(c);
        if (due && (!c->timer_due || due < c->timer_due)) arm_timer(c);
    }
}

void hd__conn_fail(hd_conn_t *c, uint64_t id, int code, const char *why) {
    hd__conn_fail_moved(c, id, code, why, NULL);
}

void hd__conn_fail_moved(hd_conn_t *c, uint64_t id, int code, const char *why,
                         const char *moved_to) {
    if (c->flags & (HD_CONN_CLOSING | HD_CONN_FAILED)) return;
    c->flags |= HD_CONN_LAST_WRITE | HD_CONN_FAILED;
    c->flags &= ~HD_CONN_WAITING; /* a deferred answer still to come is dropped when it does */
    stop_reading(c);
    if (hd_dispatch_error_moved(id, code, why, moved_to, &c->out) < 0) {
        hd__conn_close(c);
        return;
    }
    if (!(c->flags & HD_CONN_IN_PROCESS)) {
        flush(c);
        settle(c);
    }
}

void hd__conn_session_killed(hd_conn_t *c) {
    hd_session_t *s = take_session(c);
    if (s) hd__session_destroy(s, "killed by an admin");
    hd__conn_fail(c, 0, HD_ENOSESSION, "session killed by an admin");
}

void hd__conn_offload_done(hd_conn_t *c, hd_buf_t *out, uint64_t nrun, int rc) {
    if (c->flags & HD_CONN_CLOSING) return;
    /* The frames the job answered leave the parser; it had given out the first already. */
    for (uint64_t i = 1; i < nrun; i++) {
        const uint8_t *payload;
        size_t len;
        int r = hd_frame_parser_next(&c->parser, &payload, &len);
        HD_ASSERT(r == 1);
        (void)r;
    }
    if (out && out->len) {
        if (c->out.len == 0) { /* the usual case: the answers' buffer becomes the output */
            hd_buf_free(&c->out);
            c->out = *out;
            hd_buf_init(out);
        } else if (hd_buf_append(&c->out, out->data, out->len) < 0) {
            rc = HD_ENOMEM;
        }
    }
    if (rc < 0) {
        hd_log_warn("%s: %s answering a request; closing", c->peer, hd_strerror(rc));
        c->flags |= HD_CONN_LAST_WRITE;
    }
    c->last_active = uv_now(&c->worker->loop);
    if (c->flags & HD_CONN_FINISHING) {
        c->flags &= ~HD_CONN_FINISHING;
        hd__conn_finish(c);
        return;
    }
    process(c); /* the frames that waited, then the output */
}

/* ------------------------------------------------------------------------------------------ */
/* Requests run by another session's worker.                                                   */
/* ------------------------------------------------------------------------------------------ */

/* A deferred request on its way to the owner of session_id and back. The owner dispatches
 * frame again with that session's env (on_owner) into answer, which the origin writes where
 * the request's response belongs. */
typedef struct conn_call_s {
    hd_xcall_t x;
    uint64_t serial;         /* the waiting connection, on x.origin */
    uint64_t max_read_bytes; /* its response budget */
    char peer[HD_PEER_LEN];  /* the admin's, for the log */
    uint8_t *frame;          /* the request's frame payload (owned) */
    size_t len;
    hd_buf_t answer; /* the framed response */
} conn_call_t;

static void call_free(hd_xcall_t *x) {
    conn_call_t *k = (conn_call_t *)x;
    hd__sfree(k->frame);
    hd_buf_free(&k->answer);
    hd__sfree(k);
}

/* The report service of an on_owner env, whose ctx is the session. */
static int owner_report(void *ctx, unsigned top, hd_session_report_t *out) {
    return hd__session_report(ctx, top, out);
}

static const hd_server_ops_t owner_ops = {.session_report = owner_report};

/* The request's id, for an answer made without dispatch. */
static uint64_t frame_id(const uint8_t *frame, size_t len) {
    uint64_t id = 0;
    hd_dispatch_scan(frame, len, &id, NULL);
    return id;
}

/* On the owner's thread: the request, dispatched as if the session had sent it, with admin
 * rights (the origin checked them). Events it raised there go to that session's client. */
static void call_run(hd_xcall_t *x, hd_session_t *s) {
    conn_call_t *k = (conn_call_t *)x;
    if (!s) {
        char why[128];
        snprintf(why, sizeof why, "no such session: %s (it ended meanwhile)", x->session_id);
        hd_dispatch_error(frame_id(k->frame, k->len), HD_ENOSESSION, why, &k->answer);
        return;
    }
    /* inspect.c:hd__xcall_run keeps the call waiting while a job or a save has the heap. */
    HD_ASSERT(!hd__session_busy(s) && !s->saving);
    hd_dispatch_env_t env;
    memset(&env, 0, sizeof env);
    env.heap = s->heap;
    env.admin = 1;
    env.on_owner = 1;
    env.ops = &owner_ops;
    env.ops_ctx = s;
    env.max_read_bytes = k->max_read_bytes;
    int rc = hd_dispatch_frame(&env, k->frame, k->len, &k->answer);
    /* What an admin did to a session is worth a line of its own; what it looked at, at debug. */
    int acted = hd_dispatch_op_mutates(env.last_op); /* session_op may; session_report reads */
    if (hd_log_enabled(acted ? HD_LOG_INFO : HD_LOG_DEBUG)) {
        const char *op;
        char args[HD_ARGS_LEN];
        hd__request_text(k->frame, k->len, &op, args, sizeof args);
        hd_logf(acted ? HD_LOG_INFO : HD_LOG_DEBUG,
                &(hd_log_fields_t){
                    .session = s->id, .peer = k->peer, .op = op, .code = env.last_status},
                "%s: in session %s, as an admin: %s %s -> %s", k->peer, s->id, op, args,
                env.last_status ? hd_err_name(-env.last_status) : "OK");
    }
    if (rc == HD_DISPATCH_DEFER) /* an on_owner env never defers; if it did, say so */
        hd_dispatch_error(frame_id(k->frame, k->len), HD_EINTERNAL, "deferred twice", &k->answer);
    if (s->conn) hd__conn_kick(s->conn);
}

static hd_conn_t *conn_by_serial(hd_worker_t *w, uint64_t serial) {
    for (hd_conn_t *c = w->conns; c; c = c->next)
        if (c->serial == serial) return c;
    return NULL;
}

/* Back on the origin: the answer goes where the request's response belongs, and the
 * connection takes frames again. A connection that stopped waiting (closed, failed) drops it. */
static void call_done(hd_xcall_t *x, hd_worker_t *w) {
    conn_call_t *k = (conn_call_t *)x;
    hd_conn_t *c = conn_by_serial(w, k->serial);
    if (c && (c->flags & HD_CONN_WAITING) && !(c->flags & HD_CONN_CLOSING)) {
        c->flags &= ~HD_CONN_WAITING;
        int rc = x->status == HD_ESHUTDOWN
                     ? hd_dispatch_error(frame_id(k->frame, k->len), HD_ESHUTDOWN,
                                         "the session's worker is shutting down", &c->out)
                 : k->answer.len ? hd_buf_append(&c->out, k->answer.data, k->answer.len)
                                 : HD_ENOMEM;
        if (rc < 0) {
            hd_log_warnf(conn_fields(c, NULL, rc), "%s: %s answering a request; closing", c->peer,
                         hd_strerror(rc));
            c->flags |= HD_CONN_LAST_WRITE | HD_CONN_FAILED;
        }
        process(c); /* the events owed, then the frames that waited behind it */
    }
    call_free(x);
}

/* dispatch deferred the request in frame to the owner of c->env.defer_to: sends it there and
 * waits, or answers at once when that cannot be done. */
static void defer(hd_conn_t *c, const uint8_t *frame, size_t len) {
    conn_call_t *k = hd__scalloc(1, sizeof *k);
    int rc = k && (k->frame = hd__smalloc(len ? len : 1)) ? 0 : HD_ENOMEM;
    if (rc == 0) {
        memcpy(k->frame, frame, len);
        k->len = len;
        snprintf(k->x.session_id, sizeof k->x.session_id, "%s", c->env.defer_to);
        k->x.run = call_run;
        k->x.done = call_done;
        k->x.free = call_free;
        k->x.origin = c->worker;
        k->serial = c->serial;
        k->max_read_bytes = c->env.max_read_bytes;
        memcpy(k->peer, c->peer, sizeof k->peer);
        hd_buf_init(&k->answer);
        rc = hd__xcall_post(c->worker->srv, &k->x);
    }
    if (rc == 0) {
        c->flags |= HD_CONN_WAITING;
        stop_reading(c);
        return;
    }
    if (k) call_free(&k->x);
    char why[320], url[HD_NODE_URL_MAX] = "";
    snprintf(why, sizeof why, "no such session: %s", c->env.defer_to);
    /* A session of another node: sent there, as a hello would be (docs/SCALING.md). */
    if (rc == HD_ENOSESSION)
        rc = hd__session_elsewhere(c->worker, c->env.defer_to, why, sizeof why, url, sizeof url);
    if (hd_dispatch_error_moved(frame_id(frame, len), rc,
                                rc == HD_ENOSESSION || rc == HD_EMOVED ? why : NULL,
                                url[0] ? url : NULL, &c->out) < 0)
        c->flags |= HD_CONN_LAST_WRITE | HD_CONN_FAILED;
}

void hd__conn_kick(hd_conn_t *c) {
    if (c->flags & (HD_CONN_WAITING | HD_CONN_IN_PROCESS | HD_CONN_CLOSING) || !events_owed(c))
        return;
    process(c); /* writes them as the client's reading allows, and gives the output buffer back
                   once it is empty */
}

void hd__conn_monitor_ready(hd_conn_t *c) {
    if (!c->monitor || (c->flags & (HD_CONN_CLOSING | HD_CONN_LAST_WRITE | HD_CONN_IN_PROCESS)))
        return;
    uint64_t limit = c->worker->cfg.output_buffer_limit;
    /* A write the socket takes at once has no callback to come back with: go on until the
     * records run out or the socket's queue fills, whose drain (on_write) calls again. */
    for (;;) {
        uint64_t unsent = queued(c) + c->out.len;
        if (unsent >= limit || hd__monitor_take(c->monitor, &c->out, limit - unsent) == 0) break;
        flush(c);
        if (c->flags & HD_CONN_CLOSING) return;
    }
}

uint64_t hd__conn_unsent(const hd_conn_t *c) {
    return c->out.len + (c->flags & HD_CONN_CLOSING ? 0 : queued(c));
}

/* ------------------------------------------------------------------------------------------ */
/* Frames.                                                                                     */
/* ------------------------------------------------------------------------------------------ */

/* The connection's first frame: session.c decides on the hello, and this carries it out.
 * True when a session is attached and the answer queued; otherwise c is closing, or has moved
 * to another worker, and takes no more frames. */
static bool hello(hd_conn_t *c, const uint8_t *payload, size_t len) {
    hd_hello_t h;
    hd__session_hello(c, payload, len, &h);
    if (h.verdict == HD_HELLO_REFUSE) {
        hd__conn_fail_moved(c, h.id, h.code, h.why, h.moved_to[0] ? h.moved_to : NULL);
        return false;
    }
    if (h.verdict == HD_HELLO_MOVE) {
        int rc = hd__conn_move(c, h.owner, payload, len);
        if (rc < 0) hd__conn_fail(c, h.id, rc, "could not move the connection to its session");
        return false;
    }
    c->session = h.session;
    c->flags |= HD_CONN_HELLO_DONE;
    c->env.heap = h.session->heap;
    c->env.admin = h.admin;
    c->resend_upto = h.resend ? h.session->replay.last_id : 0;
    hd__conn_reconfigure(c);
    int rc = hd__session_hello_answer(&h, &c->worker->cfg, c->env.max_read_bytes, &c->out);
    if (rc < 0) hd__conn_fail(c, h.id, rc, "out of memory answering hello");
    return rc == 0;
}

/* The parser refused a frame header: say why and close. */
static void frame_error(hd_conn_t *c, int err) {
    char why[128];
    if (err == HD_EFRAME)
        snprintf(why, sizeof why, "frame longer than %u bytes%s", (unsigned)c->parser.max,
                 c->flags & HD_CONN_HELLO_DONE ? "" : " before hello");
    else if (err == HD_EPROTO)
        snprintf(why, sizeof why, "zero-length frame");
    else
        snprintf(why, sizeof why, "%s", hd_strerror(err));
    hd_log_warnf(conn_fields(c, NULL, err), "%s: %s; closing", c->peer, why);
    hd__conn_fail(c, 0, err, why);
}

/* A re-sent request (its id at most the session's last before the resume): answered from
 * the replay window without running it, or refused with EREPLAY when its response is gone. */
static int replay_answer(hd_conn_t *c, uint64_t id) {
    const hd_replay_t *rp = &c->session->replay;
    const uint8_t *frame;
    size_t len;
    int found = hd__replay_find(rp, id, &frame, &len);
    if (found == 1) return hd_buf_append(&c->out, frame, len);
    char why[160];
    if (found == 0)
        snprintf(why, sizeof why, "request %llu ran; its response was too large to keep",
                 (unsigned long long)id);
    else
        snprintf(why, sizeof why, "request %llu is older than the replay window (oldest %llu)",
                 (unsigned long long)id, (unsigned long long)hd__replay_oldest(rp));
    return hd_dispatch_error(id, HD_EREPLAY, why, &c->out);
}

/* Keeps the response just framed at out[before..] for re-sends of request id. */
static void replay_record(hd_conn_t *c, uint64_t id, size_t before) {
    hd_replay_t *rp = &c->session->replay;
    size_t held = rp->held;
    if (hd__replay_put(rp, id, c->out.data + before, c->out.len - before) < 0)
        hd_log_debug("%s: no memory to keep the response of request %llu for re-sends", c->peer,
                     (unsigned long long)id);
    if (rp->held != held) {
        atomic_fetch_add(&c->worker->replay_bytes, (int_fast64_t)rp->held - (int_fast64_t)held);
        /* The window is the session's: charged, never refused (bounded by replay_window_bytes
         * and replay_window). */
        hd_heap_charge(c->session->heap, HD_CHARGE_session, (int64_t)rp->held - (int64_t)held,
                       false);
    }
}

/* Takes whole frames until none is left, the output is over its limit, or the connection
 * is ending; then hands the output to the socket. */
static void process(hd_conn_t *c) {
    if (c->flags & HD_CONN_IN_PROCESS) return;
    c->flags |= HD_CONN_IN_PROCESS;
    hd_worker_t *w = c->worker;
    uint64_t nframes = 0;
    /* For the slowlog and the monitors, each request is timed: one clock read per request,
     * each ending the previous request's time and starting the next's, on the coarse clock
     * when only the slowlog looks (observe.h:hd__observe_clock; a precise read costs about a
     * tenth of a small request here, see bench/observe_cost.sh). Only a request over the
     * threshold, or any while a monitor watches, goes further. */
    int observe = hd__observing(w);
    clockid_t clock = observe ? hd__observe_clock(w) : CLOCK_MONOTONIC;
    uint64_t mark = observe ? hd__observe_now(clock) : 0;
    uint64_t slow_ns =
        w->cfg.slowlog_max_len > 0 ? w->cfg.slowlog_threshold_us * 1000u : UINT64_MAX;
    bool watched = observe && hd__monitor_count(w->srv) > 0;
    /* Responses are packed into the worker's spare buffer, which goes back to the worker once
     * written (below): a connection holds an output buffer only while output is pending. The
     * buffer moves, it is never shared: if output stays queued, the connection keeps it. */
    if (c->out.data == NULL && w->scratch.data != NULL) {
        c->out = w->scratch;
        hd_buf_init(&w->scratch);
    }
    /* Each turn: the events owed first (a request's events come before the next response),
     * then one frame. Once the client has sent EOF only the events are left to send. */
    while (!(c->flags & (HD_CONN_CLOSING | HD_CONN_FAILED | HD_CONN_PAUSED | HD_CONN_WAITING)) &&
           !job_busy(c)) {
        /* A background save reads the heap on another thread: nothing runs until it is done
         * (hd__conn_save_done), events are not drained, and nothing is read meanwhile
         * (backpressure to the client). */
        if (c->session && c->session->saving) {
            c->flags |= HD_CONN_SAVEWAIT;
            stop_reading(c);
            break;
        }
        /* events_owed, its tests the loop's made already: most requests raise none. */
        if (c->session && hd_events_pending(c->session->heap) && !drain_events(c)) {
            pause_output(c, "events waiting for the client to read");
            break;
        }
        if (c->flags & HD_CONN_LAST_WRITE) break;
        const uint8_t *payload;
        size_t len;
        int r = hd_frame_parser_next(&c->parser, &payload, &len);
        if (r == 0) break;
        if (r < 0) {
            frame_error(c, r);
            break;
        }
        if (!(c->flags & HD_CONN_HELLO_DONE)) {
            if (!hello(c, payload, len)) break; /* refused (answered, closing) or moved */
        } else {
            uint64_t id = hd__replay_peek_id(payload, len);
            int rc;
            if (c->resend_upto && id && id <= c->resend_upto) {
                rc = replay_answer(c, id);
            } else {
                c->resend_upto = 0;
                size_t before = c->out.len;
                rc = hd_dispatch_frame(&c->env, payload, len, &c->out);
                if (rc == HD_DISPATCH_OFFLOAD) {
                    /* Too long for the loop: the heap goes to a job until it is back
                     * (hd__conn_offload_done, which keeps the responses for re-sends).
                     * Without memory for one it runs here after all. */
                    if (hd__offload_frames(c, payload, len) == 0) break;
                    uint64_t inline_work = c->env.inline_work;
                    c->env.inline_work = 0;
                    rc = hd_dispatch_frame(&c->env, payload, len, &c->out);
                    c->env.inline_work = inline_work;
                }
                if (rc == 0 && id) replay_record(c, id, before);
            }
            nframes++;
            if (observe) {
                uint64_t now = hd__observe_now(clock);
                if (rc != HD_DISPATCH_DEFER && (watched || now - mark >= slow_ns))
                    hd__observe_request(c, payload, len, now - mark);
                mark = now;
            }
            if (rc == HD_DISPATCH_DEFER) {
                defer(c, payload, len);
            } else if (rc == HD_EPROTO) {
                hd_log_warnf(conn_fields(c, NULL, HD_EPROTO), "%s: undecodable request; closing",
                             c->peer);
                c->flags |= HD_CONN_LAST_WRITE | HD_CONN_FAILED;
            } else if (rc < 0) {
                hd_log_warnf(conn_fields(c, hd_dispatch_op_name(c->env.last_op), rc),
                             "%s: %s answering a request; closing", c->peer, hd_strerror(rc));
                c->flags |= HD_CONN_LAST_WRITE | HD_CONN_FAILED;
            }
        }
        if (c->flags & HD_CONN_GOODBYE) {
            c->flags &= ~HD_CONN_GOODBYE;
            c->flags |= HD_CONN_LAST_WRITE;
            hd_session_t *s = take_session(c);
            if (s) hd__session_destroy(s, "goodbye");
        }
        if (c->out.len >= HD_FLUSH_BYTES) flush(c);
        if (!(c->flags & HD_CONN_CLOSING) && queued(c) > w->cfg.output_buffer_limit)
            pause_output(c, "over output_buffer_limit");
    }
    if (nframes) {
        atomic_fetch_add_explicit(&w->requests, nframes, memory_order_relaxed);
        if (c->session) hd__session_touch(c->session, nframes, c->env.last_op);
    }
    flush(c);
    if (c->out.len == 0 && c->out.data != NULL && w->scratch.data == NULL &&
        c->out.cap <= HD_SCRATCH_KEEP) {
        w->scratch = c->out;
        hd_buf_init(&c->out);
    }
    c->flags &= ~HD_CONN_IN_PROCESS;
    charge_buffers(c);
    settle(c);
}

/* After EOF: whether the peer closed its end whole rather than just its sending half. A Unix
 * socket tells (POLLHUP once both halves are shut); over TCP a FIN says nothing more, and the
 * first write after a full close fails instead. */
static bool peer_gone(hd_conn_t *c) {
    uv_os_fd_t fd;
    if (!c->is_unix || uv_fileno(&c->h.handle, &fd) < 0) return false;
    struct pollfd p = {.fd = fd, .events = POLLIN};
    return poll(&p, 1, 0) == 1 && (p.revents & POLLHUP);
}

/* Plaintext out of tls.c goes where a plaintext connection's bytes go. */
static void tls_sink(void *arg, const uint8_t *p, size_t len) {
    hd_frame_parser_feed(&((hd_conn_t *)arg)->parser, p, len); /* errors surface in next() */
}

/* Bytes read from a TLS connection: through tls.c into the parser. False when the connection
 * is ending and there is nothing to process (tls.c refused them, or they were not TLS). */
static bool tls_input(hd_conn_t *c, const uint8_t *p, size_t n) {
    if (hd_tls_fresh(c->tls) && !hd_tls_looks_like_hello(p, n)) {
        /* Most likely a heapd client without tls://: tell it in its own language. */
        hd_log_warnf(conn_fields(c, NULL, HD_EPROTO),
                     "%s: not TLS on a TLS listener (a plaintext client?); closing", c->peer);
        hd_tls_free(c->tls);
        c->tls = NULL;
        hd__conn_fail(c, 0, HD_EPROTO, "this port speaks TLS: connect with tls://");
        return false;
    }
    bool was_done = hd_tls_handshake_done(c->tls);
    int rc = hd_tls_input(c->tls, p, n, tls_sink, c);
    if (rc < 0) {
        hd_log_warnf(conn_fields(c, NULL, rc), "%s: %s: %s; closing", c->peer,
                     was_done ? "TLS error" : "TLS handshake failed",
                     rc == HD_ENOMEM ? "out of memory" : hd_tls_error(c->tls));
        /* The alert OpenSSL queued, if any, is the last word; nothing else may follow. */
        c->flags |= HD_CONN_LAST_WRITE | HD_CONN_FAILED;
        stop_reading(c);
        hd_buf_truncate(&c->out, 0);
        flush(c);
        settle(c);
        return false;
    }
    if (!was_done && hd_tls_handshake_done(c->tls) && hd_log_enabled(HD_LOG_DEBUG)) {
        char how[96];
        hd_tls_describe(c->tls, how, sizeof how);
        hd_log_debug("%s: TLS handshake done (%s)", c->peer, how);
    }
    if (rc == HD_TLS_EOF) { /* close_notify: as a plaintext client's EOF */
        c->flags |= HD_CONN_EOF;
        stop_reading(c);
    }
    return true;
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
    hd_conn_t *c = h->data;
    buf->base = (char *)c->worker->readbuf;
    buf->len = HD_READBUF_SIZE;
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf) {
    hd_conn_t *c = s->data;
    if (nread == 0) return;
    if (nread < 0) {
        if (nread != UV_EOF) {
            hd_log_debug("%s: read: %s", c->peer, uv_strerror((int)nread));
            hd__conn_close(c);
            return;
        }
        /* The client is done sending; it may still be reading the answers it is owed, some
         * of which may wait for its session's job (settle ends it once they are written).
         * Unless it is gone: then there is no one to answer and the job may stop early. */
        if (job_busy(c) && peer_gone(c)) {
            hd_log_debug("%s: peer closed while its request runs", c->peer);
            hd__conn_close(c);
            return;
        }
        c->flags |= HD_CONN_EOF;
        stop_reading(c);
        process(c);
        return;
    }
    c->last_active = uv_now(&c->worker->loop);
    hd__counter_add(&c->worker->metrics.bytes_in, (uint64_t)nread);
    const uint8_t *p = (const uint8_t *)buf->base;
    size_t n = (size_t)nread;
    if (c->tls) {
        if (!tls_input(c, p, n)) return;
    } else if (!(c->flags & HD_CONN_HELLO_DONE) && c->parser.buf.len == 0 && n >= 3 &&
               !c->is_unix && hd_tls_looks_like_hello(p, n)) {
        /* Its length prefix would be over 350 MB: say what it is rather than EFRAME. */
        hd_log_warnf(conn_fields(c, NULL, HD_EPROTO),
                     "%s: a TLS ClientHello on a plaintext listener (TLS is served on "
                     "tls.listen); closing",
                     c->peer);
        hd__conn_fail(c, 0, HD_EPROTO, "this port does not speak TLS (tls.listen does)");
        return;
    } else {
        /* The frames are taken in place from the worker's read buffer, which the next read
         * (of any connection) reuses: what process leaves of them is copied out before. */
        hd_frame_parser_lend(&c->parser, p, n); /* errors surface in next() */
        process(c);
        size_t cap = c->parser.buf.cap;
        if (hd_frame_parser_keep(&c->parser) < 0)
            process(c); /* no room to keep them: the frames kept, then the error */
        else if (c->parser.buf.cap != cap)
            charge_buffers(c);
        frame_clock(c);
        return;
    }
    process(c);
    frame_clock(c);
}

/* Buffers sized on demand, released when idle: a connection that has had no traffic for
 * HD_TRIM_IDLE_MS and has nothing buffered gives its buffers back (an idle session then costs
 * its structs and its empty heap, no buffer). */
void hd__conns_trim(uv_timer_t *t) {
    hd_worker_t *w = t->data;
    uint64_t now = uv_now(&w->loop);
    for (hd_conn_t *c = w->conns; c; c = c->next) {
        if ((c->flags & (HD_CONN_CLOSING | HD_CONN_IN_PROCESS)) ||
            now - c->last_active < HD_TRIM_IDLE_MS)
            continue;
        if (c->out.len == 0) hd_buf_free(&c->out);
        if (c->sealed.len == 0) hd_buf_free(&c->sealed);
        if (c->tls) hd_tls_trim(c->tls);
        hd_frame_parser_trim(&c->parser);
        charge_buffers(c);
    }
}

/* ------------------------------------------------------------------------------------------ */
/* Adopting, reconfiguring, moving, finishing.                                                 */
/* ------------------------------------------------------------------------------------------ */

void hd__conn_adopt(hd_worker_t *w, hd_msg_t *m) {
    hd_conn_t *c = hd__scalloc(1, sizeof *c);
    if (!c) {
        hd_log_warn("%s: out of memory adopting the connection; closed", m->peer);
        return; /* hd__msg_free closes the socket and releases the slot */
    }
    c->worker = w;
    c->is_unix = m->is_unix;
    c->cred = m->cred;
    c->serial = ++w->next_serial;
    c->slot = m->slot; /* the conn holds it from here */
    memset(&m->slot, 0, sizeof m->slot);
    memcpy(c->peer, m->peer, sizeof c->peer);
    hd_frame_parser_init(&c->parser, HD_FRAME_HELLO_MAX);
    hd_buf_init(&c->out);
    c->env.ops = &server_ops;
    c->env.ops_ctx = c;
    c->env.max_read_bytes = w->cfg.max_frame_bytes - HD_DISPATCH_FRAME_SLACK;
    c->last_active = c->accepted_at = uv_now(&w->loop);
    c->env.counters = &w->metrics.ops;
    if (c->is_unix)
        uv_pipe_init(&w->loop, &c->h.pipe, 0);
    else
        uv_tcp_init(&w->loop, &c->h.tcp);
    uv_timer_init(&w->loop, &c->timer);
    c->h.handle.data = c->timer.data = c;
    c->next = w->conns;
    if (w->conns) w->conns->prev = c;
    w->conns = c;

    int rc = c->is_unix ? uv_pipe_open(&c->h.pipe, m->fd) : uv_tcp_open(&c->h.tcp, m->fd);
    if (rc < 0) {
        hd_log_warn("%s: cannot use the socket: %s", c->peer, uv_strerror(rc));
        hd__conn_close(c);
        return; /* hd__msg_free closes the socket */
    }
    m->fd = -1;
    if (!c->is_unix) uv_tcp_nodelay(&c->h.tcp, 1);
    hd_buf_init(&c->sealed);
    if (m->tls) { /* moved here with its session keys */
        c->tls = m->tls;
        m->tls = NULL;
    } else if (m->tls_new && !(c->tls = hd_tls_new(w->srv->tls))) {
        hd_log_warn("%s: out of memory starting TLS; closed", c->peer);
        hd__conn_close(c);
        return;
    }
    if (w->state & HD_WORKER_STOPPING) {
        hd__conn_fail(c, 0, HD_ESHUTDOWN, "server is shutting down");
        return;
    }
    arm_timer(c);
    if (m->len) {
        hd_frame_parser_feed(&c->parser, m->data, m->len);
        process(c);
    } else {
        start_reading(c);
    }
}

void hd__conn_reconfigure(hd_conn_t *c) {
    if (c->flags & HD_CONN_CLOSING) return;
    const hd_config_t *cfg = &c->worker->cfg;
    if (c->flags & HD_CONN_HELLO_DONE) {
        hd_frame_parser_set_max(&c->parser, (uint32_t)cfg->max_frame_bytes);
        c->env.max_read_bytes = cfg->max_frame_bytes - HD_DISPATCH_FRAME_SLACK;
        c->env.inline_work = cfg->offload_above;
    }
    arm_timer(c);
}

int hd__conn_move(hd_conn_t *c, hd_worker_t *to, const uint8_t *frame, size_t len) {
    if (c->parser.err)
        return c->parser.err; /* the bytes after the hello are already known to be bad */
    /* TLS moves with its keys; bytes it has yet to send would be lost with this loop's
     * handle. With no tickets the handshake leaves none behind, so this does not happen. */
    if (c->tls &&
        (c->writes_pending || queued(c) || c->sealed.len || hd_tls_output_pending(c->tls)))
        return HD_EINTERNAL;
    uv_os_fd_t fd;
    int rc = uv_fileno(&c->h.handle, &fd);
    if (rc < 0) return HD_EINTERNAL;
    hd_msg_t *m = hd__msg_new(HD_MSG_CONN);
    if (!m) return HD_ENOMEM;
    /* The hello frame and everything received after it, header included. */
    size_t n = hd_frame_parser_copy_from(&c->parser, frame, false, NULL);
    if (!(m->data = hd__smalloc(n)) || (m->fd = fcntl(fd, F_DUPFD_CLOEXEC, 0)) < 0) {
        hd__msg_free(m);
        return HD_ENOMEM;
    }
    hd_frame_parser_copy_from(&c->parser, frame, false, m->data);
    m->len = n;
    m->is_unix = c->is_unix;
    m->cred = c->cred;
    m->tls = c->tls; /* the message owns it now */
    c->tls = NULL;
    memcpy(m->peer, c->peer, sizeof m->peer);
    /* The connection's count goes with it (its place in this worker's nconns is given back
     * when c is freed). */
    m->slot = c->slot;
    m->slot.worker = NULL; /* c's place in this worker's nconns stays with c */
    c->slot.counted = c->slot.ip_counted = false;
    /* Closing here first takes the socket out of this loop's epoll set, so only the new
     * worker ever reads it; the duplicate keeps the connection open. */
    c->flags |= HD_CONN_MOVED;
    hd__conn_close(c);
    hd__worker_post(to, m);
    return 0;
}

void hd__conn_finish(hd_conn_t *c) {
    if (c->flags & HD_CONN_CLOSING) return;
    c->flags &= ~HD_CONN_WAITING; /* its answer may never come back: the reason ends it */
    if (job_busy(c)) {
        /* The job stops at its next frame or batch op; its answers go first, then the
         * reason (hd__conn_offload_done finishes). */
        c->flags |= HD_CONN_FINISHING;
        hd__offload_stop(c->session, HD_ESHUTDOWN);
        return;
    }
    if (c->flags & HD_CONN_LAST_WRITE) { /* already ending; its last words are queued */
        c->flags |= HD_CONN_FAILED;      /* and no more events: the session goes with the server */
        flush(c);
        settle(c);
        return;
    }
    /* Answers already queued go first, then the reason (docs/PROTOCOL.md, lifecycle). */
    hd__conn_fail(c, 0, HD_ESHUTDOWN, "server is shutting down");
}
