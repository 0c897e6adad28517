// SPDX-License-Identifier: Apache-2.0
/// @file
/// @brief Tensor-parallel shards on the CUDA backend: the engine's all-reduce over device memory on the
/// session's stream (kvcompact::cuda::device_rank_group), the device counterpart of kvcompact::rank_group.
#pragma once

#include <kvcompact/cuda/detail/execution.cuh>
#include <kvcompact/tensor_parallel.hpp>
#include <kvcompact/types.hpp>

KVCOMPACT_NAMESPACE_BEGIN
namespace cuda {

/// @brief One rank of a tensor-parallel group for kvcompact::cuda::session: the session's KV heads are
/// heads `[rank * kv_heads, (rank + 1) * kv_heads)` of the model (and its query heads the matching GQA
/// groups), and `all_reduce_sum` is the engine's all-reduce over the group, stream-ordered on the
/// session's stream: what an engine with NCCL has (`ncclAllReduce(values, values, count, ncclDouble,
/// ncclSum, comm, stream)`). Every rank calls the same session entry points in the same order; the
/// session calls `all_reduce_sum` where a decision spans the KV heads of a layer, so each rank keeps
/// exactly what one unsharded session would keep for its heads.
struct device_rank_group {
  int ranks = 1;            ///< ranks in the group (1: no sharding, the hook is never called)
  int rank = 0;             ///< this rank, in [0, ranks); ranks hold consecutive KV heads in rank order
  void* context = nullptr;  ///< passed back to all_reduce_sum (the engine's communicator)
  /// Sums @p count doubles in device memory element-wise over the ranks, in place, enqueued on
  /// @p stream after the work the session enqueued before it (the session does not synchronise);
  /// every rank gets the same result and calls it with the same count. Sums of integers below 2^53
  /// are exact.
  void (*all_reduce_sum)(void* context, double* device_values, index_t count, cudaStream_t stream) = nullptr;

  /// @brief Checks the fields.
  /// @param where the entry point (for the error message)
  /// @throws kvcompact::error naming "group.ranks", "group.rank" or "group.all_reduce_sum"
  void validate(const char* where) const { ::kvcompact::detail::validate_rank_fields(ranks, rank, all_reduce_sum != nullptr, where); }
};

}  // namespace cuda
KVCOMPACT_NAMESPACE_END
