// SPDX-License-Identifier: Apache-2.0
/// @file
/// @brief Block-wide reduction and flag scan used by the kernels (shared memory and warp votes only).
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

/// Exclusive prefix count of @p flag over the block in thread order; @p total receives the number
/// of set flags. Every thread of a block of exactly @p Threads threads must call it.
template <int Threads>
__device__ index_t block_flag_scan(bool flag, index_t& total) {
  __shared__ index_t warp_first[Threads / 32 + 1];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const unsigned votes = __ballot_sync(0xffffffffu, flag);
  if (lane == 0) warp_first[warp + 1] = __popc(votes);
  __syncthreads();
  if (threadIdx.x == 0) {
    warp_first[0] = 0;
    for (int w = 1; w <= Threads / 32; ++w) warp_first[w] += warp_first[w - 1];
  }
  __syncthreads();
  const index_t prefix = warp_first[warp] + __popc(votes & ((1u << lane) - 1u));
  total = warp_first[Threads / 32];
  __syncthreads();  // warp_first may be reused by the next call
  return prefix;
}

}  // namespace cuda::detail
KVCOMPACT_NAMESPACE_END
