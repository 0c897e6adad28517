// SPDX-License-Identifier: Apache-2.0
/// @file
/// @brief Prefill selection and merging on the device, through the selection contract: every kernel
/// runs the selector's or merger's own code (kvcompact::detail::ranked_selection,
/// kvcompact::cooperative_selector, kvcompact::entry_merger) on a thread block as the execution
/// group, the same group code the CPU backend runs with one worker. Ranked selectors: candidates and
/// keys per head, the layer allocation (layer scope), then each head's best candidates by the
/// grid-wide top-k (top_k.cuh: many blocks per head, kvcompact's ranking: higher key, then lower
/// position), so the keep-sets are the CPU backend's exactly. Cooperative selectors and mergers: one
/// block per head (per sequence, layers in order, for layer-scope cooperative selectors).
#pragma once

#include <kvcompact/cuda/detail/block_group.cuh>
#include <kvcompact/cuda/detail/launch.cuh>
#include <kvcompact/cuda/detail/layer_ranking_exchange.cuh>
#include <kvcompact/cuda/detail/prefill_problem.cuh>
#include <kvcompact/cuda/detail/rank_exchange.cuh>
#include <kvcompact/cuda/detail/score_kernels.cuh>
#include <kvcompact/cuda/detail/top_k.cuh>
#include <kvcompact/detail/selection.hpp>
#include <kvcompact/policy.hpp>

#include <cstddef>
#include <cstdint>
#include <span>

