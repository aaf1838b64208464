# The libFuzzer target of the protocol layer, build/bin/fuzz_dispatch (fuzz_dispatch.c): bytes
# through the frame parser and hd_dispatch_frame against a live heap, compiled with hdwire's
# sources (HD_WIRE_SOURCES) and the engine's by heapd_fuzz_target (cmake/heapd_fuzz.cmake),
# and run by ctest as server.fuzz_dispatch. Included from src/server/CMakeLists.txt.
heapd_fuzz_target(TARGET fuzz_dispatch TEST server.fuzz_dispatch
                  SOURCES fuzz_dispatch.c ${HD_WIRE_SOURCES}
                  INCLUDES ${CMAKE_CURRENT_SOURCE_DIR}
                  LIBS hdproto
                  ARGS -timeout=10)
