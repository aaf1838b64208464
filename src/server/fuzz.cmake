# The libFuzzer target of the protocol layer, build/bin/fuzz_dispatch (fuzz_dispatch.c): bytes
# through the frame parser and hd_dispatch_frame against a live heap. Built when HEAPD_FUZZ is
# ON and the compiler is clang; included from src/server/CMakeLists.txt.
#
# The target compiles the engine's sources and hdwire's (HD_WIRE_SOURCES) itself, so that all of them
# carry the fuzzer's coverage instrumentation and the sanitizers without changing how the
# ordinary targets are built. ctest runs it for HEAPD_FUZZ_SECONDS (server.fuzz_dispatch),
# keeping its corpus in the build tree between runs.
set(HEAPD_FUZZ_SECONDS 30 CACHE STRING "Seconds ctest runs each fuzz target")
if(HEAPD_FUZZ)
    if(NOT CMAKE_C_COMPILER_ID MATCHES "Clang")
        message(WARNING "HEAPD_FUZZ needs clang (-DCMAKE_C_COMPILER=clang): fuzz_dispatch skipped")
    else()
        get_target_property(HD_FUZZ_HEAP_SRC hdheap SOURCES)
        get_target_property(HD_FUZZ_HEAP_DIR hdheap SOURCE_DIR)
        list(TRANSFORM HD_FUZZ_HEAP_SRC PREPEND ${HD_FUZZ_HEAP_DIR}/)
        add_executable(fuzz_dispatch fuzz_dispatch.c ${HD_WIRE_SOURCES} ${HD_FUZZ_HEAP_SRC})
        target_include_directories(fuzz_dispatch PRIVATE ${CMAKE_CURRENT_SOURCE_DIR}
                                   ${HD_FUZZ_HEAP_DIR})
        target_link_libraries(fuzz_dispatch PRIVATE hdproto)
        set(HD_FUZZ_FLAGS -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined)
        target_compile_options(fuzz_dispatch PRIVATE ${HD_FUZZ_FLAGS} -fno-omit-frame-pointer -g)
        target_link_options(fuzz_dispatch PRIVATE ${HD_FUZZ_FLAGS})

        set(HD_FUZZ_CORPUS ${CMAKE_BINARY_DIR}/fuzz/dispatch-corpus)
        file(MAKE_DIRECTORY ${HD_FUZZ_CORPUS})
        add_test(NAME server.fuzz_dispatch
                 COMMAND fuzz_dispatch -max_total_time=${HEAPD_FUZZ_SECONDS} -timeout=10
                         -rss_limit_mb=2048 -print_final_stats=1 ${HD_FUZZ_CORPUS})
        math(EXPR HD_FUZZ_TIMEOUT "${HEAPD_FUZZ_SECONDS} + 120")
        set_tests_properties(server.fuzz_dispatch PROPERTIES TIMEOUT ${HD_FUZZ_TIMEOUT})
    endif()
endif()
