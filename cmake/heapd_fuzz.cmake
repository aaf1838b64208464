# SPDX-License-Identifier: MIT
# heapd_fuzz_target(): the one way a libFuzzer target is built and run (included by the top
# CMakeLists.txt; used by src/server/fuzz.cmake and tests/heap/CMakeLists.txt).
#
#   heapd_fuzz_target(TARGET name TEST ctest-name SOURCES file...
#                     [INCLUDES dir...] [LIBS library...] [ARGS libfuzzer-flag...] [SEEDS dir])
#
# The executable compiles SOURCES and the engine's own sources (hdheap's) itself, so that all
# of them carry the fuzzer's coverage instrumentation and ASan + UBSan, with the assertions
# on whatever the build type (-UNDEBUG), without changing how the ordinary targets are built.
# The test runs it for HEAPD_FUZZ_SECONDS over a corpus kept in the build tree between runs
# (build/fuzz/<name>-corpus), grown from the checked-in SEEDS when given. Built only when
# HEAPD_FUZZ is ON and the compiler is clang; otherwise the call does nothing (once, a warning).
set(HEAPD_FUZZ_SECONDS 30 CACHE STRING "Seconds ctest runs each fuzz target")

function(heapd_fuzz_target)
    cmake_parse_arguments(F "" "TARGET;TEST;SEEDS" "SOURCES;INCLUDES;LIBS;ARGS" ${ARGN})
    if(NOT HEAPD_FUZZ)
        return()
    endif()
    if(NOT CMAKE_C_COMPILER_ID MATCHES "Clang")
        message(WARNING "HEAPD_FUZZ needs clang (-DCMAKE_C_COMPILER=clang): ${F_TARGET} skipped")
        return()
    endif()
    get_target_property(heap_sources hdheap SOURCES)
    get_target_property(heap_dir hdheap SOURCE_DIR)
    list(TRANSFORM heap_sources PREPEND ${heap_dir}/)
    add_executable(${F_TARGET} ${F_SOURCES} ${heap_sources})
    target_include_directories(${F_TARGET} PRIVATE ${heap_dir} ${F_INCLUDES})
    target_link_libraries(${F_TARGET} PRIVATE ${F_LIBS})
    set(flags -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined)
    target_compile_options(${F_TARGET} PRIVATE ${flags} -fno-omit-frame-pointer -g -UNDEBUG)
    target_link_options(${F_TARGET} PRIVATE ${flags})

    set(corpus ${CMAKE_BINARY_DIR}/fuzz/${F_TARGET}-corpus)
    file(MAKE_DIRECTORY ${corpus})
    add_test(NAME ${F_TEST}
             COMMAND ${F_TARGET} -max_total_time=${HEAPD_FUZZ_SECONDS} -rss_limit_mb=2048
                     -print_final_stats=1 ${F_ARGS} ${corpus} ${F_SEEDS})
    math(EXPR timeout "${HEAPD_FUZZ_SECONDS} + 120")
    set_tests_properties(${F_TEST} PROPERTIES TIMEOUT ${timeout})
endfunction()
