# SPDX-License-Identifier: MIT
# The Python client's tests, included by tests/clients/CMakeLists.txt.
#
#   python.errors            no daemon: the exception table against src/heap/heap.h's
#                            HD_ERR_MAP, the URL parser, the gc constants, importing without
#                            protobuf, choosing the codec.
#   python.codec             no daemon: the C and the pure-Python codecs against each other
#                            and against protobuf (every op, every result, mutated frames);
#                            the op table read from the descriptor against heapd_ops.def.
#   python.strict.<impl>     no daemon: fake servers that break the protocol.
#   python.client.<impl>     the whole public API against a heapd the test starts on a
#                            temporary Unix socket (and a free TCP port).
#   python.asyncio.<impl>    heapd.asyncio against such a heapd (many tasks on one session and
#                            on many sessions, events on the loop, cancellation) and against
#                            fake servers.
#   python.stdlib_docs.<impl> the examples of the gc, weakref and tracemalloc documentation,
#                            adapted by the session prefix, against such a heapd.
#   python.redirect.<impl>   three nodes: connect, reconnect, resume after a drop, asyncio and
#                            heapctl given a node that does not own the session (EMOVED).
#   python.examples          every script in clients/python/examples against such a heapd.
#   python.package           pip install (offline, into a venv; with and without the C codec),
#                            python3 -m build and cmake --install each give a package that
#                            talks to such a heapd.
#
# <impl> is the codec the client runs on, HEAPD_PYTHON_IMPLEMENTATION: "c" (the extension
# heapd/_speedups, when it is built) and "python" (the pure-Python fallback); both pass the
# same tests. Each runs /usr/bin/python3 (Debian's, with python3-protobuf) with PYTHONPATH set
# to the build's clients/python, where the heapd_python target puts the package.
#
# In a sanitizer build the package's C codec is built without the sanitizers (Debian's python3
# has no sanitizer runtime, and every program that imports heapd would abort), and a checked
# twin is built beside it: python.codec loads that one (--speedups) with the runtime preloaded
# (tests/clients/pyasan.py), so its encoder and decoder, fed every op, every result and mutated
# frames, run under ASan and UBSan.
if(NOT TARGET heapd_python)
    return()
endif()

set(HEAPD_PY_TEST_PYTHON /usr/bin/python3)
set(HEAPD_PY_TEST_DIR ${CMAKE_CURRENT_LIST_DIR})
set(HEAPD_PY_TEST_ENV "PYTHONPATH=${CMAKE_BINARY_DIR}/clients/python" "PYTHONDONTWRITEBYTECODE=1")
set(HEAPD_PY_PRELOAD "")
foreach(san ASAN:asan UBSAN:ubsan)
    string(REPLACE ":" ";" san ${san})
    list(GET san 0 option)
    list(GET san 1 lib)
    if(HEAPD_${option})
        execute_process(COMMAND ${CMAKE_C_COMPILER} -print-file-name=lib${lib}.so
                        OUTPUT_VARIABLE path OUTPUT_STRIP_TRAILING_WHITESPACE)
        list(APPEND HEAPD_PY_PRELOAD ${path})
    endif()
endforeach()
set(HEAPD_PY_CODEC_ENV ${HEAPD_PY_TEST_ENV})
if(HEAPD_PY_PRELOAD)
    string(REPLACE ";" " " HEAPD_PY_PRELOAD "${HEAPD_PY_PRELOAD}")
    list(APPEND HEAPD_PY_CODEC_ENV "HEAPD_PY_SANITIZER_PRELOAD=${HEAPD_PY_PRELOAD}")
endif()
set(HEAPD_PY_IMPLS python)
set(HEAPD_PY_CODEC_ARGS "")
if(TARGET heapd_speedups)
    set(HEAPD_PY_IMPLS c python)
    set(HEAPD_PY_CODEC_ARGS --require-c)
endif()
if(TARGET heapd_speedups_checked)
    list(APPEND HEAPD_PY_CODEC_ARGS --speedups $<TARGET_FILE:heapd_speedups_checked>)
endif()

add_test(NAME python.errors
         COMMAND ${HEAPD_PY_TEST_PYTHON} ${HEAPD_PY_TEST_DIR}/test_python_errors.py
                 --heap-h ${CMAKE_SOURCE_DIR}/src/heap/heap.h)
add_test(NAME python.codec
         COMMAND ${HEAPD_PY_TEST_PYTHON} ${HEAPD_PY_TEST_DIR}/test_python_codec.py
                 ${HEAPD_PY_CODEC_ARGS} --ops-def ${CMAKE_BINARY_DIR}/proto/heapd_ops.def)
set_tests_properties(python.errors PROPERTIES TIMEOUT 120 ENVIRONMENT "${HEAPD_PY_TEST_ENV}")
set_tests_properties(python.codec PROPERTIES TIMEOUT 120 ENVIRONMENT "${HEAPD_PY_CODEC_ENV}")

# The suites that start heapd do it through the shared fixture (tests/server/harness.py),
# registered by heapd_daemon_test (tests/CMakeLists.txt).
foreach(impl ${HEAPD_PY_IMPLS})
    add_test(NAME python.strict.${impl}
             COMMAND ${HEAPD_PY_TEST_PYTHON} ${HEAPD_PY_TEST_DIR}/test_python_strict.py)
    set_tests_properties(python.strict.${impl} PROPERTIES TIMEOUT 120
                         ENVIRONMENT "${HEAPD_PY_TEST_ENV};HEAPD_PYTHON_IMPLEMENTATION=${impl}")
    foreach(suite client asyncio stdlib_docs)
        heapd_daemon_test(python.${suite}.${impl} ${HEAPD_PY_TEST_DIR}/test_python_${suite}.py
                          TIMEOUT 300
                          PYTHONPATH ${CMAKE_BINARY_DIR}/clients/python
                          ENV HEAPD_PYTHON_IMPLEMENTATION=${impl})
    endforeach()
endforeach()

# Redirects between nodes (EMOVED, docs/SCALING.md), followed by both codecs' sessions, the
# asyncio one, and heapctl (the C client).
foreach(impl ${HEAPD_PY_IMPLS})
    heapd_daemon_test(python.redirect.${impl} ${HEAPD_PY_TEST_DIR}/test_redirect.py
                      TIMEOUT 120
                      PYTHONPATH ${CMAKE_BINARY_DIR}/clients/python
                      ENV HEAPD_PYTHON_IMPLEMENTATION=${impl} "HEAPCTL_BIN=$<TARGET_FILE:heapctl>")
endforeach()

# Resuming through restarts, cut links and lost responses (connect(resume_timeout=...)), with
# the codec the package picks: the resume logic is the pure-Python core's, whichever codec.
heapd_daemon_test(python.resume ${HEAPD_PY_TEST_DIR}/test_python_resume.py
                  TIMEOUT 300
                  PYTHONPATH ${CMAKE_BINARY_DIR}/clients/python)

heapd_daemon_test(python.package ${HEAPD_PY_TEST_DIR}/test_python_package.py
                  ARGS ${CMAKE_BINARY_DIR}
                  TIMEOUT 300)

heapd_daemon_test(python.examples ${HEAPD_PY_TEST_DIR}/test_python_examples.py
                  ARGS --examples ${CMAKE_SOURCE_DIR}/clients/python/examples
                  TIMEOUT 300
                  PYTHONPATH ${CMAKE_BINARY_DIR}/clients/python)
