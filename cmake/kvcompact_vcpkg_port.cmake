# SPDX-License-Identifier: Apache-2.0
# Makes a release of kvcompact for vcpkg: the source archive of a git ref and the vcpkg port that
# downloads it, with the archive's real SHA512.
#
#   cmake -DREF=v0.1.0 -DOUT_DIR=dist -P cmake/kvcompact_vcpkg_port.cmake
#
# Writes
#   OUT_DIR/kvcompact-<version>.tar.gz   `git archive --format=tar --prefix=kvcompact-<version>/ <REF> | gzip -n -9`
#                                        (reproducible: tar and gzip both omit the local time and owner)
#   OUT_DIR/ports/kvcompact/             portfile.cmake (from ports/kvcompact/portfile.cmake.in), vcpkg.json, usage
# and prints the SHA512. <version> is the one in include/kvcompact/version.hpp at REF.
#
# Publishing: upload the archive as the asset of the GitHub release REF, under the URL the port names
# (default https://github.com/kvcompact/kvcompact/releases/download/<REF>/kvcompact-<version>.tar.gz,
# ARCHIVE_URL=... to change it), then submit OUT_DIR/ports/kvcompact to the vcpkg registry.
# Before publishing, or for a local overlay port of any commit: ARCHIVE_URL=file:///abs/OUT_DIR/kvcompact-<version>.tar.gz.
#
# Variables: REF (default v<version of the checkout>), OUT_DIR (required), SOURCE_DIR (default: this
# checkout), ARCHIVE_URL (see above), GIT (default: git on PATH).
cmake_minimum_required(VERSION 3.25)
if(NOT SOURCE_DIR)
  get_filename_component(SOURCE_DIR "${CMAKE_CURRENT_LIST_DIR}/.." ABSOLUTE)
endif()
if(NOT OUT_DIR)
  message(FATAL_ERROR "kvcompact_vcpkg_port: set OUT_DIR (cmake -DREF=... -DOUT_DIR=... -P ${CMAKE_CURRENT_LIST_FILE})")
endif()
get_filename_component(OUT_DIR "${OUT_DIR}" ABSOLUTE)
if(NOT GIT)
  find_program(GIT git REQUIRED)
endif()

function(version_of text out)
  foreach(part MAJOR MINOR PATCH)
    if(NOT text MATCHES "#define KVCOMPACT_VERSION_${part} ([0-9]+)")
      message(FATAL_ERROR "kvcompact_vcpkg_port: no KVCOMPACT_VERSION_${part} in version.hpp")
    endif()
    list(APPEND parts "${CMAKE_MATCH_1}")
  endforeach()
  list(JOIN parts "." version)
  set(${out} "${version}" PARENT_SCOPE)
endfunction()

if(NOT REF)
  file(READ "${SOURCE_DIR}/include/kvcompact/version.hpp" text)
  version_of("${text}" checkout_version)
  set(REF "v${checkout_version}")
endif()
execute_process(COMMAND "${GIT}" -C "${SOURCE_DIR}" rev-parse --verify --quiet "${REF}^{commit}"
                RESULT_VARIABLE rc OUTPUT_VARIABLE commit OUTPUT_STRIP_TRAILING_WHITESPACE)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "kvcompact_vcpkg_port: '${REF}' is not a commit of ${SOURCE_DIR} (tag the release first: git tag v<version>)")
endif()
execute_process(COMMAND "${GIT}" -C "${SOURCE_DIR}" show "${commit}:include/kvcompact/version.hpp"
                RESULT_VARIABLE rc OUTPUT_VARIABLE text ERROR_VARIABLE err)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "kvcompact_vcpkg_port: ${REF} has no include/kvcompact/version.hpp: ${err}")
endif()
version_of("${text}" version)

set(name "kvcompact-${version}.tar.gz")
set(archive "${OUT_DIR}/${name}")
file(MAKE_DIRECTORY "${OUT_DIR}")
execute_process(
  COMMAND "${GIT}" -C "${SOURCE_DIR}" archive --format=tar "--prefix=kvcompact-${version}/" "${commit}"
  COMMAND gzip -n -9 -c
  OUTPUT_FILE "${archive}"
  RESULTS_VARIABLE results ERROR_VARIABLE err)
foreach(result IN LISTS results)
  if(NOT result EQUAL 0)
    message(FATAL_ERROR "kvcompact_vcpkg_port: git archive | gzip failed (${results}): ${err}")
  endif()
endforeach()
file(SHA512 "${archive}" sha512)

if(NOT ARCHIVE_URL)
  set(ARCHIVE_URL "https://github.com/kvcompact/kvcompact/releases/download/${REF}/${name}")
endif()
set(port_dir "${OUT_DIR}/ports/kvcompact")
file(REMOVE_RECURSE "${port_dir}")
set(KVCOMPACT_PORT_VERSION "${version}")
set(KVCOMPACT_PORT_REF "${REF} (${commit})")
set(KVCOMPACT_ARCHIVE_URL "${ARCHIVE_URL}")
set(KVCOMPACT_ARCHIVE_NAME "${name}")
set(KVCOMPACT_ARCHIVE_SHA512 "${sha512}")
configure_file("${SOURCE_DIR}/ports/kvcompact/portfile.cmake.in" "${port_dir}/portfile.cmake" @ONLY)
file(READ "${SOURCE_DIR}/ports/kvcompact/vcpkg.json" manifest)
string(JSON manifest SET "${manifest}" version-semver "\"${version}\"")
file(WRITE "${port_dir}/vcpkg.json" "${manifest}\n")
file(COPY "${SOURCE_DIR}/ports/kvcompact/usage" DESTINATION "${port_dir}")

message("kvcompact ${version} from ${REF} (${commit})")
message("  archive: ${archive}")
message("  SHA512:  ${sha512}")
message("  URL:     ${ARCHIVE_URL}")
message("  port:    ${port_dir}")
