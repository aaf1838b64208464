# SPDX-License-Identifier: MIT
# Tests of libheapdclient and heapctl. Each starts its own heapd on a temporary Unix socket
# with a config file it writes itself, so they run in parallel with anything else.
#   clients.cclient  test_cclient.c (cmocka): every call, errors, pipelining, batches, events,
#                    resuming after a dropped connection, timeouts and malformed replies.
#   clients.heapctl  test_heapctl.py (unittest): each command's --json output and exit code,
#                    the shell, --keep/--session, and `cmake --install` + pkg-config.
add_executable(test_cclient ${CMAKE_CURRENT_LIST_DIR}/test_cclient.c)
target_link_libraries(test_cclient PRIVATE heapdclient PkgConfig::CMOCKA)
# heap.h only to check that the client's codes are the engine's.
target_include_directories(test_cclient PRIVATE ${CMAKE_SOURCE_DIR}/src/heap)
add_test(NAME clients.cclient COMMAND test_cclient $<TARGET_FILE:heapd>)
set_tests_properties(clients.cclient PROPERTIES TIMEOUT 180)

# The install test compiles a program against the installed library: in a sanitizer build it
# needs the same runtime, or the library cannot load.
set(HD_SAN_FLAGS "")
if(HEAPD_ASAN)
    string(APPEND HD_SAN_FLAGS " -fsanitize=address")
endif()
if(HEAPD_UBSAN)
    string(APPEND HD_SAN_FLAGS " -fsanitize=undefined")
endif()
heapd_daemon_test(clients.heapctl ${CMAKE_CURRENT_LIST_DIR}/test_heapctl.py
                  ARGS $<TARGET_FILE:heapctl> ${CMAKE_BINARY_DIR}
                  TIMEOUT 300
                  ENV "HEAPD_TEST_CFLAGS=${HD_SAN_FLAGS}")

# Resuming through restarts and cut links (issue 12): resume_driver pipelines 100,000 mutating
# requests with resume_ms on; test_resume.py restarts the daemon under it twice (SIGTERM, its
# sessions saved and restored) and cuts its TCP link through a proxy, and compares its final
# heap with a run where nothing happened.
add_executable(resume_driver ${CMAKE_CURRENT_LIST_DIR}/resume_driver.c)
target_link_libraries(resume_driver PRIVATE heapdclient)
target_include_directories(resume_driver PRIVATE ${CMAKE_SOURCE_DIR}/src/heap)
heapd_daemon_test(clients.resume ${CMAKE_CURRENT_LIST_DIR}/test_resume.py
                  ARGS $<TARGET_FILE:resume_driver>
                  TIMEOUT 300)

# Scaling out (issue 18): three nodes behind a real HAProxy on the shipped
# deploy/haproxy/haproxy.cfg; 300 Python sessions spread, dropped, resumed home, a node
# drained, a node killed and brought back from its snapshots; scale_driver does the same
# through the C client (docs/SCALING.md).
add_executable(scale_driver ${CMAKE_CURRENT_LIST_DIR}/scale_driver.c)
target_link_libraries(scale_driver PRIVATE heapdclient)
heapd_daemon_test(clients.scale ${CMAKE_CURRENT_LIST_DIR}/test_scale.py
                  TIMEOUT 180
                  PYTHONPATH ${CMAKE_BINARY_DIR}/clients/python
                  ENV "HEAPCTL_BIN=$<TARGET_FILE:heapctl>" "SCALE_DRIVER=$<TARGET_FILE:scale_driver>")
