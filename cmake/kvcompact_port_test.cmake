# SPDX-License-Identifier: Apache-2.0
# ctest driver (cmake -P) of the vcpkg port, end to end without vcpkg or network:
#  1. cmake/kvcompact_vcpkg_port.cmake makes the release archive of the checkout's HEAD commit (the
#     commit a release tag would name; uncommitted changes are not part of it) and the port with its SHA512;
#  2. the SHA512 in the generated portfile must equal that of an independent `git archive | gzip -n`
#     of the same commit (the archive is reproducible, so the published hash can be re-checked);
#  3. the generated portfile runs under cmake/kvcompact_vcpkg_harness.cmake (vcpkg's functions for a
#     header-only port), without features and, if WITH_CUDA, with the cuda feature; the install tree
#     must have the layout vcpkg expects (share/kvcompact config, include/kvcompact, copyright, no
#     binaries, no absolute build paths);
#  4. the port must refuse a tampered archive (one byte appended) with a SHA512 mismatch;
#  5. the find_package consumer CONSUMER_DIR builds and runs against each install tree: host only, and
#     with the cuda feature a .cu consumer of COMPONENTS cuda at nvcc's default architecture.
# Skipped (prints "kvcompact-port-test: skipped") when SOURCE_DIR is not a git checkout.
cmake_minimum_required(VERSION 3.25)
file(REMOVE_RECURSE "${WORK_DIR}")
file(MAKE_DIRECTORY "${WORK_DIR}")

include("${CMAKE_CURRENT_LIST_DIR}/kvcompact_script_run.cmake")

find_program(GIT git)
if(GIT)
  execute_process(COMMAND "${GIT}" -C "${SOURCE_DIR}" rev-parse --verify --quiet HEAD
                  RESULT_VARIABLE rc OUTPUT_VARIABLE commit OUTPUT_STRIP_TRAILING_WHITESPACE)
endif()
if(NOT GIT OR NOT rc EQUAL 0)
  message("kvcompact-port-test: skipped (${SOURCE_DIR} is not a git checkout: the port is made from a commit)")
  return()
endif()

# 1. release archive + port
set(release "${WORK_DIR}/release")
kvcompact_run("make the release archive and port of HEAD (${commit})" "${CMAKE_COMMAND}" -DSOURCE_DIR=${SOURCE_DIR} -DREF=${commit}
    -DOUT_DIR=${release} -P "${SOURCE_DIR}/cmake/kvcompact_vcpkg_port.cmake")
set(port_dir "${release}/ports/kvcompact")
set(archive "${release}/kvcompact-${VERSION}.tar.gz")
foreach(f "${archive}" "${port_dir}/portfile.cmake" "${port_dir}/vcpkg.json" "${port_dir}/usage")
  if(NOT EXISTS "${f}")
    message(FATAL_ERROR "port test: ${f} was not made")
  endif()
endforeach()
file(READ "${port_dir}/vcpkg.json" manifest)
string(JSON port_version GET "${manifest}" version-semver)
if(NOT port_version STREQUAL VERSION)
  message(FATAL_ERROR "port test: the port says version ${port_version}, the project is ${VERSION}")
endif()
string(JSON cuda_feature ERROR_VARIABLE no_feature GET "${manifest}" features cuda description)
if(no_feature)
  message(FATAL_ERROR "port test: vcpkg.json has no cuda feature")
endif()

# 2. the recorded SHA512 is that of a reproducible archive of the commit
file(READ "${port_dir}/portfile.cmake" portfile)
if(NOT portfile MATCHES "SHA512 ([0-9a-f]+)")
  message(FATAL_ERROR "port test: no SHA512 in the generated portfile")
endif()
set(recorded "${CMAKE_MATCH_1}")
string(LENGTH "${recorded}" n)
if(NOT n EQUAL 128)
  message(FATAL_ERROR "port test: the portfile's SHA512 '${recorded}' is not 128 hex digits")
endif()
execute_process(
  COMMAND "${GIT}" -C "${SOURCE_DIR}" archive --format=tar "--prefix=kvcompact-${VERSION}/" "${commit}"
  COMMAND gzip -n -9 -c
  OUTPUT_FILE "${WORK_DIR}/again.tar.gz" RESULTS_VARIABLE results)
if(NOT results STREQUAL "0;0")
  message(FATAL_ERROR "port test: git archive | gzip failed (${results})")
endif()
file(SHA512 "${WORK_DIR}/again.tar.gz" again)
if(NOT again STREQUAL recorded)
  message(FATAL_ERROR "port test: the archive is not reproducible: the portfile records ${recorded}, a second archive of ${commit} has ${again}")
endif()
message("---- SHA512 ${recorded}: recorded in the port and reproduced")

