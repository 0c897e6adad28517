// SPDX-License-Identifier: Apache-2.0
/// @file
/// @brief A layer-scope ranked selector's layer-wide ranking (Ada-KV) over the KV heads of every rank
/// of a tensor-parallel group (kvcompact::cuda::device_rank_group), stream-ordered: the rounds of
/// kvcompact::detail::layer_top_counts (selectors/layer_ranking.hpp, the same group code the CPU
/// backend runs) as kernels over the layers of the call, with the group's all-reduce on the session's
/// stream between them and no host synchronisation.
#pragma once

#include <kvcompact/cuda/check.cuh>
#include <kvcompact/cuda/detail/block_group.cuh>
#include <kvcompact/cuda/detail/launch.cuh>
#include <kvcompact/cuda/detail/prefill_problem.cuh>
#include <kvcompact/cuda/detail/rank_exchange.cuh>
#include <kvcompact/cuda/detail/score_kernels.cuh>
#include <kvcompact/cuda/device_rank_group.cuh>
#include <kvcompact/detail/ranked_selection.hpp>
#include <kvcompact/selectors/layer_ranking.hpp>
#include <kvcompact/types.hpp>

KVCOMPACT_NAMESPACE_BEGIN
namespace cuda::detail {

/// Device arrays of the layer ranking across ranks, one entry per block of a grid over S x the
/// call's layers (kvcompact::cuda::detail::prefill_problem::grid_sequence).
struct layer_exchange {
  device_rank_group group;                 ///< the ranks (one rank: no exchange)
  double* values;                          ///< [blocks][16]: what the ranks sum
  ::kvcompact::detail::layer_cut* cuts;    ///< [blocks]: each layer's radix select
};

/// Threads per block of the per-layer bookkeeping kernels (one thread per layer).
inline constexpr int layer_exchange_threads = 128;
/// Design occupancy of the per-layer counting kernels: two blocks of prefill_threads per SM, as the
/// selection kernels (a 16-bin block reduction takes 16 KiB of shared memory).
inline constexpr int layer_count_blocks_per_sm = 2;

/// The phase-1 states of the heads of grid block @p block's layer.
template <class T, class Layout, class State>
__device__ ::kvcompact::detail::ranked_head* layer_heads(const prefill_problem<T, Layout, State>& p, unsigned block) {
  return p.ranking + p.cache.head_index(p.grid_sequence(block), p.grid_layer(block), 0);
}

/// Whether grid block @p block's layer is to be left as it is.
template <class T, class Layout, class State>
__device__ bool layer_faulted(const prefill_problem<T, Layout, State>& p, unsigned block) {
  return p.layer_faults[p.grid_sequence(block) * p.layers() + p.grid_layer(block)] != 0;
}

/// One thread per layer of the call: @p values[2 b] = the layer's sum of quotas, [2 b + 1] = its
/// candidates, on this rank (zeros for a faulted layer).
template <class T, class Layout, class State>
KVCOMPACT_KERNEL void __launch_bounds__(layer_exchange_threads) layer_totals_kernel(prefill_problem<T, Layout, State> p, double* values, unsigned blocks) {
  const unsigned b = blockIdx.x * blockDim.x + threadIdx.x;
  if (b >= blocks) return;
  double total = 0.0, candidates = 0.0;
  if (!layer_faulted(p, b)) {
    const ::kvcompact::detail::ranked_head* heads = layer_heads(p, b);
    for (index_t h = 0; h < p.cache.layout.num_kv_heads(); ++h) {
      total += heads[h].quota;
      candidates += heads[h].candidates;
    }
  }
  values[2 * b] = total;
  values[2 * b + 1] = candidates;
}

/// One thread per layer: each layer's radix select starts from the sums over the ranks.
KVCOMPACT_KERNEL void __launch_bounds__(layer_exchange_threads)
    layer_cut_start_kernel(const double* values, ::kvcompact::detail::layer_cut* cuts, unsigned blocks) {
  const unsigned b = blockIdx.x * blockDim.x + threadIdx.x;
  if (b < blocks) cuts[b] = ::kvcompact::detail::start_layer_cut(values[2 * b], values[2 * b + 1]);
}

/// Grid (S x the call's layers): one round's digit counts of the layer on this rank into @p values[16 b ...].
template <class T, class Layout, class State>
KVCOMPACT_KERNEL void __launch_bounds__(prefill_threads, layer_count_blocks_per_sm)
    layer_digits_kernel(prefill_problem<T, Layout, State> p, const ::kvcompact::detail::layer_cut* cuts, double* values, int shift) {
  namespace kd = ::kvcompact::detail;
  const unsigned b = blockIdx.x;
  const block_group<prefill_threads> workers;
  const kd::layer_cut cut = cuts[b];
  kd::digit_counts counts{};
  if (!layer_faulted(p, b) && !kd::takes_all_or_none(cut)) {
    const auto ctx = p.context(p.grid_sequence(b), p.grid_layer(b));
    counts = kd::count_digits(workers, kd::layer_score_list<decltype(ctx)>{ctx, layer_heads(p, b)}, cut, shift);
  }
  workers.for_each(kd::layer_digit_bins, [&](index_t d) { values[kd::layer_digit_bins * b + d] = static_cast<double>(counts.n[d]); });
}

/// One thread per layer: the round's digit from the counts over the ranks.
KVCOMPACT_KERNEL void __launch_bounds__(layer_exchange_threads)
    layer_choose_kernel(const double* values, ::kvcompact::detail::layer_cut* cuts, unsigned blocks, int shift) {
  const unsigned b = blockIdx.x * blockDim.x + threadIdx.x;
  if (b < blocks && !::kvcompact::detail::takes_all_or_none(cuts[b]))
    ::kvcompact::detail::choose_digit(cuts[b], values + ::kvcompact::detail::layer_digit_bins * b, shift);
}

/// Grid (S x the call's layers): this rank's candidates tied at the layer's threshold.
template <class T, class Layout, class State>
KVCOMPACT_KERNEL void __launch_bounds__(prefill_threads, layer_count_blocks_per_sm)
    layer_tied_kernel(prefill_problem<T, Layout, State> p, ::kvcompact::detail::layer_cut* cuts) {
  namespace kd = ::kvcompact::detail;
  const unsigned b = blockIdx.x;
  const block_group<prefill_threads> workers;
  const kd::layer_cut cut = cuts[b];
  if (layer_faulted(p, b) || kd::takes_all_or_none(cut)) return;
  const auto ctx = p.context(p.grid_sequence(b), p.grid_layer(b));
  const index_t tied = kd::count_tied(workers, kd::layer_score_list<decltype(ctx)>{ctx, layer_heads(p, b)}, cut);
  workers.once([&] { cuts[b].tied = static_cast<double>(tied); });
}

/// One thread per layer: @p values[b] = this rank's tied count (run by the publishing rank).
KVCOMPACT_KERNEL void __launch_bounds__(layer_exchange_threads)
    publish_tied_kernel(const ::kvcompact::detail::layer_cut* cuts, double* values, unsigned blocks) {
  const unsigned b = blockIdx.x * blockDim.x + threadIdx.x;
  if (b < blocks) values[b] = cuts[b].tied;
}

/// One thread per layer: adds the publishing rank's tied count (@p values[b], after the all-reduce)
/// when that rank comes before this one.
KVCOMPACT_KERNEL void __launch_bounds__(layer_exchange_threads)
    take_tied_kernel(const double* values, ::kvcompact::detail::layer_cut* cuts, unsigned blocks, bool before) {
  const unsigned b = blockIdx.x * blockDim.x + threadIdx.x;
  if (b < blocks && before) cuts[b].tied_before += values[b];
}

/// Runs the radix select of every layer of @p p's grid (@p blocks = S x the call's layers) over the
/// heads of every rank of @p exchange's group, after the ranked selector's phase 1
/// (ranked_gather_kernel): @p exchange.cuts then hold what kvcompact::detail::share_layer_from_cut
/// needs. All-reduces: one of 2 x blocks doubles, 8 of 16 x blocks, and one of blocks per rank.
template <class T, class Layout, class State>
void layer_ranking_across_ranks(const prefill_problem<T, Layout, State>& p, const layer_exchange& exchange, unsigned blocks, cudaStream_t stream,
                                const char* where) {
  namespace kd = ::kvcompact::detail;
  const device_rank_group& group = exchange.group;
  const auto threads_grid = dim3(static_cast<unsigned>(ceil_div(blocks, layer_exchange_threads)));
  launch(&layer_totals_kernel<T, Layout, State>, threads_grid, layer_exchange_threads, 0, stream, p, exchange.values, blocks);
  check_launch(where, "layer_totals_kernel");
  group.all_reduce_sum(group.context, exchange.values, 2 * static_cast<index_t>(blocks), stream);
  launch(&layer_cut_start_kernel, threads_grid, layer_exchange_threads, 0, stream, exchange.values, exchange.cuts, blocks);
  check_launch(where, "layer_cut_start_kernel");
  for (int shift = kd::layer_first_shift; shift >= 0; shift -= kd::layer_digit_bits) {
    launch(&layer_digits_kernel<T, Layout, State>, dim3(blocks), prefill_threads, 0, stream, p, exchange.cuts, exchange.values, shift);
    check_launch(where, "layer_digits_kernel");
    group.all_reduce_sum(group.context, exchange.values, kd::layer_digit_bins * static_cast<index_t>(blocks), stream);
    launch(&layer_choose_kernel, threads_grid, layer_exchange_threads, 0, stream, exchange.values, exchange.cuts, blocks, shift);
    check_launch(where, "layer_choose_kernel");
  }
  launch(&layer_tied_kernel<T, Layout, State>, dim3(blocks), prefill_threads, 0, stream, p, exchange.cuts);
  check_launch(where, "layer_tied_kernel");
  for (int r = 0; r < group.ranks; ++r) {  // the tied candidates of the ranks before this one (lower heads take ties first)
    if (r == group.rank) {
      launch(&publish_tied_kernel, threads_grid, layer_exchange_threads, 0, stream, exchange.cuts, exchange.values, blocks);
      check_launch(where, "publish_tied_kernel");
    }
    publish_from_rank(group, r, exchange.values, static_cast<index_t>(blocks), stream, where);
    launch(&take_tied_kernel, threads_grid, layer_exchange_threads, 0, stream, exchange.values, exchange.cuts, blocks, r < group.rank);
    check_launch(where, "take_tied_kernel");
  }
}

}  // namespace cuda::detail
KVCOMPACT_NAMESPACE_END
