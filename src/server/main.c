/* SPDX-License-Identifier: MIT */
/*
 * main.c: heapd's entry point: the command line, loading the config, and the exit codes.
 *
 *   heapd [--config FILE]        run (without --config: the built-in defaults)
 *   heapd --check-config FILE    validate FILE, print the effective config, exit
 *   heapd --version | --help
 *   heapd --print-config-keys    the config key table, for the heapd.yaml(5) generator
 *
 * Start-up: load the config (exit 78 when it is invalid), then hand the server to
 * server.c:hd__server_run, which runs it until SIGTERM or SIGINT and returns the exit status
 * (0 after a clean shutdown).
 *
 * This file owns the server struct (static: it lives as long as the process) and nothing
 * else; the server library (hdserver) needs nothing from it.
 */
#include "server.h"

#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>

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

/* ------------------------------------------------------------------------------------------ */
/* main.                                                                                       */
/* ------------------------------------------------------------------------------------------ */

int main(int argc, char **argv) {
    /* Before anything calls libuv or OpenSSL: their allocations go through the daemon's hook
     * (smem.h), OpenSSL's counted to the connection it works for. */
    hd__server_mem_init();
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
    hd__server_apply_logging(&srv.cfg);
    signal(SIGPIPE, SIG_IGN); /* a client gone mid-write is an error return, not a death */

    srv.config_path = config_path;
    return hd__server_run(&srv) < 0 ? 1 : 0;
}
