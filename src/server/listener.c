/* SPDX-License-Identifier: MIT */
/*
 * listener.c: the listening sockets and the accept loop, on the main loop.
 *
 * Sockets come from systemd (socket activation: $LISTEN_PID and $LISTEN_FDS name descriptors
 * from 3 on) or, without it, are bound here: each `listen` entry (every address its host
 * resolves to) and `unix_socket`. Each is polled for readability; accept4 takes connections
 * off the backlog and each goes, as a bare descriptor, to the worker holding the fewest
 * connections (worker.c). The connection limits are checked here: a connection over
 * max_connections, or over max_connections_per_ip from its address, is answered ETOOMANY at
 * once, without reading anything from it, and closed; the refusals are logged as one summary
 * line a second, however many there are. A tls.listen listener is a TCP listener whose
 * connections carry the flag that makes the worker put TLS (tls.c) under them; its context is
 * built here, before anything listens, so a certificate that does not load stops the start.
 *
 * This file owns the listening descriptors and the Unix socket file; it owns no connection.
 */
#include "server.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

/* sd_listen_fds(3): passed descriptors start here. */
#define HD_LISTEN_FDS_START 3
/* Pending connections the kernel keeps per listener (capped by net.core.somaxconn). */
#define HD_LISTEN_BACKLOG 511
/* Connections taken per poll callback, so one busy listener cannot starve the others. */
#define HD_ACCEPT_BATCH 64
/* Wait before accepting again when the process is out of descriptors. */
#define HD_ACCEPT_BACKOFF_MS 100
/* How often the refusal counts are logged, as one line each. */
#define HD_REFUSALS_INTERVAL_MS 1000u

/* ------------------------------------------------------------------------------------------ */
/* Names.                                                                                      */
/* ------------------------------------------------------------------------------------------ */

/* The longest names: a numeric IPv6 address with a zone (45 + 1 + IF_NAMESIZE - 1 bytes) in
 * brackets with a port, and a Unix peer with the widest pid, uid and serial. Peers appear in
 * logs, list_sessions and the monitor, so they are never cut short. */
_Static_assert(HD_PEER_LEN > 2 + 45 + 1 + 15 + 6, "an IPv6 peer name fits");
_Static_assert(HD_PEER_LEN > sizeof "unix:pid=-2147483648,uid=4294967295,#18446744073709551615",
               "a Unix peer name fits");

/* "127.0.0.1:7420", "[::1]:7420", "[fe80::1%eth0]:7420" */
static void format_inet(const struct sockaddr *sa, socklen_t len, char *buf, size_t size) {
    char host[NI_MAXHOST], serv[NI_MAXSERV];
    if (getnameinfo(sa, len, host, sizeof host, serv, sizeof serv,
                    NI_NUMERICHOST | NI_NUMERICSERV) != 0) {
        snprintf(buf, size, "?");
        return;
    }
    int n = snprintf(buf, size, sa->sa_family == AF_INET6 ? "[%s]:%s" : "%s:%s", host, serv);
    HD_ASSERT(n >= 0 && (size_t)n < size);
    (void)n;
}

/* A Unix peer is named by its credentials and a serial number, since one process may hold
 * many connections: "unix:pid=123,uid=1000,#7". Its credentials are kept too: they may make
 * it an admin (session.c). */
static void format_unix_peer(uv_os_sock_t fd, char *buf, size_t size, hd_peercred_t *out) {
    static unsigned long long serial; /* the main thread's alone */
    struct ucred cred;
    socklen_t len = sizeof cred;
    serial++;
    memset(out, 0, sizeof *out);
    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) == 0) {
        snprintf(buf, size, "unix:pid=%ld,uid=%lu,#%llu", (long)cred.pid, (unsigned long)cred.uid,
                 serial);
        out->known = 1;
        out->uid = (uint32_t)cred.uid;
        out->pid = (int32_t)cred.pid;
    } else {
        snprintf(buf, size, "unix:#%llu", serial);
    }
}

