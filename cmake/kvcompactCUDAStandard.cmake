# SPDX-License-Identifier: Apache-2.0
# C++20 for nvcc on every CMake version kvcompact supports. Installed with the package, and included
# by kvcompactConfig.cmake, so consumers get the same helpers.
#
# CMake 3.25.1 (Debian 12) knows no nvcc flag for C++20: CUDA_STANDARD 20 fails at generate time with
# 'requires the language dialect "CUDA20"'. 3.25.2+ knows it. The shim below teaches older CMake the
# flag; it only sets variables, so it must run at directory scope (hence a macro), after
# enable_language(CUDA). cuda_std_20 in target_compile_features still fails with the shim: use the
# CUDA_STANDARD property (kvcompact_target_cuda_cxx20) instead.

macro(kvcompact_cuda_cxx20_shim)
  if(CMAKE_VERSION VERSION_LESS 3.25.2
     AND CMAKE_CUDA_COMPILER_ID STREQUAL "NVIDIA"
     AND NOT CMAKE_CUDA20_STANDARD_COMPILE_OPTION)
    set(CMAKE_CUDA20_STANDARD_COMPILE_OPTION "-std=c++20")
    set(CMAKE_CUDA20_EXTENSION_COMPILE_OPTION "-std=c++20")
  endif()
endmacro()

# Compile the CUDA sources of the given targets as C++20 (required by kvcompact's headers).
function(kvcompact_target_cuda_cxx20)
  foreach(_kvc_tgt IN LISTS ARGN)
    set_target_properties(${_kvc_tgt} PROPERTIES
      CUDA_STANDARD 20
      CUDA_STANDARD_REQUIRED ON
      CUDA_EXTENSIONS OFF)
  endforeach()
endfunction()

if(CMAKE_CUDA_COMPILER_LOADED)
  kvcompact_cuda_cxx20_shim()
endif()
