# SPDX-License-Identifier: Apache-2.0
# Enables the CUDA language when asked for (KVCOMPACT_ENABLE_CUDA=ON) or when nvcc is found (AUTO).
# Result: KVCOMPACT_HAS_CUDA (ON/OFF), CUDA::* targets from find_package(CUDAToolkit).
# Included (not called) from the top CMakeLists.txt: enable_language and the shim need directory scope.
include(CheckLanguage)
include(kvcompactCUDAStandard)

set(KVCOMPACT_HAS_CUDA OFF)
string(TOUPPER "${KVCOMPACT_ENABLE_CUDA}" _kvc_cuda_mode)
if(_kvc_cuda_mode STREQUAL "AUTO")
  set(_kvc_cuda_required OFF)
  set(_kvc_cuda_try ON)
elseif(KVCOMPACT_ENABLE_CUDA)
  set(_kvc_cuda_required ON)
  set(_kvc_cuda_try ON)
else()
  set(_kvc_cuda_try OFF)
endif()

if(_kvc_cuda_try)
  # Default architectures: Ampere + Hopper. Never 'native': it fails on machines without a GPU.
  if(NOT DEFINED CMAKE_CUDA_ARCHITECTURES AND NOT DEFINED ENV{CUDAARCHS})
    set(CMAKE_CUDA_ARCHITECTURES "80;90" CACHE STRING "CUDA architectures to compile for (default 80;90)")
  endif()
  # nvcc is often installed in /usr/local/cuda without being on PATH.
  if(NOT CMAKE_CUDA_COMPILER AND NOT DEFINED ENV{CUDACXX})
    find_program(_kvc_nvcc nvcc)
    if(NOT _kvc_nvcc AND EXISTS "/usr/local/cuda/bin/nvcc")
      set(ENV{CUDACXX} "/usr/local/cuda/bin/nvcc")
    endif()
    unset(_kvc_nvcc CACHE)
  endif()
  check_language(CUDA)
  if(CMAKE_CUDA_COMPILER)
    enable_language(CUDA)
    kvcompact_cuda_cxx20_shim()
    if(NOT DEFINED CMAKE_CUDA_RUNTIME_LIBRARY)
      # One cudart only (CUDA::cudart is the shared one; CMake's default would add the static one too).
      set(CMAKE_CUDA_RUNTIME_LIBRARY Shared)
    endif()
    find_package(CUDAToolkit REQUIRED)
    set(KVCOMPACT_HAS_CUDA ON)
    message(STATUS "kvcompact: CUDA enabled: nvcc ${CMAKE_CUDA_COMPILER_VERSION} (${CMAKE_CUDA_COMPILER}), "
                   "architectures ${CMAKE_CUDA_ARCHITECTURES}")
  elseif(_kvc_cuda_required)
    message(FATAL_ERROR "kvcompact: KVCOMPACT_ENABLE_CUDA=ON but no CUDA compiler was found "
                        "(set CUDACXX or CMAKE_CUDA_COMPILER, or use -DKVCOMPACT_ENABLE_CUDA=AUTO)")
  else()
    message(STATUS "kvcompact: no CUDA compiler found: CUDA tests, examples and header checks are disabled "
                   "(set CUDACXX or CMAKE_CUDA_COMPILER to enable them)")
  endif()
else()
  message(STATUS "kvcompact: CUDA disabled (KVCOMPACT_ENABLE_CUDA=${KVCOMPACT_ENABLE_CUDA})")
endif()
unset(_kvc_cuda_mode)
unset(_kvc_cuda_try)
unset(_kvc_cuda_required)
