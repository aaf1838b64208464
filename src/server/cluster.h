/* SPDX-License-Identifier: MIT */
/*
 * cluster.h: a node's place among several (docs/SCALING.md).
 *
 * A node has a node_id (config; "" for a node that stands alone). The ids and resume tokens
 * of the sessions it creates begin with it and a dot ("heapd-1.3f9c2a7e51d04b8c"), so any
 * node can tell a session's owner from its id alone, with no state shared between nodes.
 * A node's URL (where clients say hello to it) is its advertise_url for itself; for another
 * node it is its entry in peers ("NODE=URL") or else peer_url with {node_id} replaced (a
 * StatefulSet's per-pod DNS names). This file owns those names and nothing else: session.c
 * decides what a hello gets (the redirect, EMOVED), the server holds the draining flag.
 * No libuv, no I/O besides gethostname at start.
 */
#ifndef HD_SERVER_CLUSTER_H
#define HD_SERVER_CLUSTER_H

#include <stddef.h>

#include "config.h"

#define HD_NODE_ID_MAX  32  /* bytes of a node id, [A-Za-z0-9_-] */
#define HD_NODE_URL_MAX 256 /* bytes of a node's URL, with its NUL */

/* The node id cfg gives: "" (none), the name, or for "@hostname" this host's name up to its
 * first dot (a pod's name in a StatefulSet), cut to HD_NODE_ID_MAX, with characters outside
 * the set replaced by '-'. out has room for HD_NODE_ID_MAX + 1 bytes. */
void hd__cluster_node_id(const hd_config_t *cfg, char *out);

/* Whether s is a node id: 1..HD_NODE_ID_MAX characters of [A-Za-z0-9_-]. */
int hd__cluster_valid_node(const char *s, size_t n);

/* The node that a session id or resume token names: its length (copied, NUL-terminated,
 * into node, HD_NODE_ID_MAX + 1 bytes), or 0 when it names none (no node prefix). */
size_t hd__cluster_owner(const char *id, char *node);

/* The URL of node: this node's advertise_url when node is self, else its peers entry, else
 * peer_url; {node_id} in them is replaced by node. Returns 1 with out filled, 0 when no URL
 * is known (out ""). */
int hd__cluster_url(const hd_config_t *cfg, const char *self, const char *node, char *out,
                    size_t cap);

/* The URL of a peer for a new session that a draining node sends elsewhere: the first entry
 * of peers from index start on (round robin by the caller), this node excluded. Returns 1
 * with out filled, or 0. */
int hd__cluster_next_peer(const hd_config_t *cfg, const char *self, unsigned start, char *out,
                          size_t cap);

/* Validators for config.c: NULL or why the value is wrong. */
const char *hd__cluster_check_node_id(const char *v);
const char *hd__cluster_check_url(const char *v);
const char *hd__cluster_check_peer(const char *v);

#endif /* HD_SERVER_CLUSTER_H */
