/* SPDX-License-Identifier: MIT */
/*
 * server.c: the server as a whole, once its config is loaded: start-up in order, the main
 * loop, SIGHUP reload, shutdown, and the clock every thread reads.
 *
 * Start-up: bind the listeners (a Unix socket's file appears only once it listens), start the
 * workers, then tell systemd READY=1 and log "ready". The main thread then runs the main
 * loop: the listeners and three signals. SIGHUP reloads the reloadable settings (an invalid
 * file keeps the running config, logging why); SIGTERM and SIGINT stop accepting, let the
 * workers finish what they were doing and close every session.
 *
 * This file owns the main loop and the order of things; main.c owns the command line and the
 * exit codes, and everything else belongs to the files named in server.h.
 */
#include "http.h"
#include "observe.h"
#include "offload.h"
#include "server.h"
#include "persist.h"
#include "session.h"

#include <malloc.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

uint64_t hd__now_ms(void) {
    return uv_hrtime() / 1000000u;
}

/* ------------------------------------------------------------------------------------------ */
/* Allocators.                                                                                 */
/* ------------------------------------------------------------------------------------------ */

/* libuv's allocator: the daemon's hook, saying it is libuv's (smem.h). */
static void *uv_hook_malloc(size_t n) {
    return hd__smem.malloc(n, HD_SMEM_LIBUV);
}
static void *uv_hook_calloc(size_t n, size_t size) {
    return hd__smem.calloc(n, size, HD_SMEM_LIBUV);
}
static void *uv_hook_realloc(void *p, size_t n) {
    return hd__smem.realloc(p, n, HD_SMEM_LIBUV);
}
static void uv_hook_free(void *p) {
    hd__smem.free(p);
}

int hd__server_mem_init(void) {
    int rc = uv_replace_allocator(uv_hook_malloc, uv_hook_realloc, uv_hook_calloc, uv_hook_free);
    hd_tls_global_init(); /* OpenSSL's allocator: tls.c's counting one, over the hook */
    return rc < 0 ? HD_EINTERNAL : 0;
}

void hd__server_apply_logging(const hd_config_t *cfg) {
    hd_log_set_level((hd_log_level_t)cfg->log_level);
    hd_log_set_format((hd_log_format_t)cfg->log_format);
}

/* ------------------------------------------------------------------------------------------ */
/* Signals.                                                                                    */
/* ------------------------------------------------------------------------------------------ */

