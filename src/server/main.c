/*
 * main.c: heapd's entry point: options, start-up, signals, reload and shutdown.
 *
 *   heapd [--config FILE]        run (without --config: the built-in defaults)
 *   heapd --check-config FILE    validate FILE, print the effective config, exit
 *   heapd --version | --help
 *   heapd --print-config-keys    the config key table, for the heapd.yaml(5) generator
 *
 * Start-up: load the config (exit 78 when it is invalid), bind the listeners, start the
 * workers, then tell systemd READY=1. The main thread then runs the main loop: the listeners
 * and three signals. SIGHUP reloads the reloadable settings (an invalid file keeps the
 * running config, logging why); SIGTERM and SIGINT stop accepting, let the workers finish
 * what they were doing and close every session, then exit 0.
 *
 * This file owns the server struct and the main loop; everything else belongs to the files
 * named in server.h.
 */
#include "server.h"
#include "session.h"

#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

uint64_t hd__now_ms(void) {
    return uv_hrtime() / 1000000u;
}

static void usage(FILE *f) {
    fputs("usage: heapd [--config FILE]\n"
          "       heapd --check-config FILE\n"
          "       heapd --version | --help | --print-config-keys\n"
          "\n"
          "  -c, --config FILE        run with the settings in FILE (YAML; see config/heapd.yaml)\n"
          "  -t, --check-config FILE  validate FILE, print the effective config and exit\n"
          "  -v, --version            print the version and exit\n"
          "  -h, --help               print this help and exit\n"
          "      --print-config-keys  print the table of config keys (tab-separated) and exit\n"
          "\n"
          "Signals: SIGHUP reloads the config file; SIGTERM and SIGINT shut down cleanly.\n"
          "Exit status: 0 after a clean shutdown, 78 for an invalid config, 1 otherwise.\n",
          f);
}

/* Loads path, or the defaults when path is NULL. On error prints FILE:LINE:COL and exits 78. */
static void load_or_exit(const char *path, hd_config_t *cfg) {
    if (!path) {
        hd_config_defaults(cfg);
        return;
    }
    hd_config_error_t err;
    if (hd_config_load(path, cfg, &err) < 0) {
        char msg[1024];
        hd_config_error_format(&err, msg, sizeof msg);
        fprintf(stderr, "heapd: invalid config: %s\n", msg);
        exit(HD_EXIT_CONFIG);
    }
}

static void apply_logging(const hd_config_t *cfg) {
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
    apply_logging(&srv->cfg);
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
    hd_log_info("%s: shutting down", strsignal(signum));
    hd__notify("STOPPING=1\nSTATUS=Shutting down");
    hd__listeners_stop(srv);
    for (size_t i = 0; i < sizeof srv->sig / sizeof srv->sig[0]; i++)
        uv_close((uv_handle_t *)&srv->sig[i], NULL);
}

static void on_signal(uv_signal_t *h, int signum) {
    hd_server_t *srv = h->data;
    if (signum == SIGHUP)
        reload(srv);
    else
        shutdown_begin(srv, signum);
}

/* ------------------------------------------------------------------------------------------ */
/* main.                                                                                       */
/* ------------------------------------------------------------------------------------------ */

int main(int argc, char **argv) {
    static const struct option options[] = {
        {"config", required_argument, NULL, 'c'},
        {"check-config", required_argument, NULL, 't'},
        {"version", no_argument, NULL, 'v'},
        {"help", no_argument, NULL, 'h'},
        {"print-config-keys", no_argument, NULL, 'K'},
        {NULL, 0, NULL, 0},
    };
    const char *config_path = NULL, *check_path = NULL;
    int opt;
    while ((opt = getopt_long(argc, argv, "c:t:vh", options, NULL)) != -1) {
        switch (opt) {
        case 'c': config_path = optarg; break;
        case 't': check_path = optarg; break;
        case 'v': printf("heapd %s (protocol %u)\n", HEAPD_VERSION, HD_PROTOCOL_VERSION); return 0;
        case 'h': usage(stdout); return 0;
        case 'K': hd_config_print_keys(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "heapd: unexpected argument \"%s\"\n", argv[optind]);
        usage(stderr);
        return 2;
    }

    static hd_server_t srv; /* static: its atomics and handles live as long as the process */
    if (check_path) {
        load_or_exit(check_path, &srv.cfg);
        fprintf(stderr, "heapd: %s: OK\n", check_path);
        hd_config_print(&srv.cfg, stdout);
        hd_config_free(&srv.cfg);
        return 0;
    }
    load_or_exit(config_path, &srv.cfg);
    apply_logging(&srv.cfg);
    signal(SIGPIPE, SIG_IGN); /* a client gone mid-write is an error return, not a death */

    srv.config_path = config_path;
    srv.start_ms = hd__now_ms();
    uv_loop_t loop;
    if (uv_loop_init(&loop) < 0 || hd__registry_init(&srv.registry) < 0) {
        hd_log_error("cannot initialise the event loop");
        return 1;
    }
    srv.loop = &loop;
    size_t nworkers = srv.cfg.workers ? srv.cfg.workers : uv_available_parallelism();
    hd_log_info("heapd %s starting (pid %ld, %zu worker%s, config %s)", HEAPD_VERSION,
                (long)getpid(), nworkers, nworkers == 1 ? "" : "s",
                config_path ? config_path : "built-in defaults");

    int status = 0;
    if (hd__listeners_start(&srv) < 0) {
        status = 1;
        srv.stopping = 1;
        hd__listeners_stop(&srv);
    } else if (hd__workers_start(&srv, nworkers) < 0) {
        /* Some threads may run already, and there is nothing to unwind yet: no client has
         * connected. Remove the socket file and go. */
        hd__listeners_stop(&srv);
        exit(1);
    } else {
        static const int signums[] = {SIGTERM, SIGINT, SIGHUP};
        for (size_t i = 0; i < 3; i++) {
            uv_signal_init(&loop, &srv.sig[i]);
            srv.sig[i].data = &srv;
            uv_signal_start(&srv.sig[i], on_signal, signums[i]);
        }
        hd__notifyf("READY=1\nMAINPID=%ld\nSTATUS=Serving on %zu listener%s with %zu worker%s",
                    (long)getpid(), srv.nlisteners, srv.nlisteners == 1 ? "" : "s", nworkers,
                    nworkers == 1 ? "" : "s");
        hd_log_info("ready");
    }
    uv_run(&loop, UV_RUN_DEFAULT); /* until the listeners and signals are closed */
    hd__workers_stop(&srv);
    uv_run(&loop, UV_RUN_DEFAULT);
    if (uv_loop_close(&loop) < 0) hd_log_error("main loop still has handles at exit");
    free(srv.listeners);
    hd__registry_free(&srv.registry);
    hd_config_free(&srv.cfg);
    hd_log_info("stopped");
    return status;
}