# 3.-5. the port through the harness, the consumer against each install tree
string(REGEX MATCH "^([0-9]+)\\.([0-9]+)" _ "${VERSION}")
set(consumer_args -G "${GENERATOR}" -DCMAKE_BUILD_TYPE=Release -DCMAKE_CXX_COMPILER=${CXX_COMPILER}
    -DCMAKE_FIND_USE_PACKAGE_REGISTRY=OFF -DREQUESTED_VERSION=${CMAKE_MATCH_1}.${CMAKE_MATCH_2}
    -DEXPECTED_MAJOR=${CMAKE_MATCH_1} -DEXPECTED_MINOR=${CMAKE_MATCH_2})
set(feature_sets "core")
if(WITH_CUDA)
  list(APPEND feature_sets "cuda")
endif()
foreach(features IN LISTS feature_sets)
  set(work "${WORK_DIR}/${features}")
  set(harness_features "")
  if(features STREQUAL "cuda")
    set(harness_features cuda)
  endif()
  kvcompact_run("vcpkg install kvcompact[${features}] (harness)" "${CMAKE_COMMAND}" -DPORT_DIR=${port_dir} -DDOWNLOADS=${release} -DWORK_DIR=${work}
      "-DFEATURES=${harness_features}" "-DGENERATOR=${GENERATOR}" -DCXX_COMPILER=${CXX_COMPILER} "-DCUDA_COMPILER=${CUDA_COMPILER}"
      -P "${SOURCE_DIR}/cmake/kvcompact_vcpkg_harness.cmake")
  set(prefix "${work}/packages")
  foreach(f share/kvcompact/kvcompactConfig.cmake share/kvcompact/kvcompactConfigVersion.cmake share/kvcompact/kvcompactTargets.cmake
            share/kvcompact/kvcompactDependencies.cmake share/kvcompact/kvcompactCUDAStandard.cmake share/kvcompact/usage
            share/kvcompact/copyright include/kvcompact/version.hpp include/kvcompact/cuda.cuh)
    if(NOT EXISTS "${prefix}/${f}")
      message(FATAL_ERROR "port test: ${f} missing from the port's install tree")
    endif()
  endforeach()
  file(GLOB_RECURSE binaries "${prefix}/lib/*" "${prefix}/bin/*" "${prefix}/debug/*")
  if(binaries)
    message(FATAL_ERROR "port test: header-only package installed binaries: ${binaries}")
  endif()
  file(GLOB cfg_files "${prefix}/share/kvcompact/*.cmake")
  foreach(f IN LISTS cfg_files)
    file(READ "${f}" text)
    foreach(bad "${SOURCE_DIR}" "${WORK_DIR}")
      string(FIND "${text}" "${bad}" pos)
      if(NOT pos EQUAL -1)
        message(FATAL_ERROR "port test: ${f} contains the absolute path ${bad}")
      endif()
    endforeach()
  endforeach()

  if(features STREQUAL "core")
    kvcompact_run("configure host consumer against the port's install tree" "${CMAKE_COMMAND}" -S "${CONSUMER_DIR}" -B "${work}/consumer"
        ${consumer_args} -DCMAKE_PREFIX_PATH=${prefix} -DCMAKE_DISABLE_FIND_PACKAGE_CUDAToolkit=ON)
    kvcompact_run("build host consumer" "${CMAKE_COMMAND}" --build "${work}/consumer")
    kvcompact_run("run host consumer" "${work}/consumer/kvcompact_consumer")
  else()
    kvcompact_run("configure CUDA consumer (nvcc's default architecture) against the port's install tree" "${CMAKE_COMMAND}" -S "${CONSUMER_DIR}"
        -B "${work}/consumer" ${consumer_args} -DCMAKE_PREFIX_PATH=${prefix} -DCONSUMER_WITH_CUDA=ON
        -DCONSUMER_CUDA_SOURCE=cuda_component.cu -DCMAKE_CUDA_COMPILER=${CUDA_COMPILER})
    kvcompact_run("build CUDA consumer" "${CMAKE_COMMAND}" --build "${work}/consumer")
    kvcompact_run("run CUDA consumer" "${work}/consumer/kvcompact_consumer_cuda")
  endif()
endforeach()

# 4. a tampered archive must be refused
set(tampered "${WORK_DIR}/tampered")
file(MAKE_DIRECTORY "${tampered}")
file(COPY "${archive}" DESTINATION "${tampered}")
file(APPEND "${tampered}/kvcompact-${VERSION}.tar.gz" "x")
execute_process(COMMAND "${CMAKE_COMMAND}" -DPORT_DIR=${port_dir} -DDOWNLOADS=${tampered} -DWORK_DIR=${tampered}/work "-DFEATURES="
                        "-DGENERATOR=${GENERATOR}" -DCXX_COMPILER=${CXX_COMPILER} -P "${SOURCE_DIR}/cmake/kvcompact_vcpkg_harness.cmake"
                RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE out)
if(rc EQUAL 0 OR NOT out MATCHES "does not have the expected hash")
  message(FATAL_ERROR "port test: a tampered archive was not refused for its SHA512 (exit ${rc}):\n${out}")
endif()
message("---- a tampered archive is refused: SHA512 mismatch")
message("port test: OK (${release})")
