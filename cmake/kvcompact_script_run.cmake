# SPDX-License-Identifier: Apache-2.0
# Included by the ctest drivers run with cmake -P (package, port and vcpkg-harness scripts).

# Runs a command, prints its output under "---- <what>" and stops the script, naming the script and
# <what>, when the command fails. The output is left in run_output in the caller's scope.
function(kvcompact_run what)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE out)
  message("---- ${what}\n${out}")
  if(NOT rc EQUAL 0)
    get_filename_component(script "${CMAKE_SCRIPT_MODE_FILE}" NAME)
    message(FATAL_ERROR "${script}: '${what}' failed (exit ${rc})")
  endif()
  set(run_output "${out}" PARENT_SCOPE)
endfunction()