/* ------------------------------------------------------------------------------------------ */
/* Connections per address.                                                                    */
/* ------------------------------------------------------------------------------------------ */

/* The key of a TCP peer: an IPv4 address as its IPv4-mapped IPv6 form, an IPv6 address cut to
 * its /64 (one subscriber's prefix, which hands out addresses at will). False for anything
 * else. */
static bool peer_key(const struct sockaddr *sa, uint8_t key[16]) {
    memset(key, 0, 16);
    if (sa->sa_family == AF_INET) {
        key[10] = key[11] = 0xff;
        memcpy(key + 12, &((const struct sockaddr_in *)sa)->sin_addr, 4);
        return true;
    }
    if (sa->sa_family == AF_INET6) {
        const uint8_t *a = ((const struct sockaddr_in6 *)sa)->sin6_addr.s6_addr;
        /* An IPv4-mapped address is that IPv4 peer. */
        static const uint8_t mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
        memcpy(key, a, memcmp(a, mapped, 12) == 0 ? 16 : 8);
        return true;
    }
    return false;
}

static size_t peer_home(const uint8_t key[16], size_t mask) {
    uint64_t a, b;
    memcpy(&a, key, 8);
    memcpy(&b, key + 8, 8);
    return (size_t)(((a ^ (b * 0x9E3779B97F4A7C15ull)) * 0xC2B2AE3D27D4EB4Full) >> 32) & mask;
}

/* The slot of key, or of the empty slot where it would go. Call with the lock held. */
static hd_peer_count_t *peer_find(hd_peers_t *p, const uint8_t key[16]) {
    size_t mask = p->cap - 1;
    for (size_t i = peer_home(key, mask);; i = (i + 1) & mask)
        if (p->v[i].count == 0 || memcmp(p->v[i].key, key, 16) == 0) return &p->v[i];
}

/* Doubles the table; false when memory is short (nothing changed). Lock held. */
static bool peers_grow(hd_peers_t *p) {
    size_t ncap = p->cap ? 2 * p->cap : 64;
    hd_peer_count_t *nv = hd__scalloc(ncap, sizeof *nv), *old = p->v;
    if (!nv) return false;
    size_t oldcap = p->cap;
    p->v = nv;
    p->cap = ncap;
    for (size_t i = 0; i < oldcap; i++)
        if (old[i].count) *peer_find(p, old[i].key) = old[i];
    hd__sfree(old);
    return true;
}

/* Counts one more connection from key unless that makes more than max (0: no limit): true
 * if counted. Memory short for the table is no reason to refuse a client: it is let in,
 * uncounted. */
static bool peer_take(hd_peers_t *p, const uint8_t key[16], uint64_t max, bool *counted) {
    *counted = false;
    uv_mutex_lock(&p->lock);
    bool ok = true;
    if ((p->n + 1) * 4 <= p->cap * 3 || peers_grow(p)) {
        hd_peer_count_t *e = peer_find(p, key);
        if (max && e->count >= max) {
            ok = false;
        } else {
            if (e->count++ == 0) {
                memcpy(e->key, key, 16);
                p->n++;
            }
            *counted = true;
        }
    }
    uv_mutex_unlock(&p->lock);
    return ok;
}

/* Gives back one connection of key, removing its entry at zero (shifting its cluster back). */
static void peer_give(hd_peers_t *p, const uint8_t key[16]) {
    uv_mutex_lock(&p->lock);
    hd_peer_count_t *e = p->cap ? peer_find(p, key) : NULL;
    HD_ASSERT(e && e->count > 0);
    if (e && e->count && --e->count == 0) {
        size_t mask = p->cap - 1, hole = (size_t)(e - p->v);
        for (size_t i = (hole + 1) & mask; p->v[i].count; i = (i + 1) & mask) {
            size_t home = peer_home(p->v[i].key, mask);
            if (((i - home) & mask) >= ((i - hole) & mask)) {
                p->v[hole] = p->v[i];
                hole = i;
            }
        }
        p->v[hole].count = 0;
        p->n--;
    }
    uv_mutex_unlock(&p->lock);
}

