# SPDX-License-Identifier: Apache-2.0
# ctest driver (cmake -P): the essential steps of ports/kvcompact/portfile.cmake without vcpkg.
# Configures SOURCE_DIR with the -DKVCOMPACT_...=... options the portfile passes (read from the
# portfile itself), installs into a prefix, and checks the layout vcpkg_cmake_config_fixup() expects
# (config in share/kvcompact, headers in include/kvcompact, no binaries, no absolute build paths), then
# builds and runs the find_package consumer CONSUMER_DIR (if given) against that install tree.
cmake_minimum_required(VERSION 3.25)
set(port_dir "${SOURCE_DIR}/ports/kvcompact")
foreach(f vcpkg.json portfile.cmake usage)
  if(NOT EXISTS "${port_dir}/${f}")
    message(FATAL_ERROR "port test: ports/kvcompact/${f} is missing")
  endif()
endforeach()
if(NOT EXISTS "${SOURCE_DIR}/LICENSE")
  message(FATAL_ERROR "port test: LICENSE is missing (vcpkg_install_copyright needs it)")
endif()

# Manifest: name and version must match the project.
file(READ "${port_dir}/vcpkg.json" manifest)
string(JSON name GET "${manifest}" name)
string(JSON port_version ERROR_VARIABLE err GET "${manifest}" version-semver)
if(err)
  string(JSON port_version GET "${manifest}" version)
endif()
if(NOT name STREQUAL "kvcompact" OR NOT port_version STREQUAL VERSION)
  message(FATAL_ERROR "port test: vcpkg.json says ${name} ${port_version}, project is kvcompact ${VERSION}")
endif()

# Options the portfile passes.
file(STRINGS "${port_dir}/portfile.cmake" option_lines REGEX "-DKVCOMPACT_[A-Z_]+=")
set(options "")
foreach(line IN LISTS option_lines)
  string(REGEX MATCHALL "-DKVCOMPACT_[A-Z_]+=[A-Za-z0-9_]+" found "${line}")
  list(APPEND options ${found})
endforeach()
if(NOT options)
  message(FATAL_ERROR "port test: no -DKVCOMPACT_...=... options found in portfile.cmake")
endif()
message("port options: ${options}")

file(REMOVE_RECURSE "${WORK_DIR}")
set(prefix "${WORK_DIR}/packages")
function(run what)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE out)
  message("---- ${what}\n${out}")
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "port test: '${what}' failed (exit ${rc})")
  endif()
endfunction()
# vcpkg_cmake_configure: Release only (VCPKG_BUILD_TYPE release), Ninja.
run("configure" "${CMAKE_COMMAND}" -S "${SOURCE_DIR}" -B "${WORK_DIR}/build" -G "${GENERATOR}"
    -DCMAKE_BUILD_TYPE=Release -DCMAKE_CXX_COMPILER=${CXX_COMPILER} -DCMAKE_INSTALL_PREFIX=${prefix}
    ${options})
run("build" "${CMAKE_COMMAND}" --build "${WORK_DIR}/build")
run("install" "${CMAKE_COMMAND}" --install "${WORK_DIR}/build")

foreach(f share/kvcompact/kvcompactConfig.cmake share/kvcompact/kvcompactConfigVersion.cmake
          share/kvcompact/kvcompactTargets.cmake share/kvcompact/kvcompactCUDAStandard.cmake
          include/kvcompact/version.hpp include/kvcompact/config.hpp)
  if(NOT EXISTS "${prefix}/${f}")
    message(FATAL_ERROR "port test: ${f} missing (vcpkg_cmake_config_fixup expects share/kvcompact)")
  endif()
endforeach()
file(GLOB_RECURSE binaries "${prefix}/lib/*" "${prefix}/bin/*")
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
# What a vcpkg user does next: find_package(kvcompact CONFIG REQUIRED) from the port's install tree.
if(CONSUMER_DIR)
  string(REGEX MATCH "^([0-9]+)\\.([0-9]+)" _ "${VERSION}")
  run("configure consumer against the port's install tree" "${CMAKE_COMMAND}" -S "${CONSUMER_DIR}" -B "${WORK_DIR}/consumer"
      -G "${GENERATOR}" -DCMAKE_BUILD_TYPE=Release -DCMAKE_CXX_COMPILER=${CXX_COMPILER} -DCMAKE_PREFIX_PATH=${prefix}
      -DCMAKE_FIND_USE_PACKAGE_REGISTRY=OFF -DCMAKE_DISABLE_FIND_PACKAGE_CUDAToolkit=ON
      -DREQUESTED_VERSION=${CMAKE_MATCH_1}.${CMAKE_MATCH_2} -DEXPECTED_MAJOR=${CMAKE_MATCH_1} -DEXPECTED_MINOR=${CMAKE_MATCH_2})
  run("build consumer" "${CMAKE_COMMAND}" --build "${WORK_DIR}/consumer")
  run("run consumer" "${WORK_DIR}/consumer/kvcompact_consumer")
endif()
message("port test: OK (${prefix})")
