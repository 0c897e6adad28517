# SPDX-License-Identifier: Apache-2.0
# ctest driver of a compile-fail test (cmake -P). Builds TARGET in BUILD_DIR and passes only if the
# build fails AND every '// expected-error {{"REGEX"}}' of SOURCE matches the compiler output.
# Prints 'kvcompact-compile-fail: FAILED' (the test's FAIL_REGULAR_EXPRESSION) otherwise.
# Never echoes the REGEX itself, so the test's PASS_REGULAR_EXPRESSION only sees compiler output.
foreach(v BUILD_DIR TARGET SOURCE)
  if(NOT DEFINED ${v})
    message(FATAL_ERROR "kvcompact-compile-fail: FAILED: ${v} not set")
  endif()
endforeach()

file(STRINGS "${SOURCE}" markers REGEX "expected-error {{\".*\"}}")
set(ENV{LC_ALL} C)   # plain ASCII quotes in g++ diagnostics
set(cfg_args "")
if(CONFIG)
  set(cfg_args --config "${CONFIG}")
endif()
execute_process(
  COMMAND "${CMAKE_COMMAND}" --build "${BUILD_DIR}" ${cfg_args} --target "${TARGET}"
  RESULT_VARIABLE rc
  OUTPUT_VARIABLE out
  ERROR_VARIABLE out)
message("${out}")

if(rc EQUAL 0)
  message("kvcompact-compile-fail: FAILED: ${TARGET} compiled, but it must not")
  return()
endif()
set(missing 0)
set(index 0)
foreach(line IN LISTS markers)
  math(EXPR index "${index} + 1")
  string(REGEX REPLACE ".*expected-error {{\"(.*)\"}}.*" "\\1" rx "${line}")
  if(NOT out MATCHES "${rx}")
    math(EXPR missing "${missing} + 1")
    message("kvcompact-compile-fail: FAILED: expected-error marker #${index} of ${SOURCE} not found in the output")
  endif()
endforeach()
if(missing EQUAL 0)
  message("kvcompact-compile-fail: ok (${TARGET} failed to compile with the expected diagnostics)")
endif()
