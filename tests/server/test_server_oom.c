/* SPDX-License-Identifier: MIT */
/*
 * test_server_oom.c: fault injection over the daemon's own allocations (src/server/smem.h),
 * the way tests/heap/test_oom.c does it over the engine and test_tls_oom.c over OpenSSL's.
 *
 * The whole server runs in this process (server.c:hd__server_run on a thread of its own, one
 * worker, a Unix socket, a data_dir), with the allocation hook replaced by a counting one
 * that can fail the N-th allocation heapd itself makes (libuv's and OpenSSL's are counted,
 * never failed: libuv aborts on some of its own, which is libuv's business). For N = 1, 2, 3,
 * ... a fresh server runs one client's whole life with the N-th allocation failing:
 *
 *   connect (accept, the hand-over to the worker), hello (a new session), allocations with a
 *   tag, slots, a write, a batch, a read of 256 KiB (a large result), events (a finalizer
 *   and a collection), gc_get_objects, a background save (persist.c, snapfile.c, zstd), a
 *   request whose connection drops before its answer is read, a resume with resend (the
 *   replay window answers it), goodbye.
 *
 * Every answer must be a success or ENOMEM with a message, or the connection closes; no
 * crash, no hang. After each run, with nothing failing any more: a session opened before the
 * run (a bystander) still answers with its object as it was, a fresh session works from
 * hello to goodbye, and once the server has stopped, every byte and block the hook handed
 * out is back (the counter stands where it stood after the first server stopped: libuv keeps
 * its thread pool's table for the process's life). ASan's leak check covers what the hook
 * cannot see. The loop ends at the first N whose run never reached a failure.
 *
 * The plain shape runs again with the engine's allocations (src/heap/mem.c's hook, behind
 * the same counter) failing too: what the daemon makes of an engine that says ENOMEM.
 *
 * Another loop fails the N-th allocation of a start, from loading the config to serving: the
 * server serves, or hd__server_run returns an error having undone everything.
 *
 * Another loop fails the N-th allocation of a shutdown (SIGTERM: every session saved, the
 * attached one told ESHUTDOWN): it must end, leave nothing behind, and every session it saved
 * must come back whole at the next start (one whose save failed is gone: it had no snapshot
 * before); no file is ever refused as corrupt.
 *
 * A last loop does the same over restoring a snapshot at start-up (persist.c's restore,
 * snapfile.c's reader, and again with the engine's hd_heap_load failing too): the N-th
 * allocation made while the server restores fails, and the session must come back whole or
 * not at all, with its file kept, never moved aside, so that the next start restores it.
 *
 * HD_OOM_VERBOSE=1 prints each run's outcome and the server's warnings; 2 adds a backtrace of
 * each failed allocation.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "heapd.pb-c.h"
#include "server.h"
#include "smem.h"

#include <dirent.h>
#include <execinfo.h>
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <time.h>
#include <unistd.h>

typedef Heapd__V1__Request req_t;
typedef Heapd__V1__Response rsp_t;
#define OP(name)     HEAPD__V1__REQUEST__OP_##name
#define RESULT(name) HEAPD__V1__RESPONSE__RESULT_##name

static int verbose;

/* ------------------------------------------------------------------------------------------ */
/* The counting hook.                                                                          */
/* ------------------------------------------------------------------------------------------ */

/* A header before each block: its size, so that free can give the bytes back. 16 bytes keep
 * malloc's alignment. */
typedef struct hdr_s {
    size_t size;
    size_t magic;
} hdr_t;
#define MAGIC ((size_t)0x6865617064534d4dull)

static atomic_long live_bytes, live_blocks;
static atomic_long seen;    /* heapd's own allocations counted since arming */
static atomic_long fail_at; /* the one to fail (1-based); 0: none */
static atomic_int hit;      /* it came and failed */
static atomic_int armed;

static int should_fail(hd_smem_from_t from) {
    if (from != HD_SMEM_DAEMON || !atomic_load(&armed)) return 0;
    long n = atomic_fetch_add(&seen, 1) + 1;
    if (n != atomic_load(&fail_at)) return 0;
    atomic_store(&hit, 1);
    if (verbose > 1) { /* HD_OOM_VERBOSE=2: where it failed */
        void *bt[16];
        backtrace_symbols_fd(bt, backtrace(bt, 16), 2);
    }
    return 1;
}

static void *t_malloc(size_t n, hd_smem_from_t from) {
    if (should_fail(from)) return NULL;
    hdr_t *h = malloc(sizeof *h + n);
    if (!h) return NULL;
    h->size = n;
    h->magic = MAGIC;
    atomic_fetch_add(&live_bytes, (long)n);
    atomic_fetch_add(&live_blocks, 1);
    return h + 1;
}

static void *t_calloc(size_t n, size_t size, hd_smem_from_t from) {
    if (size && n > SIZE_MAX / size) return NULL;
    void *p = t_malloc(n * size, from);
    if (p) memset(p, 0, n * size);
    return p;
}

static void t_free(void *p) {
    if (!p) return;
    hdr_t *h = (hdr_t *)p - 1;
    /* Catches a block freed through the hook that another allocator handed out. */
    if (h->magic != MAGIC) {
        fprintf(stderr, "test_server_oom: hd__sfree of a block the hook did not allocate\n");
        abort();
    }
    h->magic = 0;
    atomic_fetch_sub(&live_bytes, (long)h->size);
    atomic_fetch_sub(&live_blocks, 1);
    free(h);
}

static void *t_realloc(void *p, size_t n, hd_smem_from_t from) {
    if (!p) return t_malloc(n, from);
    if (n == 0) {
        t_free(p);
        return NULL;
    }
    if (should_fail(from)) return NULL;
    hdr_t *h = (hdr_t *)p - 1;
    if (h->magic != MAGIC) {
        fprintf(stderr, "test_server_oom: hd__srealloc of a block the hook did not allocate\n");
        abort();
    }
    size_t old = h->size;
    hdr_t *nh = realloc(h, sizeof *nh + n);
    if (!nh) return NULL;
    nh->size = n;
    atomic_fetch_add(&live_bytes, (long)n - (long)old);
    return nh + 1;
}

static const hd_smem_methods_t counting = {t_malloc, t_calloc, t_realloc, t_free};

/* The engine's hook (src/heap/mem.c) behind the same counter: its allocations count to the
 * leak check always, and are failed too while engine_fails is set (the heaps' memory is the
 * engine's to handle, tests/heap/test_oom.c; here it is what the daemon makes of an engine
 * that says ENOMEM). Arenas and their pools come from map, counted as one block each. */
static atomic_int engine_fails;

