# SPDX-License-Identifier: MIT
# Makes protoc's generated Python modules importable as a package: protoc writes
# `import foo_pb2 as foo__pb2` for a proto that imports foo.proto, which only works with
# the output directory on sys.path. This script, run with -DDIR=<dir>, rewrites each such
# line to `from . import foo_pb2 as foo__pb2` (google.protobuf's own modules are left
# alone) and writes the package's __init__.py.
file(GLOB modules ${DIR}/*_pb2.py)
foreach(module ${modules})
    file(READ ${module} text)
    string(REGEX REPLACE "(^|\n)import ([A-Za-z0-9_]+_pb2)( as |\n)" "\\1from . import \\2\\3"
           fixed "${text}")
    if(NOT fixed STREQUAL text)
        file(WRITE ${module} "${fixed}")
    endif()
endforeach()
file(WRITE ${DIR}/__init__.py
     "\"\"\"Protobuf modules generated from proto/*.proto at build time.\"\"\"\n")
