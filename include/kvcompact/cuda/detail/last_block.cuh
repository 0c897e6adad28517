// SPDX-License-Identifier: Apache-2.0
/// @file
/// @brief "Last block done": the blocks that share a piece of work each announce on a counter that
/// their results are written; the last one to arrive finishes the work (a reduction over the others'
/// results) in the same launch, with no grid-wide barrier and no extra kernel.
#pragma once

#include <kvcompact/cuda/detail/execution.cuh>
#include <kvcompact/cuda/detail/ptx_fence.cuh>

#include <cstdint>

KVCOMPACT_NAMESPACE_BEGIN
namespace cuda::detail {

/// Announces that the calling block's global writes are done, on @p counter shared by @p total
/// blocks. Returns true, in every thread, in the last block to arrive, which then sees every other
/// block's writes; that block also resets the counter to 0 for the next launch. Every thread of the
/// block must call it (it contains block barriers).
__device__ inline bool block_arrives_last(std::int32_t* counter, std::int32_t total) {
  __shared__ std::int32_t last;
  __syncthreads();  // every thread's writes are issued
  if (threadIdx.x == 0) {
    fence_device();  // release: the block's writes before the arrival
    const std::int32_t before = atomicAdd(counter, 1);
    last = before == total - 1 ? 1 : 0;
    if (last) atomicExch(counter, 0);  // every block has arrived; atomic, as the others' additions are
  }
  __syncthreads();
  const bool is_last = last != 0;
  if (is_last) fence_device();  // acquire: the other blocks' writes before this block's reads
  return is_last;
}

}  // namespace cuda::detail
KVCOMPACT_NAMESPACE_END
