/* SPDX-License-Identifier: MIT */
/*
 * test_cclient.c: libheapdclient against a real heapd.
 *
 * The group setup writes a config file into a temporary directory (Unix socket only, a client
 * token, an admin token, a small frame limit so that batches can outgrow a response), starts
 * the heapd given as argv[1] on it and waits for its READY=1 on a notify socket, as systemd
 * does; the teardown stops it and waits for it to exit. Nothing sleeps for a fixed time. Every test
 * opens its own connection(s), so its own session and heap. Two fake servers (forked children
 * on their own sockets) cover the replies a real heapd never sends: none (timeout) and garbage.
 *
 * Covers every call of heapd/client.h, server errors as the shared codes, pipelining (with a
 * pipeline long enough to fill both socket buffers), batches (with per-call failures and an
 * early stop), events through the callback and hdc_poll, and resuming a session after the
 * connection was dropped.
 */
#include "heap.h" /* first: its HD_ERR_MAP is the one heapd/errors.h copies */

#include "heapd/client.h"

#include <errno.h>
#include <poll.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#define USER_TOKEN  "user-token"
#define ADMIN_TOKEN "admin-token"

static const char *heapd_path;
static char tmpdir[64];
static char sock_url[192];
static pid_t heapd_pid = -1;

/* ------------------------------------------------------------------------------------------ */
/* The daemon.                                                                                 */
/* ------------------------------------------------------------------------------------------ */

static uint64_t now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* A Unix datagram socket bound at path, for heapd's $NOTIFY_SOCKET; -1 on failure. */
static int notify_socket(const char *path) {
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    if (strlen(path) >= sizeof sa.sun_path) return -1;
    memcpy(sa.sun_path, path, strlen(path) + 1);
    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd >= 0 && bind(fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
        close(fd);
        fd = -1;
    }
    return fd;
}

/* Waits for READY=1 on nfd: 0, or -1 when heapd exits first or 10 s pass. The poll wakes on
 * each message, and every 100 ms to see whether heapd died. */
static int wait_ready(int nfd, pid_t pid) {
    for (uint64_t until = now_ms() + 10000; now_ms() < until;) {
        struct pollfd p = {.fd = nfd, .events = POLLIN};
        if (poll(&p, 1, 100) > 0) {
            char msg[1024];
            ssize_t n = recv(nfd, msg, sizeof msg - 1, 0);
            if (n > 0) {
                msg[n] = '\0';
                if (strncmp(msg, "READY=1", 7) == 0 || strstr(msg, "\nREADY=1")) return 0;
            }
        } else if (waitpid(pid, NULL, WNOHANG) == pid) {
            heapd_pid = -1;
            return -1;
        }
    }
    return -1;
}

/* Waits up to 10 s for pid to exit (a pidfd becomes readable when it does); 1 if it did. */
static int wait_exit(pid_t pid, int *status) {
    int pfd = (int)syscall(SYS_pidfd_open, pid, 0);
    if (pfd >= 0) {
        struct pollfd p = {.fd = pfd, .events = POLLIN};
        int r = poll(&p, 1, 10000);
        close(pfd);
        if (r <= 0) return 0;
    }
    return waitpid(pid, status, 0) == pid; /* without pidfds: until it exits */
}

static int start_heapd(void **state) {
    snprintf(tmpdir, sizeof tmpdir, "/tmp/hdc-test-XXXXXX");
    if (!mkdtemp(tmpdir)) return -1;
    char cfg[128], sock[128], log[128];
    snprintf(cfg, sizeof cfg, "%s/heapd.yaml", tmpdir);
    snprintf(sock, sizeof sock, "%s/heapd.sock", tmpdir);
    snprintf(log, sizeof log, "%s/heapd.log", tmpdir);
    snprintf(sock_url, sizeof sock_url, "unix:%s", sock);
    FILE *f = fopen(cfg, "w");
    if (!f) return -1;
    fprintf(f,
            "listen: []\n"
            "http: []\n"
            "unix_socket: \"%s\"\n"
            "unix_socket_mode: \"0600\"\n"
            "workers: 2\n"
            "tokens: [\"" USER_TOKEN "\"]\n"
            "admin_tokens: [\"" ADMIN_TOKEN "\"]\n"
            /* root's Unix peer credentials would make every session an admin */
            "admin_peer_uids: off\n"
            "max_frame_bytes: 64KiB\n"
            "session_linger: 60s\n"
            "idle_timeout: 60s\n"
            "log_level: warn\n",
            sock);
    fclose(f);
    char npath[128];
    snprintf(npath, sizeof npath, "%s/notify.sock", tmpdir);
    int nfd = notify_socket(npath);
    if (nfd < 0) return -1;
    heapd_pid = fork();
    if (heapd_pid < 0) return -1;
    if (heapd_pid == 0) {
        FILE *lf = freopen(log, "w", stderr);
        (void)lf;
        setenv("NOTIFY_SOCKET", npath, 1);
        execl(heapd_path, heapd_path, "--config", cfg, (char *)NULL);
        _exit(127);
    }
    int rc = wait_ready(nfd, heapd_pid);
    close(nfd);
    if (rc < 0) fprintf(stderr, "heapd did not start; see %s\n", log);
    return rc;
}

static int stop_heapd(void **state) {
    if (heapd_pid > 0) {
        kill(heapd_pid, SIGTERM);
        int st;
        if (!wait_exit(heapd_pid, &st)) {
            kill(heapd_pid, SIGKILL);
            waitpid(heapd_pid, &st, 0);
        }
    }
    char cmd[160];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    return system(cmd) == 0 ? 0 : -1;
}

/* A connected client; fails the test if it cannot connect. */
static hdc_t *open_client(const char *token) {
    hdc_t *c = hdc_new();
    assert_non_null(c);
    hdc_options_t o;
    hdc_options_init(&o);
    o.token = token;
    o.client_name = "test_cclient";
    o.timeout_ms = 10000;
    int rc = hdc_connect(c, sock_url, &o);
    if (rc) fail_msg("connect: %s", hdc_errmsg(c));
    return c;
}

static void close_client(hdc_t *c) {
    assert_int_equal(hdc_goodbye(c), 0);
    assert_false(hdc_is_connected(c));
    hdc_free(c);
}

static uint64_t new_obj(hdc_t *c, uint32_t size, uint32_t slots, const char *tag, const char *site,
                        unsigned flags) {
    hdc_alloc_args_t a = {.size = size, .slots = slots, .tag = tag, .site = site, .flags = flags};
    uint64_t h = 0;
    int rc = hdc_alloc(c, &a, &h);
    if (rc) fail_msg("alloc: %s", hdc_errmsg(c));
    assert_true(h != 0);
    return h;
}

/* ------------------------------------------------------------------------------------------ */
/* Errors and connecting.                                                                      */
/* ------------------------------------------------------------------------------------------ */