int hd__peers_init(hd_peers_t *p) {
    memset(p, 0, sizeof *p);
    return uv_mutex_init(&p->lock);
}

void hd__peers_free(hd_peers_t *p) {
    hd__sfree(p->v);
    uv_mutex_destroy(&p->lock);
}

/* ------------------------------------------------------------------------------------------ */
/* Refusals.                                                                                   */
/* ------------------------------------------------------------------------------------------ */

/* The answer of a refused connection: Response { id 0, ETOOMANY }, framed. */
static int refusal_frame(hd_buf_t *out, bool per_ip) {
    return hd_dispatch_error(0, HD_ETOOMANY,
                             per_ip ? "too many connections from this address "
                                      "(max_connections_per_ip)"
                                    : "too many connections (max_connections)",
                             out);
}

/* Answers fd ETOOMANY without reading from it, and closes it. The answer is a few dozen bytes
 * into an empty socket buffer, so one non-blocking send takes it; if it cannot, the client
 * just sees the close. */
static void refuse(hd_server_t *srv, uv_os_sock_t fd, bool per_ip) {
    hd_buf_t b;
    hd_buf_init(&b);
    if (refusal_frame(&b, per_ip) == 0) {
        ssize_t n = send(fd, b.data, b.len, MSG_DONTWAIT | MSG_NOSIGNAL);
        (void)n;
    }
    hd_buf_free(&b);
    /* FIN after the answer, so the client reads it before it learns of the close. */
    shutdown(fd, SHUT_WR);
    close(fd);
    atomic_fetch_add(per_ip ? &srv->refusals.per_ip : &srv->refusals.max_connections, 1);
    hd__metrics_reject(srv, per_ip ? HD_REJECT_MAX_PER_IP : HD_REJECT_MAX_CONNECTIONS);
    atomic_fetch_add(&srv->refusals.total, 1);
}

bool hd__refusal_log_ok(hd_server_t *srv) {
    if (atomic_fetch_add(&srv->refusals.hellos_logged, 1) < HD_HELLO_REFUSALS_LOGGED) return true;
    atomic_fetch_add(&srv->refusals.hellos, 1);
    return false;
}

/* Once a second: one line for the connections refused in it, one for the hello refusals that
 * were not logged on their own. */
static void on_refusals(uv_timer_t *t) {
    hd_server_t *srv = t->data;
    hd_refusals_t *r = &srv->refusals;
    uint64_t over = atomic_exchange(&r->max_connections, 0);
    uint64_t per_ip = atomic_exchange(&r->per_ip, 0);
    uint64_t hellos = atomic_exchange(&r->hellos, 0);
    atomic_store(&r->hellos_logged, 0);
    if (over + per_ip)
        hd_log_warn("%llu connection%s rejected in the last second with ETOOMANY (%llu over "
                    "max_connections %llu, %llu over max_connections_per_ip %llu)",
                    (unsigned long long)(over + per_ip), over + per_ip == 1 ? "" : "s",
                    (unsigned long long)over, (unsigned long long)srv->cfg.max_connections,
                    (unsigned long long)per_ip,
                    (unsigned long long)srv->cfg.max_connections_per_ip);
    if (hellos)
        hd_log_warn("%llu more hello%s refused in the last second (not logged one by one past "
                    "%u a second)",
                    (unsigned long long)hellos, hellos == 1 ? "" : "s", HD_HELLO_REFUSALS_LOGGED);
}

/* ------------------------------------------------------------------------------------------ */
/* Accepting.                                                                                  */
/* ------------------------------------------------------------------------------------------ */

static void on_readable(uv_poll_t *poll, int status, int events);

static void on_backoff(uv_timer_t *t) {
    hd_listener_t *l = t->data;
    if (!l->srv->stopping) uv_poll_start(&l->poll, UV_READABLE, on_readable);
}