static hd_smem_from_t engine_from(void) {
    return atomic_load(&engine_fails) ? HD_SMEM_DAEMON : HD_SMEM_LIBUV;
}
static void *e_malloc(size_t n) {
    return t_malloc(n, engine_from());
}
static void *e_realloc(void *p, size_t n) {
    return t_realloc(p, n, engine_from());
}
static void *e_map(size_t n) {
    if (should_fail(engine_from())) return NULL;
    void *p = mmap(NULL, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return NULL;
    atomic_fetch_add(&live_bytes, (long)n);
    atomic_fetch_add(&live_blocks, 1);
    return p;
}
static void e_unmap(void *p, size_t n) {
    munmap(p, n);
    atomic_fetch_sub(&live_bytes, (long)n);
    atomic_fetch_sub(&live_blocks, 1);
}
static const hd_mem_methods_t engine_counting = {e_malloc, e_realloc, t_free, e_map, e_unmap};

static void arm(long n) {
    atomic_store(&seen, 0);
    atomic_store(&hit, 0);
    atomic_store(&fail_at, n);
    atomic_store(&armed, 1);
}

static void disarm(void) {
    atomic_store(&armed, 0);
}

/* ------------------------------------------------------------------------------------------ */
/* The server, in process.                                                                     */
/* ------------------------------------------------------------------------------------------ */

static char dir[] = "/tmp/heapd-oom-XXXXXX";
static char sock_path[100], data_dir[100];
static hd_server_t srv;
static uv_thread_t srv_thread;
static int srv_rc;

static atomic_int srv_done; /* hd__server_run returned */

static void server_main(void *arg) {
    (void)arg;
    srv_rc = hd__server_run(&srv);
    atomic_store(&srv_done, 1);
}

static uint64_t now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* A short wait between polls of something another thread changes. */
static void nap(void) {
    struct timespec ts = {0, 200000};
    nanosleep(&ts, NULL);
}

/* The server's shape: 0, one worker and everything on its loop; 1, the busy shape: two
 * workers (a resume may move the connection), every request off the loop (offload.c), every
 * request in the slowlog, compressed snapshots, the HTTP server. */
static int shape;
static unsigned http_port;

/* A TCP port free now on 127.0.0.1 (the HTTP server binds it a moment later). */
static unsigned free_port(void) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof a;
    if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof a) < 0 ||
        getsockname(fd, (struct sockaddr *)&a, &len) < 0)
        fail_msg("no free port: %s", strerror(errno));
    close(fd);
    return ntohs(a.sin_port);
}

/* Starts the server with the fail-th allocation from here on failing (0: none): its config
 * loaded, then hd__server_run on its thread until it serves. Returns 1 when it serves, 0 when
 * a failed allocation stopped it from starting (its config refused, or hd__server_run back
 * with an error): then nothing of it runs. */
static int server_launch(long fail) {
    memset(&srv, 0, sizeof srv);
    atomic_store(&srv_done, 0);
    if (fail) arm(fail);
    char text[1024], http[64] = "http: []\n";
    if (shape == 1) snprintf(http, sizeof http, "http: [\"127.0.0.1:%u\"]\n", http_port);
    snprintf(text, sizeof text,
             "listen: []\n"
             "%s"
             "unix_socket: \"%s\"\n"
             "workers: %d\n"
             "log_level: %s\n"
             "data_dir: \"%s\"\n"
             "snapshot_interval: 3600s\n"
             "session_linger: 60s\n"
             "replay_window: 16\n"
             "max_memory: 0\n"
             "%s",
             http, sock_path, shape == 1 ? 2 : 1, verbose ? "warn" : "error", data_dir,
             shape == 1 ? "offload_above: 1\n"
                          "slowlog_threshold_us: 0\n"
                          "snapshot_compress: true\n"
                        : "");
    hd_config_error_t err;
    if (hd_config_load_text(text, strlen(text), &srv.cfg, &err) < 0) {
        char msg[512];
        hd_config_error_format(&err, msg, sizeof msg);
        if (fail && atomic_load(&hit) && strstr(msg, "out of memory")) return 0;
        fail_msg("test config: %s", msg);
    }
    hd__server_apply_logging(&srv.cfg);
    assert_int_equal(uv_thread_create(&srv_thread, server_main, NULL), 0);
    uint64_t until = now_ms() + 20000;
    while (atomic_load(&srv.serving) != HD_SERVING) {
        if (atomic_load(&srv_done)) {
            uv_thread_join(&srv_thread);
            if (!fail || !atomic_load(&hit)) fail_msg("the server did not start");
            if (srv_rc >= 0) fail_msg("the server stopped at start without an error");
            return 0;
        }
        if (now_ms() > until) fail_msg("the server did not become ready");
        nap();
    }
    return 1;
}

static void server_start(void) {
    assert_int_equal(server_launch(0), 1);
}

static void server_stop(void) {
    kill(getpid(), SIGTERM);
    /* A shutdown that hangs is a failure too: no join without a deadline. */
    for (uint64_t until = now_ms() + 20000; !atomic_load(&srv_done);) {
        if (now_ms() > until) {
            fprintf(stderr, "test_server_oom: the server did not stop in 20 s\n");
            _exit(1); /* its threads are stuck: nothing to clean up */
        }
        nap();
    }
    uv_thread_join(&srv_thread);
    assert_int_equal(srv_rc, 0);
}

/* Removes every file of data_dir. */
static void wipe_data_dir(void) {
    DIR *d = opendir(data_dir);
    if (!d) return;
    struct dirent *e;
    char path[512];
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.') continue;
        snprintf(path, sizeof path, "%s/%s", data_dir, e->d_name);
        unlink(path);
    }
    closedir(d);
}

/* Files in data_dir whose name ends in suffix. */
static int count_files(const char *suffix) {
    DIR *d = opendir(data_dir);
    if (!d) return 0;
    int n = 0;
    struct dirent *e;
    size_t sl = strlen(suffix);
    while ((e = readdir(d))) {
        size_t l = strlen(e->d_name);
        if (e->d_name[0] != '.' && l >= sl && strcmp(e->d_name + l - sl, suffix) == 0) n++;
    }
    closedir(d);
    return n;
}

/* ------------------------------------------------------------------------------------------ */
/* A raw protocol client.                                                                      */
/* ------------------------------------------------------------------------------------------ */

typedef struct client_s {
    int fd;
    uint64_t next_id;
    int events;       /* event frames read */
    uint64_t last_id; /* a resume's HelloResult.last_id */
    char session_id[128], resume_token[128];
} client_t;

static int cl_connect(client_t *c) {
    memset(c, 0, sizeof *c);
    c->next_id = 1;
    c->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    snprintf(a.sun_path, sizeof a.sun_path, "%s", sock_path);
    if (c->fd < 0 || connect(c->fd, (struct sockaddr *)&a, sizeof a) < 0) return -1;
    return 0;
}

