# SPDX-License-Identifier: Apache-2.0
# Helpers for kvcompact's own targets (tests, examples, benchmarks). Not installed.

# Warnings for our own targets. g++/clang: -Wall -Wextra (-Werror). nvcc: all nvcc warnings
# (-Werror all-warnings) and -Wall,-Wextra for the host compiler pass.
# KVCOMPACT_WERROR=OFF drops the -Werror parts (e.g. for a newer compiler that warns in toolkit headers).
function(kvcompact_target_warnings)
  foreach(tgt IN LISTS ARGN)
    set(cxx "$<COMPILE_LANG_AND_ID:CXX,GNU,Clang,AppleClang>")
    set(cuda "$<COMPILE_LANG_AND_ID:CUDA,NVIDIA>")
    target_compile_options(${tgt} PRIVATE
      "$<${cxx}:-Wall>" "$<${cxx}:-Wextra>"
      "$<${cuda}:SHELL:-Xcompiler -Wall,-Wextra>")
    if(KVCOMPACT_WERROR)
      target_compile_options(${tgt} PRIVATE
        "$<${cxx}:-Werror>"
        "$<${cuda}:SHELL:-Werror all-warnings>")
    endif()
  endforeach()
endfunction()

# Makes targets with .cu sources compile as C++20 under nvcc, with kvcompact's warnings.
function(kvcompact_cuda_target)
  kvcompact_target_cuda_cxx20(${ARGN})
  kvcompact_target_warnings(${ARGN})
endfunction()

# Stem -> a target-name-safe string.
function(kvcompact_make_identifier out in)
  string(MAKE_C_IDENTIFIER "${in}" id)
  set(${out} "${id}" PARENT_SCOPE)
endfunction()

# Every <dir>/*.cpp -> executable <stem> linking kvcompact::kvcompact; every <dir>/*.cu -> executable
# <stem> linking kvcompact::cuda (only when CUDA is enabled); every subfolder with a CMakeLists.txt
# -> add_subdirectory. Used by examples/ and bench/. Globbed with CONFIGURE_DEPENDS.
# Target names are <prefix><stem>; the executable file is always named <stem>.
function(kvcompact_add_executables_from_dir dir kind prefix)
  file(GLOB cpp_sources CONFIGURE_DEPENDS "${dir}/*.cpp")
  file(GLOB cu_sources CONFIGURE_DEPENDS "${dir}/*.cu")
  foreach(src IN LISTS cpp_sources)
    get_filename_component(stem "${src}" NAME_WE)
    kvcompact_make_identifier(id "${prefix}${stem}")
    add_executable(${id} "${src}")
    set_property(TARGET ${id} PROPERTY OUTPUT_NAME "${stem}")
    target_link_libraries(${id} PRIVATE kvcompact::kvcompact)
    kvcompact_target_warnings(${id})
    set_property(TARGET ${id} PROPERTY FOLDER ${kind})
  endforeach()
  if(KVCOMPACT_HAS_CUDA)
    foreach(src IN LISTS cu_sources)
      get_filename_component(stem "${src}" NAME_WE)
      kvcompact_make_identifier(id "${prefix}${stem}")
      add_executable(${id} "${src}")
      set_property(TARGET ${id} PROPERTY OUTPUT_NAME "${stem}")
      target_link_libraries(${id} PRIVATE kvcompact::cuda)
      kvcompact_cuda_target(${id})
      set_property(TARGET ${id} PROPERTY FOLDER ${kind})
    endforeach()
  elseif(cu_sources)
    list(LENGTH cu_sources n)
    message(STATUS "kvcompact: CUDA is not enabled: skipping ${n} .cu ${kind}")
  endif()
  file(GLOB children LIST_DIRECTORIES true CONFIGURE_DEPENDS "${dir}/*")
  foreach(child IN LISTS children)
    if(IS_DIRECTORY "${child}" AND EXISTS "${child}/CMakeLists.txt")
      add_subdirectory("${child}")
    endif()
  endforeach()
endfunction()