/* Hands one accepted socket to a worker, refuses it over a limit, or closes it when that
 * cannot be done. */
static void hand_over(hd_listener_t *l, uv_os_sock_t fd, const struct sockaddr *sa,
                      socklen_t salen) {
    hd_server_t *srv = l->srv;
    hd_slot_t slot = {.srv = srv};
    uint64_t open = atomic_fetch_add(&srv->connections, 1) + 1;
    slot.counted = true;
    if (open > srv->cfg.max_connections) {
        hd__slot_release(&slot);
        refuse(srv, fd, false);
        return;
    }
    if (!l->is_unix && peer_key(sa, slot.ip) &&
        !peer_take(&srv->peers, slot.ip, srv->cfg.max_connections_per_ip, &slot.ip_counted)) {
        hd__slot_release(&slot);
        refuse(srv, fd, true);
        return;
    }
    hd_msg_t *m = hd__msg_new(HD_MSG_CONN);
    if (!m) {
        hd_log_warn("out of memory accepting a connection on %s; closed", l->name);
        hd__slot_release(&slot);
        close(fd);
        return;
    }
    m->fd = fd;
    m->is_unix = l->is_unix;
    m->tls_new = l->tls;
    m->slot = slot;
    if (l->is_unix)
        format_unix_peer(fd, m->peer, sizeof m->peer, &m->cred);
    else
        format_inet(sa, salen, m->peer, sizeof m->peer);
    hd_worker_t *w = hd__worker_pick(srv);
    hd_log_debug("%s: accepted on %s, to worker %d", m->peer, l->name, w->index);
    hd__worker_post(w, m);
}

void hd__slot_release(hd_slot_t *s) {
    if (s->worker) atomic_fetch_sub(&s->worker->nconns, 1);
    if (s->counted) atomic_fetch_sub(&s->srv->connections, 1);
    if (s->ip_counted) peer_give(&s->srv->peers, s->ip);
    s->worker = NULL;
    s->counted = s->ip_counted = false;
}

static void on_readable(uv_poll_t *poll, int status, int events) {
    hd_listener_t *l = poll->data;
    if (status < 0) {
        hd_log_error("%s: poll: %s", l->name, uv_strerror(status));
        return;
    }
    for (int i = 0; i < HD_ACCEPT_BATCH; i++) {
        struct sockaddr_storage ss;
        socklen_t len = sizeof ss;
        uv_os_sock_t fd =
            accept4(l->fd, (struct sockaddr *)&ss, &len, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd >= 0) {
            atomic_fetch_add(&l->srv->counters.accepted, 1);
            hand_over(l, fd, (struct sockaddr *)&ss, len);
            continue;
        }
        if (errno == EINTR || errno == ECONNABORTED) continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK) return;
        if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
            hd_log_warn("%s: accept: %s; pausing accepts for %d ms", l->name, strerror(errno),
                        HD_ACCEPT_BACKOFF_MS);
            uv_poll_stop(&l->poll);
            uv_timer_start(&l->backoff, on_backoff, HD_ACCEPT_BACKOFF_MS, 0);
            return;
        }
        hd_log_error("%s: accept: %s", l->name, strerror(errno));
        return;
    }
}

/* ------------------------------------------------------------------------------------------ */
/* Binding.                                                                                    */
/* ------------------------------------------------------------------------------------------ */

static hd_listener_t *add_listener(hd_server_t *srv, uv_os_sock_t fd, int is_unix) {
    hd_listener_t *v = hd__srealloc(srv->listeners, (srv->nlisteners + 1) * sizeof *v);
    if (!v) {
        hd_log_error("out of memory adding a listener");
        return NULL;
    }
    srv->listeners = v;
    hd_listener_t *l = &v[srv->nlisteners++];
    memset(l, 0, sizeof *l);
    l->srv = srv;
    l->fd = fd;
    l->is_unix = is_unix;
    return l;
}