static void cl_close(client_t *c) {
    if (c->fd >= 0) close(c->fd);
    c->fd = -1;
}

static int write_all(int fd, const uint8_t *p, size_t n) {
    while (n) {
        ssize_t k = send(fd, p, n, MSG_NOSIGNAL);
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) return -1;
        p += k;
        n -= (size_t)k;
    }
    return 0;
}

/* Reads n bytes, waiting at most 10 s in all; -1 on end of file or error, -2 on timeout. */
static int read_all(int fd, uint8_t *p, size_t n) {
    uint64_t until = now_ms() + 10000;
    while (n) {
        struct pollfd pf = {fd, POLLIN, 0};
        int64_t left = (int64_t)(until - now_ms());
        if (left <= 0) return -2;
        int r = poll(&pf, 1, (int)left);
        if (r < 0 && errno == EINTR) continue;
        if (r == 0) return -2;
        ssize_t k = recv(fd, p, n, 0);
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) return -1;
        p += k;
        n -= (size_t)k;
    }
    return 0;
}

/* Sends rq (its id set by the caller). */
static int cl_send(client_t *c, req_t *rq) {
    Heapd__V1__ClientFrame cf = HEAPD__V1__CLIENT_FRAME__INIT;
    cf.kind_case = HEAPD__V1__CLIENT_FRAME__KIND_REQUEST;
    cf.request = rq;
    size_t n = protobuf_c_message_get_packed_size(&cf.base);
    uint8_t *b = malloc(n + 4);
    assert_non_null(b);
    b[0] = (uint8_t)(n >> 24), b[1] = (uint8_t)(n >> 16), b[2] = (uint8_t)(n >> 8),
    b[3] = (uint8_t)n;
    protobuf_c_message_pack(&cf.base, b + 4);
    int rc = write_all(c->fd, b, n + 4);
    free(b);
    return rc;
}

/* The response to id (events before it are counted), or NULL when the connection closed.
 * A hang (10 s without it) fails the test. Caller frees with rsp_free. */
static rsp_t *cl_wait(client_t *c, uint64_t id, const char *what) {
    for (;;) {
        uint8_t h[4];
        int rc = read_all(c->fd, h, 4);
        if (rc == -2) fail_msg("%s: no answer in 10 s", what);
        if (rc < 0) return NULL;
        uint32_t n = (uint32_t)h[0] << 24 | (uint32_t)h[1] << 16 | (uint32_t)h[2] << 8 | h[3];
        uint8_t *b = malloc(n ? n : 1);
        assert_non_null(b);
        rc = read_all(c->fd, b, n);
        if (rc == -2) fail_msg("%s: a frame cut short for 10 s", what);
        if (rc < 0) {
            free(b);
            return NULL;
        }
        Heapd__V1__ServerFrame *f = heapd__v1__server_frame__unpack(NULL, n, b);
        free(b);
        if (!f) fail_msg("%s: a frame that does not decode", what);
        if (f->kind_case == HEAPD__V1__SERVER_FRAME__KIND_EVENT) {
            c->events++;
            heapd__v1__server_frame__free_unpacked(f, NULL);
            continue;
        }
        if (f->kind_case != HEAPD__V1__SERVER_FRAME__KIND_RESPONSE)
            fail_msg("%s: a frame that is not a response", what);
        rsp_t *r = f->response;
        f->response = NULL;
        heapd__v1__server_frame__free_unpacked(f, NULL);
        if (r->id == id || r->id == 0) return r; /* id 0: the server's last word */
        fail_msg("%s: answer to id %llu, waiting for %llu", what, (unsigned long long)r->id,
                 (unsigned long long)id);
    }
}

static void rsp_free(rsp_t *r) {
    if (r) heapd__v1__response__free_unpacked(r, NULL);
}

static rsp_t *cl_call(client_t *c, req_t *rq, const char *what) {
    rq->id = c->next_id++;
    if (cl_send(c, rq) < 0) return NULL;
    return cl_wait(c, rq->id, what);
}

static int status_of(const rsp_t *r) {
    return r && r->status ? -r->status->code : 0;
}

/* ------------------------------------------------------------------------------------------ */
/* One run's bookkeeping.                                                                      */
/* ------------------------------------------------------------------------------------------ */

typedef struct run_s {
    int enomem;        /* answers ENOMEM */
    int closed;        /* the connection closed under it */
    const char *step;  /* the last step taken */
    const char *first; /* the first answered ENOMEM */
} run_t;

/* The verdict on one answer of a faulted run: 1 to go on, 0 when the connection closed.
 * Anything but success or ENOMEM (with a message) fails the test. */
static int judge(run_t *run, const rsp_t *r, const char *step) {
    run->step = step;
    if (!r) {
        run->closed++;
        return 0;
    }
    int code = status_of(r);
    if (code == 0) return 1;
    if (code == HD_ENOMEM && r->status->message && *r->status->message) {
        if (!run->enomem++) run->first = step;
        return 1;
    }
    fail_msg("%s: answered %s (%s) under a failed allocation", step,
             r->status->name ? r->status->name : "?", r->status->message ? r->status->message : "");
    return 0;
}

/* Says hello on c: a new session, or a resume of c's session (with resend). */
static rsp_t *hello(client_t *c, int resume) {
    Heapd__V1__Hello h = HEAPD__V1__HELLO__INIT;
    h.protocol_version = 1;
    h.client_name = "test_server_oom";
    if (resume) {
        h.session_id = c->session_id;
        h.resume_token = c->resume_token;
        h.resend = 1;
    }
    req_t rq = HEAPD__V1__REQUEST__INIT;
    rq.op_case = OP(HELLO);
    rq.hello = &h;
    /* A resume's hello has id 0: the ids after it are the re-sends'. */
    rsp_t *r = NULL;
    if (resume)
        r = cl_send(c, &rq) < 0 ? NULL : cl_wait(c, 0, "hello");
    else
        r = cl_call(c, &rq, "hello");
    if (r && status_of(r) == 0 && r->result_case == RESULT(HELLO)) {
        snprintf(c->session_id, sizeof c->session_id, "%s", r->hello->session_id);
        snprintf(c->resume_token, sizeof c->resume_token, "%s", r->hello->resume_token);
        c->last_id = r->hello->last_id;
    }
    return r;
}

static req_t alloc_req(Heapd__V1__Alloc *a, uint32_t size, uint32_t slots, const char *tag,
                       uint32_t flags) {
    Heapd__V1__Alloc init = HEAPD__V1__ALLOC__INIT;
    *a = init;
    a->size = size;
    a->slots = slots;
    a->tag = (char *)tag;
    a->flags = flags;
    req_t rq = HEAPD__V1__REQUEST__INIT;
    rq.op_case = OP(ALLOC);
    rq.alloc = a;
    return rq;
}

