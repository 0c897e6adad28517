# SPDX-License-Identifier: Apache-2.0
# Runs a vcpkg portfile without vcpkg (cmake -P), for the port test (vcpkg itself cannot be
# bootstrapped without network). Defines the vcpkg functions kvcompact's portfile calls, each doing
# what vcpkg's does for a header-only port on Linux, then includes PORT_DIR/portfile.cmake:
#   vcpkg_download_distfile       takes FILENAME from DOWNLOADS (no network) and checks its SHA512
#                                 exactly as vcpkg does: a mismatch is fatal;
#   vcpkg_extract_source_archive  extracts into the buildtree and strips the single top-level folder;
#   vcpkg_check_features          -D<option>=ON/OFF from the features in FEATURES;
#   vcpkg_cmake_configure/install Release configure (Ninja) into CURRENT_PACKAGES_DIR, then install;
#   vcpkg_cmake_config_fixup      requires share/<port>/<port>Config.cmake (the default CONFIG_PATH);
#   vcpkg_install_copyright       writes share/<port>/copyright.
# Variables: PORT_DIR, DOWNLOADS, WORK_DIR, FEATURES (";"-separated, may be empty), CXX_COMPILER,
# CUDA_COMPILER (when FEATURES has cuda), GENERATOR.
cmake_minimum_required(VERSION 3.25)
file(READ "${PORT_DIR}/vcpkg.json" _manifest)
string(JSON PORT GET "${_manifest}" name)
string(JSON VERSION GET "${_manifest}" version-semver)
set(CURRENT_PACKAGES_DIR "${WORK_DIR}/packages")
set(CURRENT_BUILDTREES_DIR "${WORK_DIR}/buildtrees")
set(TARGET_TRIPLET x64-linux)
file(REMOVE_RECURSE "${CURRENT_PACKAGES_DIR}" "${CURRENT_BUILDTREES_DIR}")
file(MAKE_DIRECTORY "${CURRENT_PACKAGES_DIR}" "${CURRENT_BUILDTREES_DIR}")

include("${CMAKE_CURRENT_LIST_DIR}/kvcompact_script_run.cmake")

function(vcpkg_download_distfile out)
  cmake_parse_arguments(PARSE_ARGV 1 arg "" "FILENAME;SHA512" "URLS")
  if(NOT arg_URLS OR NOT arg_FILENAME OR NOT arg_SHA512)
    message(FATAL_ERROR "vcpkg_download_distfile: URLS, FILENAME and SHA512 are required")
  endif()
  foreach(url IN LISTS arg_URLS)
    if(NOT url MATCHES "^(https|file)://")
      message(FATAL_ERROR "vcpkg_download_distfile: '${url}' is neither https:// nor file://")
    endif()
  endforeach()
  set(file "${DOWNLOADS}/${arg_FILENAME}")
  if(NOT EXISTS "${file}")
    message(FATAL_ERROR "vcpkg_download_distfile: ${arg_FILENAME} is not in ${DOWNLOADS} (the harness does not download ${arg_URLS})")
  endif()
  file(SHA512 "${file}" actual)
  string(TOLOWER "${arg_SHA512}" expected)
  if(NOT actual STREQUAL expected)
    message(FATAL_ERROR "vcpkg_download_distfile: File does not have the expected hash: ${file}\n"
                        "  expected SHA512: ${expected}\n  actual SHA512:   ${actual}")
  endif()
  message("vcpkg_download_distfile: ${arg_FILENAME} SHA512 OK (URLS ${arg_URLS})")
  set(${out} "${file}" PARENT_SCOPE)
endfunction()

function(vcpkg_extract_source_archive out)
  cmake_parse_arguments(PARSE_ARGV 1 arg "" "ARCHIVE" "")
  set(into "${CURRENT_BUILDTREES_DIR}/src")
  file(MAKE_DIRECTORY "${into}")
  file(ARCHIVE_EXTRACT INPUT "${arg_ARCHIVE}" DESTINATION "${into}")
  file(GLOB top LIST_DIRECTORIES true "${into}/*")
  list(LENGTH top n)
  if(NOT n EQUAL 1 OR NOT IS_DIRECTORY "${top}")
    message(FATAL_ERROR "vcpkg_extract_source_archive: ${arg_ARCHIVE} must hold exactly one top-level folder (found: ${top})")
  endif()
  set(${out} "${top}" PARENT_SCOPE)
endfunction()

function(vcpkg_check_features)
  cmake_parse_arguments(PARSE_ARGV 0 arg "" "OUT_FEATURE_OPTIONS" "FEATURES")
  set(options "")
  set(pairs ${arg_FEATURES})
  while(pairs)
    list(POP_FRONT pairs feature option)
    if(feature IN_LIST FEATURES)
      list(APPEND options "-D${option}=ON")
    else()
      list(APPEND options "-D${option}=OFF")
    endif()
  endwhile()
  set(${arg_OUT_FEATURE_OPTIONS} "${options}" PARENT_SCOPE)
endfunction()

function(vcpkg_cmake_configure)
  cmake_parse_arguments(PARSE_ARGV 0 arg "" "SOURCE_PATH" "OPTIONS")
  set(cuda_args "")
  if(CUDA_COMPILER)
    set(cuda_args "-DCMAKE_CUDA_COMPILER=${CUDA_COMPILER}")
  endif()
  kvcompact_run("vcpkg_cmake_configure" "${CMAKE_COMMAND}" -S "${arg_SOURCE_PATH}" -B "${CURRENT_BUILDTREES_DIR}/${TARGET_TRIPLET}-rel"
               -G "${GENERATOR}" -DCMAKE_BUILD_TYPE=Release "-DCMAKE_CXX_COMPILER=${CXX_COMPILER}" ${cuda_args}
               "-DCMAKE_INSTALL_PREFIX=${CURRENT_PACKAGES_DIR}" ${arg_OPTIONS})
endfunction()

function(vcpkg_cmake_install)
  kvcompact_run("vcpkg_cmake_install" "${CMAKE_COMMAND}" --build "${CURRENT_BUILDTREES_DIR}/${TARGET_TRIPLET}-rel" --target install)
endfunction()

function(vcpkg_cmake_config_fixup)
  if(NOT EXISTS "${CURRENT_PACKAGES_DIR}/share/${PORT}/${PORT}Config.cmake")
    message(FATAL_ERROR "vcpkg_cmake_config_fixup: share/${PORT}/${PORT}Config.cmake is missing (default CONFIG_PATH)")
  endif()
endfunction()

function(vcpkg_install_copyright)
  cmake_parse_arguments(PARSE_ARGV 0 arg "" "" "FILE_LIST")
  set(text "")
  foreach(f IN LISTS arg_FILE_LIST)
    file(READ "${f}" part)
    string(APPEND text "${part}")
  endforeach()
  file(WRITE "${CURRENT_PACKAGES_DIR}/share/${PORT}/copyright" "${text}")
endfunction()

include("${PORT_DIR}/portfile.cmake")
message("vcpkg harness: ${PORT} ${VERSION} [${FEATURES}] installed into ${CURRENT_PACKAGES_DIR}")
