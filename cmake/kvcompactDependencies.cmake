# SPDX-License-Identifier: Apache-2.0
# Completes the imported kvcompact targets in a consumer's project. Installed with the package and
# included by kvcompactConfig.cmake (CMake install, vcpkg) and, as a build module, by the config that
# Conan's CMakeDeps generates -- one definition of what the targets need on every path:
#   kvcompact::kvcompact  compiles its users as C++20; links CCCL::libcudacxx (libcu++) when CCCL is found;
#   kvcompact::cuda       kvcompact::kvcompact + CUDA::cudart (+ CCCL::CCCL), when find_package(CUDAToolkit)
#                         succeeds here (defined here unless the package manager made it already);
#   kvcompact::openmp     kvcompact::kvcompact + OpenMP::OpenMP_CXX (threads of the CPU backend), when
#                         find_package(OpenMP) succeeds here.
# Components: `cuda` and `openmp`. Asking for one REQUIRED without what it needs, or for a component
# kvcompact does not have, sets kvcompact_FOUND to FALSE with kvcompact_NOT_FOUND_MESSAGE, so that
# find_package(kvcompact ... REQUIRED COMPONENTS ...) fails with that message.

set_property(TARGET kvcompact::kvcompact APPEND PROPERTY INTERFACE_COMPILE_FEATURES cxx_std_20)

# CUDA toolkit: searched only by consumers that ask for the cuda component or have it found already,
# so a host-only consumer never needs (or looks for) CUDA.
if(NOT CUDAToolkit_FOUND AND "cuda" IN_LIST kvcompact_FIND_COMPONENTS)
  if(kvcompact_FIND_QUIETLY)
    find_package(CUDAToolkit QUIET)
  else()
    find_package(CUDAToolkit)
  endif()
endif()

# libcu++ / CCCL: shipped with the CUDA toolkit (or standalone). Optional for host-only consumers.
if(NOT TARGET CCCL::libcudacxx)
  set(_kvc_cccl_hints "$ENV{CUDA_PATH}/lib64/cmake" "/usr/local/cuda/lib64/cmake")
  if(CUDAToolkit_LIBRARY_DIR)
    list(PREPEND _kvc_cccl_hints "${CUDAToolkit_LIBRARY_DIR}/cmake")
  endif()
  find_package(CCCL CONFIG QUIET HINTS ${_kvc_cccl_hints})
  unset(_kvc_cccl_hints)
endif()
if(TARGET CCCL::libcudacxx)
  get_target_property(_kvc_links kvcompact::kvcompact INTERFACE_LINK_LIBRARIES)
  if(NOT "CCCL::libcudacxx" IN_LIST _kvc_links)
    set_property(TARGET kvcompact::kvcompact APPEND PROPERTY INTERFACE_LINK_LIBRARIES CCCL::libcudacxx)
  endif()
  unset(_kvc_links)
endif()

set(kvcompact_cuda_FOUND FALSE)
if(CUDAToolkit_FOUND AND TARGET CUDA::cudart)
  if(NOT TARGET kvcompact::cuda)
    add_library(kvcompact::cuda INTERFACE IMPORTED)
  endif()
  get_target_property(_kvc_links kvcompact::cuda INTERFACE_LINK_LIBRARIES)
  foreach(_kvc_dep kvcompact::kvcompact CUDA::cudart CCCL::CCCL)
    if(TARGET ${_kvc_dep} AND NOT _kvc_dep IN_LIST _kvc_links)
      set_property(TARGET kvcompact::cuda APPEND PROPERTY INTERFACE_LINK_LIBRARIES ${_kvc_dep})
    endif()
  endforeach()
  unset(_kvc_links)
  unset(_kvc_dep)
  set(kvcompact_cuda_FOUND TRUE)
endif()

# OpenMP (threads of the CPU backend): searched only by consumers that ask for the openmp component or
# have found it already; without it the CPU backend runs serially, with the same results.
if(NOT TARGET OpenMP::OpenMP_CXX AND "openmp" IN_LIST kvcompact_FIND_COMPONENTS)
  if(kvcompact_FIND_QUIETLY)
    find_package(OpenMP QUIET COMPONENTS CXX)
  else()
    find_package(OpenMP COMPONENTS CXX)
  endif()
endif()
set(kvcompact_openmp_FOUND FALSE)
if(TARGET OpenMP::OpenMP_CXX)
  if(NOT TARGET kvcompact::openmp)
    add_library(kvcompact::openmp INTERFACE IMPORTED)
    set_property(TARGET kvcompact::openmp PROPERTY INTERFACE_LINK_LIBRARIES kvcompact::kvcompact OpenMP::OpenMP_CXX)
  endif()
  set(kvcompact_openmp_FOUND TRUE)
endif()

foreach(_kvc_component IN LISTS kvcompact_FIND_COMPONENTS)
  if(NOT _kvc_component STREQUAL "cuda" AND NOT _kvc_component STREQUAL "openmp")
    set(_kvc_missing "kvcompact has no component '${_kvc_component}' (it has: cuda, openmp)")
  elseif(_kvc_component STREQUAL "cuda" AND NOT kvcompact_cuda_FOUND)
    set(_kvc_missing "the cuda component needs the CUDA toolkit (find_package(CUDAToolkit) failed: set CUDAToolkit_ROOT or put nvcc on PATH)")
  elseif(_kvc_component STREQUAL "openmp" AND NOT kvcompact_openmp_FOUND)
    set(_kvc_missing "the openmp component needs OpenMP (find_package(OpenMP) failed: a compiler with OpenMP, e.g. g++ or clang++ with libomp)")
  else()
    continue()
  endif()
  if(kvcompact_FIND_REQUIRED_${_kvc_component})
    set(kvcompact_FOUND FALSE)
    set(kvcompact_NOT_FOUND_MESSAGE "${_kvc_missing}")
  elseif(NOT kvcompact_FIND_QUIETLY)
    message(STATUS "kvcompact: optional component '${_kvc_component}' not available: ${_kvc_missing}")
  endif()
  unset(_kvc_missing)
endforeach()
unset(_kvc_component)