/* An alloc; its handle, or 0 (the answer judged into run, or asserted when run is NULL). */
static uint64_t do_alloc(client_t *c, run_t *run, uint32_t size, uint32_t slots, const char *tag,
                         uint32_t flags, int *open) {
    Heapd__V1__Alloc a;
    req_t rq = alloc_req(&a, size, slots, tag, flags);
    rsp_t *r = cl_call(c, &rq, "alloc");
    uint64_t handle = 0;
    if (run) {
        *open = judge(run, r, "alloc");
    } else {
        assert_non_null(r);
        assert_int_equal(status_of(r), 0);
    }
    if (r && status_of(r) == 0) handle = r->alloc->handle;
    rsp_free(r);
    return handle;
}

/* ------------------------------------------------------------------------------------------ */
/* What must hold after every run.                                                             */
/* ------------------------------------------------------------------------------------------ */

static const uint8_t pattern[] = "the bystander's bytes";

/* A session whose object holds pattern: opened before a run, checked after it. */
static void bystander_open(client_t *c, uint64_t *handle) {
    assert_int_equal(cl_connect(c), 0);
    rsp_t *r = hello(c, 0);
    assert_non_null(r);
    assert_int_equal(status_of(r), 0);
    rsp_free(r);
    *handle = do_alloc(c, NULL, sizeof pattern, 0, "bystander", 0, NULL);
    Heapd__V1__Write w = HEAPD__V1__WRITE__INIT;
    w.handle = *handle;
    w.data.data = (uint8_t *)pattern;
    w.data.len = sizeof pattern;
    req_t rq = HEAPD__V1__REQUEST__INIT;
    rq.op_case = OP(WRITE);
    rq.write = &w;
    r = cl_call(c, &rq, "bystander write");
    assert_non_null(r);
    assert_int_equal(status_of(r), 0);
    rsp_free(r);
}

/* The object as it was, then goodbye. */
static void bystander_check(client_t *c, uint64_t handle) {
    Heapd__V1__Read rd = HEAPD__V1__READ__INIT;
    rd.handle = handle;
    rd.length = sizeof pattern;
    req_t rq = HEAPD__V1__REQUEST__INIT;
    rq.op_case = OP(READ);
    rq.read = &rd;
    rsp_t *r = cl_call(c, &rq, "bystander read");
    if (!r) fail_msg("the bystander's connection was closed");
    if (status_of(r) != 0)
        fail_msg("the bystander's read answered %s: %s", r->status->name, r->status->message);
    assert_int_equal(r->read->data.len, sizeof pattern);
    assert_memory_equal(r->read->data.data, pattern, sizeof pattern);
    rsp_free(r);
    req_t g = HEAPD__V1__REQUEST__INIT;
    Heapd__V1__Goodbye gb = HEAPD__V1__GOODBYE__INIT;
    g.op_case = OP(GOODBYE);
    g.goodbye = &gb;
    r = cl_call(c, &g, "bystander goodbye");
    assert_non_null(r);
    assert_int_equal(status_of(r), 0);
    rsp_free(r);
    cl_close(c);
}

/* A fresh session, from hello to goodbye, everything succeeding. */
static void fresh_session(void) {
    client_t c;
    assert_int_equal(cl_connect(&c), 0);
    rsp_t *r = hello(&c, 0);
    if (!r || status_of(r) != 0) fail_msg("a fresh session's hello failed");
    rsp_free(r);
    uint64_t h = do_alloc(&c, NULL, 4096, 2, "fresh", 0, NULL);
    Heapd__V1__Read rd = HEAPD__V1__READ__INIT;
    rd.handle = h;
    rd.length = 4096;
    req_t rq = HEAPD__V1__REQUEST__INIT;
    rq.op_case = OP(READ);
    rq.read = &rd;
    r = cl_call(&c, &rq, "fresh read");
    assert_non_null(r);
    assert_int_equal(status_of(r), 0);
    assert_int_equal(r->read->data.len, 4096);
    rsp_free(r);
    req_t g = HEAPD__V1__REQUEST__INIT;
    Heapd__V1__Goodbye gb = HEAPD__V1__GOODBYE__INIT;
    g.op_case = OP(GOODBYE);
    g.goodbye = &gb;
    r = cl_call(&c, &g, "fresh goodbye");
    assert_non_null(r);
    assert_int_equal(status_of(r), 0);
    rsp_free(r);
    cl_close(&c);
}

/* ------------------------------------------------------------------------------------------ */
/* The busy shape's watchers: a monitor, an admin inspecting the session, an HTTP scrape.      */
/* ------------------------------------------------------------------------------------------ */

static client_t mon, insp;

/* The answer's verdict when it comes from another connection than the life's: it may have
 * been closed by the failure too. */
static void judge_aside(run_t *run, client_t *c, rsp_t *r, const char *step) {
    if (!judge(run, r, step)) cl_close(c);
}

/* An HTTP GET of path on the HTTP server: its status code, or 0 when the connection closed
 * before a status line. */
static int http_get(const char *path) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in a = {.sin_family = AF_INET,
                            .sin_port = htons((uint16_t)http_port),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof a) < 0) {
        if (fd >= 0) close(fd);
        return 0;
    }
    char req[256];
    int n =
        snprintf(req, sizeof req, "GET %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", path);
    int code = 0;
    if (write_all(fd, (const uint8_t *)req, (size_t)n) == 0) {
        char head[16] = "";
        int rc = read_all(fd, (uint8_t *)head, 12);
        if (rc == -2) fail_msg("GET %s: no answer in 10 s", path);
        if (rc == 0) code = atoi(head + 9);
        uint8_t sink[4096];
        for (uint64_t until = now_ms() + 10000;;) { /* to the end: the server closes */
            struct pollfd pf = {fd, POLLIN, 0};
            if (now_ms() > until) fail_msg("GET %s: not closed in 10 s", path);
            if (poll(&pf, 1, 100) <= 0) continue;
            ssize_t k = recv(fd, sink, sizeof sink, 0);
            if (k == 0 || (k < 0 && errno != EINTR)) break;
        }
    }
    close(fd);
    return code;
}

