# SPDX-License-Identifier: Apache-2.0
# ctest driver (cmake -P): the docs configuration must REJECT an undocumented public entity.
# Runs DOXYGEN with the project's generated DOXYFILE (@INCLUDE, so WARN_AS_ERROR, WARN_IF_UNDOCUMENTED,
# EXCLUDE_SYMBOLS, ... are the real ones) over two probe headers in namespace kvcompact:
#  1. control: everything documented -> doxygen must succeed (else the check below proves nothing);
#  2. an undocumented struct and an undocumented member of a documented struct -> doxygen must fail
#     and name both.
cmake_minimum_required(VERSION 3.25)
file(REMOVE_RECURSE "${WORK_DIR}")
file(MAKE_DIRECTORY "${WORK_DIR}")

set(documented [=[
/// @file
/// @brief Probe header of the docs test.
#pragma once
namespace kvcompact {
/// @brief A documented struct.
struct documented_probe {
  int value;  ///< a documented member
};
}  // namespace kvcompact
]=])
set(undocumented [=[
/// @file
/// @brief Probe header of the docs test.
#pragma once
namespace kvcompact {
/// @brief A documented struct with one undocumented member.
struct documented_probe {
  int value;  ///< a documented member
  int undocumented_member_probe;
};
struct undocumented_struct_probe {
  int value;
};
}  // namespace kvcompact
]=])

function(run_doxygen name text result output)
  set(dir "${WORK_DIR}/${name}")
  file(MAKE_DIRECTORY "${dir}/out")
  file(WRITE "${dir}/probe.hpp" "${text}")
  file(WRITE "${dir}/Doxyfile"
    "@INCLUDE = \"${DOXYFILE}\"\n"
    "INPUT = \"${dir}/probe.hpp\"\n"
    "USE_MDFILE_AS_MAINPAGE =\n"
    "OUTPUT_DIRECTORY = \"${dir}/out\"\n"
    "STRIP_FROM_PATH = \"${dir}\"\n")
  execute_process(COMMAND "${DOXYGEN}" "${dir}/Doxyfile" WORKING_DIRECTORY "${dir}"
                  RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE out)
  message("---- doxygen, ${name} probe (exit ${rc})\n${out}")
  set(${result} "${rc}" PARENT_SCOPE)
  set(${output} "${out}" PARENT_SCOPE)
endfunction()

run_doxygen(control "${documented}" rc out)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "docs test: the fully documented control probe failed, so the configuration is broken")
endif()
run_doxygen(undocumented "${undocumented}" rc out)
if(rc EQUAL 0)
  message(FATAL_ERROR "docs test: doxygen accepted an undocumented struct and member (warnings are not errors?)")
endif()
foreach(name undocumented_struct_probe undocumented_member_probe)
  if(NOT out MATCHES "${name}[^\n]*not documented")
    message(FATAL_ERROR "docs test: doxygen failed, but did not report ${name} as undocumented")
  endif()
endforeach()
message("docs test: OK (undocumented public entities fail the docs build)")
