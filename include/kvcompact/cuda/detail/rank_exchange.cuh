// SPDX-License-Identifier: Apache-2.0
/// @file
/// @brief The decisions that span the KV heads of a layer over the ranks of a tensor-parallel group
/// (kvcompact::cuda::device_rank_group), stream-ordered, without host synchronisation: the layer's
/// newest position, and running reductions over query heads handed from rank to rank.
#pragma once

#include <kvcompact/cuda/check.cuh>
#include <kvcompact/cuda/detail/launch.cuh>
#include <kvcompact/cuda/device_rank_group.cuh>
#include <kvcompact/types.hpp>

#include <cstddef>
#include <cstdint>

KVCOMPACT_NAMESPACE_BEGIN
namespace cuda::detail {

/// Threads per block of the exchange kernels.
inline constexpr int exchange_threads = 256;

/// The device counterpart of kvcompact::detail::publish_from_rank: hands the @p count doubles at
/// @p values (device memory) of rank @p from to every rank of @p group with one all-reduce on
/// @p stream. Rank @p from has written its values there (earlier on @p stream); every other rank
/// zeros its own, and the sum leaves rank @p from's values, exactly, on every rank. Every rank of the
/// group calls it with the same @p from and @p count.
inline void publish_from_rank(const device_rank_group& group, int from, double* values, index_t count, cudaStream_t stream, const char* where) {
  if (group.rank != from)
    cuda::check(cudaMemsetAsync(values, 0, sizeof(double) * static_cast<std::size_t>(count), stream), where, "cudaMemsetAsync(rank exchange)");
  group.all_reduce_sum(group.context, values, count, stream);
}

/// Grid over @p count values: @p published[i] = @p newest[i] (run by the publishing rank).
/// @tparam Position the positions' integer type
template <class Position>
KVCOMPACT_KERNEL void __launch_bounds__(exchange_threads) publish_newest_kernel(const Position* newest, double* published, index_t count) {
  const index_t i = static_cast<index_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < count) published[i] = static_cast<double>(newest[i]);
}

/// Grid over @p count values: @p newest[i] = max(@p newest[i], @p reduced[i]), the publishing rank's
/// value after the all-reduce (a sum of one position and zeros: exact).
/// @tparam Position the positions' integer type
template <class Position>
KVCOMPACT_KERNEL void __launch_bounds__(exchange_threads) take_newest_kernel(Position* newest, const double* reduced, index_t count) {
  const index_t i = static_cast<index_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < count) {
    const auto other = static_cast<Position>(reduced[i]);
    newest[i] = other > newest[i] ? other : newest[i];
  }
}

/// Raises each of the @p count values of @p newest (positions, in device memory) to its maximum over
/// the ranks of @p group: in rank order, the rank whose turn it is publishes its values into
/// @p scratch (@p count doubles of device memory), the others zeros, the group sums them, and every
/// rank keeps the larger value. One all-reduce per rank, all on @p stream.
inline void newest_across_ranks(const device_rank_group& group, std::int32_t* newest, double* scratch, index_t count, cudaStream_t stream,
                             const char* where) {
  const auto blocks = static_cast<unsigned>(ceil_div(count, exchange_threads));
  for (int r = 0; r < group.ranks; ++r) {
    if (r == group.rank) {
      launch(&publish_newest_kernel<std::int32_t>, dim3(blocks), exchange_threads, 0, stream, newest, scratch, count);
      check_launch(where, "publish_newest_kernel");
    }
    publish_from_rank(group, r, scratch, count, stream, where);
    launch(&take_newest_kernel<std::int32_t>, dim3(blocks), exchange_threads, 0, stream, newest, scratch, count);
    check_launch(where, "take_newest_kernel");
  }
}

/// The device counterpart of kvcompact::detail::continue_across_ranks: continues @p count running
/// reductions over the query heads of every rank of @p group in the order of one unsharded session.
/// @p running holds them (@p count doubles of device memory) as kvcompact::detail::float_as_exchanged()
/// values. In rank order, the rank whose turn it is enqueues @p add_local(continues) on @p stream,
/// which carries the values on over its own query heads (from @p running when @p continues, i.e. after
/// rank 0; from the reduction's identity otherwise) and writes them back into @p running; the other
/// ranks zero theirs; the group sums. Afterwards @p running holds, on every rank, the values the last
/// rank finished, bit for bit what one session computes. One all-reduce per rank.
template <class AddLocal>
void continue_across_ranks(const device_rank_group& group, double* running, index_t count, cudaStream_t stream, const char* where,
                           const AddLocal& add_local) {
  for (int r = 0; r < group.ranks; ++r) {
    if (r == group.rank) add_local(r > 0);
    publish_from_rank(group, r, running, count, stream, where);
  }
}

}  // namespace cuda::detail
KVCOMPACT_NAMESPACE_END
