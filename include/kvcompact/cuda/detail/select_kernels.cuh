// SPDX-License-Identifier: Apache-2.0
/// @file
/// @brief Prefill selection and merging on the device, through the selection contract: every kernel
/// runs the selector's or merger's own code (kvcompact::detail::ranked_selection,
/// kvcompact::cooperative_selector, kvcompact::entry_merger) on a thread block as the execution
/// group, the same group code the CPU backend runs with one worker. Ranked selectors: candidates and
/// keys per head, the layer allocation (layer scope), then each head's best candidates by a radix
/// select on 64-bit keys that encode kvcompact's ranking (score, then lower position), so the
/// keep-sets are the CPU backend's exactly. Cooperative selectors and mergers: one block per head (per
/// sequence, layers in order, for layer-scope cooperative selectors). Then the compaction.
#pragma once

#include <kvcompact/cuda/detail/block_group.cuh>
#include <kvcompact/cuda/detail/launch.cuh>
#include <kvcompact/cuda/detail/prefill_problem.cuh>
#include <kvcompact/cuda/detail/score_kernels.cuh>
#include <kvcompact/detail/selection.hpp>
#include <kvcompact/policy.hpp>

#include <cstdint>

KVCOMPACT_NAMESPACE_BEGIN
namespace cuda::detail {

/// The execution group of the prefill selection kernels.
using prefill_group = block_group<prefill_threads>;
/// Design occupancy of the selection and merge kernels: two blocks of 256 threads per SM (a block's
/// group primitives take under 24 KiB of shared memory; more blocks wait at the same barriers).
inline constexpr int selection_blocks_per_sm = 2;

/// The (sequence, layer, KV head) a block of a (Hkv, S x L) grid works on.
struct head_block {
  index_t s, l, h;  ///< sequence, layer, KV head
  bool faulted;     ///< the layer is to be left as it is
};

template <class T, class Layout, class State>
__device__ head_block head_of_block(const prefill_problem<T, Layout, State>& p) {
  const index_t s = blockIdx.y / p.layers(), l = blockIdx.y % p.layers();
  return {s, l, static_cast<index_t>(blockIdx.x), p.layer_faults[s * p.layers() + l] != 0};
}

/// Grid (Hkv, S x L): phase 1 of a ranked selector for one head: the slot order, verdicts,
/// candidates in position order, rank keys; the head's state goes to `p.ranking`.
template <class Selector, class T, class Layout, class State>
KVCOMPACT_KERNEL void __launch_bounds__(prefill_threads, selection_blocks_per_sm) ranked_gather_kernel(prefill_problem<T, Layout, State> p, Selector selector) {
  const auto [s, l, h, faulted] = head_of_block(p);
  if (faulted) return;
  const prefill_group workers;
  const auto ctx = p.context(s, l);
  ctx.prepare_order(workers, static_cast<int>(h));
  const ::kvcompact::detail::ranked_head head = ::kvcompact::detail::gather_candidates(workers, selector, ctx, static_cast<int>(h));
  workers.once([&] { p.ranking[p.cache.head_index(s, l, h)] = head; });
}

/// Grid (S x L): phase 2 of a layer-scope ranked selector: the layer-wide ranking and the per-head
/// allocation of one layer.
template <class Selector, class T, class Layout, class State>
KVCOMPACT_KERNEL void __launch_bounds__(prefill_threads, selection_blocks_per_sm) ranked_allocate_kernel(prefill_problem<T, Layout, State> p, Selector selector) {
  const index_t s = blockIdx.x / p.layers(), l = blockIdx.x % p.layers();
  if (p.layer_faults[s * p.layers() + l]) return;
  const prefill_group workers;
  ::kvcompact::detail::allocate_layer(workers, selector, p.context(s, l), p.ranking + p.cache.head_index(s, l, 0));
}

/// Grid (Hkv, S x L): phase 3 of a ranked selector: the head keeps its best candidates.
template <class Selector, class T, class Layout, class State>
KVCOMPACT_KERNEL void __launch_bounds__(prefill_threads, selection_blocks_per_sm) ranked_keep_kernel(prefill_problem<T, Layout, State> p, Selector selector) {
  const auto [s, l, h, faulted] = head_of_block(p);
  if (faulted) return;
  const prefill_group workers;
  ::kvcompact::detail::keep_best_candidates(workers, selector, p.context(s, l), static_cast<int>(h), p.ranking[p.cache.head_index(s, l, h)]);
}

/// Phase 3 launch: every head keeps its best candidates. The one place that picks the top-k
/// primitive of ranked selection: today one block per head (block_group::kth_largest, a radix
/// select); a grid-wide multi-block top-k replaces this launch without touching the phases around it.
template <class Selector, class T, class Layout, class State>
void launch_best_candidates(const prefill_problem<T, Layout, State>& p, const Selector& selector, dim3 per_head, cudaStream_t stream,
                            const char* where) {
  launch(&ranked_keep_kernel<Selector, T, Layout, State>, per_head, prefill_threads, 0, stream, p, selector);
  check_launch(where, "ranked_keep_kernel");
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

/// Grid (S): a layer-scope cooperative selector on every layer of one sequence, in increasing order
/// (a layer may read what an earlier one published in the sequence's shared store), each after the
/// slot orders of its heads.
template <class Selector, class T, class Layout, class State>
KVCOMPACT_KERNEL void __launch_bounds__(prefill_threads, selection_blocks_per_sm) cooperative_layers_kernel(prefill_problem<T, Layout, State> p, Selector selector) {
  const index_t s = blockIdx.x;
  const prefill_group workers;
  workers.once([&] { p.shared[s * (p.cache.layout.capacity() + 2)] = -1; });  // no decision published yet
  for (index_t l = 0; l < p.layers(); ++l) {
    if (p.layer_faults[s * p.layers() + l]) continue;
    const auto ctx = p.context(s, l);
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
/// @param heads KV heads @param layer_grid sequences x layers @param sequence_grid sequences
template <class Policy, class T, class Layout, class State>
void launch_selection(const Policy& policy, const prefill_problem<T, Layout, State>& p, unsigned heads, unsigned layer_grid,
                      unsigned sequence_grid, cudaStream_t stream, const char* where) {
  using selector_type = typename Policy::selector_type;
  const dim3 per_head(heads, layer_grid);
  if constexpr (ranked_selector<selector_type>) {
    launch(&ranked_gather_kernel<selector_type, T, Layout, State>, per_head, prefill_threads, 0, stream, p, policy.selector);
    check_launch(where, "ranked_gather_kernel");
    if constexpr (selector_type::scope == selection_scope::layer) {
      launch(&ranked_allocate_kernel<selector_type, T, Layout, State>, dim3(layer_grid), prefill_threads, 0, stream, p, policy.selector);
      check_launch(where, "ranked_allocate_kernel");
    }
    launch_best_candidates(p, policy.selector, per_head, stream, where);
  } else if constexpr (selector_type::scope == selection_scope::head) {
    launch(&cooperative_select_kernel<selector_type, T, Layout, State>, per_head, prefill_threads, 0, stream, p, policy.selector);
    check_launch(where, "cooperative_select_kernel");
  } else {
    launch(&cooperative_layers_kernel<selector_type, T, Layout, State>, dim3(sequence_grid), prefill_threads, 0, stream, p, policy.selector);
    check_launch(where, "cooperative_layers_kernel");
  }
  if constexpr (Policy::merges) {
    launch(&merge_kernel<typename Policy::merger_type, T, Layout, State>, per_head, prefill_threads, 0, stream, p, policy.merger);
    check_launch(where, "merge_kernel");
  }
}

/// Slots moved per step of the compaction kernel.
inline index_t compaction_tile(index_t head_dim, std::size_t element_bytes) {
  const index_t fit = static_cast<index_t>(16384 / (static_cast<std::size_t>(head_dim) * 2 * element_bytes));
  return fit < 1 ? 1 : (fit > 32 ? 32 : fit);
}

/// Grid (Hkv, S x L): moves the kept slots of a head to the front in slot order, K and V copied
/// bit-identically; sets the prefill decode state, the decode budget and the new length. In place
/// and safe: a tile's kept rows are all read (into shared memory) before any is written, and a
/// destination never lies after its source.
template <class Policy, class T, class Layout, class State>
KVCOMPACT_KERNEL void __launch_bounds__(prefill_threads) compact_kernel(prefill_problem<T, Layout, State> p, Policy policy, index_t tile) {
  KVCOMPACT_DYNAMIC_SHARED(unsigned char, staging_bytes);
  const index_t h = blockIdx.x, s = blockIdx.y / p.layers(), l = blockIdx.y % p.layers();
  if (p.layer_faults[s * p.layers() + l]) return;
  const Layout& layout = p.cache.layout;
  const index_t dims = layout.head_dim(), stride = layout.dim_stride();
  const index_t head = p.cache.head_index(s, l, h), base = p.head_base(s, l, h);
  const index_t n = p.cache.lengths[head];
  const index_t step = p.step[s * p.layers() + l];
  T* staged = reinterpret_cast<T*>(staging_bytes);  // [tile][2][D]
  __shared__ index_t source[32], destination[32], source_offset[32], destination_offset[32];
  __shared__ std::int32_t position[32];
  __shared__ index_t kept_so_far;
  __shared__ State state[32];
  if (threadIdx.x == 0) kept_so_far = 0;
  __syncthreads();
  for (index_t first = 0; first < n; first += tile) {
    if (threadIdx.x < 32) {
      const index_t j = first + threadIdx.x;
      const bool kept = threadIdx.x < tile && j < n && p.keep[base + j] != 0;
      const unsigned ballot = __ballot_sync(0xffffffffu, kept);
      const index_t to = kept_so_far + __popc(ballot & ((1u << threadIdx.x) - 1u));
      source[threadIdx.x] = kept ? j : -1;
      destination[threadIdx.x] = to;
      if (kept) {
        position[threadIdx.x] = p.cache.positions[base + j];
        state[threadIdx.x] = policy.scorer.state_from_prefill(p.scores[base + j], position[threadIdx.x], step);
        source_offset[threadIdx.x] = to != j ? checked_offset(layout, s, l, h, j, p.status) : -1;
        destination_offset[threadIdx.x] = to != j ? checked_offset(layout, s, l, h, to, p.status) : -1;
      }
      __syncwarp();
      if (threadIdx.x == 0) kept_so_far += __popc(ballot);
    }
    __syncthreads();
    for (index_t e = threadIdx.x; e < tile * dims; e += blockDim.x) {
      const index_t r = e / dims, d = e % dims;
      if (source[r] >= 0 && source_offset[r] >= 0 && destination_offset[r] >= 0) {
        staged[(r * 2) * dims + d] = p.cache.keys[source_offset[r] + d * stride];
        staged[(r * 2 + 1) * dims + d] = p.cache.values[source_offset[r] + d * stride];
      }
    }
    __syncthreads();
    for (index_t e = threadIdx.x; e < tile * dims; e += blockDim.x) {
      const index_t r = e / dims, d = e % dims;
      if (source[r] >= 0 && source_offset[r] >= 0 && destination_offset[r] >= 0) {
        p.cache.keys[destination_offset[r] + d * stride] = staged[(r * 2) * dims + d];
        p.cache.values[destination_offset[r] + d * stride] = staged[(r * 2 + 1) * dims + d];
      }
    }
    if (threadIdx.x < tile && source[threadIdx.x] >= 0) {
      p.cache.positions[base + destination[threadIdx.x]] = position[threadIdx.x];
      p.states[base + destination[threadIdx.x]] = state[threadIdx.x];
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    p.budgets[head] = static_cast<std::int32_t>(policy.selector.budget(l, p.layers(), n));
    p.cache.lengths[head] = static_cast<std::int32_t>(kept_so_far);
  }
}

}  // namespace cuda::detail
KVCOMPACT_NAMESPACE_END