static uint64_t monotonic_usec(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

/* max_memory, applied to the engine's process-wide cap; logged when it changes. */
static void apply_memory_cap(hd_server_t *srv) {
    uint64_t cap = hd_config_memory_cap(&srv->cfg);
    if (cap == hd_mem_limit()) return;
    hd_mem_set_limit(cap);
    if (cap)
        hd_log_info("max_memory: sessions may hold %.1f MiB in all%s", (double)cap / (1 << 20),
                    srv->cfg.max_memory == HD_MEMCAP_AUTO ? " (auto: 3/4 of the memory available)"
                                                          : "");
    else
        hd_log_info("max_memory: 0, no server-wide cap");
}

/* Freed arenas are unmapped at once and large objects go back to malloc; glibc keeps what
 * malloc had from brk (buffers, tables, large objects under its mmap threshold) until it is
 * told to trim. Once a second, if what sessions are charged fell by 16 MiB (or by a quarter,
 * and at least 1 MiB) from the most it was since the last trim, trim: RSS falls back after a
 * peak. */
#define HD_MALLOC_TRIM_MS   1000
#define HD_MALLOC_TRIM_DROP (16u << 20)
static void on_trim(uv_timer_t *t) {
    hd_server_t *srv = t->data;
    uint64_t now = hd_mem_charged(), peak = hd_mem_charged_peak();
    if (peak > srv->trim_high) srv->trim_high = peak;
    uint64_t drop = srv->trim_high > now ? srv->trim_high - now : 0;
    if (drop >= HD_MALLOC_TRIM_DROP || (drop >= (1u << 20) && now < srv->trim_high / 4 * 3)) {
        malloc_trim(0);
        srv->trim_high = now;
    }
}

/* glibc's thresholds, fixed at its defaults (128 KiB each), which turns their dynamic
 * adjustment off (mallopt(3)). Left dynamic, freeing a mapped chunk raises the mmap threshold
 * to its size (up to 32 MiB) and the trim threshold to twice that, so from then on buffers of
 * that size come from the thread's malloc arena and stay resident when freed: every thread
 * keeps its largest transient buffers (a big batch's frame memory, its packed response) as
 * free memory that no session is charged and no trim sees (on_trim runs only when charges
 * fall). Each thread has an arena of its own, and jobs run on up to 4 pool threads per worker
 * (offload.c), so this multiplied: a session charged 16 MiB whose batches ran on 8 pool
 * threads grew the server by 105 MiB (tests/server/test_bounds.py, test_05), against 29 MiB
 * when they ran on the worker; with the thresholds fixed, 34 MiB. A buffer of 128 KiB or
 * more is mapped and unmapped whole, a freed top of an arena over 128 KiB is given back: a
 * few system calls and page faults per large frame, small beside filling it. An operator's
 * GLIBC_TUNABLES (or MALLOC_*_ environment) setting either threshold is left alone. */
#define HD_MALLOC_MMAP_THRESHOLD (128 * 1024)
#define HD_MALLOC_TRIM_THRESHOLD (128 * 1024)
static void malloc_policy(void) {
    const char *t = getenv("GLIBC_TUNABLES");
    if ((t && (strstr(t, "malloc.mmap_threshold") || strstr(t, "malloc.trim_threshold"))) ||
        getenv("MALLOC_MMAP_THRESHOLD_") || getenv("MALLOC_TRIM_THRESHOLD_"))
        return;
    mallopt(M_MMAP_THRESHOLD, HD_MALLOC_MMAP_THRESHOLD);
    mallopt(M_TRIM_THRESHOLD, HD_MALLOC_TRIM_THRESHOLD);
}

static void reload(hd_server_t *srv) {
    hd__notifyf("RELOADING=1\nMONOTONIC_USEC=%llu\nSTATUS=Reloading the configuration",
                (unsigned long long)monotonic_usec());
    if (!srv->config_path) {
        hd_log_warn("SIGHUP: started without --config; nothing to reload");
        hd__notify("READY=1\nSTATUS=Running (no config file to reload)");
        return;
    }
    hd_config_t fresh;
    hd_config_error_t err;
    if (hd_config_load(srv->config_path, &fresh, &err) < 0) {
        char msg[1024];
        hd_config_error_format(&err, msg, sizeof msg);
        hd_log_error("config reload failed: %s; keeping the running config", msg);
        hd__notifyf("READY=1\nSTATUS=Running; last reload failed: %.900s", msg);
        return;
    }
    int changed = hd_config_apply_reload(&srv->cfg, &fresh);
    hd_config_free(&fresh);
    if (changed < 0) {
        hd_log_error("config reload: out of memory; keeping the running config");
        hd__notify("READY=1\nSTATUS=Running; last reload failed: out of memory");
        return;
    }
    hd__server_apply_logging(&srv->cfg);
    apply_memory_cap(srv);
    hd__http_reload(srv);
    /* The certificate files are read again whether or not their names changed (a renewed
     * certificate is usually written over the old one): new connections get the new one,
     * open ones keep theirs. */
    if (srv->tls) {
        char why[512], subject[256];
        if (hd_tls_ctx_reload(srv->tls, &srv->cfg, why, sizeof why) < 0) {
            hd_log_error("config reload: tls: %s; keeping the running certificate", why);
        } else {
            hd_tls_ctx_subject(srv->tls, subject, sizeof subject);
            hd_log_info("config reload: tls: serving certificate %s (%s)", subject,
                        srv->cfg.tls_cert);
        }
    }
    for (size_t i = 0; i < srv->nworkers; i++) {
        hd_msg_t *m = hd__msg_new(HD_MSG_RELOAD);
        if (!m || hd_config_copy(&m->cfg, &srv->cfg) < 0) {
            hd_log_error("config reload: out of memory sending worker %zu its config", i);
            hd__msg_free(m);
            continue;
        }
        hd__worker_post(&srv->workers[i], m);
    }
    hd_log_info("config reloaded from %s: %d setting%s changed", srv->config_path, changed,
                changed == 1 ? "" : "s");
    hd__notifyf("READY=1\nSTATUS=Running; config reloaded (%d changed)", changed);
}

static void shutdown_begin(hd_server_t *srv, int signum) {
    if (srv->stopping) return;
    srv->stopping = 1;
    atomic_store(&srv->serving, HD_SERVING_STOPPING);
    hd_log_info("%s: shutting down", strsignal(signum));
    hd__notify(hd__persist_enabled(&srv->cfg) ? "STOPPING=1\nSTATUS=Shutting down; saving sessions"
                                              : "STOPPING=1\nSTATUS=Shutting down");
    hd__listeners_stop(srv);
    for (size_t i = 0; i < sizeof srv->sig / sizeof srv->sig[0]; i++)
        uv_close((uv_handle_t *)&srv->sig[i], NULL);
    uv_close((uv_handle_t *)&srv->trim, NULL);
}

static void on_signal(uv_signal_t *h, int signum) {
    hd_server_t *srv = h->data;
    if (signum == SIGHUP)
        reload(srv);
    else
        shutdown_begin(srv, signum);
}

/* ------------------------------------------------------------------------------------------ */
/* Running.                                                                                    */
/* ------------------------------------------------------------------------------------------ */

int hd__server_run(hd_server_t *srv) {
    srv->start_ms = hd__now_ms();
    malloc_policy(); /* before any thread has an arena */
    srv->uid = (uint32_t)geteuid();
    hd__cluster_node_id(&srv->cfg, srv->node_id);
    uv_loop_t loop;
    if (uv_loop_init(&loop) < 0 || hd__registry_init(&srv->registry) < 0 ||
        hd__peers_init(&srv->peers) < 0 || hd__slowlog_init(&srv->slowlog) < 0 ||
        uv_mutex_init(&srv->monitor_lock) < 0) {
        hd_log_error("cannot initialise the event loop");
        return HD_EINTERNAL;
    }
    srv->loop = &loop;
    uv_mutex_init(&srv->persist.lock);
    apply_memory_cap(srv);
    size_t nworkers = srv->cfg.workers ? srv->cfg.workers : uv_available_parallelism();
    hd__offload_init(nworkers); /* before anything can use libuv's thread pool */
    hd_log_info("heapd %s starting (pid %ld, %zu worker%s, config %s)", HEAPD_VERSION,
                (long)getpid(), nworkers, nworkers == 1 ? "" : "s",
                srv->config_path ? srv->config_path : "built-in defaults");
    if (srv->node_id[0])
        hd_log_info("node %s (advertised as %s)", srv->node_id,
                    *srv->cfg.advertise_url ? srv->cfg.advertise_url : "nothing: no advertise_url");

    /* The HTTP server's names, for the STATUS below. */
    char http_names[512] = "";
    int rc = hd__listeners_start(srv);
    if (rc < 0) {
        srv->stopping = 1;
        hd__listeners_stop(srv);
    } else if ((rc = hd__workers_start(srv, nworkers)) < 0) {
        hd__listeners_stop(srv);
        /* A worker that could not be set up was undone with the others; a thread that could
         * not be created leaves the ones before it running, which cannot be undone: no client
         * has connected yet, so go, the socket file removed. */
        if (srv->workers) exit(1);
        srv->stopping = 1;
    } else if ((rc = hd__http_start(srv, http_names, sizeof http_names)) < 0) {
        srv->stopping = 1;
        hd__listeners_stop(srv); /* then the workers stop, below */
    } else {
        /* Sessions saved by the last run come back before anyone can connect. */
        atomic_store(&srv->serving, HD_SERVING_RESTORING);
        hd__persist_restore(srv);
        static const int signums[] = {SIGTERM, SIGINT, SIGHUP};
        for (size_t i = 0; i < 3; i++) {
            uv_signal_init(&loop, &srv->sig[i]);
            srv->sig[i].data = srv;
            uv_signal_start(&srv->sig[i], on_signal, signums[i]);
        }
        uv_timer_init(&loop, &srv->trim);
        srv->trim.data = srv;
        uv_timer_start(&srv->trim, on_trim, HD_MALLOC_TRIM_MS, HD_MALLOC_TRIM_MS);
        uv_unref((uv_handle_t *)&srv->trim);
        /* Where it listens, for `systemctl status` and for tests (tests/server/harness.py
         * reads the addresses from here, as the log may say nothing at its level). */
        char where[768];
        size_t n = 0;
        for (size_t i = 0; i < srv->nlisteners && n < sizeof where; i++)
            n += (size_t)snprintf(where + n, sizeof where - n, "%s%s", i ? ", " : "",
                                  srv->listeners[i].name);
        if (*http_names && n < sizeof where)
            snprintf(where + n, sizeof where - n, "%s%s", n ? ", " : "", http_names);
        atomic_store(&srv->serving, HD_SERVING);
        hd__notifyf("READY=1\nMAINPID=%ld\nSTATUS=Serving on %s with %zu worker%s", (long)getpid(),
                    where, nworkers, nworkers == 1 ? "" : "s");
        hd_log_info("ready");
    }
    uv_run(&loop, UV_RUN_DEFAULT); /* until the listeners and signals are closed */
    hd__workers_stop(srv);
    hd__http_stop(srv); /* after the workers: /readyz says 503 while they finish */
    hd__workers_free(srv);
    uv_run(&loop, UV_RUN_DEFAULT);
    if (uv_loop_close(&loop) < 0) hd_log_error("main loop still has handles at exit");
    hd__sfree(srv->listeners);
    hd__registry_free(&srv->registry);
    hd__peers_free(&srv->peers);
    hd__slowlog_free(&srv->slowlog);
    hd_tls_ctx_free(srv->tls);
    srv->tls = NULL;
    uv_mutex_destroy(&srv->monitor_lock);
    uv_mutex_destroy(&srv->persist.lock);
    hd_config_free(&srv->cfg);
    hd_log_info("stopped");
    return rc;
}
