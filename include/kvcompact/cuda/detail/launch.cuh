// SPDX-License-Identifier: Apache-2.0
/// @file
/// @brief Kernel declaration macro and launch helpers of the CUDA backend.
#pragma once

#include <kvcompact/cuda/check.cuh>
#include <kvcompact/cuda/detail/execution.cuh>
#include <kvcompact/error.hpp>
#include <kvcompact/types.hpp>

#include <cstddef>
#include <string>

/// Declares a kernel with hidden visibility: two shared objects built from these headers for
/// different targets never share one instantiation (the inline ABI namespace encodes the targets).
#if defined(__GNUC__) || defined(__clang__)
#define KVCOMPACT_KERNEL __global__ __attribute__((visibility("hidden")))
#else
#define KVCOMPACT_KERNEL __global__
#endif

KVCOMPACT_NAMESPACE_BEGIN
namespace cuda::detail {

/// Ceiling of a / b for positive b.
KVCOMPACT_HOST_DEVICE constexpr index_t ceil_div(index_t a, index_t b) { return (a + b - 1) / b; }

/// Grid dimension from a count, clamped to what CUDA accepts in y and z.
inline unsigned grid_extent(index_t count, const char* where, const char* what) {
  ::kvcompact::detail::require(count > 0 && count <= 65535, where, what, [&] { return "grid extent outside [1, 65535]: " + std::to_string(count); });
  return static_cast<unsigned>(count);
}

/// Checks the launch that was just made (configuration errors surface here, execution errors later).
inline void check_launch(const char* where, const char* kernel) { check(cudaGetLastError(), where, kernel); }

/// Sets the dynamic shared memory a kernel may use when it needs more than the default 48 KiB.
template <class Kernel>
void allow_shared_memory(Kernel kernel, std::size_t bytes, const char* where) {
  if (bytes > 48 * 1024)
    check(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)), where,
          "cudaFuncSetAttribute(MaxDynamicSharedMemorySize)");
}

}  // namespace cuda::detail
KVCOMPACT_NAMESPACE_END