static void watchers_open(run_t *run, const char *session_id) {
    /* A monitor: every request of the life is recorded to it. */
    if (cl_connect(&mon) == 0) {
        rsp_t *r = hello(&mon, 0);
        int ok = r && status_of(r) == 0;
        judge_aside(run, &mon, r, "monitor's hello");
        rsp_free(r);
        if (ok) {
            Heapd__V1__Monitor m = HEAPD__V1__MONITOR__INIT;
            req_t q = HEAPD__V1__REQUEST__INIT;
            q.op_case = OP(MONITOR);
            q.monitor = &m;
            r = cl_call(&mon, &q, "monitor");
            judge_aside(run, &mon, r, "monitor");
            rsp_free(r);
        }
    }
    /* An admin's report on the session, run by the worker that owns it. */
    if (cl_connect(&insp) == 0) {
        rsp_t *r = hello(&insp, 0);
        int ok = r && status_of(r) == 0;
        judge_aside(run, &insp, r, "inspector's hello");
        rsp_free(r);
        if (ok) {
            Heapd__V1__SessionReport sr = HEAPD__V1__SESSION_REPORT__INIT;
            sr.session_id = (char *)session_id;
            req_t q = HEAPD__V1__REQUEST__INIT;
            q.op_case = OP(SESSION_REPORT);
            q.session_report = &sr;
            r = cl_call(&insp, &q, "session_report");
            judge_aside(run, &insp, r, "session_report");
            rsp_free(r);
        }
    }
    int code = http_get("/metrics");
    if (code != 200 && code != 500 && code != 503 && code != 0)
        fail_msg("GET /metrics answered %d under a failed allocation", code);
}

static void watchers_close(run_t *run) {
    int code = http_get("/api/sessions");
    if (code != 200 && code != 500 && code != 503 && code != 0)
        fail_msg("GET /api/sessions answered %d under a failed allocation", code);
    if (insp.fd >= 0) {
        Heapd__V1__ListSessions ls = HEAPD__V1__LIST_SESSIONS__INIT;
        req_t q = HEAPD__V1__REQUEST__INIT;
        q.op_case = OP(LIST_SESSIONS);
        q.list_sessions = &ls;
        rsp_t *r = cl_call(&insp, &q, "list_sessions");
        judge_aside(run, &insp, r, "list_sessions");
        rsp_free(r);
    }
    cl_close(&insp);
    cl_close(&mon);
}

/* ------------------------------------------------------------------------------------------ */
/* A client's whole life.                                                                      */
/* ------------------------------------------------------------------------------------------ */

#define BIG (256u * 1024u)

/* Runs the life on a fresh connection, judging every answer; stops where the connection
 * closes. */
static void life(run_t *run) {
    client_t c;
    int open = 1;
    run->step = "connect";
    if (cl_connect(&c) < 0) {
        run->closed++;
        return;
    }
    rsp_t *r = hello(&c, 0);
    open = judge(run, r, "hello");
    int got_session = r && status_of(r) == 0;
    rsp_free(r);
    if (!open || !got_session) goto out;
    if (shape == 1) watchers_open(run, c.session_id);

    /* Events: every kind. */
    Heapd__V1__SetEvents se = HEAPD__V1__SET_EVENTS__INIT;
    se.mask = 0x1e;
    req_t rq = HEAPD__V1__REQUEST__INIT;
    rq.op_case = OP(SET_EVENTS);
    rq.set_events = &se;
    r = cl_call(&c, &rq, "set_events");
    open = judge(run, r, "set_events");
    rsp_free(r);
    if (!open) goto out;

    /* Objects: a container, a tagged child in its slot, a payload written. */
    uint64_t box = do_alloc(&c, run, 32, 4, "box", 0, &open);
    if (!open) goto out;
    uint64_t kid = do_alloc(&c, run, 64, 0, "kid", 0, &open);
    if (!open) goto out;
    if (box && kid) {
        Heapd__V1__SetSlot ss = HEAPD__V1__SET_SLOT__INIT;
        ss.handle = box;
        ss.index = 1;
        ss.target = kid;
        req_t q = HEAPD__V1__REQUEST__INIT;
        q.op_case = OP(SET_SLOT);
        q.set_slot = &ss;
        r = cl_call(&c, &q, "set_slot");
        open = judge(run, r, "set_slot");
        rsp_free(r);
        if (!open) goto out;
    }

    /* A batch: allocations, a write, a read. */
    {
        Heapd__V1__Alloc a[3];
        req_t ops[5];
        req_t *pops[5];
        for (int i = 0; i < 3; i++)
            ops[i] = alloc_req(&a[i], 48 + 16 * (uint32_t)i, 1, i == 1 ? "batched" : "", 0);
        Heapd__V1__Write w = HEAPD__V1__WRITE__INIT;
        w.handle = kid;
        w.data.data = (uint8_t *)pattern;
        w.data.len = sizeof pattern;
        req_t wr = HEAPD__V1__REQUEST__INIT;
        wr.op_case = OP(WRITE);
        wr.write = &w;
        ops[3] = wr;
        Heapd__V1__Read rd = HEAPD__V1__READ__INIT;
        rd.handle = kid;
        rd.length = sizeof pattern;
        req_t rr = HEAPD__V1__REQUEST__INIT;
        rr.op_case = OP(READ);
        rr.read = &rd;
        ops[4] = rr;
        for (int i = 0; i < 5; i++) {
            ops[i].id = 1000 + (uint64_t)i;
            pops[i] = &ops[i];
        }
        Heapd__V1__Batch b = HEAPD__V1__BATCH__INIT;
        b.n_ops = kid ? 5 : 3;
        b.ops = pops;
        req_t q = HEAPD__V1__REQUEST__INIT;
        q.op_case = OP(BATCH);
        q.batch = &b;
        r = cl_call(&c, &q, "batch");
        open = judge(run, r, "batch");
        if (r && status_of(r) == 0) {
            assert_int_equal(r->result_case, RESULT(BATCH));
            for (size_t i = 0; i < r->batch->n_results; i++)
                judge(run, r->batch->results[i], "an op of the batch");
        }
        rsp_free(r);
        if (!open) goto out;
    }

    /* A large result: 256 KiB read back. */
    uint64_t big = do_alloc(&c, run, BIG, 0, "big", 0, &open);
    if (!open) goto out;
    if (big) {
        Heapd__V1__Read rd = HEAPD__V1__READ__INIT;
        rd.handle = big;
        rd.length = BIG;
        req_t q = HEAPD__V1__REQUEST__INIT;
        q.op_case = OP(READ);
        q.read = &rd;
        r = cl_call(&c, &q, "read 256 KiB");
        open = judge(run, r, "read 256 KiB");
        if (r && status_of(r) == 0) assert_int_equal(r->read->data.len, BIG);
        rsp_free(r);
        if (!open) goto out;
    }

    /* A finalizer's event, then a collection's. */
    uint64_t fin = do_alloc(&c, run, 16, 0, "fin", HEAPD__V1__OBJ_FLAG__OBJ_FINALIZER, &open);
    if (!open) goto out;
    if (fin) {
        Heapd__V1__Decref d = HEAPD__V1__DECREF__INIT;
        d.handle = fin;
        req_t q = HEAPD__V1__REQUEST__INIT;
        q.op_case = OP(DECREF);
        q.decref = &d;
        r = cl_call(&c, &q, "decref");
        open = judge(run, r, "decref");
        rsp_free(r);
        if (!open) goto out;
    }
    {
        Heapd__V1__GcCollect gcq = HEAPD__V1__GC_COLLECT__INIT;
        req_t q = HEAPD__V1__REQUEST__INIT;
        q.op_case = OP(GC_COLLECT);
        q.gc_collect = &gcq;
        r = cl_call(&c, &q, "gc_collect");
        open = judge(run, r, "gc_collect");
        rsp_free(r);
        if (!open) goto out;
    }
    {
        Heapd__V1__GcGetObjects go = HEAPD__V1__GC_GET_OBJECTS__INIT;
        go.borrow = 1;
        req_t q = HEAPD__V1__REQUEST__INIT;
        q.op_case = OP(GC_GET_OBJECTS);
        q.gc_get_objects = &go;
        r = cl_call(&c, &q, "gc_get_objects");
        open = judge(run, r, "gc_get_objects");
        rsp_free(r);
        if (!open) goto out;
    }

    /* A background save of the session (admin: our own uid's Unix peer). */
    {
        Heapd__V1__Save sv = HEAPD__V1__SAVE__INIT;
        req_t q = HEAPD__V1__REQUEST__INIT;
        q.op_case = OP(SAVE);
        q.save = &sv;
        r = cl_call(&c, &q, "save");
        open = judge(run, r, "save");
        rsp_free(r);
        if (!open) goto out;
    }

    /* A request whose answer is never read: the connection drops under it. Then a resume
     * re-sends it, and the replay window (or, if it never ran, the session) answers. */
    Heapd__V1__Alloc la;
    req_t lost = alloc_req(&la, 24, 0, "lost", 0);
    lost.id = c.next_id++;
    if (cl_send(&c, &lost) < 0) {
        run->closed++;
        goto out;
    }
    cl_close(&c);
    {
        client_t again = c;
        r = NULL;
        /* The server may still hold the dropped connection: EBUSY until it lets go. */
        for (uint64_t until = now_ms() + 10000;;) {
            if (cl_connect(&again) < 0) {
                run->closed++;
                goto out;
            }
            memcpy(again.session_id, c.session_id, sizeof c.session_id);
            memcpy(again.resume_token, c.resume_token, sizeof c.resume_token);
            r = hello(&again, 1);
            if (!r || status_of(r) != HD_EBUSY) break;
            if (now_ms() > until) fail_msg("resume: EBUSY for 10 s");
            rsp_free(r);
            cl_close(&again);
            nap();
        }
        c = again;
        open = judge(run, r, "resume");
        int resumed = r && status_of(r) == 0;
        rsp_free(r);
        if (!open || !resumed) goto out;
        if (cl_send(&c, &lost) < 0) {
            run->closed++;
            goto out;
        }
        r = cl_wait(&c, lost.id, "re-sent alloc");
        /* EREPLAY: it ran, and its answer could not be kept (the window's allocation). */
        if (r && status_of(r) == HD_EREPLAY) {
            if (!run->enomem++) run->first = "re-sent alloc (EREPLAY)";
        } else {
            open = judge(run, r, "re-sent alloc");
        }
        rsp_free(r);
        if (!open) goto out;
        c.next_id = lost.id + 1;
    }

    /* Goodbye. */
    {
        Heapd__V1__Goodbye gb = HEAPD__V1__GOODBYE__INIT;
        req_t q = HEAPD__V1__REQUEST__INIT;
        q.op_case = OP(GOODBYE);
        q.goodbye = &gb;
        r = cl_call(&c, &q, "goodbye");
        judge(run, r, "goodbye");
        rsp_free(r);
    }
out:
    cl_close(&c);
    if (shape == 1) watchers_close(run);
}

