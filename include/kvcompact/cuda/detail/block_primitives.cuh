// SPDX-License-Identifier: Apache-2.0
/// @file
/// @brief Block-wide reduction and weighted row sum used by the decode-eviction, key-pruning and sparse
/// attention kernels (shared memory only).
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

/// Row groups of block_weighted_rows: head_dim threads each, as many as a block of @p threads holds (at least one).
KVCOMPACT_HOST_DEVICE inline index_t weighted_rows_groups(index_t dims, index_t threads) { return dims < threads ? threads / dims : 1; }

/// Writes `out[c] = (sum_r weight(r) * element(r, c)) / divisor` for c < @p dims, r < @p rows. Groups of
/// @p dims threads (weighted_rows_groups) take the rows r = group, group + groups, ... with fused
/// multiply-adds in row order into @p partial ([groups][dims] floats of shared memory); the partials are
/// summed in group order. Every thread of a block of exactly @p Threads threads calls it, after the
/// weights are published.
template <int Threads, class Weight, class Element>
__device__ void block_weighted_rows(index_t rows, index_t dims, const Weight& weight, const Element& element, float divisor, float* partial, float* out) {
  const index_t groups = weighted_rows_groups(dims, Threads), group = threadIdx.x / dims;
  if (group < groups)
    for (index_t c = threadIdx.x % dims; c < dims; c += Threads) {
      float acc = 0.0f;
      for (index_t r = group; r < rows; r += groups) acc = fmaf(weight(r), element(r, c), acc);
      partial[group * dims + c] = acc;
    }
  __syncthreads();
  for (index_t c = threadIdx.x; c < dims; c += Threads) {
    float acc = 0.0f;
    for (index_t g = 0; g < groups; ++g) acc += partial[g * dims + c];
    out[c] = acc / divisor;
  }
}

}  // namespace cuda::detail
KVCOMPACT_NAMESPACE_END
