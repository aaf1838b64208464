# The Python client's tests, included by tests/clients/CMakeLists.txt.
#
#   python.errors    no daemon: the exception table against src/heap/heap.h's HD_ERR_MAP, the
#                    URL parser, the gc constants.
#   python.client    the whole public API against a heapd the test starts on a temporary Unix
#                    socket (and a free TCP port) with a temporary config.
#   python.examples  every script in clients/python/examples against such a heapd.
#
# Each runs /usr/bin/python3 (Debian's, with python3-protobuf) with PYTHONPATH set to the
# build's clients/python, where the heapd_python target puts the package.
if(NOT TARGET heapd_python)
    return()
endif()

set(HEAPD_PY_TEST_PYTHON /usr/bin/python3)
set(HEAPD_PY_TEST_DIR ${CMAKE_CURRENT_LIST_DIR})
set(HEAPD_PY_TEST_ENV "PYTHONPATH=${CMAKE_BINARY_DIR}/clients/python" "PYTHONDONTWRITEBYTECODE=1")
if(TARGET heapd)
    set(HEAPD_PY_TEST_DAEMON $<TARGET_FILE:heapd>)
else()
    set(HEAPD_PY_TEST_DAEMON ${CMAKE_BINARY_DIR}/bin/heapd)
endif()

add_test(NAME python.errors
         COMMAND ${HEAPD_PY_TEST_PYTHON} ${HEAPD_PY_TEST_DIR}/test_python_errors.py
                 --heap-h ${CMAKE_SOURCE_DIR}/src/heap/heap.h)
add_test(NAME python.client
         COMMAND ${HEAPD_PY_TEST_PYTHON} ${HEAPD_PY_TEST_DIR}/test_python_client.py
                 --heapd ${HEAPD_PY_TEST_DAEMON})
add_test(NAME python.examples
         COMMAND ${HEAPD_PY_TEST_PYTHON} ${HEAPD_PY_TEST_DIR}/test_python_examples.py
                 --heapd ${HEAPD_PY_TEST_DAEMON}
                 --examples ${CMAKE_SOURCE_DIR}/clients/python/examples)
set_tests_properties(python.errors PROPERTIES TIMEOUT 60 ENVIRONMENT "${HEAPD_PY_TEST_ENV}")
set_tests_properties(python.client python.examples PROPERTIES
                     TIMEOUT 300 ENVIRONMENT "${HEAPD_PY_TEST_ENV}")
