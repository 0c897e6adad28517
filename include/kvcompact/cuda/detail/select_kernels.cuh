// SPDX-License-Identifier: Apache-2.0
/// @file
/// @brief Prefill selection on the device. Top-k selectors: one block per head gathers the
/// unprotected candidates in position order (block scan) and their pooled scores (the selector's own
/// pooling code); the grid-wide top-k of top_k.cuh keeps the best by kvcompact's ranking (score, then
/// lower position), so the keep-set is the CPU backend's exactly. Every other selector and every
/// merger runs its own select()/merge() serially, layer after layer, per sequence.
#pragma once

#include <kvcompact/cuda/detail/cub.cuh>
#include <kvcompact/cuda/detail/launch.cuh>
#include <kvcompact/cuda/detail/prefill_problem.cuh>
#include <kvcompact/cuda/detail/score_kernels.cuh>
#include <kvcompact/selectors/hit_window.hpp>
#include <kvcompact/selectors/top_k.hpp>


#include <cstdint>

KVCOMPACT_NAMESPACE_BEGIN
namespace cuda::detail {

/// Where top_k_candidates_kernel writes what launch_top_k() ranks (device arrays).
struct top_k_candidates {
  float* keys;            ///< [S][L][Hkv][capacity]: pooled scores of a head's candidates, in position order
  std::int32_t* counts;   ///< [S][L][Hkv]: candidates per head (0 where nothing is to be ranked)
  std::int32_t* quota;    ///< [S][L][Hkv]: candidates to keep (budget minus protected slots; 0 where nothing is)
};

/// Grid (Hkv, S x L): what top_k::select ranks in one head. Keeps the protected slots; gathers the
/// other slots (candidates) in position order into `index_scratch(h, 0)` (block scan); writes their
/// pooled scores (the selector's own pooling code) in that order as the head's top-k keys, and the
/// budget left after the protected slots as the head's quota. launch_top_k() then keeps the best.
/// Design occupancy: 4 blocks per SM (one block per head; at most 64 registers).
template <class Schedule, class T, class Layout, class State>
KVCOMPACT_KERNEL void __launch_bounds__(prefill_threads, 4)
    top_k_candidates_kernel(prefill_problem<T, Layout, State> p, selectors::top_k<Schedule> selector, top_k_candidates out) {
  using reduce_t = cub::BlockReduce<int, prefill_threads>;
  using scan_t = cub::BlockScan<int, prefill_threads>;
  __shared__ typename reduce_t::TempStorage reduce_storage;
  __shared__ typename scan_t::TempStorage scan_storage;
  const index_t h = blockIdx.x, s = p.grid_sequence(blockIdx.y), l = p.grid_layer(blockIdx.y);
  const index_t head = p.cache.head_index(s, l, h), base = p.head_base(s, l, h);
  if (threadIdx.x == 0) out.counts[head] = out.quota[head] = 0;  // nothing to rank unless found below
  if (p.layer_faults[s * p.layers() + l]) return;
  const index_t n = p.cache.lengths[head];
  const index_t budget = selector.budget(l, p.layers(), n);
  std::uint8_t* keep = p.keep + base;
  if (n <= budget) {
    for (index_t j = threadIdx.x; j < n; j += blockDim.x) keep[j] = 1;
    return;
  }
  const index_t step = p.step[s * p.layers() + l];
  const std::int32_t* positions = p.cache.positions + base;
  const std::int32_t* order = p.order + base;
  const float* scores = p.scores + base;
  std::int32_t* candidates = p.indices + 2 * base;  // index_scratch(h, 0), as the CPU selector uses it
  int protected_here = 0;
  for (index_t j = threadIdx.x; j < n; j += blockDim.x)
    if (selector.rule.protects(positions[j], step)) {
      keep[j] = 1;
      ++protected_here;
    }
  const int protected_total = reduce_t(reduce_storage).Sum(protected_here);  // valid in thread 0, which uses it
  index_t count = 0;  // candidates gathered so far (same in every thread)
  for (index_t first = 0; first < n; first += prefill_threads) {
    const index_t i = first + threadIdx.x;
    const index_t slot = i < n ? order[i] : 0;
    const bool is_candidate = i < n && !selector.rule.protects(positions[slot], step);
    int at = 0, gathered = 0;
    scan_t(scan_storage).ExclusiveSum(is_candidate ? 1 : 0, at, gathered);
    if (is_candidate) candidates[count + at] = static_cast<std::int32_t>(slot);
    count += gathered;
    __syncthreads();  // scan_storage is reused; candidates are read by other threads below
  }
  float* keys = out.keys + base;
  for (index_t c = threadIdx.x; c < count; c += blockDim.x)
    keys[c] = selector.rule.pooled_score(c, count, [&](index_t i) { return scores[candidates[i]]; });
  if (threadIdx.x == 0) {
    const index_t quota = budget - protected_total;
    out.counts[head] = static_cast<std::int32_t>(count);
    out.quota[head] = static_cast<std::int32_t>(quota > 0 ? quota : 0);
  }
}

/// Grid (slot tiles, Hkv, S x L): CORM's budget-free rule, one thread per slot.
template <class T, class Layout, class State>
KVCOMPACT_KERNEL void __launch_bounds__(prefill_threads) hit_window_select_kernel(prefill_problem<T, Layout, State> p, selectors::hit_window selector) {
  const auto [s, l, h, j, valid] = slot_of_thread(p);
  if (!valid || p.layer_faults[s * p.layers() + l]) return;
  const index_t base = p.head_base(s, l, h);
  p.keep[base + j] = selector.keeps(p.scores[base + j], p.cache.positions[base + j], p.step[s * p.layers() + l]) ? 1 : 0;
}

/// Grid (S), one thread: every other selector, exactly as the CPU backend runs it: layer after layer
/// (a WindowKV leader publishes before its followers read), then the merger per head.
template <class Policy, class T, class Layout, class State>
KVCOMPACT_KERNEL void serial_select_kernel(prefill_problem<T, Layout, State> p, Policy policy) {
  const index_t s = blockIdx.x;
  p.shared[s * (p.cache.layout.capacity() + 2)] = -1;  // no decision published yet
  for (index_t l = p.first_layer; l < p.first_layer + p.grid_layers; ++l) {
    if (p.layer_faults[s * p.layers() + l]) continue;
    auto ctx = p.context(s, l);
    policy.selector.select(ctx);
    if constexpr (Policy::merges)
      for (int h = 0; h < ctx.kv_heads(); ++h) policy.merger.merge(ctx, h);
  }
}

/// Grid (Hkv, S x L), one thread: the merger after a parallel selection.
template <class Policy, class T, class Layout, class State>
KVCOMPACT_KERNEL void merge_kernel(prefill_problem<T, Layout, State> p, Policy policy) {
  const index_t h = blockIdx.x, s = p.grid_sequence(blockIdx.y), l = p.grid_layer(blockIdx.y);
  if (p.layer_faults[s * p.layers() + l]) return;
  auto ctx = p.context(s, l);
  policy.merger.merge(ctx, static_cast<int>(h));
}

}  // namespace cuda::detail
KVCOMPACT_NAMESPACE_END
