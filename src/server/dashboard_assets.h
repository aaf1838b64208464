/* SPDX-License-Identifier: MIT */
/*
 * dashboard_assets.h: the dashboard's files (src/server/dashboard/), compiled into heapd.
 *
 * cmake/embed.cmake writes dashboard_assets.c in the build tree from the files themselves, so
 * the daemon serves them with no file to find at run time and no network: a changed file is a
 * rebuilt heapd.
 */
#ifndef HD_SERVER_DASHBOARD_ASSETS_H
#define HD_SERVER_DASHBOARD_ASSETS_H

#include <stddef.h>

typedef struct hd_asset_s {
    const char *name; /* "index.html" */
    const char *type; /* its Content-Type */
    const unsigned char *data;
    size_t len;
} hd_asset_t;

/* The file called name, or NULL. */
const hd_asset_t *hd__asset_find(const char *name);

#endif /* HD_SERVER_DASHBOARD_ASSETS_H */