static void test_error_codes(void **state) {
    /* Every engine code is the client's, with the same name and message. */
#define CHECK(name, num, msg)                                                                      \
    assert_int_equal(HDC_##name, HD_##name);                                                       \
    assert_int_equal(HDC_##name, -(num));                                                          \
    assert_string_equal(hdc_err_name(HDC_##name), #name);                                          \
    assert_string_equal(hdc_strerror(HDC_##name), msg);
    HD_ERR_MAP(CHECK)
#undef CHECK
    assert_string_equal(hdc_err_name(0), "OK");
    assert_string_equal(hdc_err_name(HDC_ECONNECT), "ECONNECT");
    assert_string_equal(hdc_err_name(HDC_EBADREPLY), "EBADREPLY");
    assert_string_equal(hdc_err_name(-555), "E?");
    assert_string_equal(hdc_strerror(-555), "unknown error");
}

static void test_connect_errors(void **state) {
    hdc_t *c = hdc_new();
    assert_non_null(c);
    hdc_options_t o;
    hdc_options_init(&o);
    o.timeout_ms = 2000;

    assert_int_equal(hdc_connect(c, "ftp://x", &o), HDC_EINVAL);
    assert_non_null(strstr(hdc_errmsg(c), "ftp://x"));
    assert_int_equal(hdc_connect(c, "tcp://localhost", &o), HDC_EINVAL);
    assert_int_equal(hdc_connect(c, "unix:/nonexistent/heapd.sock", &o), HDC_ECONNECT);
    assert_int_equal(hdc_status(c), HDC_ECONNECT);
    assert_non_null(strstr(hdc_errmsg(c), "cannot connect"));
    /* A port nobody listens on: take one from the kernel and close it. */
    assert_int_equal(hdc_connect(c, "tcp://127.0.0.1:1", &o), HDC_ECONNECT);

    /* The server wants a token. */
    assert_int_equal(hdc_connect(c, sock_url, &o), HDC_EAUTH);
    assert_false(hdc_is_connected(c));
    o.token = "wrong";
    assert_int_equal(hdc_connect(c, sock_url, &o), HDC_EAUTH);
    assert_string_not_equal(hdc_errmsg(c), "");
    assert_null(hdc_hello_info(c));

    /* The URL forms (the Python client's heapd.parse_url's, checked against it by
     * test_heapctl.py): a bad one is refused before anything is tried. */
    static const char *const good[] = {"tcp://h:1", "h:1",           "[::1]:7420", "tcp://[::1]:0",
                                       "unix:/a/b", "unix:///a/b",   "unix:rel",   "/a/b",
                                       "::1:7420",  "tcp://h:007420"};
    static const char *const bad[] = {
        "tcp://h",   "h:",    ":1",      "h:65536", "h:1x",    "[::1]",
        "[::1]7420", "unix:", "x://h:1", "a/b:1",   "[a/b]:1", "h:-1"};
    char why[200];
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++)
        if (hdc_url_check(good[i], why, sizeof why) != 0) fail_msg("%s: %s", good[i], why);
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        if (hdc_url_check(bad[i], why, sizeof why) != HDC_EINVAL) fail_msg("%s accepted", bad[i]);
        assert_non_null(strstr(why, bad[i]));
    }
    /* Calls without a connection. */
    assert_int_equal(hdc_ping(c, NULL), HDC_ECLOSED);
    assert_int_equal(hdc_reconnect(c), HDC_EINVAL);
    assert_int_equal(hdc_pipeline_begin(c), HDC_ECLOSED);
    assert_int_equal(hdc_batch_begin(c), HDC_ECLOSED);

    /* No URL: $HEAPD_URL, when set. */
    setenv("HEAPD_URL", "tcp://127.0.0.1:notaport", 1);
    assert_int_equal(hdc_connect(c, NULL, &o), HDC_EINVAL);
    assert_non_null(strstr(hdc_errmsg(c), "notaport"));
    setenv("HEAPD_URL", sock_url, 1);
    o.token = USER_TOKEN;
    assert_int_equal(hdc_connect(c, NULL, &o), 0);
    assert_int_equal(hdc_ping(c, NULL), 0);
    unsetenv("HEAPD_URL");
    hdc_free(c);
    hdc_free(NULL);
}

static void test_hello_and_ping(void **state) {
    hdc_t *c = open_client(USER_TOKEN);
    const hdc_hello_t *h = hdc_hello_info(c);
    assert_non_null(h);
    assert_true(strlen(h->session_id) > 0);
    assert_true(strlen(h->resume_token) > 0);
    assert_true(strlen(h->server_version) > 0);
    assert_int_equal(h->protocol_version, HDC_PROTOCOL_VERSION);
    assert_false(h->resumed);
    assert_false(h->admin);
    assert_int_equal(h->limits.max_frame_bytes, 64 * 1024);
    assert_true(h->limits.max_read_bytes > 0 && h->limits.max_read_bytes < 64 * 1024);

    uint64_t t = 0;
    assert_int_equal(hdc_ping(c, &t), 0);
    assert_true(t > 1600000000ull * 1000000000ull);
    assert_int_equal(hdc_ping(c, NULL), 0);
    assert_int_equal(hdc_status(c), 0);
    assert_string_equal(hdc_errmsg(c), "");
    close_client(c);

    hdc_t *a = open_client(ADMIN_TOKEN);
    assert_true(hdc_hello_info(a)->admin);
    close_client(a);
}

/* ------------------------------------------------------------------------------------------ */
/* Objects.                                                                                    */
/* ------------------------------------------------------------------------------------------ */

static void test_objects(void **state) {
    hdc_t *c = open_client(USER_TOKEN);
    hdc_alloc_args_t a = {
        .size = 16, .slots = 2, .tag = "Node", .site = "t.c:1", .data = "abc", .data_len = 3};
    uint64_t x = 0, y = 0, got = 0, v = 0;
    assert_int_equal(hdc_alloc(c, &a, &x), 0);
    y = new_obj(c, 8, 0, NULL, NULL, 0);

    char buf[16];
    assert_int_equal(hdc_read(c, x, 0, buf, 4), 0);
    assert_memory_equal(buf, "abc\0", 4);
    assert_int_equal(hdc_write(c, x, 1, "XY", 2), 0);
    assert_int_equal(hdc_read(c, x, 0, buf, 3), 0);
    assert_memory_equal(buf, "aXY", 3);
    assert_int_equal(hdc_read(c, x, 0, buf, 0), 0);
    assert_int_equal(hdc_read(c, x, 10, buf, 16), HDC_ERANGE);
    assert_int_equal(hdc_status(c), HDC_ERANGE);
    assert_non_null(strstr(hdc_errmsg(c), "ERANGE"));
    assert_int_equal(hdc_write(c, x, 15, "XY", 2), HDC_ERANGE);

    assert_int_equal(hdc_set_slot(c, x, 0, y), 0);
    assert_int_equal(hdc_get_slot(c, x, 0, &got), 0);
    assert_true(got == y);
    assert_int_equal(hdc_getrefcount(c, y, &v), 0);
    assert_int_equal(v, 3); /* ours, the one get_slot gave, the slot's */
    assert_int_equal(hdc_decref(c, got, 1), 0);
    assert_int_equal(hdc_get_slot(c, x, 1, &got), 0);
    assert_true(got == 0);
    assert_int_equal(hdc_set_slot(c, x, 2, y), HDC_ERANGE);

    assert_int_equal(hdc_incref(c, y, 3), 0);
    assert_int_equal(hdc_getrefcount(c, y, &v), 0);
    assert_int_equal(v, 5);
    assert_int_equal(hdc_decref(c, y, 9), HDC_EREFS);
    assert_int_equal(hdc_decref(c, y, 3), 0);
    assert_int_equal(hdc_getsizeof(c, x, &v), 0);
    assert_true(v >= 16 + 2 * 4);

    hdc_obj_info_t info;
    assert_int_equal(hdc_obj_info(c, x, &info), 0);
    assert_int_equal(info.client_refs, 1);
    assert_int_equal(info.refcount, 1);
    assert_int_equal(info.size, 16);
    assert_int_equal(info.slots, 2);
    assert_true(info.tracked);
    assert_int_equal(info.generation, 0);
    assert_string_equal(info.tag, "Node");
    assert_string_equal(info.site, "t.c:1");
    assert_int_equal(hdc_obj_info(c, y, &info), 0);
    assert_false(info.tracked);
    assert_int_equal(info.generation, -1);
    assert_string_equal(info.tag, "");

    /* y is kept alive by x's slot; freeing x cascades. */
    assert_int_equal(hdc_decref(c, y, 1), 0);
    assert_int_equal(hdc_getrefcount(c, y, &v), 0);
    assert_int_equal(v, 1);
    assert_int_equal(hdc_decref(c, x, 1), 0);
    assert_int_equal(hdc_getrefcount(c, x, &v), HDC_ENOOBJ);
    assert_int_equal(hdc_getrefcount(c, y, &v), HDC_ENOOBJ);
    assert_int_equal(hdc_incref(c, 12345, 1), HDC_ENOOBJ);

    /* Bad arguments are the server's EINVAL. */
    a = (hdc_alloc_args_t){.size = 2, .data = "too long", .data_len = 8};
    assert_int_equal(hdc_alloc(c, &a, &x), HDC_EINVAL);
    close_client(c);
}

/* ------------------------------------------------------------------------------------------ */
/* The collector.                                                                              */
/* ------------------------------------------------------------------------------------------ */

static void test_gc(void **state) {
    hdc_t *c = open_client(USER_TOKEN);
    int on = -1, thr[3];
    uint64_t count[3], found = 99, n = 0;
    uint32_t dbg = 99;
    hdc_gc_genstats_t gs[3];

    assert_int_equal(hdc_gc_isenabled(c, &on), 0);
    assert_int_equal(on, 1);
    assert_int_equal(hdc_gc_disable(c), 0);
    assert_int_equal(hdc_gc_isenabled(c, &on), 0);
    assert_int_equal(on, 0);
    assert_int_equal(hdc_gc_enable(c), 0);

    assert_int_equal(hdc_gc_get_threshold(c, thr), 0);
    assert_int_equal(thr[0], 700);
    int t2[2] = {5, 6};
    assert_int_equal(hdc_gc_set_threshold(c, t2, 2), 0);
    assert_int_equal(hdc_gc_get_threshold(c, thr), 0);
    assert_int_equal(thr[0], 5);
    assert_int_equal(thr[1], 6);
    assert_int_equal(thr[2], 10);
    assert_int_equal(hdc_gc_set_threshold(c, t2, 0), HDC_EINVAL);
    int four[4] = {1, 2, 3, 4};
    assert_int_equal(hdc_gc_set_threshold(c, four, 4), HDC_EINVAL);
    int big[3] = {700, 10, 10};
    assert_int_equal(hdc_gc_set_threshold(c, big, 3), 0);

    /* A two-object cycle, dropped by the client: only the collector frees it. */
    uint64_t a = new_obj(c, 0, 1, "A", NULL, 0), b = new_obj(c, 0, 1, "B", NULL, 0);
    assert_int_equal(hdc_set_slot(c, a, 0, b), 0);
    assert_int_equal(hdc_set_slot(c, b, 0, a), 0);
    assert_int_equal(hdc_gc_get_count(c, count), 0);
    assert_int_equal(count[0], 2);
    int tracked = 0;
    assert_int_equal(hdc_gc_is_tracked(c, a, &tracked), 0);
    assert_int_equal(tracked, 1);

    hdc_handles_t hv = {0};
    assert_int_equal(hdc_gc_get_referrers(c, &a, 1, 1, &hv), 0);
    assert_int_equal(hv.n, 1);
    assert_true(hv.v[0] == b);
    hdc_handles_free(&hv);
    assert_int_equal(hdc_gc_get_referents(c, &a, 1, 0, &hv), 0); /* new references */
    assert_int_equal(hv.n, 1);
    assert_true(hv.v[0] == b);
    assert_int_equal(hdc_decref(c, hv.v[0], 1), 0);
    hdc_handles_free(&hv);
    /* Duplicates are kept, as gc.get_referents keeps them, unless HDC_REF_DISTINCT. */
    uint64_t both[2] = {a, a};
    assert_int_equal(hdc_gc_get_referents(c, both, 2, HDC_REF_BORROW, &hv), 0);
    assert_int_equal(hv.n, 2);
    hdc_handles_free(&hv);
    uint64_t rc_before = 0, rc_after = 0;
    assert_int_equal(hdc_getrefcount(c, b, &rc_before), 0);
    assert_int_equal(hdc_gc_get_referents(c, both, 2, HDC_REF_DISTINCT, &hv), 0);
    assert_int_equal(hv.n, 1);
    assert_true(hv.v[0] == b);
    assert_int_equal(hdc_getrefcount(c, b, &rc_after), 0);
    assert_int_equal(rc_after, rc_before + 1); /* one new reference for the one entry */
    assert_int_equal(hdc_decref(c, hv.v[0], 1), 0);
    hdc_handles_free(&hv);

    /* Page through the tracked objects one at a time. */
    uint64_t cursor = 0;
    size_t seen = 0;
    do {
        assert_int_equal(hdc_gc_get_objects(c, HDC_GC_ALL, &cursor, 1, 1, &hv), 0);
        seen += hv.n;
        hdc_handles_free(&hv);
    } while (cursor && seen < 100);
    assert_int_equal(seen, 2);
    cursor = 0;
    assert_int_equal(hdc_gc_get_objects(c, 0, &cursor, 1, 1, &hv), 0);
    hdc_handles_free(&hv);
    if (cursor) assert_int_equal(hdc_gc_close_cursor(c, cursor), 0);
    assert_int_equal(hdc_gc_get_objects(c, 7, &cursor, 1, 1, &hv), HDC_EINVAL);

    assert_int_equal(hdc_decref(c, a, 1), 0);
    assert_int_equal(hdc_decref(c, b, 1), 0);
    assert_int_equal(hdc_gc_collect(c, 0, &found), 0);
    assert_int_equal(found, 2);
    assert_int_equal(hdc_gc_collect(c, HDC_GC_ALL, NULL), 0);
    assert_int_equal(hdc_gc_collect(c, 3, &found), HDC_EINVAL);
    assert_int_equal(hdc_gc_get_stats(c, gs), 0);
    assert_int_equal(gs[0].collections, 1);
    assert_int_equal(gs[0].collected, 2);
    assert_int_equal(gs[2].collections, 1);

    /* The session's collector mode: generational by default, incremental when asked. */
    hdc_gc_mode_t gm;
    assert_int_equal(hdc_gc_get_mode(c, &gm), 0);
    assert_int_equal(gm.mode, HDC_GC_GENERATIONAL);
    assert_int_equal(gm.increment_objects, 4000);
    assert_int_equal(hdc_gc_set_mode(c, HDC_GC_INCREMENTAL, 900, &gm), 0);
    assert_int_equal(gm.mode, HDC_GC_INCREMENTAL);
    assert_int_equal(gm.increment_objects, 900);
    assert_int_equal(hdc_gc_set_mode(c, 5, 0, NULL), HDC_EINVAL);
    assert_int_equal(hdc_gc_set_mode(c, HDC_GC_GENERATIONAL, 0, NULL), 0);
    assert_int_equal(hdc_gc_get_mode(c, &gm), 0);
    assert_int_equal(gm.mode, HDC_GC_GENERATIONAL);
    assert_int_equal(gm.increment_objects, 900);

    /* DEBUG_SAVEALL: the collected cycle goes to gc.garbage. */
    assert_int_equal(hdc_gc_set_debug(c, HDC_GC_DEBUG_SAVEALL), 0);
    assert_int_equal(hdc_gc_get_debug(c, &dbg), 0);
    assert_int_equal(dbg, HDC_GC_DEBUG_SAVEALL);
    a = new_obj(c, 0, 1, NULL, NULL, 0);
    assert_int_equal(hdc_set_slot(c, a, 0, a), 0);
    assert_int_equal(hdc_decref(c, a, 1), 0);
    assert_int_equal(hdc_gc_collect(c, HDC_GC_ALL, &found), 0);
    assert_int_equal(found, 1);
    uint64_t total = 0;
    assert_int_equal(hdc_gc_garbage(c, 0, 0, 1, &hv, &total), 0);
    assert_int_equal(total, 1);
    assert_int_equal(hv.n, 1);
    hdc_handles_free(&hv);
    assert_int_equal(hdc_gc_set_debug(c, 0), 0);
    assert_int_equal(hdc_gc_garbage_clear(c), 0);
    assert_int_equal(hdc_gc_garbage(c, 0, 0, 1, &hv, NULL), 0);
    assert_int_equal(hv.n, 0);
    hdc_handles_free(&hv);
    assert_int_equal(hdc_gc_collect(c, HDC_GC_ALL, &found), 0); /* the cycle, for good */
    assert_int_equal(found, 1);

    /* Freeze and unfreeze. */
    a = new_obj(c, 0, 1, NULL, NULL, 0);
    assert_int_equal(hdc_gc_freeze(c), 0);
    assert_int_equal(hdc_gc_get_freeze_count(c, &n), 0);
    assert_int_equal(n, 1);
    hdc_obj_info_t info;
    assert_int_equal(hdc_obj_info(c, a, &info), 0);
    assert_int_equal(info.generation, 3);
    assert_int_equal(hdc_gc_unfreeze(c), 0);
    assert_int_equal(hdc_gc_get_freeze_count(c, &n), 0);
    assert_int_equal(n, 0);
    assert_int_equal(hdc_decref(c, a, 1), 0);
    close_client(c);
}

/* ------------------------------------------------------------------------------------------ */
/* Weak references, tracing, statistics.                                                       */
/* ------------------------------------------------------------------------------------------ */

static void test_weakref(void **state) {
    hdc_t *c = open_client(USER_TOKEN);
    uint64_t a = new_obj(c, 8, 0, NULL, NULL, 0), w = 0, got = 0;
    assert_int_equal(hdc_weakref_new(c, a, 0, &w), 0);
    assert_true(w != 0);
    assert_int_equal(hdc_weakref_get(c, w, &got), 0);
    assert_true(got == a);
    assert_int_equal(hdc_decref(c, got, 1), 0);
    assert_int_equal(hdc_decref(c, a, 1), 0);
    assert_int_equal(hdc_weakref_get(c, w, &got), 0);
    assert_true(got == 0);
    assert_int_equal(hdc_weakref_free(c, w), 0);
    assert_int_equal(hdc_weakref_free(c, w), HDC_ENOWEAK);
    assert_int_equal(hdc_weakref_get(c, w, &got), HDC_ENOWEAK);
    assert_int_equal(hdc_weakref_new(c, a, 0, &w), HDC_ENOOBJ);
    close_client(c);
}

static void test_trace(void **state) {
    hdc_t *c = open_client(USER_TOKEN);
    int on = -1;
    uint32_t s1 = 0, s2 = 0;
    uint64_t cur = 0, peak = 0;
    assert_int_equal(hdc_trace_is_tracing(c, &on), 0);
    assert_int_equal(on, 0);
    assert_int_equal(hdc_trace_snapshot(c, &s1), HDC_ENOTRACE);
    assert_int_equal(hdc_trace_start(c), 0);
    assert_int_equal(hdc_trace_is_tracing(c, &on), 0);
    assert_int_equal(on, 1);

    uint64_t a = new_obj(c, 100, 0, "Blob", "a.py:1", 0);
    assert_int_equal(hdc_trace_snapshot(c, &s1), 0);
    uint64_t b = new_obj(c, 200, 0, "Blob", "b.py:2", 0);
    uint64_t d = new_obj(c, 200, 0, "Other", "b.py:2", 0);
    assert_int_equal(hdc_trace_snapshot(c, &s2), 0);
    assert_int_equal(hdc_trace_get_traced_memory(c, &cur, &peak), 0);
    assert_true(cur >= 500 && peak >= cur);

    hdc_trace_stats_t st = {0};
    assert_int_equal(hdc_trace_statistics(c, s2, HDC_TRACE_BY_SITE, 0, &st), 0);
    assert_int_equal(st.n, 2);
    assert_string_equal(st.v[0].key, "b.py:2");
    assert_int_equal(st.v[0].count, 2);
    assert_string_equal(st.v[1].key, "a.py:1");
    hdc_trace_stats_free(&st);
    assert_int_equal(hdc_trace_statistics(c, s2, HDC_TRACE_BY_TAG, 1, &st), 0);
    assert_int_equal(st.n, 1);
    assert_int_equal(st.total, 2);
    assert_string_equal(st.v[0].key, "Blob");
    hdc_trace_stats_free(&st);
    assert_int_equal(hdc_trace_compare(c, s2, s1, HDC_TRACE_BY_SITE, 0, &st), 0);
    assert_true(st.n >= 1);
    assert_string_equal(st.v[0].key, "b.py:2");
    assert_int_equal(st.v[0].count_diff, 2);
    assert_true(st.v[0].bytes_diff > 400);
    hdc_trace_stats_free(&st);

    assert_int_equal(hdc_trace_reset_peak(c), 0);
    assert_int_equal(hdc_trace_clear(c), 0);
    assert_int_equal(hdc_trace_get_traced_memory(c, &cur, &peak), 0);
    assert_int_equal(cur, 0);
    assert_int_equal(hdc_trace_snapshot_free(c, s1), 0);
    assert_int_equal(hdc_trace_snapshot_free(c, s1), HDC_ENOSNAP);
    assert_int_equal(hdc_trace_statistics(c, s1, HDC_TRACE_BY_SITE, 0, &st), HDC_ENOSNAP);
    assert_int_equal(hdc_trace_stop(c), 0);
    assert_int_equal(hdc_trace_is_tracing(c, &on), 0);
    assert_int_equal(on, 0);
    hdc_decref(c, a, 1);
    hdc_decref(c, b, 1);
    hdc_decref(c, d, 1);
    close_client(c);
}

static void test_heap_stats(void **state) {
    hdc_t *c = open_client(USER_TOKEN);
    hdc_heap_stats_t s;
    assert_int_equal(hdc_heap_stats(c, &s), 0);
    assert_int_equal(s.objects, 0);
    assert_int_equal(s.nclasses, 0);
    uint64_t a = new_obj(c, 10, 2, NULL, NULL, 0), b = new_obj(c, 1000, 0, NULL, NULL, 0);
    assert_int_equal(hdc_heap_stats(c, &s), 0);
    assert_int_equal(s.objects, 2);
    assert_int_equal(s.containers, 1);
    assert_int_equal(s.allocs_total, 2);
    assert_int_equal(s.large_objects, 1);
    assert_int_equal(s.arenas_current, 1);
    assert_true(s.nclasses >= 1);
    assert_int_equal(s.classes[0].blocks_in_use, 1);
    assert_int_equal(s.gc_count[0], 1);
    hdc_decref(c, a, 1);
    hdc_decref(c, b, 1);
    close_client(c);
}

/* ------------------------------------------------------------------------------------------ */
/* Admin.                                                                                      */
/* ------------------------------------------------------------------------------------------ */

static void test_admin(void **state) {
    hdc_t *u = open_client(USER_TOKEN), *a = open_client(ADMIN_TOKEN);
    hdc_server_stats_t s = HDC_SERVER_STATS_INIT;
    hdc_sessions_t l = {0};
    assert_int_equal(hdc_server_stats(u, &s), HDC_EPERM);
    assert_int_equal(hdc_list_sessions(u, &l), HDC_EPERM);
    assert_int_equal(hdc_kill_session(u, "x"), HDC_EPERM);

    uint64_t h = new_obj(u, 64, 0, NULL, NULL, 0);
    /* The server publishes each session's counters every few milliseconds: ask until it has
     * (each ask is a round trip, which paces the loop). */
    for (uint64_t until = now_ms() + 5000; now_ms() < until;) {
        assert_int_equal(hdc_server_stats(a, &s), 0);
        if (s.objects_total >= 1) break;
    }
    assert_true(s.sessions >= 2);
    assert_true(s.connections >= 2);
    assert_true(s.objects_total >= 1);

    /* Versioned by size: a caller built with fewer statistics gets only those, and one that
     * did not set the size gets EINVAL. */
    hdc_server_stats_t old;
    memset(&old, 0xAB, sizeof old);
    old.size = offsetof(hdc_server_stats_t, sessions_detached);
    assert_int_equal(hdc_server_stats(a, &old), 0);
    assert_true(old.sessions >= 2);
    uint64_t untouched;
    memset(&untouched, 0xAB, sizeof untouched);
    assert_true(old.sessions_detached == untouched);
    assert_true(old.rss_bytes == untouched);
    hdc_server_stats_t unset = {0};
    assert_int_equal(hdc_server_stats(a, &unset), HDC_EINVAL);
    assert_true(unset.sessions == 0);
    assert_true(s.rss_bytes > 0);
    assert_int_equal(hdc_list_sessions(a, &l), 0);
    const char *uid = hdc_hello_info(u)->session_id;
    int found = 0;
    for (size_t i = 0; i < l.n; i++)
        if (strcmp(l.v[i].id, uid) == 0) {
            found = 1;
            assert_true(l.v[i].attached);
            assert_int_equal(l.v[i].objects, 1);
            assert_true(l.v[i].bytes >= 64);
        }
    assert_true(found);
    assert_true(l.total >= l.n);
    hdc_sessions_free(&l);

    assert_int_equal(hdc_kill_session(a, "no-such-session"), HDC_ENOSESSION);
    assert_int_equal(hdc_kill_session(a, uid), 0);
    /* The server tells the killed session's connection why before it closes it. */
    assert_int_equal(hdc_getrefcount(u, h, &(uint64_t){0}), HDC_ENOSESSION);
    assert_false(hdc_is_connected(u));
    assert_non_null(strstr(hdc_errmsg(u), "ENOSESSION"));
    assert_int_equal(hdc_ping(u, NULL), HDC_ECLOSED);
    hdc_free(u);
    close_client(a);
}

/* Another session, for an admin: its report, and heap calls sent to it with hdc_set_target. */
static void test_other_session(void **state) {
    hdc_t *u = open_client(USER_TOKEN), *a = open_client(ADMIN_TOKEN);
    const char *uid = hdc_hello_info(u)->session_id;
    uint64_t big = new_obj(u, 900, 0, "Big", "big.c:1", 0);
    uint64_t x = new_obj(u, 8, 1, "Node", "node.c:2", 0), y = new_obj(u, 8, 1, "Node", NULL, 0);
    assert_int_equal(hdc_set_slot(u, x, 0, y), 0);
    assert_int_equal(hdc_set_slot(u, y, 0, x), 0);
    assert_int_equal(hdc_decref(u, x, 1), 0);
    assert_int_equal(hdc_decref(u, y, 1), 0);

    hdc_session_report_t r;
    assert_int_equal(hdc_session_report(a, "0123456789abcdef", 0, &r), HDC_ENOSESSION);
    assert_int_equal(hdc_session_report(a, uid, 1, &r), 0);
    assert_string_equal(r.session.id, uid);
    assert_string_equal(r.session.client_name, "test_cclient");
    assert_string_equal(r.session.last_op, "decref");
    assert_int_equal(r.heap.objects, 3);
    assert_int_equal(r.tags_by_bytes.n, 1);
    assert_string_equal(r.tags_by_bytes.v[0].key, "Big");
    assert_string_equal(r.tags_by_count.v[0].key, "Node");
    assert_int_equal(r.tags, 2);
    assert_int_equal(r.sites, 3);
    assert_int_equal(r.gc_threshold[0], 700);
    assert_false(r.tracing);
    hdc_session_report_free(&r);
    assert_int_equal(hdc_session_report(u, uid, 0, &r), HDC_EPERM);

    /* Heap calls to the other session, pipelined too; the ones an admin may not run there
     * are refused, the rest are not touched. */
    assert_int_equal(hdc_set_target(a, uid), 0);
    assert_string_equal(hdc_target(a), uid);
    hdc_trace_stats_t st = {0};
    assert_int_equal(hdc_heap_census(a, HDC_TRACE_BY_TAG, HDC_CENSUS_BY_COUNT, 0, &st), 0);
    assert_int_equal(st.n, 2);
    assert_string_equal(st.v[0].key, "Node");
    assert_int_equal(st.v[0].count, 2);
    hdc_trace_stats_free(&st);
    uint64_t found = 0;
    int enabled = 1, status[3];
    assert_int_equal(hdc_pipeline_begin(a), 0);
    hdc_gc_collect(a, HDC_GC_ALL, &found);
    hdc_gc_disable(a);
    hdc_gc_isenabled(a, &enabled);
    assert_int_equal(hdc_pipeline_end(a, status, 3), 0);
    assert_int_equal(found, 2);
    assert_false(enabled);
    assert_int_equal(hdc_gc_isenabled(u, &enabled), 0); /* as the session itself sees it */
    assert_false(enabled);
    assert_int_equal(hdc_trace_top(a, HDC_TRACE_BY_SITE, 0, &st), HDC_ENOTRACE);
    assert_int_equal(hdc_trace_start(a), 0);
    uint64_t z = new_obj(u, 40, 0, "Z", "z.c:3", 0);
    assert_int_equal(hdc_trace_top(a, HDC_TRACE_BY_SITE, 0, &st), 0);
    assert_int_equal(st.n, 1);
    assert_string_equal(st.v[0].key, "z.c:3");
    hdc_trace_stats_free(&st);
    assert_int_equal(hdc_alloc(a, &(hdc_alloc_args_t){.size = 1}, &x), HDC_EPERM);
    assert_non_null(strstr(hdc_errmsg(a), "cannot be run in another session"));
    assert_int_equal(hdc_gc_freeze(a), HDC_EPERM);
    assert_int_equal(hdc_batch_begin(a), 0);
    assert_int_equal(hdc_gc_enable(a), HDC_EINVAL);
    assert_int_equal(hdc_batch_end(a, NULL, 0), HDC_EINVAL);
    assert_int_equal(hdc_ping(a, NULL), 0); /* not a heap call: this connection's own */
    hdc_heap_stats_t hs;
    assert_int_equal(hdc_heap_stats(a, &hs), 0);
    assert_int_equal(hs.objects, 2);
    assert_int_equal(hdc_set_target(a, NULL), 0);
    assert_null(hdc_target(a));
    assert_int_equal(hdc_heap_stats(a, &hs), 0);
    assert_int_equal(hs.objects, 0); /* back to its own */
    assert_int_equal(hdc_set_target(u, "0123456789abcdef"), 0);
    assert_int_equal(hdc_heap_stats(u, &hs), HDC_EPERM); /* not an admin */
    assert_int_equal(hdc_set_target(u, NULL), 0);
    assert_int_equal(hdc_decref(u, big, 1), 0);
    assert_int_equal(hdc_decref(u, z, 1), 0);
    close_client(u);
    close_client(a);
}

/* ------------------------------------------------------------------------------------------ */
/* Pipelines and batches.                                                                      */
/* ------------------------------------------------------------------------------------------ */

#define NPIPE 20000

static void test_pipeline(void **state) {
    hdc_t *c = open_client(USER_TOKEN);
    /* Many requests queued before any response is read: both socket buffers fill, so this
     * only finishes if the client reads while it writes. */
    uint64_t *h = calloc(NPIPE, sizeof *h);
    int *st = calloc(NPIPE + 2, sizeof *st);
    assert_non_null(h);
    assert_non_null(st);
    hdc_alloc_args_t a = {.size = 8, .tag = "P"};
    assert_int_equal(hdc_pipeline_begin(c), 0);
    assert_int_equal(hdc_pipeline_begin(c), HDC_EINVAL); /* no nesting */
    for (int i = 0; i < NPIPE; i++)
        assert_int_equal(hdc_alloc(c, &a, &h[i]), 0);
    assert_int_equal(hdc_queued(c), NPIPE);
    int prc = hdc_pipeline_end(c, st, NPIPE);
    if (prc) fail_msg("pipeline: %s", hdc_errmsg(c));
    for (int i = 0; i < NPIPE; i++) {
        assert_int_equal(st[i], 0);
        assert_true(h[i] != 0);
    }
    uint64_t objs = 0;
    hdc_heap_stats_t s;
    assert_int_equal(hdc_heap_stats(c, &s), 0);
    assert_int_equal(s.objects, NPIPE);

    /* Failures are per call, in order; the pipeline's result is the first failure. */
    uint64_t v1 = 0, v2 = 0;
    char big[70000];
    memset(big, 'x', sizeof big);
    assert_int_equal(hdc_pipeline_begin(c), 0);
    hdc_getrefcount(c, h[0], &v1);
    hdc_getrefcount(c, 777, &v2);           /* ENOOBJ from the server */
    hdc_write(c, h[0], 0, big, sizeof big); /* EFRAME: refused before it is sent */
    hdc_getrefcount(c, h[1], &objs);
    assert_int_equal(hdc_pipeline_end(c, st, 4), HDC_ENOOBJ);
    assert_int_equal(st[0], 0);
    assert_int_equal(st[1], HDC_ENOOBJ);
    assert_int_equal(st[2], HDC_EFRAME);
    assert_int_equal(st[3], 0);
    assert_int_equal(v1, 1);
    assert_int_equal(objs, 1);
    assert_non_null(strstr(hdc_errmsg(c), "ENOOBJ"));
    assert_int_equal(hdc_pipeline_end(c, NULL, 0), HDC_EINVAL);

    /* An empty pipeline. */
    assert_int_equal(hdc_pipeline_begin(c), 0);
    assert_int_equal(hdc_pipeline_end(c, NULL, 0), 0);

    /* Release in one batch per 1000. */
    for (int i = 0; i < NPIPE; i += 1000)
        assert_int_equal(hdc_decref_many(c, h + i, 1000, st), 0);
    assert_int_equal(hdc_heap_stats(c, &s), 0);
    assert_int_equal(s.objects, 0);
    free(h);
    free(st);
    close_client(c);
}

static void test_batch(void **state) {
    hdc_t *c = open_client(USER_TOKEN);
    uint64_t h[4] = {0}, rc1 = 0, rc2 = 0, t = 0;
    int st[8];
    hdc_alloc_args_t args[3] = {{.size = 4, .slots = 1}, {.size = 4}, {.size = 4, .slots = 1}};
    assert_int_equal(hdc_alloc_many(c, args, 3, h, st), 0);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(st[i], 0);
        assert_true(h[i] != 0);
    }

    assert_int_equal(hdc_batch_begin(c), 0);
    assert_int_equal(hdc_pipeline_begin(c), HDC_EINVAL); /* no pipeline inside a batch */
    hdc_set_slot(c, h[0], 0, h[1]);
    hdc_getrefcount(c, h[1], &rc1);
    hdc_decref(c, 99, 1); /* fails alone */
    hdc_get_slot(c, h[0], 0, &t);
    hdc_goodbye(c); /* not allowed in a batch */
    hdc_getrefcount(c, h[0], &rc2);
    assert_int_equal(hdc_queued(c), 6);
    assert_int_equal(hdc_batch_end(c, st, 6), HDC_ENOOBJ);
    assert_int_equal(st[0], 0);
    assert_int_equal(st[1], 0);
    assert_int_equal(st[2], HDC_ENOOBJ);
    assert_int_equal(st[3], 0);
    assert_int_equal(st[4], HDC_EINVAL);
    assert_int_equal(st[5], 0);
    assert_int_equal(rc1, 2);
    assert_true(t == h[1]);
    assert_int_equal(rc2, 1);
    assert_true(hdc_is_connected(c));
    assert_int_equal(hdc_decref(c, t, 1), 0);

    /* An empty batch. */
    assert_int_equal(hdc_batch_begin(c), 0);
    assert_int_equal(hdc_batch_end(c, NULL, 0), 0);
    assert_int_equal(hdc_batch_end(c, NULL, 0), HDC_EINVAL);

    /* A batch whose results outgrow max_read_bytes stops early: the ops it did not run fail
     * with ERANGE, the ones before it have their results. */
    uint64_t blob = new_obj(c, 20000, 0, NULL, NULL, 0);
    static char bufs[8][20000];
    assert_int_equal(hdc_batch_begin(c), 0);
    for (int i = 0; i < 8; i++)
        hdc_read(c, blob, 0, bufs[i], sizeof bufs[i]);
    assert_int_equal(hdc_batch_end(c, st, 8), HDC_ERANGE);
    int ran = 0;
    while (ran < 8 && st[ran] == 0)
        ran++;
    assert_true(ran >= 1 && ran < 8);
    for (int i = ran; i < 8; i++)
        assert_int_equal(st[i], HDC_ERANGE);
    assert_true(hdc_is_connected(c));

    assert_int_equal(hdc_decref_many(c, h, 3, st), 0);
    assert_int_equal(hdc_decref_many(c, h, 1, st), HDC_ENOOBJ);
    assert_int_equal(hdc_decref(c, blob, 1), 0);
    close_client(c);
}

/* ------------------------------------------------------------------------------------------ */
/* Events.                                                                                     */
/* ------------------------------------------------------------------------------------------ */

typedef struct seen_s {
    int n;
    hdc_event_t ev[32];
    char tags[32][64];
    int reentry; /* what a call from inside the callback returned */
} seen_t;

static void record(hdc_t *c, const hdc_event_t *ev, void *arg) {
    seen_t *s = arg;
    if (s->n < 32) {
        s->ev[s->n] = *ev;
        snprintf(s->tags[s->n], sizeof s->tags[0], "%s", ev->tag);
        s->ev[s->n].tag = s->tags[s->n];
        s->n++;
    }
    s->reentry = hdc_ping(c, NULL);
}

static int find_event(const seen_t *s, hdc_event_type_t type) {
    for (int i = 0; i < s->n; i++)
        if (s->ev[i].type == type) return i;
    return -1;
}

static void test_events(void **state) {
    hdc_t *c = open_client(USER_TOKEN);
    seen_t seen = {0};
    hdc_set_event_cb(c, record, &seen);
    uint32_t mask = 0;
    uint64_t dropped = 99;
    assert_int_equal(hdc_set_events(c, 1u << 9, &mask, &dropped), HDC_EINVAL);
    assert_int_equal(hdc_set_events(c, HDC_EVMASK_ALL, &mask, &dropped), 0);
    assert_int_equal(mask, HDC_EVMASK_ALL);
    assert_int_equal(dropped, 0);

    /* Finalizer and weak reference: events follow the decref's response. */
    uint64_t a = new_obj(c, 0, 0, "Fin", NULL, HDC_OBJ_FINALIZER), w = 0;
    assert_int_equal(hdc_weakref_new(c, a, 1, &w), 0);
    assert_int_equal(hdc_decref(c, a, 1), 0);
    /* They may have come with the response already; hdc_poll waits for the rest. */
    for (int i = 0; i < 50 && seen.n < 2; i++)
        assert_true(hdc_poll(c, 100) >= 0);
    assert_int_equal(seen.n, 2);
    int f = find_event(&seen, HDC_EV_FINALIZED);
    assert_true(f >= 0);
    assert_true(seen.ev[f].handle == a);
    assert_string_equal(seen.ev[f].tag, "Fin");
    int wc = find_event(&seen, HDC_EV_WEAKREF_CLEARED);
    assert_true(wc >= 0);
    assert_true(seen.ev[wc].weak == w);
    assert_int_equal(seen.reentry, HDC_EINVAL); /* no hdc_* calls from the callback */
    assert_int_equal(hdc_poll(c, 0), 0);        /* nothing more */

    /* A ping is a barrier: the collection's events are in before it returns. */
    seen.n = 0;
    assert_int_equal(hdc_gc_collect(c, 1, NULL), 0);
    assert_int_equal(hdc_ping(c, NULL), 0);
    int gs = find_event(&seen, HDC_EV_GC_START), ge = find_event(&seen, HDC_EV_GC_STOP);
    assert_true(gs >= 0 && ge > gs);
    assert_int_equal(seen.ev[gs].generation, 1);
    assert_int_equal(seen.ev[ge].generation, 1);

    /* Events off; without a callback events are read and dropped. */
    assert_int_equal(hdc_set_events(c, 0, &mask, NULL), 0);
    assert_int_equal(mask, 0);
    seen.n = 0;
    assert_int_equal(hdc_gc_collect(c, 0, NULL), 0);
    assert_int_equal(hdc_ping(c, NULL), 0);
    assert_int_equal(seen.n, 0);
    assert_int_equal(hdc_set_events(c, HDC_EVMASK(HDC_EV_GC_STOP), NULL, NULL), 0);
    hdc_set_event_cb(c, NULL, NULL);
    assert_int_equal(hdc_gc_collect(c, 0, NULL), 0);
    assert_int_equal(hdc_ping(c, NULL), 0);
    assert_int_equal(seen.n, 0);
    close_client(c);
}

/* ------------------------------------------------------------------------------------------ */
/* Sessions: resume, goodbye.                                                                  */
/* ------------------------------------------------------------------------------------------ */

static void test_resume(void **state) {
    hdc_t *c = open_client(USER_TOKEN);
    uint64_t h = new_obj(c, 8, 0, "Kept", NULL, 0), v = 0;
    assert_int_equal(hdc_write(c, h, 0, "persist", 7), 0);
    char sid[128], tok[128];
    snprintf(sid, sizeof sid, "%s", hdc_hello_info(c)->session_id);
    snprintf(tok, sizeof tok, "%s", hdc_hello_info(c)->resume_token);

    /* Drop the connection: the session lingers. */
    hdc_close(c);
    assert_false(hdc_is_connected(c));
    assert_int_equal(hdc_getrefcount(c, h, &v), HDC_ECLOSED);
    assert_int_equal(hdc_reconnect(c), 0);
    assert_true(hdc_hello_info(c)->resumed);
    assert_string_equal(hdc_hello_info(c)->session_id, sid);
    assert_int_equal(hdc_getrefcount(c, h, &v), 0);
    assert_int_equal(v, 1);
    char buf[8];
    assert_int_equal(hdc_read(c, h, 0, buf, 7), 0);
    assert_memory_equal(buf, "persist", 7);

    /* A second client may not take an attached session. */
    snprintf(tok, sizeof tok, "%s", hdc_hello_info(c)->resume_token);
    hdc_t *d = hdc_new();
    hdc_options_t o;
    hdc_options_init(&o);
    o.token = USER_TOKEN;
    o.session_id = sid;
    o.resume_token = tok;
    assert_int_equal(hdc_connect(d, sock_url, &o), HDC_EBUSY);

    /* Once it is detached, a new client resumes it with the id and token. */
    hdc_close(c);
    /* The server notices the close asynchronously: until then hello answers EBUSY. Each try
     * is a connection and a round trip, which paces the loop. */
    for (uint64_t until = now_ms() + 5000; now_ms() < until;)
        if (hdc_connect(d, sock_url, &o) != HDC_EBUSY) break;
    assert_true(hdc_is_connected(d));
    assert_true(hdc_hello_info(d)->resumed);
    assert_int_equal(hdc_getrefcount(d, h, &v), 0);

    /* A wrong resume token is refused. */
    hdc_close(d);
    o.resume_token = "not-the-token";
    int rc = hdc_connect(c, sock_url, &o);
    assert_true(rc == HDC_EAUTH || rc == HDC_ENOSESSION);

    /* After goodbye the session is gone. */
    assert_int_equal(hdc_reconnect(d), 0);
    snprintf(tok, sizeof tok, "%s", hdc_hello_info(d)->resume_token);
    assert_int_equal(hdc_goodbye(d), 0);
    o.resume_token = tok;
    assert_int_equal(hdc_connect(c, sock_url, &o), HDC_ENOSESSION);
    hdc_free(c);
    hdc_free(d);
}

/* ------------------------------------------------------------------------------------------ */
/* Fake servers: no answer, garbage.                                                           */
/* ------------------------------------------------------------------------------------------ */

/* Listens on tmpdir/name; the child accepts one connection, reads, writes reply (n bytes,
 * none if n is 0) and holds the connection open until it is killed. */
static pid_t fake_server(const char *name, const void *reply, size_t n, char *url, size_t cap) {
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    snprintf(sa.sun_path, sizeof sa.sun_path, "%s/%s", tmpdir, name);
    snprintf(url, cap, "unix:%s", sa.sun_path);
    unlink(sa.sun_path);
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof sa), 0);
    assert_int_equal(listen(fd, 1), 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        int cfd = accept(fd, NULL, NULL);
        char buf[4096];
        if (cfd >= 0 && read(cfd, buf, sizeof buf) > 0 && n) {
            ssize_t w = write(cfd, reply, n);
            (void)w;
        }
        pause(); /* holds the connection until the test kills it */
        _exit(0);
    }
    close(fd);
    return pid;
}

static void test_timeout_and_bad_reply(void **state) {
    char url[160];
    hdc_t *c = hdc_new();
    hdc_options_t o;
    hdc_options_init(&o);
    o.timeout_ms = 200;

    pid_t p = fake_server("silent.sock", NULL, 0, url, sizeof url);
    assert_int_equal(hdc_connect(c, url, &o), HDC_ETIMEOUT);
    assert_false(hdc_is_connected(c));
    kill(p, SIGKILL);
    waitpid(p, NULL, 0);

    /* A frame that claims 16 bytes and holds garbage. */
    static const unsigned char junk[] = {0,    0,    0,    16,   0xff, 0xff, 0xff,
                                         0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
                                         0xff, 0xff, 0xff, 0xff, 0xff, 0xff};
    p = fake_server("junk.sock", junk, sizeof junk, url, sizeof url);
    assert_int_equal(hdc_connect(c, url, &o), HDC_EBADREPLY);
    kill(p, SIGKILL);
    waitpid(p, NULL, 0);

    /* A length over any limit. */
    static const unsigned char huge[] = {0x7f, 0xff, 0xff, 0xff, 0};
    p = fake_server("huge.sock", huge, sizeof huge, url, sizeof url);
    assert_int_equal(hdc_connect(c, url, &o), HDC_EBADREPLY);
    kill(p, SIGKILL);
    waitpid(p, NULL, 0);
    hdc_free(c);
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: test_cclient PATH_TO_HEAPD\n");
        return 2;
    }
    heapd_path = argv[1];
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_error_codes),
        cmocka_unit_test(test_connect_errors),
        cmocka_unit_test(test_hello_and_ping),
        cmocka_unit_test(test_objects),
        cmocka_unit_test(test_gc),
        cmocka_unit_test(test_weakref),
        cmocka_unit_test(test_trace),
        cmocka_unit_test(test_heap_stats),
        cmocka_unit_test(test_admin),
        cmocka_unit_test(test_other_session),
        cmocka_unit_test(test_pipeline),
        cmocka_unit_test(test_batch),
        cmocka_unit_test(test_events),
        cmocka_unit_test(test_resume),
        cmocka_unit_test(test_timeout_and_bad_reply),
    };
    return cmocka_run_group_tests(tests, start_heapd, stop_heapd);
}
