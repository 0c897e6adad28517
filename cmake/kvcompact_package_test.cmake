# SPDX-License-Identifier: Apache-2.0
# ctest driver (cmake -P): install BUILD_DIR into a fresh prefix, then configure, build and run the
# consumer project CONSUMER_DIR against it with find_package(kvcompact <major.minor> CONFIG REQUIRED):
#  1. host-only consumer, with find_package(CUDAToolkit) disabled (a host consumer never needs CUDA);
#  2. the next minor version must be refused (SameMinorVersion);
#  3. if WITH_CUDA: a consumer asking for COMPONENTS cuda that compiles a .cu file with nvcc.
cmake_minimum_required(VERSION 3.25)
set(prefix "${WORK_DIR}/prefix")
file(REMOVE_RECURSE "${WORK_DIR}")
file(MAKE_DIRECTORY "${WORK_DIR}")

function(run what)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE out)
  message("---- ${what}\n${out}")
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "package test: '${what}' failed (exit ${rc})")
  endif()
endfunction()

set(cfg_args "")
if(CONFIG)
  set(cfg_args --config "${CONFIG}")
endif()
run("install" "${CMAKE_COMMAND}" --install "${BUILD_DIR}" ${cfg_args} --prefix "${prefix}")
foreach(f share/kvcompact/kvcompactConfig.cmake share/kvcompact/kvcompactConfigVersion.cmake
          share/kvcompact/kvcompactTargets.cmake include/kvcompact/version.hpp include/kvcompact/config.hpp)
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

# 1. host-only consumer
run("configure host consumer" "${CMAKE_COMMAND}" -S "${CONSUMER_DIR}" -B "${WORK_DIR}/host" ${common}
    -DREQUESTED_VERSION=${major}.${minor} -DCMAKE_DISABLE_FIND_PACKAGE_CUDAToolkit=ON)
run("build host consumer" "${CMAKE_COMMAND}" --build "${WORK_DIR}/host")
run("run host consumer" "${WORK_DIR}/host/kvcompact_consumer")
if(EXISTS "${WORK_DIR}/host/kvcompact_consumer_openmp")  # built where the compiler has OpenMP
  run("run host consumer (kvcompact::openmp)" "${WORK_DIR}/host/kvcompact_consumer_openmp")
endif()

# 2. a newer minor version must be refused
execute_process(
  COMMAND "${CMAKE_COMMAND}" -S "${CONSUMER_DIR}" -B "${WORK_DIR}/refused" ${common}
          -DREQUESTED_VERSION=${major}.${next_minor}
  RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE out)
if(rc EQUAL 0)
  message(FATAL_ERROR "package test: find_package(kvcompact ${major}.${next_minor}) was accepted by ${VERSION}")
endif()
if(NOT out MATCHES "compatible with requested version")
  message(FATAL_ERROR "package test: version ${major}.${next_minor} failed, but not on the version check:\n${out}")
endif()
message("---- find_package(kvcompact ${major}.${next_minor}) refused, as it must be")

# 3. CUDA consumer
if(WITH_CUDA)
  run("configure CUDA consumer" "${CMAKE_COMMAND}" -S "${CONSUMER_DIR}" -B "${WORK_DIR}/cuda" ${common}
      -DREQUESTED_VERSION=${major}.${minor} -DCONSUMER_WITH_CUDA=ON
      -DCMAKE_CUDA_COMPILER=${CUDA_COMPILER} -DCMAKE_CUDA_ARCHITECTURES=${CUDA_ARCH})
  run("build CUDA consumer" "${CMAKE_COMMAND}" --build "${WORK_DIR}/cuda")
  run("run CUDA consumer" "${WORK_DIR}/cuda/kvcompact_consumer_cuda")
endif()
message("package test: OK")
