# SPDX-License-Identifier: Apache-2.0
# vcpkg port of kvcompact (header-only). Used as an overlay port from this repository
# (see README.md next to this file) or, for a published release, from GitHub.
#
# Source selection:
#   - KVCOMPACT_SOURCE_DIR (environment variable, or a CMake variable set in a triplet /
#     VCPKG_ENV_PASSTHROUGH): use that checkout as is (in-repo overlay, development);
#   - otherwise: the overlay port inside a checkout uses the checkout two levels up;
#   - otherwise: the release tarball from GitHub (fill in REF and SHA512 when publishing).
set(VCPKG_BUILD_TYPE release)   # header-only: nothing to build twice

if(NOT DEFINED KVCOMPACT_SOURCE_DIR AND DEFINED ENV{KVCOMPACT_SOURCE_DIR})
  set(KVCOMPACT_SOURCE_DIR "$ENV{KVCOMPACT_SOURCE_DIR}")
endif()
if(NOT DEFINED KVCOMPACT_SOURCE_DIR AND EXISTS "${CMAKE_CURRENT_LIST_DIR}/../../include/kvcompact/version.hpp")
  get_filename_component(KVCOMPACT_SOURCE_DIR "${CMAKE_CURRENT_LIST_DIR}/../.." ABSOLUTE)
endif()

if(DEFINED KVCOMPACT_SOURCE_DIR)
  set(SOURCE_PATH "${KVCOMPACT_SOURCE_DIR}")
  message(STATUS "kvcompact: using the local source tree ${SOURCE_PATH}")
else()
  vcpkg_from_github(
    OUT_SOURCE_PATH SOURCE_PATH
    REPO kvcompact/kvcompact
    REF "v${VERSION}"
    SHA512 0   # replace with the release tarball's SHA512 when publishing
    HEAD_REF main)
endif()

vcpkg_cmake_configure(
  SOURCE_PATH "${SOURCE_PATH}"
  OPTIONS
    -DKVCOMPACT_BUILD_TESTS=OFF
    -DKVCOMPACT_BUILD_EXAMPLES=OFF
    -DKVCOMPACT_BUILD_BENCHMARKS=OFF
    -DKVCOMPACT_BUILD_DOCS=OFF
    -DKVCOMPACT_ENABLE_CUDA=OFF)   # the package is the same with or without CUDA; consumers find it
vcpkg_cmake_install()

# Config installed to share/kvcompact, so the defaults (PACKAGE_NAME kvcompact,
# CONFIG_PATH share/kvcompact) need no arguments.
vcpkg_cmake_config_fixup()

file(REMOVE_RECURSE
  "${CURRENT_PACKAGES_DIR}/debug"
  "${CURRENT_PACKAGES_DIR}/lib"
  "${CURRENT_PACKAGES_DIR}/share/doc")

file(INSTALL "${CMAKE_CURRENT_LIST_DIR}/usage" DESTINATION "${CURRENT_PACKAGES_DIR}/share/${PORT}")
vcpkg_install_copyright(FILE_LIST "${SOURCE_PATH}/LICENSE")