/* ------------------------------------------------------------------------------------------ */
/* The loops.                                                                                  */
/* ------------------------------------------------------------------------------------------ */

static long base_bytes, base_blocks;

/* Waits (up to 10 s) for every session to be gone from the registry: a goodbye or a drop is
 * carried out by the worker after the client has its answer. */
static void wait_sessions(size_t n) {
    uint64_t until = now_ms() + 10000;
    for (;;) {
        uv_mutex_lock(&srv.registry.lock);
        size_t have = srv.registry.nsessions;
        uv_mutex_unlock(&srv.registry.lock);
        if (have == n) return;
        if (now_ms() > until) fail_msg("%zu sessions left, expected %zu", have, n);
        nap();
    }
}

static void check_nothing_left(long n, const char *what) {
    long b = atomic_load(&live_bytes), k = atomic_load(&live_blocks);
    if (b != base_bytes || k != base_blocks)
        fail_msg("%s, N = %ld: %ld bytes in %ld blocks left through the hook (before: %ld in %ld)",
                 what, n, b - base_bytes, k - base_blocks, base_bytes, base_blocks);
}

static void life_loop(void) {
    /* A first run with nothing failing: libuv's thread pool and OpenSSL's tables come once
     * per process; what stands after it is the baseline. */
    wipe_data_dir();
    server_start();
    run_t run0 = {0};
    life(&run0);
    assert_int_equal(run0.enomem + run0.closed, 0);
    wait_sessions(shape == 1 ? 2 : 0); /* the busy shape's watchers linger, detached */
    server_stop();
    base_bytes = atomic_load(&live_bytes);
    base_blocks = atomic_load(&live_blocks);

    long n = 1, faulted = 0, closed = 0, answered = 0;
    for (;; n++) {
        if (n > 20000) fail_msg("more than 20000 allocations in one life");
        wipe_data_dir();
        server_start();
        client_t by;
        uint64_t by_handle;
        bystander_open(&by, &by_handle);
        run_t run = {0};
        arm(n);
        life(&run);
        disarm();
        int was_hit = atomic_load(&hit);
        if (verbose)
            fprintf(stderr, "N=%ld hit=%d enomem=%d (first: %s) closed=%d, last step %s\n", n,
                    was_hit, run.enomem, run.first ? run.first : "-", run.closed,
                    run.step ? run.step : "-");
        bystander_check(&by, by_handle);
        fresh_session();
        /* The life's session, if a failure left it detached, is ended by the shutdown. */
        server_stop();
        check_nothing_left(n, "a client's life");
        if (!was_hit) break;
        faulted++;
        closed += run.closed > 0;
        answered += run.enomem > 0;
    }
    fprintf(stderr,
            "test_server_oom: a client's life, shape %d%s: %ld allocations failed one at a time "
            "(%ld answered ENOMEM, %ld closed a connection, the rest absorbed)\n",
            shape, atomic_load(&engine_fails) ? ", the engine's too" : "", faulted, answered,
            closed);
    /* The loop did go through the life's allocations (about 30 in the plain shape, 170 in
     * the busy one). */
    assert_true(faulted > (shape == 1 ? 100 : 20));
}

