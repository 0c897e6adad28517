// SPDX-License-Identifier: Apache-2.0
/// @file
/// @brief Compiler checks, execution-space macros and the ABI namespace.
#pragma once

#include <kvcompact/version.hpp>

#if defined(_MSVC_LANG)
#define KVCOMPACT_DETAIL_CPLUSPLUS _MSVC_LANG
#else
#define KVCOMPACT_DETAIL_CPLUSPLUS __cplusplus
#endif
#if KVCOMPACT_DETAIL_CPLUSPLUS < 202002L
#error "kvcompact needs C++20: compile with -std=c++20 (nvcc too; see the README for CMake older than 3.25.2)."
#endif

#if defined(__CUDACC__)
/// @brief Marks a function callable from host and device code (empty without nvcc).
#define KVCOMPACT_HOST_DEVICE __host__ __device__
/// @brief Marks a device-only function (CUDA translation units only).
#define KVCOMPACT_DEVICE __device__
#else
#define KVCOMPACT_HOST_DEVICE
#define KVCOMPACT_DEVICE
#endif

#if defined(__CUDACC__) && !defined(__clang__)
/// @brief Placed before a host-device template that calls a callable it is given: nvcc then does not
/// object when host code instantiates it with a host-only callable.
#define KVCOMPACT_EXEC_CHECK_DISABLE _Pragma("nv_exec_check_disable")
#else
#define KVCOMPACT_EXEC_CHECK_DISABLE
#endif

#define KVCOMPACT_PP_CAT_(a, b) a##b
#define KVCOMPACT_PP_CAT(a, b) KVCOMPACT_PP_CAT_(a, b)
#define KVCOMPACT_PP_CAT3(a, b, c) KVCOMPACT_PP_CAT(KVCOMPACT_PP_CAT(a, b), c)

// Joins a comma-separated architecture list (as nvcc defines __CUDA_ARCH_LIST__) into one token.
#define KVCOMPACT_ARCH_1(a) _sm_##a
#define KVCOMPACT_ARCH_2(a, b) _sm_##a##_##b
#define KVCOMPACT_ARCH_3(a, b, c) _sm_##a##_##b##_##c
#define KVCOMPACT_ARCH_4(a, b, c, d) _sm_##a##_##b##_##c##_##d
#define KVCOMPACT_ARCH_5(a, b, c, d, e) _sm_##a##_##b##_##c##_##d##_##e
#define KVCOMPACT_ARCH_6(a, b, c, d, e, f) _sm_##a##_##b##_##c##_##d##_##e##_##f
#define KVCOMPACT_ARCH_PICK(_1, _2, _3, _4, _5, _6, name, ...) name
#define KVCOMPACT_ARCH_JOIN_(...)                                                                  \
  KVCOMPACT_ARCH_PICK(__VA_ARGS__, KVCOMPACT_ARCH_6, KVCOMPACT_ARCH_5, KVCOMPACT_ARCH_4,           \
                      KVCOMPACT_ARCH_3, KVCOMPACT_ARCH_2, KVCOMPACT_ARCH_1, unused)(__VA_ARGS__)
#define KVCOMPACT_ARCH_JOIN(list) KVCOMPACT_ARCH_JOIN_(list)

#if defined(__CUDA_ARCH_LIST__)
#define KVCOMPACT_DETAIL_ABI_TARGET KVCOMPACT_ARCH_JOIN(__CUDA_ARCH_LIST__)
#else
#define KVCOMPACT_DETAIL_ABI_TARGET _host
#endif

/// @brief Name of the inline ABI namespace: library version plus target list, so two binaries
/// built from these headers for different GPUs never share one template instantiation.
#define KVCOMPACT_ABI_NAMESPACE                                                                    \
  KVCOMPACT_PP_CAT(KVCOMPACT_PP_CAT3(v, KVCOMPACT_VERSION_MAJOR, _),                               \
                   KVCOMPACT_PP_CAT(KVCOMPACT_VERSION_MINOR, KVCOMPACT_DETAIL_ABI_TARGET))

/// @brief Opens namespace kvcompact and its inline ABI namespace.
#define KVCOMPACT_NAMESPACE_BEGIN                                                                  \
  namespace kvcompact {                                                                            \
  inline namespace KVCOMPACT_ABI_NAMESPACE {
/// @brief Closes what KVCOMPACT_NAMESPACE_BEGIN opened.
#define KVCOMPACT_NAMESPACE_END                                                                    \
  }                                                                                                \
  }
