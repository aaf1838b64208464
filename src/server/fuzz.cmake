# SPDX-License-Identifier: MIT
# The libFuzzer target of the protocol layer, build/bin/fuzz_dispatch (fuzz_dispatch.c): bytes
# through the frame parser and hd_dispatch_frame against a live heap, compiled with hdwire's
# sources (HD_WIRE_SOURCES) and the engine's by heapd_fuzz_target (cmake/heapd_fuzz.cmake),
# and run by ctest as server.fuzz_dispatch. Included from src/server/CMakeLists.txt. Its
# seeds (src/server/fuzz_dispatch_seeds) are inputs it once failed on, replayed every run:
# overlong-length, a flat op's length prefix of 7 bytes the hand decoder took and protobuf-c
# refuses.
heapd_fuzz_target(TARGET fuzz_dispatch TEST server.fuzz_dispatch
                  SOURCES fuzz_dispatch.c ${HD_WIRE_SOURCES} ${HD_SMEM_SOURCES}
                  INCLUDES ${CMAKE_CURRENT_SOURCE_DIR}
                  LIBS hdproto
                  ARGS -timeout=10
                  SEEDS ${CMAKE_CURRENT_SOURCE_DIR}/fuzz_dispatch_seeds)

# The pre-hello path (fuzz_hello.c): bytes through the frame parser at the pre-hello limit and
# session.c's hello decision, against a server struct with tokens and a worker loop. Seeded
# with a few hellos (tests/server/fuzz_hello_seeds); 10 s in the suite.
heapd_fuzz_target(TARGET fuzz_hello TEST server.fuzz_hello
                  SOURCES fuzz_hello.c ${HD_SERVER_SOURCES} ${HD_WIRE_SOURCES} ${HD_PERSIST_SOURCES}
                          ${HD_SMEM_SOURCES}
                  INCLUDES ${CMAKE_CURRENT_SOURCE_DIR}
                  LIBS hdproto PkgConfig::LIBUV PkgConfig::YAML HttpParser::HttpParser
                       PkgConfig::XXHASH PkgConfig::ZSTD PkgConfig::OPENSSL
                  ARGS -timeout=10 -max_len=8192 -max_total_time=10
                  SEEDS ${CMAKE_SOURCE_DIR}/tests/server/fuzz_hello_seeds)

# The libFuzzer target of the HTTP request path, build/bin/fuzz_http (fuzz_http.c): a byte
# stream through http_parse.c whole and cut into pieces, the two runs compared; run by ctest as
# server.fuzz_http over the seeds in src/server/fuzz_http_seeds. http-parser itself comes
# from Debian's library, not instrumented: coverage guides through heapd's callbacks.
heapd_fuzz_target(TARGET fuzz_http TEST server.fuzz_http
                  SOURCES fuzz_http.c http_parse.c
                  INCLUDES ${CMAKE_CURRENT_SOURCE_DIR}
                  LIBS HttpParser::HttpParser
                  ARGS -timeout=10 -max_len=16384 -max_total_time=15
                  SEEDS ${CMAKE_CURRENT_SOURCE_DIR}/fuzz_http_seeds)

# What TLS adds before anyone is authenticated (fuzz_tls.c): the config's tls: section (a YAML
# document through hd_config_load_text, which must print and load back to itself) and bytes
# through a fresh connection's handshake (tls.c over memory BIOs, a self-signed certificate).
# Seeded from src/server/fuzz_tls_seeds; 10 s in the suite.
heapd_fuzz_target(TARGET fuzz_tls TEST server.fuzz_tls
                  SOURCES fuzz_tls.c config.c cluster.c log.c tls.c codec.c ${HD_SMEM_SOURCES}
                  INCLUDES ${CMAKE_CURRENT_SOURCE_DIR}
                  LIBS hdproto PkgConfig::LIBUV PkgConfig::YAML PkgConfig::OPENSSL
                  ARGS -timeout=10 -max_len=4096 -max_total_time=10
                  SEEDS ${CMAKE_CURRENT_SOURCE_DIR}/fuzz_tls_seeds)