static void test_session_life(void **state) {
    (void)state;
    shape = 0;
    life_loop();
}

/* The plain shape again, the engine's allocations failing too: every ENOMEM the engine
 * returns under a request is the client's answer, and state stays as it was. */
static void test_session_life_engine(void **state) {
    (void)state;
    shape = 0;
    atomic_store(&engine_fails, 1);
    life_loop();
    atomic_store(&engine_fails, 0);
}

/* The same with two workers, requests off the loop, the slowlog, compressed snapshots, a
 * monitor, an admin's session_report and list_sessions, and the HTTP server scraped. */
static void test_session_life_busy(void **state) {
    (void)state;
    shape = 1;
    http_port = free_port();
    life_loop();
    shape = 0;
}

/* ------------------------------------------------------------------------------------------ */
/* Starting.                                                                                   */
/* ------------------------------------------------------------------------------------------ */

/* The busy shape's start, from loading its config to serving (listeners, two workers, the
 * HTTP server, an empty data_dir restored), with its N-th allocation failing: the server
 * serves (and a fresh session works) or hd__server_run returns an error, having undone
 * everything; never a crash, an exit or a hang. */
static void test_startup(void **state) {
    (void)state;
    shape = 1;
    http_port = free_port();
    wipe_data_dir();
    server_start();
    fresh_session();
    server_stop();
    base_bytes = atomic_load(&live_bytes);
    base_blocks = atomic_load(&live_blocks);
    long n = 1, faulted = 0, refused = 0;
    for (;; n++) {
        if (n > 20000) fail_msg("more than 20000 allocations starting the server");
        wipe_data_dir();
        int up = server_launch(n);
        disarm();
        int was_hit = atomic_load(&hit);
        if (verbose) fprintf(stderr, "startup N=%ld hit=%d serving=%d\n", n, was_hit, up);
        if (up) {
            fresh_session();
            server_stop();
        } else {
            refused++;
        }
        check_nothing_left(n, "a start");
        if (!was_hit) break;
        faulted++;
    }
    shape = 0;
    fprintf(stderr,
            "test_server_oom: starting: %ld allocations failed one at a time (%ld stopped the "
            "start with an error, the rest absorbed)\n",
            faulted, refused);
    assert_true(refused > 5);
}

/* ------------------------------------------------------------------------------------------ */
/* Shutting down.                                                                              */
/* ------------------------------------------------------------------------------------------ */

/* After a shutdown whose N-th allocation failed: each session saved comes back whole at the
 * next start, with its object; one whose save failed is gone (it had no earlier snapshot);
 * no file is refused. */
static void check_saved(client_t *c, uint64_t handle, long n) {
    client_t r;
    assert_int_equal(cl_connect(&r), 0);
    memcpy(r.session_id, c->session_id, sizeof c->session_id);
    memcpy(r.resume_token, c->resume_token, sizeof c->resume_token);
    rsp_t *h = hello(&r, 1);
    if (!h) fail_msg("shutdown, N = %ld: a resume after the restart was closed", n);
    if (status_of(h) == HD_ENOSESSION) { /* its save failed */
        rsp_free(h);
        cl_close(&r);
        return;
    }
    if (status_of(h) != 0)
        fail_msg("shutdown, N = %ld: resuming after the restart: %s", n, h->status->name);
    rsp_free(h);
    r.next_id = r.last_id + 1;
    Heapd__V1__Read rd = HEAPD__V1__READ__INIT;
    rd.handle = handle;
    rd.length = sizeof pattern;
    req_t rq = HEAPD__V1__REQUEST__INIT;
    rq.op_case = OP(READ);
    rq.read = &rd;
    rsp_t *x = cl_call(&r, &rq, "read after the restart");
    assert_non_null(x);
    if (status_of(x) != 0 || x->result_case != RESULT(READ) ||
        x->read->data.len != sizeof pattern ||
        memcmp(x->read->data.data, pattern, sizeof pattern) != 0)
        fail_msg("shutdown, N = %ld: the object did not come back as it was", n);
    rsp_free(x);
    req_t g = HEAPD__V1__REQUEST__INIT;
    Heapd__V1__Goodbye gb = HEAPD__V1__GOODBYE__INIT;
    g.op_case = OP(GOODBYE);
    g.goodbye = &gb;
    x = cl_call(&r, &g, "goodbye after the restart");
    rsp_free(x);
    cl_close(&r);
}

static void test_shutdown(void **state) {
    (void)state;
    shape = 0;
    long n = 0, faulted = 0;
    for (;; n++) {
        if (n > 20000) fail_msg("more than 20000 allocations in one shutdown");
        wipe_data_dir();
        server_start();
        /* One session attached, one detached: both are saved by the shutdown, and the
         * attached one's connection is told ESHUTDOWN. */
        client_t a, d;
        uint64_t ha, hdet;
        bystander_open(&a, &ha);
        bystander_open(&d, &hdet);
        cl_close(&d);
        for (uint64_t until = now_ms() + 10000; srv.registry.sessions_detached != 1;) {
            if (now_ms() > until) fail_msg("the session was not detached");
            nap();
        }
        if (n == 0) { /* the first, unfaulted, sets the baseline */
            server_stop();
            cl_close(&a);
            base_bytes = atomic_load(&live_bytes);
            base_blocks = atomic_load(&live_blocks);
            continue;
        }
        arm(n);
        server_stop();
        disarm();
        int was_hit = atomic_load(&hit);
        cl_close(&a);
        check_nothing_left(n, "a shutdown");
        if (count_files(".corrupt") != 0) fail_msg("shutdown, N = %ld: a snapshot was refused", n);
        server_start();
        uv_mutex_lock(&srv.registry.lock);
        size_t restored = srv.registry.nsessions;
        uv_mutex_unlock(&srv.registry.lock);
        if (verbose) fprintf(stderr, "shutdown N=%ld hit=%d restored=%zu\n", n, was_hit, restored);
        if (!was_hit) assert_int_equal(restored, 2);
        check_saved(&a, ha, n);
        check_saved(&d, hdet, n);
        fresh_session();
        server_stop();
        if (!was_hit) break;
        faulted++;
    }
    fprintf(stderr, "test_server_oom: shutting down: %ld allocations failed one at a time\n",
            faulted);
    assert_true(faulted >= 3); /* each save's buffer, and the answer ESHUTDOWN */
}

/* ------------------------------------------------------------------------------------------ */
/* Restoring a snapshot at start-up.                                                           */
/* ------------------------------------------------------------------------------------------ */

/* Armed by the hook itself once the server is restoring: only restore's allocations count. */
static atomic_int restore_arm; /* arm at the next allocation made while restoring */

