/* SPDX-License-Identifier: MIT */
/*
 * notify.c: systemd's readiness protocol (sd_notify), without libsystemd.
 *
 * When systemd starts heapd with Type=notify it sets $NOTIFY_SOCKET to a Unix datagram
 * socket: a path, or "@name" for the abstract namespace. Each state change is one datagram of
 * newline-separated KEY=value lines: READY=1 once listening, RELOADING=1 and READY=1 around a
 * SIGHUP reload, STOPPING=1 at shutdown, STATUS=... for humans (systemctl status).
 *
 * A socket is opened per message: messages are a handful over the daemon's life. This file
 * owns no state.
 */
#include "server.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

int hd__notify(const char *state) {
    const char *path = getenv("NOTIFY_SOCKET");
    if (!path || !*path) return 0;
    struct sockaddr_un sa;
    memset(&sa, 0, sizeof sa);
    sa.sun_family = AF_UNIX;
    size_t len = strlen(path);
    if ((path[0] != '/' && path[0] != '@') || len >= sizeof sa.sun_path) {
        hd_log_debug("NOTIFY_SOCKET \"%s\" is not a Unix socket path; not notifying", path);
        return HD_EINVAL;
    }
    memcpy(sa.sun_path, path, len);
    if (path[0] == '@')
        sa.sun_path[0] = '\0'; /* abstract namespace: the name is not NUL-terminated */
    socklen_t salen =
        (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len + (path[0] == '@' ? 0 : 1));

    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        hd_log_debug("notify: socket: %s", strerror(errno));
        return HD_EINTERNAL;
    }
    ssize_t n;
    do
        n = sendto(fd, state, strlen(state), MSG_NOSIGNAL, (struct sockaddr *)&sa, salen);
    while (n < 0 && errno == EINTR);
    int saved = errno;
    close(fd);
    if (n < 0) {
        hd_log_debug("notify: sendto %s: %s", path, strerror(saved));
        return HD_EINTERNAL;
    }
    return 0;
}

int hd__notifyf(const char *fmt, ...) {
    char buf[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    return hd__notify(buf);
}
