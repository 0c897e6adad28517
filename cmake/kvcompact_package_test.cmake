# SPDX-License-Identifier: Apache-2.0
# ctest driver (cmake -P): install BUILD_DIR into a fresh prefix, then configure, build and run the
# consumer project CONSUMER_DIR against it as the README documents (CMAKE_PREFIX_PATH=<prefix>,
# find_package(kvcompact <major.minor> CONFIG REQUIRED [COMPONENTS cuda])).
#
# MODE=host (default):
#  1. host-only consumer, with find_package(CUDAToolkit) disabled (a host consumer never needs CUDA);
#  2. the next minor version must be refused (SameMinorVersion);
#  3. an unknown component must be refused, naming it.
# MODE=cuda_default_architecture: a consumer asking for COMPONENTS cuda, whose .cu file (a bf16 SnapKV
#  session: every prefill kernel) nvcc compiles with no CMAKE_CUDA_ARCHITECTURES at all (nvcc's
#  default, as a new user gets it: sm_75 for nvcc 13, sm_52 for nvcc 12). From sm_70 on it must build
#  and run; below, the build must fail with kvcompact's own message.
cmake_minimum_required(VERSION 3.25)
set(prefix "${WORK_DIR}/prefix")
file(REMOVE_RECURSE "${WORK_DIR}")
file(MAKE_DIRECTORY "${WORK_DIR}")
if(NOT MODE)
  set(MODE host)
endif()

include("${CMAKE_CURRENT_LIST_DIR}/kvcompact_script_run.cmake")

# Runs a command that must fail with output matching `pattern`.
function(run_refused what pattern)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE out)
  if(rc EQUAL 0)
    message(FATAL_ERROR "package test: '${what}' succeeded, but it must fail:\n${out}")
  endif()
  if(NOT out MATCHES "${pattern}")
    message(FATAL_ERROR "package test: '${what}' failed, but not with '${pattern}':\n${out}")
  endif()
  message("---- ${what}: refused as it must be ('${pattern}')")
endfunction()

set(cfg_args "")
if(CONFIG)
  set(cfg_args --config "${CONFIG}")
endif()
kvcompact_run("install" "${CMAKE_COMMAND}" --install "${BUILD_DIR}" ${cfg_args} --prefix "${prefix}")
foreach(f share/kvcompact/kvcompactConfig.cmake share/kvcompact/kvcompactConfigVersion.cmake share/kvcompact/kvcompactTargets.cmake
          share/kvcompact/kvcompactDependencies.cmake share/kvcompact/kvcompactCUDAStandard.cmake
          include/kvcompact/version.hpp include/kvcompact/config.hpp)
  if(NOT EXISTS "${prefix}/${f}")
    message(FATAL_ERROR "package test: ${f} is missing from the install tree")
  endif()
endforeach()

string(REGEX MATCH "^([0-9]+)\\.([0-9]+)" _ "${VERSION}")
set(major ${CMAKE_MATCH_1})
set(minor ${CMAKE_MATCH_2})
math(EXPR next_minor "${minor} + 1")
set(common -G "${GENERATOR}" -DCMAKE_BUILD_TYPE=Release -DCMAKE_CXX_COMPILER=${CXX_COMPILER}
    -DCMAKE_PREFIX_PATH=${prefix} -DCMAKE_FIND_USE_PACKAGE_REGISTRY=OFF
    -DEXPECTED_MAJOR=${major} -DEXPECTED_MINOR=${minor})

if(MODE STREQUAL "host")
  kvcompact_run("configure host consumer" "${CMAKE_COMMAND}" -S "${CONSUMER_DIR}" -B "${WORK_DIR}/host" ${common}
      -DREQUESTED_VERSION=${major}.${minor} -DCMAKE_DISABLE_FIND_PACKAGE_CUDAToolkit=ON)
  kvcompact_run("build host consumer" "${CMAKE_COMMAND}" --build "${WORK_DIR}/host")
  kvcompact_run("run host consumer" "${WORK_DIR}/host/kvcompact_consumer")
  if(EXISTS "${WORK_DIR}/host/kvcompact_consumer_openmp")  # the openmp component, where the compiler has OpenMP
    kvcompact_run("run host consumer (kvcompact::openmp)" "${WORK_DIR}/host/kvcompact_consumer_openmp")
  endif()

  run_refused("find_package(kvcompact ${major}.${next_minor})" "compatible with requested version"
              "${CMAKE_COMMAND}" -S "${CONSUMER_DIR}" -B "${WORK_DIR}/refused" ${common} -DREQUESTED_VERSION=${major}.${next_minor})
  run_refused("find_package(kvcompact COMPONENTS no_such_part)" "kvcompact has no component 'no_such_part'"
              "${CMAKE_COMMAND}" -S "${CONSUMER_DIR}" -B "${WORK_DIR}/unknown" ${common} -DREQUESTED_VERSION=${major}.${minor}
              -DREQUESTED_COMPONENTS=no_such_part)

elseif(MODE STREQUAL "cuda_default_architecture")
  kvcompact_run("configure CUDA consumer (no CMAKE_CUDA_ARCHITECTURES)" "${CMAKE_COMMAND}" -S "${CONSUMER_DIR}" -B "${WORK_DIR}/cuda" ${common}
      -DREQUESTED_VERSION=${major}.${minor} -DCONSUMER_WITH_CUDA=ON -DCMAKE_CUDA_COMPILER=${CUDA_COMPILER})
  if(NOT run_output MATCHES "consumer: CUDA architectures ([0-9]+)")
    message(FATAL_ERROR "package test: the consumer did not report a numeric default CUDA architecture")
  endif()
  set(arch "${CMAKE_MATCH_1}")
  message("---- nvcc's default architecture: sm_${arch}")
  if(arch LESS 70)
    run_refused("build CUDA consumer for sm_${arch}" "the CUDA backend needs compute capability 7.0"
                "${CMAKE_COMMAND}" --build "${WORK_DIR}/cuda")
  else()
    kvcompact_run("build CUDA consumer for sm_${arch}" "${CMAKE_COMMAND}" --build "${WORK_DIR}/cuda")
    kvcompact_run("run CUDA consumer" "${WORK_DIR}/cuda/kvcompact_consumer_cuda")
  endif()
else()
  message(FATAL_ERROR "package test: unknown MODE '${MODE}'")
endif()
message("package test: OK")