/* Binds every address spec names; tls: a tls.listen entry, whose connections speak TLS. */
static int bind_tcp(hd_server_t *srv, const char *spec, int tls) {
    char host[256], port[8];
    unsigned portnum;
    if (hd_config_split_hostport(spec, host, sizeof host, &portnum) < 0) {
        hd_log_error("%slisten: \"%s\" is not host:port", tls ? "tls." : "", spec);
        return HD_EINVAL;
    }
    snprintf(port, sizeof port, "%u", portnum);
    struct addrinfo hints, *res;
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
    int rc = getaddrinfo(*host ? host : NULL, port, &hints, &res);
    if (rc != 0) {
        hd_log_error("listen %s: %s", spec, gai_strerror(rc));
        return HD_EINVAL;
    }
    int bound = 0;
    for (struct addrinfo *ai = res; ai; ai = ai->ai_next) {
        uv_os_sock_t fd =
            socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, ai->ai_protocol);
        int one = 1;
        char name[96];
        format_inet(ai->ai_addr, ai->ai_addrlen, name, sizeof name);
        if (fd < 0) {
            hd_log_error("listen %s: socket: %s", name, strerror(errno));
            continue;
        }
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        if (ai->ai_family == AF_INET6) setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one);
        if (bind(fd, ai->ai_addr, ai->ai_addrlen) < 0 || listen(fd, HD_LISTEN_BACKLOG) < 0) {
            hd_log_error("listen %s: %s", name, strerror(errno));
            close(fd);
            continue;
        }
        hd_listener_t *l = add_listener(srv, fd, 0);
        if (!l) {
            close(fd);
            continue;
        }
        l->tls = tls;
        struct sockaddr_storage ss;
        socklen_t len = sizeof ss;
        getsockname(fd, (struct sockaddr *)&ss, &len); /* the real port when it was 0 */
        format_inet((struct sockaddr *)&ss, len, name, sizeof name);
        snprintf(l->name, sizeof l->name, "%s %s", tls ? "tls" : "tcp", name);
        bound++;
    }
    freeaddrinfo(res);
    return bound > 0 ? 0 : HD_EINTERNAL;
}

/* A socket file left by a heapd that died is removed; one that answers is another heapd's.
 * Returns 0, or HD_EINTERNAL with errno saying why (EEXIST: not a socket; EADDRINUSE). */
static int clear_stale_socket(const char *path) {
    struct stat st;
    if (lstat(path, &st) < 0) return errno == ENOENT ? 0 : HD_EINTERNAL;
    if (!S_ISSOCK(st.st_mode)) {
        errno = EEXIST;
        return HD_EINTERNAL;
    }
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    snprintf(sa.sun_path, sizeof sa.sun_path, "%s", path);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return HD_EINTERNAL;
    int live = connect(fd, (struct sockaddr *)&sa, sizeof sa) == 0;
    close(fd);
    if (live) {
        errno = EADDRINUSE;
        return HD_EINTERNAL;
    }
    return unlink(path) == 0 ? 0 : HD_EINTERNAL;
}

/* The Unix socket is bound under a temporary name beside path, made listening, and only then
 * given its name with link(2): a client that sees the file can connect at once (a file bound
 * before listen(2) refuses connections), and link, unlike rename, never replaces a socket
 * another heapd has just put there. When the temporary name would not fit in sun_path, path
 * is bound directly. Returns 0 with the listening descriptor in *out, or HD_EINTERNAL after
 * logging why. */