static void *r_malloc(size_t n, hd_smem_from_t from) {
    if (atomic_load(&restore_arm) && atomic_load(&srv.serving) == HD_SERVING_RESTORING)
        atomic_store(&armed, 1);
    else if (atomic_load(&srv.serving) != HD_SERVING_RESTORING)
        atomic_store(&armed, 0);
    return t_malloc(n, from);
}
static void *r_calloc(size_t n, size_t size, hd_smem_from_t from) {
    if (size && n > SIZE_MAX / size) return NULL;
    void *p = r_malloc(n * size, from);
    if (p) memset(p, 0, n * size);
    return p;
}
static void *r_realloc(void *p, size_t n, hd_smem_from_t from) {
    if (atomic_load(&restore_arm) && atomic_load(&srv.serving) == HD_SERVING_RESTORING)
        atomic_store(&armed, 1);
    else if (atomic_load(&srv.serving) != HD_SERVING_RESTORING)
        atomic_store(&armed, 0);
    return t_realloc(p, n, from);
}
static const hd_smem_methods_t restoring = {r_malloc, r_calloc, r_realloc, t_free};

/* A session with the bystander's object, saved by a clean shutdown: its id and token. */
static void make_snapshot(client_t *c, uint64_t *handle) {
    wipe_data_dir();
    server_start();
    bystander_open(c, handle);
    cl_close(c); /* detached: the shutdown saves it */
    wait_sessions(1);
    uint64_t until = now_ms() + 10000;
    while (srv.registry.sessions_detached != 1) {
        if (now_ms() > until) fail_msg("the session was not detached");
        nap();
    }
    server_stop();
    assert_int_equal(count_files(".snap"), 1);
}

static void restore_loop(void) {
    client_t c;
    uint64_t handle;
    make_snapshot(&c, &handle);
    base_bytes = atomic_load(&live_bytes);
    base_blocks = atomic_load(&live_blocks);
    hd_smem_set_methods(&restoring);
    long n = 1, faulted = 0;
    for (;; n++) {
        if (n > 20000) fail_msg("more than 20000 allocations restoring one session");
        atomic_store(&seen, 0);
        atomic_store(&hit, 0);
        atomic_store(&fail_at, n);
        atomic_store(&restore_arm, 1);
        server_start();
        atomic_store(&restore_arm, 0);
        disarm();
        int was_hit = atomic_load(&hit);
        /* Restored whole, or not at all with its file kept for the next start. */
        uv_mutex_lock(&srv.registry.lock);
        size_t have = srv.registry.nsessions;
        uv_mutex_unlock(&srv.registry.lock);
        if (verbose) fprintf(stderr, "restore N=%ld hit=%d sessions=%zu\n", n, was_hit, have);
        if (have == 0) {
            assert_true(was_hit);
            if (count_files(".snap") != 1)
                fail_msg("restore, N = %ld: the snapshot was not kept after a failed allocation",
                         n);
        } else {
            assert_int_equal(have, 1);
            client_t r = c;
            assert_int_equal(cl_connect(&r), 0);
            memcpy(r.session_id, c.session_id, sizeof c.session_id);
            memcpy(r.resume_token, c.resume_token, sizeof c.resume_token);
            rsp_t *h = hello(&r, 1);
            if (!h || status_of(h) != 0)
                fail_msg("restore, N = %ld: the restored session does not resume", n);
            rsp_free(h);
            r.next_id = r.last_id + 1;
            /* The object as it was; then close without goodbye, so that the next start
             * restores it again. */
            Heapd__V1__Read rd = HEAPD__V1__READ__INIT;
            rd.handle = handle;
            rd.length = sizeof pattern;
            req_t rq = HEAPD__V1__REQUEST__INIT;
            rq.op_case = OP(READ);
            rq.read = &rd;
            rsp_t *x = cl_call(&r, &rq, "restored read");
            assert_non_null(x);
            assert_int_equal(status_of(x), 0);
            assert_int_equal(x->result_case, RESULT(READ));
            assert_int_equal(x->read->data.len, sizeof pattern);
            assert_memory_equal(x->read->data.data, pattern, sizeof pattern);
            rsp_free(x);
            cl_close(&r);
            uint64_t until = now_ms() + 10000;
            while (srv.registry.sessions_detached != 1) {
                if (now_ms() > until) fail_msg("the restored session was not detached");
                nap();
            }
        }
        fresh_session();
        server_stop();
        if (count_files(".snap") != 1)
            fail_msg("restore, N = %ld: %d snapshot files after the shutdown", n,
                     count_files(".snap"));
        /* What the server holds after a stop does not depend on the snapshot restored. */
        check_nothing_left(n, "a restore");
        if (!was_hit) break;
        faulted++;
    }
    hd_smem_set_methods(&counting);
    fprintf(stderr,
            "test_server_oom: restoring a snapshot%s: %ld allocations failed one at a time\n",
            atomic_load(&engine_fails) ? ", the engine's too" : "", faulted);
    assert_true(faulted > 5);
}

static void test_restore(void **state) {
    (void)state;
    restore_loop();
}

/* The engine loads the heap image (hd_heap_load): out of memory there must keep the file as
 * well, never take it for a corrupt one. */
static void test_restore_engine(void **state) {
    (void)state;
    atomic_store(&engine_fails, 1);
    restore_loop();
    atomic_store(&engine_fails, 0);
}

/* ------------------------------------------------------------------------------------------ */

static int setup(void **state) {
    (void)state;
    if (!mkdtemp(dir)) return -1;
    snprintf(sock_path, sizeof sock_path, "%s/s.sock", dir);
    snprintf(data_dir, sizeof data_dir, "%s/data", dir);
    return mkdir(data_dir, 0700);
}

static int teardown(void **state) {
    (void)state;
    wipe_data_dir();
    rmdir(data_dir);
    unlink(sock_path);
    return rmdir(dir);
}

int main(void) {
    /* The hooks first, before libuv, OpenSSL or a heap allocate anything. */
    hd_smem_set_methods(&counting);
    hd_mem_set_methods(&engine_counting);
    if (hd__server_mem_init() < 0) {
        fprintf(stderr, "test_server_oom: libuv's allocator could not be replaced\n");
        return 1;
    }
    verbose = getenv("HD_OOM_VERBOSE") ? atoi(getenv("HD_OOM_VERBOSE")) : 0;
    signal(SIGPIPE, SIG_IGN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_session_life),
        cmocka_unit_test(test_session_life_busy),
        cmocka_unit_test(test_session_life_engine),
        cmocka_unit_test(test_startup),
        cmocka_unit_test(test_shutdown),
        cmocka_unit_test(test_restore),
        cmocka_unit_test(test_restore_engine),
    };
    int failed = cmocka_run_group_tests(tests, setup, teardown);
    /* A failed test may leave a server running on its threads: do not wait for them. */
    if (failed) _exit(1);
    return 0;
}
