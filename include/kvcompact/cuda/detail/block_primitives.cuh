// SPDX-License-Identifier: Apache-2.0
/// @file
/// @brief Block-wide reduction used by the decode-eviction and key-pruning kernels (shared memory only).
#pragma once

#include <kvcompact/cuda/detail/execution.cuh>
#include <kvcompact/types.hpp>

KVCOMPACT_NAMESPACE_BEGIN
namespace cuda::detail {

/// Reduces @p value over the block with @p op (associative) and returns the result to every thread.
/// Every thread of a block of exactly @p Threads threads (a power of two) must call it.
template <int Threads, class T, class Op>
__device__ T block_reduce(T value, const Op& op) {
  static_assert((Threads & (Threads - 1)) == 0, "kvcompact: block_reduce needs a power-of-two block");
  __shared__ T slots[Threads];
  slots[threadIdx.x] = value;
  __syncthreads();
  for (int stride = Threads / 2; stride > 0; stride /= 2) {
    if (static_cast<int>(threadIdx.x) < stride) slots[threadIdx.x] = op(slots[threadIdx.x], slots[threadIdx.x + stride]);
    __syncthreads();
  }
  const T result = slots[0];
  __syncthreads();  // slots may be reused by the next call
  return result;
}

/// Sum of @p value over the block, returned to every thread (see block_reduce).
template <int Threads, class T>
__device__ T block_sum(T value) {
  return block_reduce<Threads>(value, [](T a, T b) { return a + b; });
}

}  // namespace cuda::detail
KVCOMPACT_NAMESPACE_END
