/* SPDX-License-Identifier: MIT */
/*
 * idle_clients.c: heapd-idle-clients, N idle connections held open against heapd (each with
 * its own session: connect, hello, one ping) or against redis-server (connect, one PING), for
 * bench/session_memory.sh, which reads the server's memory before and after.
 *
 *   heapd-idle-clients heapd URL N     (URL as hdc_connect: unix:/path or tcp://host:port)
 *   heapd-idle-clients redis PATH N    (redis-server's unix socket)
 *
 * Prints "ready N" once all N are connected and answered, then holds them until standard
 * input closes, and exits without a goodbye (the sessions detach; the script stops the
 * servers).
 */
#include <heapd/client.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

static void die(const char *what) {
    fprintf(stderr, "heapd-idle-clients: %s\n", what);
    exit(1);
}

static int redis_client(const char *path) {
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    if (fd < 0 || strlen(path) >= sizeof sa.sun_path) die("socket");
    memcpy(sa.sun_path, path, strlen(path) + 1);
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0) die("connect to redis");
    char buf[16];
    if (write(fd, "PING\r\n", 6) != 6 || read(fd, buf, sizeof buf) < 5) die("redis PING");
    return fd;
}

int main(int argc, char **argv) {
    if (argc != 4) die("usage: heapd-idle-clients heapd URL N | redis PATH N");
    long n = atol(argv[3]);
    struct rlimit rl = {(rlim_t)n + 64, (rlim_t)n + 64};
    if (setrlimit(RLIMIT_NOFILE, &rl) < 0) die("setrlimit RLIMIT_NOFILE (run as root)");
    int heapd = !strcmp(argv[1], "heapd");
    hdc_t **c = calloc((size_t)n, sizeof *c);
    if (!c) die("out of memory");
    for (long i = 0; i < n; i++) {
        if (heapd) {
            hdc_options_t o;
            hdc_options_init(&o);
            if (!(c[i] = hdc_new()) || hdc_connect(c[i], argv[2], &o) < 0 ||
                hdc_ping(c[i], NULL) < 0) {
                fprintf(stderr, "connection %ld: %s\n", i, c[i] ? hdc_errmsg(c[i]) : "oom");
                die("heapd connect");
            }
        } else {
            redis_client(argv[2]);
        }
    }
    printf("ready %ld\n", n);
    fflush(stdout);
    char b[64];
    while (fread(b, 1, sizeof b, stdin) > 0) {
    }
    return 0;
}
