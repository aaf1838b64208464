/* SPDX-License-Identifier: MIT */
/*
 * cluster.c: node ids, the node a session id names, and the URL of a node (cluster.h,
 * docs/SCALING.md). Pure functions over the config: every node answers the same question
 * the same way from its own config, so nodes share no state.
 */
#include "cluster.h"

#include <stdio.h>
#include <string.h>
#include <unistd.h>

static int node_char(char ch) {
    return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
           ch == '-' || ch == '_';
}

int hd__cluster_valid_node(const char *s, size_t n) {
    if (n == 0 || n > HD_NODE_ID_MAX) return 0;
    for (size_t i = 0; i < n; i++)
        if (!node_char(s[i])) return 0;
    return 1;
}

void hd__cluster_node_id(const hd_config_t *cfg, char *out) {
    const char *v = cfg->node_id ? cfg->node_id : "";
    if (strcmp(v, "@hostname") != 0) {
        snprintf(out, HD_NODE_ID_MAX + 1, "%s", v);
        return;
    }
    char host[256] = "";
    if (gethostname(host, sizeof host - 1) != 0 || !host[0]) snprintf(host, sizeof host, "node");
    size_t n = 0;
    for (; host[n] && host[n] != '.' && n < HD_NODE_ID_MAX; n++)
        out[n] = node_char(host[n]) ? host[n] : '-';
    out[n] = '\0';
}

size_t hd__cluster_owner(const char *id, char *node) {
    const char *dot = strchr(id, '.');
    node[0] = '\0';
    if (!dot || !hd__cluster_valid_node(id, (size_t)(dot - id))) return 0;
    size_t n = (size_t)(dot - id);
    memcpy(node, id, n);
    node[n] = '\0';
    return n;
}

/* Writes tmpl into out with every {node_id} replaced by node. 1, or 0 if it does not fit. */
static int expand(const char *tmpl, const char *node, char *out, size_t cap) {
    static const char key[] = "{node_id}";
    size_t o = 0, nl = strlen(node);
    for (const char *p = tmpl; *p;) {
        if (strncmp(p, key, sizeof key - 1) == 0) {
            if (o + nl >= cap) return 0;
            memcpy(out + o, node, nl);
            o += nl;
            p += sizeof key - 1;
        } else {
            if (o + 1 >= cap) return 0;
            out[o++] = *p++;
        }
    }
    out[o] = '\0';
    return 1;
}

/* The peers entry "NODE=URL" for node, or NULL. */
static const char *peer_entry(const hd_config_t *cfg, const char *node) {
    size_t nl = strlen(node);
    for (size_t i = 0; i < cfg->peers.n; i++) {
        const char *e = cfg->peers.v[i];
        if (strncmp(e, node, nl) == 0 && e[nl] == '=') return e + nl + 1;
    }
    return NULL;
}

int hd__cluster_url(const hd_config_t *cfg, const char *self, const char *node, char *out,
                    size_t cap) {
    out[0] = '\0';
    const char *tmpl = NULL;
    if (*self && strcmp(node, self) == 0)
        tmpl = cfg->advertise_url;
    else if (!(tmpl = peer_entry(cfg, node)))
        tmpl = cfg->peer_url;
    if (!tmpl || !*tmpl || !expand(tmpl, node, out, cap)) {
        out[0] = '\0';
        return 0;
    }
    return 1;
}

int hd__cluster_next_peer(const hd_config_t *cfg, const char *self, unsigned start, char *out,
                          size_t cap) {
    size_t n = cfg->peers.n;
    for (size_t k = 0; k < n; k++) {
        const char *e = cfg->peers.v[(start + k) % n];
        const char *eq = strchr(e, '=');
        size_t sl = strlen(self);
        if (!eq || ((size_t)(eq - e) == sl && strncmp(e, self, sl) == 0)) continue;
        char node[HD_NODE_ID_MAX + 1];
        snprintf(node, sizeof node, "%.*s", (int)(eq - e), e);
        return expand(eq + 1, node, out, cap);
    }
    out[0] = '\0';
    return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* Validators.                                                                                 */
/* ------------------------------------------------------------------------------------------ */

const char *hd__cluster_check_node_id(const char *v) {
    if (!*v || strcmp(v, "@hostname") == 0 || hd__cluster_valid_node(v, strlen(v))) return NULL;
    return "a node id is 1 to 32 characters of A-Z, a-z, 0-9, '-' and '_' (or @hostname)";
}

const char *hd__cluster_check_url(const char *v) {
    if (!*v) return NULL;
    for (const char *p = v; *p; p++)
        if ((unsigned char)*p <= ' ') return "a URL may not contain spaces or control characters";
    const char *rest = strncmp(v, "tcp://", 6) == 0   ? v + 6
                       : strncmp(v, "tls://", 6) == 0 ? v + 6
                       : strncmp(v, "unix:", 5) == 0  ? v + 5
                                                      : NULL;
    if (!rest || !*rest) return "expected tcp://host:port, tls://host:port or unix:/path";
    if (strlen(v) >= HD_NODE_URL_MAX) return "longer than 255 bytes";
    return NULL;
}

const char *hd__cluster_check_peer(const char *v) {
    const char *eq = strchr(v, '=');
    if (!eq || !hd__cluster_valid_node(v, (size_t)(eq - v)))
        return "expected NODE=URL, NODE a node id (A-Z, a-z, 0-9, '-', '_'; 32 at most)";
    return eq[1] ? hd__cluster_check_url(eq + 1) : "expected NODE=URL: the URL is missing";
}