static int listen_unix(const char *path, unsigned mode, uv_os_sock_t *out) {
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    char tmp[sizeof sa.sun_path];
    const char *slash = strrchr(path, '/');
    int dirlen = slash ? (int)(slash - path + 1) : 0;
    int n = snprintf(tmp, sizeof tmp, "%.*s.heapd-%ld.tmp", dirlen, path, (long)getpid());
    const char *bind_path = n > 0 && (size_t)n < sizeof tmp ? tmp : path;
    snprintf(sa.sun_path, sizeof sa.sun_path, "%s", bind_path);
    uv_os_sock_t fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        hd_log_error("unix_socket %s: socket: %s", path, strerror(errno));
        return HD_EINTERNAL;
    }
    if (bind_path == tmp) unlink(tmp); /* left by a heapd of this pid that died */
    /* The file is created with the mode asked for, never briefly wider: start-up is still
     * single-threaded, so the process-wide umask may change for this one call. */
    mode_t old = umask(~mode & 0777);
    int rc = bind(fd, (struct sockaddr *)&sa, sizeof sa);
    umask(old);
    const char *what = "bind";
    if (rc == 0 && (what = "chmod", chmod(bind_path, mode) < 0)) rc = -1;
    if (rc == 0 && (what = "listen", listen(fd, HD_LISTEN_BACKLOG) < 0)) rc = -1;
    if (rc == 0 && bind_path == tmp && (what = "link", link(tmp, path) < 0)) rc = -1;
    int saved = errno;
    if (bind_path == tmp || rc < 0) unlink(bind_path);
    if (rc < 0) {
        hd_log_error("unix_socket %s: %s: %s", path, what, strerror(saved));
        close(fd);
        return HD_EINTERNAL;
    }
    *out = fd;
    return 0;
}

static int bind_unix(hd_server_t *srv, const char *path, unsigned mode) {
    if (clear_stale_socket(path) < 0) {
        hd_log_error("unix_socket %s: %s", path, strerror(errno));
        return HD_EINTERNAL;
    }
    uv_os_sock_t fd;
    int rc = listen_unix(path, mode, &fd);
    if (rc < 0) return rc;
    hd_listener_t *l = add_listener(srv, fd, 1);
    if (!l) {
        unlink(path);
        close(fd);
        return HD_ENOMEM;
    }
    snprintf(l->name, sizeof l->name, "unix %s", path);
    snprintf(l->path, sizeof l->path, "%s", path);
    return 0;
}

/* Takes the sockets systemd passed, if it passed any to this process. Returns how many, or -1
 * on error. */
static int take_activated(hd_server_t *srv) {
    const char *pid = getenv("LISTEN_PID"), *nfds = getenv("LISTEN_FDS");
    if (!pid || !nfds || strtol(pid, NULL, 10) != (long)getpid()) return 0;
    long n = strtol(nfds, NULL, 10);
    unsetenv("LISTEN_PID");
    unsetenv("LISTEN_FDS");
    unsetenv("LISTEN_FDNAMES");
    if (n <= 0 || n > 64) {
        hd_log_error("LISTEN_FDS=%s is not a descriptor count", nfds);
        return HD_EINVAL;
    }
    for (int fd = HD_LISTEN_FDS_START; fd < HD_LISTEN_FDS_START + n; fd++) {
        struct sockaddr_storage ss;
        socklen_t len = sizeof ss;
        int type = 0;
        socklen_t tlen = sizeof type;
        if (getsockname(fd, (struct sockaddr *)&ss, &len) < 0 ||
            getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &tlen) < 0 || type != SOCK_STREAM) {
            hd_log_error("passed descriptor %d is not a stream socket", fd);
            return HD_EINVAL;
        }
        fcntl(fd, F_SETFD, FD_CLOEXEC);
        fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
        int is_unix = ss.ss_family == AF_UNIX;
        hd_listener_t *l = add_listener(srv, fd, is_unix);
        if (!l) return HD_ENOMEM;
        l->activated = 1;
        if (is_unix) {
            const struct sockaddr_un *su = (const struct sockaddr_un *)&ss;
            if (len > offsetof(struct sockaddr_un, sun_path) && su->sun_path[0])
                snprintf(l->name, sizeof l->name, "unix %.100s", su->sun_path);
            else
                snprintf(l->name, sizeof l->name, "unix (abstract, fd %d)", fd);
        } else {
            char name[96];
            format_inet((struct sockaddr *)&ss, len, name, sizeof name);
            snprintf(l->name, sizeof l->name, "tcp %s", name);
        }
    }
    return (int)n;
}