KVCOMPACT_NAMESPACE_BEGIN
namespace cuda::detail {

/// The execution group of the prefill selection kernels.
using prefill_group = block_group<prefill_threads>;
/// Design occupancy of the selection and merge kernels: two blocks of 256 threads per SM (a block's
/// group primitives take under 24 KiB of shared memory; more blocks wait at the same barriers).
inline constexpr int selection_blocks_per_sm = 2;

/// The (sequence, layer, KV head) a block of a (Hkv, S x grid layers) grid works on.
struct head_block {
  index_t s, l, h;  ///< sequence, layer, KV head
  bool faulted;     ///< the layer is to be left as it is
};

template <class T, class Layout, class State>
__device__ head_block head_of_block(const prefill_problem<T, Layout, State>& p) {
  const index_t s = p.grid_sequence(blockIdx.y), l = p.grid_layer(blockIdx.y);
  return {s, l, static_cast<index_t>(blockIdx.x), p.layer_faults[s * p.layers() + l] != 0};
}

/// Device arrays through which the ranked tier hands each head's candidates to the grid-wide top-k
/// (launch_top_k): the candidates' keys are in `p.floats` and their slots in `index_scratch(h, 0)`,
/// in position order.
struct ranked_top_k {
  std::int32_t* counts;          ///< [S][L][Hkv]: candidates per head (0 in a faulted layer)
  std::int32_t* wanted;          ///< [S][L][Hkv]: candidates the head keeps
  std::span<std::byte> scratch;  ///< launch_top_k's scratch (one scope per head)
};

/// Grid (Hkv, S x L): phase 1 of a ranked selector for one head: the slot order, verdicts,
/// candidates in position order, rank keys; the head's state goes to `p.ranking`, its candidate
/// count and quota to @p top.
template <class Selector, class T, class Layout, class State>
KVCOMPACT_KERNEL void __launch_bounds__(prefill_threads, selection_blocks_per_sm)
    ranked_gather_kernel(prefill_problem<T, Layout, State> p, Selector selector, ranked_top_k top) {
  const auto [s, l, h, faulted] = head_of_block(p);
  const index_t index = p.cache.head_index(s, l, h);
  const prefill_group workers;
  if (faulted) {
    workers.once([&] { top.counts[index] = top.wanted[index] = 0; });
    return;
  }
  const auto ctx = p.context(s, l);
  ctx.prepare_order(workers, static_cast<int>(h));
  const ::kvcompact::detail::ranked_head head = ::kvcompact::detail::gather_candidates(workers, selector, ctx, static_cast<int>(h));
  workers.once([&] {
    p.ranking[index] = head;
    top.counts[index] = head.candidates;
    top.wanted[index] = head.wanted;
  });
}

/// Grid (S x grid layers): phase 2 of a layer-scope ranked selector: the layer-wide ranking and the per-head
/// allocation of one layer, which becomes each head's `wanted` in @p top. With @p cuts (a group of
/// several ranks: layer_ranking_across_ranks() ran) the shares come from the layer's cut over every
/// rank's heads.
template <class Selector, class T, class Layout, class State>
KVCOMPACT_KERNEL void __launch_bounds__(prefill_threads, selection_blocks_per_sm)
    ranked_allocate_kernel(prefill_problem<T, Layout, State> p, Selector selector, ranked_top_k top, const ::kvcompact::detail::layer_cut* cuts) {
  const index_t s = p.grid_sequence(blockIdx.x), l = p.grid_layer(blockIdx.x);
  if (p.layer_faults[s * p.layers() + l]) return;
  const prefill_group workers;
  const index_t first = p.cache.head_index(s, l, 0);
  const auto ctx = p.context(s, l);
  if (cuts == nullptr) {
    ::kvcompact::detail::allocate_layer(workers, selector, ctx, p.ranking + first);
  } else {
    ::kvcompact::detail::share_layer_from_cut(workers, ctx, p.ranking + first, cuts[blockIdx.x]);
    ::kvcompact::detail::allocate_from_shares(workers, selector, ctx, p.ranking + first,
                                              ::kvcompact::detail::number_layer_items(workers, ctx, p.ranking + first));
  }
  workers.for_each(p.cache.layout.num_kv_heads(), [&](index_t h) { top.wanted[first + h] = p.ranking[first + h].wanted; });
}

/// Phase 3: every head keeps its `wanted` best candidates whose key reaches the selector's floor,
/// by the grid-wide top-k over all heads at once (one scope per head; items in position order, so
/// equal keys keep the lower position, as kvcompact::detail::keep_best_candidates does on the CPU).
/// A call over some layers (compress_prefill_layer) ranks the heads of those layers, one launch per
/// sequence (their segments are contiguous within it).
template <class Selector, class T, class Layout, class State>
void launch_best_candidates(const prefill_problem<T, Layout, State>& p, const Selector& selector, const ranked_top_k& top, cudaStream_t stream,
                            const char* where) {
  const index_t capacity = p.cache.layout.capacity(), sequences = p.cache.layout.num_sequences(), kv_heads = p.cache.layout.num_kv_heads();
  const bool all_layers = p.grid_layers == p.layers();
  for (index_t s = 0; s < (all_layers ? 1 : sequences); ++s) {
    const index_t first = p.cache.head_index(s, p.first_layer, 0), items = first * capacity;
    top_k_problem problem;
    problem.keys = {p.floats + items, capacity};  // float_scratch(h): the candidates' keys
    problem.counts = top.counts + first;
    problem.segments = (all_layers ? sequences : 1) * p.grid_layers * kv_heads;
    problem.max_items = capacity;
    problem.k = top.wanted + first;
    problem.floor = ::kvcompact::detail::key_floor(selector);
    problem.flags = {p.keep + items, capacity};
    problem.flag_index = {p.indices + 2 * items, 2 * capacity};  // index_scratch(h, 0): the candidates' slots
    problem.status = p.status;
    problem.segment_layers = p.grid_layers;  // fault names count layers from this call's first one
    problem.segment_heads = kv_heads;
    launch_top_k(problem, top.scratch, stream, where);
  }
}

/// Grid (Hkv, S x L): a head-scope cooperative selector on one head (after its slot order).
template <class Selector, class T, class Layout, class State>
KVCOMPACT_KERNEL void __launch_bounds__(prefill_threads, selection_blocks_per_sm) cooperative_select_kernel(prefill_problem<T, Layout, State> p, Selector selector) {
  const auto [s, l, h, faulted] = head_of_block(p);
  if (faulted) return;
  const prefill_group workers;
  const auto ctx = p.context(s, l);
  ctx.prepare_order(workers, static_cast<int>(h));
  selector.select(workers, ctx, static_cast<int>(h));
}

/// Grid (S x the call's layers): this rank's turn of a kvcompact::rank_summing_selector's sums of one
/// layer, after the slot orders of its heads: sum i, carried on from @p running (after rank 0,
/// @p continues; from zero otherwise) over this rank's query heads, is written back to @p running as a
/// kvcompact::detail::float_as_exchanged() value. @p running: [blocks][capacity] doubles, the
/// continue_across_ranks() exchange.
template <class Selector, class T, class Layout, class State>
KVCOMPACT_KERNEL void __launch_bounds__(prefill_threads, selection_blocks_per_sm)
    rank_sums_kernel(prefill_problem<T, Layout, State> p, Selector selector, double* running, bool continues) {
  const index_t s = p.grid_sequence(blockIdx.x), l = p.grid_layer(blockIdx.x);
  if (p.layer_faults[s * p.layers() + l]) return;
  const prefill_group workers;
  const auto ctx = p.context(s, l);
  for (int h = 0; h < ctx.kv_heads(); ++h) ctx.prepare_order(workers, h);
  double* sums = running + static_cast<index_t>(blockIdx.x) * p.cache.layout.capacity();
  workers.for_each(selector.rank_sum_count(ctx), [&](index_t i) {
    const float before = continues ? ::kvcompact::detail::exchanged_as_float(sums[i]) : 0.0f;
    sums[i] = ::kvcompact::detail::float_as_exchanged(selector.continue_rank_sum(ctx, i, before));
  });
}

/// Grid (S): a layer-scope cooperative selector on every layer of one sequence, in increasing order
/// (a layer may read what an earlier one published in the sequence's shared store), each after the
/// slot orders of its heads. With @p summed (a rank-summing selector on several ranks:
/// rank_sums_kernel ran rank after rank), each layer's context hands the selector its finished sums,
/// [S x the call's layers][capacity] values.
template <class Selector, class T, class Layout, class State>
KVCOMPACT_KERNEL void __launch_bounds__(prefill_threads, selection_blocks_per_sm)
    cooperative_layers_kernel(prefill_problem<T, Layout, State> p, Selector selector, rank_summed_values summed) {
  const index_t s = blockIdx.x, capacity = p.cache.layout.capacity();
  const prefill_group workers;
  workers.once([&] { p.shared[s * (capacity + 2)] = -1; });  // no decision published yet
  for (index_t l = p.first_layer; l < p.first_layer + p.grid_layers; ++l) {
    if (p.layer_faults[s * p.layers() + l]) continue;
    auto ctx = p.context(s, l);
    if (summed.values != nullptr) ctx.set_rank_summed({summed.values + (s * p.grid_layers + l - p.first_layer) * capacity, summed.ranks});
    // With summed values rank_sums_kernel already ordered this layer's heads: the orders and their
    // order_ready flags stay in the workspace (only prepare_kernel clears the flags; the exchange in
    // between writes the rank_exchange slot only), so these calls just read the flags.
    for (int h = 0; h < ctx.kv_heads(); ++h) ctx.prepare_order(workers, h);
    selector.select(workers, ctx);
  }
}

/// Grid (Hkv, S x L): the merger on one head after selection.
template <class Merger, class T, class Layout, class State>
KVCOMPACT_KERNEL void __launch_bounds__(prefill_threads, selection_blocks_per_sm) merge_kernel(prefill_problem<T, Layout, State> p, Merger merger) {
  const auto [s, l, h, faulted] = head_of_block(p);
  if (faulted) return;
  const prefill_group workers;
  ::kvcompact::detail::merge_head(workers, merger, p.context(s, l), static_cast<int>(h));
}

/// Launches the selection and merge stages of compress_prefill for @p policy (slot order, step and
/// scores are ready): the selector's tier and scope pick the kernels.
/// @param heads KV heads @param layer_grid sequences x this call's layers @param sequence_grid sequences
/// @param top the ranked tier's arrays for the grid-wide top-k
/// @param ranks the tensor-parallel group and its arrays (a layer-scope ranked selector ranks over every rank's heads; a
/// kvcompact::rank_summing_selector's sums run over every rank's query heads before it selects)
template <class Policy, class T, class Layout, class State>
void launch_selection(const Policy& policy, const prefill_problem<T, Layout, State>& p, const ranked_top_k& top, const layer_exchange& ranks,
                      unsigned heads, unsigned layer_grid, unsigned sequence_grid, cudaStream_t stream, const char* where) {
  using selector_type = typename Policy::selector_type;
  const dim3 per_head(heads, layer_grid);
  if constexpr (ranked_selector<selector_type>) {
    launch(&ranked_gather_kernel<selector_type, T, Layout, State>, per_head, prefill_threads, 0, stream, p, policy.selector, top);
    check_launch(where, "ranked_gather_kernel");
    if constexpr (selector_type::scope == selection_scope::layer) {
      const bool across_ranks = ranks.group.ranks > 1;
      if (across_ranks) layer_ranking_across_ranks(p, ranks, layer_grid, stream, where);
      launch(&ranked_allocate_kernel<selector_type, T, Layout, State>, dim3(layer_grid), prefill_threads, 0, stream, p, policy.selector, top,
             across_ranks ? static_cast<const ::kvcompact::detail::layer_cut*>(ranks.cuts) : nullptr);
      check_launch(where, "ranked_allocate_kernel");
    }
    launch_best_candidates(p, policy.selector, top, stream, where);
  } else if constexpr (selector_type::scope == selection_scope::head) {
    launch(&cooperative_select_kernel<selector_type, T, Layout, State>, per_head, prefill_threads, 0, stream, p, policy.selector);
    check_launch(where, "cooperative_select_kernel");
  } else {
    rank_summed_values summed{nullptr, ranks.group.ranks};
    if constexpr (rank_summing_selector<selector_type, layer_context<T, Layout>>)
      if (ranks.group.ranks > 1) {  // the sums span every rank's query heads, in the unsharded order
        continue_across_ranks(ranks.group, ranks.values, layer_grid * p.cache.layout.capacity(), stream, where, [&](bool continues) {
          launch(&rank_sums_kernel<selector_type, T, Layout, State>, dim3(layer_grid), prefill_threads, 0, stream, p, policy.selector, ranks.values,
                 continues);
          check_launch(where, "rank_sums_kernel");
        });
        summed.values = ranks.values;
      }
    launch(&cooperative_layers_kernel<selector_type, T, Layout, State>, dim3(sequence_grid), prefill_threads, 0, stream, p, policy.selector, summed);
    check_launch(where, "cooperative_layers_kernel");
  }
  if constexpr (Policy::merges) {
    launch(&merge_kernel<typename Policy::merger_type, T, Layout, State>, per_head, prefill_threads, 0, stream, p, policy.merger);
    check_launch(where, "merge_kernel");
  }
}

}  // namespace cuda::detail
KVCOMPACT_NAMESPACE_END
