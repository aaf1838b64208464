# SPDX-License-Identifier: MIT
# Unit tests of the protocol layer (hdwire: src/server/codec.c and dispatch.c) without
# sockets, against a real engine heap. Included by tests/server/CMakeLists.txt.
add_executable(test_dispatch ${CMAKE_CURRENT_LIST_DIR}/test_dispatch.c
                             ${CMAKE_SOURCE_DIR}/tests/heap/testutil.c)
target_include_directories(test_dispatch PRIVATE ${CMAKE_SOURCE_DIR}/tests/heap)
target_link_libraries(test_dispatch hdwire PkgConfig::CMOCKA)
add_test(NAME server.test_dispatch COMMAND test_dispatch)
set_tests_properties(server.test_dispatch PROPERTIES TIMEOUT 120)