int hd__listeners_start(hd_server_t *srv) {
    /* The certificate first: a TLS listener that cannot serve it is a config error, found
     * before anything listens. */
    if (srv->cfg.tls_listen.n) {
        char why[512];
        if (hd_tls_ctx_new(&srv->cfg, &srv->tls, why, sizeof why) < 0) {
            hd_log_error("tls: %s", why);
            return HD_EINVAL;
        }
        char subject[256];
        hd_tls_ctx_subject(srv->tls, subject, sizeof subject);
        hd_log_info("tls: serving certificate %s (%s)", subject, srv->cfg.tls_cert);
    }
    int rc = take_activated(srv);
    if (rc < 0) return rc;
    if (rc == 0) {
        for (size_t i = 0; i < srv->cfg.listen.n && rc == 0; i++)
            rc = bind_tcp(srv, srv->cfg.listen.v[i], 0);
        if (rc == 0 && *srv->cfg.unix_socket)
            rc = bind_unix(srv, srv->cfg.unix_socket, srv->cfg.unix_socket_mode);
        if (rc < 0) return rc;
    }
    /* TLS listeners are bound here even under socket activation: a passed socket says
     * nothing of whether it should speak TLS. */
    rc = 0;
    for (size_t i = 0; i < srv->cfg.tls_listen.n && rc == 0; i++)
        rc = bind_tcp(srv, srv->cfg.tls_listen.v[i], 1);
    if (rc < 0) return rc;
    if (srv->nlisteners == 0) {
        hd_log_error("nothing to listen on: listen and unix_socket are both empty");
        return HD_EINVAL;
    }
    uv_timer_init(srv->loop, &srv->refusals.timer);
    srv->refusals.timer.data = srv;
    uv_timer_start(&srv->refusals.timer, on_refusals, HD_REFUSALS_INTERVAL_MS,
                   HD_REFUSALS_INTERVAL_MS);
    for (size_t i = 0; i < srv->nlisteners; i++) {
        hd_listener_t *l = &srv->listeners[i];
        rc = uv_poll_init_socket(srv->loop, &l->poll, l->fd);
        if (rc == 0) {
            l->poll.data = l;
            uv_timer_init(srv->loop, &l->backoff);
            l->backoff.data = l;
            rc = uv_poll_start(&l->poll, UV_READABLE, on_readable);
        }
        if (rc < 0) {
            hd_log_error("%s: %s", l->name, uv_strerror(rc));
            return HD_EINTERNAL;
        }
        hd_log_info("listening on %s%s", l->name, l->activated ? " (socket activation)" : "");
    }
    return 0;
}

static void on_listener_closed(uv_handle_t *h) {
    hd_listener_t *l = h->data;
    if (h == (uv_handle_t *)&l->poll && l->fd >= 0) {
        close(l->fd);
        l->fd = -1;
    }
}

void hd__listeners_stop(hd_server_t *srv) {
    if (srv->refusals.timer.loop && !uv_is_closing((uv_handle_t *)&srv->refusals.timer)) {
        on_refusals(&srv->refusals.timer); /* the last second's count */
        uv_close((uv_handle_t *)&srv->refusals.timer, NULL);
    }
    for (size_t i = 0; i < srv->nlisteners; i++) {
        hd_listener_t *l = &srv->listeners[i];
        if (l->poll.loop && !uv_is_closing((uv_handle_t *)&l->poll)) {
            uv_close((uv_handle_t *)&l->poll, on_listener_closed);
            uv_close((uv_handle_t *)&l->backoff, on_listener_closed);
        } else if (!l->poll.loop && l->fd >= 0) {
            close(l->fd);
            l->fd = -1;
        }
        if (*l->path) unlink(l->path);
        *l->path = '\0';
    }
}
