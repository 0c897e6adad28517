// SPDX-License-Identifier: Apache-2.0
/// @file
/// @brief Prefill selection on the device. Top-k selectors run in parallel, one block per head: the
/// unprotected candidates in position order (block scan), pooled scores (the selector's own pooling
/// code), then a radix select of the best candidates on 64-bit keys that encode kvcompact's ranking
/// (score, then lower position), so the keep-set is the CPU backend's exactly. Every other selector
/// and every merger runs its own select()/merge() serially, layer after layer, per sequence.
#pragma once

#include <kvcompact/cuda/detail/block_primitives.cuh>
#include <kvcompact/cuda/detail/launch.cuh>
#include <kvcompact/cuda/detail/prefill_problem.cuh>
#include <kvcompact/cuda/detail/score_kernels.cuh>
#include <kvcompact/selectors/hit_window.hpp>
#include <kvcompact/selectors/top_k.hpp>


#include <cstdint>

KVCOMPACT_NAMESPACE_BEGIN
namespace cuda::detail {

/// A 64-bit key whose unsigned order is kvcompact's ranking: higher score first, then lower position.
__device__ inline std::uint64_t rank_key(float score, index_t position) {
  std::uint32_t bits = __float_as_uint(score == 0.0f ? 0.0f : score);  // -0 and +0 tie, as in ranks_before
  bits = (bits & 0x80000000u) ? ~bits : (bits | 0x80000000u);
  return (static_cast<std::uint64_t>(bits) << 32) | (0xffffffffu - static_cast<std::uint32_t>(position));
}

/// The key of the @p k-th largest (1-based) of a block's keys, by eight 8-bit radix passes. Keys are
/// produced by `key_of(i)` for i in [0, count), 0 meaning "not a candidate"; @p k must not exceed
/// the number of candidates.
template <int Threads, class KeyOf>
__device__ std::uint64_t kth_largest_key(index_t count, index_t k, const KeyOf& key_of) {
  __shared__ unsigned histogram[256];
  __shared__ std::uint64_t prefix;
  __shared__ std::uint64_t mask;
  __shared__ index_t remaining;
  if (threadIdx.x == 0) {
    prefix = 0;
    mask = 0;
    remaining = k;
  }
  for (int pass = 0; pass < 8; ++pass) {
    const int shift = 56 - 8 * pass;
    for (int b = threadIdx.x; b < 256; b += Threads) histogram[b] = 0;
    __syncthreads();
    // Scores cluster, so most keys of a pass share a digit: lanes of a warp with the same digit add
    // once (warp-aggregated), instead of serialising on one shared-memory address.
    for (index_t first = 0; first < count; first += Threads) {
      const index_t i = first + threadIdx.x;
      const std::uint64_t key = i < count ? key_of(i) : 0;
      const bool counted = key != 0 && (key & mask) == prefix;
      const unsigned digit = counted ? static_cast<unsigned>((key >> shift) & 0xffu) : 256u;
      const unsigned same = __match_any_sync(0xffffffffu, digit);
      if (counted && static_cast<int>(threadIdx.x % 32) == __ffs(same) - 1) atomicAdd(&histogram[digit], static_cast<unsigned>(__popc(same)));
    }
    __syncthreads();
    if (threadIdx.x == 0) {
      index_t above = 0;
      for (int digit = 255; digit >= 0; --digit) {
        if (above + histogram[digit] >= remaining) {
          prefix |= static_cast<std::uint64_t>(digit) << shift;
          mask |= static_cast<std::uint64_t>(0xffu) << shift;
          remaining -= above;
          break;
        }
        above += histogram[digit];
      }
    }
    __syncthreads();
  }
  return prefix;
}

/// Grid (Hkv, S x L): top_k::select for one head, in parallel.
template <class Schedule, class T, class Layout, class State>
KVCOMPACT_KERNEL void __launch_bounds__(prefill_threads)
    top_k_select_kernel(prefill_problem<T, Layout, State> p, selectors::top_k<Schedule> selector) {
  const index_t h = blockIdx.x, s = p.grid_sequence(blockIdx.y), l = p.grid_layer(blockIdx.y);
  if (p.layer_faults[s * p.layers() + l]) return;
  const index_t base = p.head_base(s, l, h);
  const index_t n = p.cache.lengths[p.cache.head_index(s, l, h)];
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
  float* pooled = p.floats + base;
  std::int32_t* candidates = p.indices + 2 * base;  // index_scratch(h, 0), as the CPU selector uses it
  index_t protected_here = 0;
  for (index_t j = threadIdx.x; j < n; j += blockDim.x)
    if (selector.rule.protects(positions[j], step)) {
      keep[j] = 1;
      ++protected_here;
    }
  const index_t quota = budget - block_sum<prefill_threads>(protected_here);
  index_t count = 0;  // candidates gathered so far (same in every thread)
  for (index_t first = 0; first < n; first += prefill_threads) {
    const index_t i = first + threadIdx.x;
    const index_t slot = i < n ? order[i] : 0;
    const bool is_candidate = i < n && !selector.rule.protects(positions[slot], step);
    index_t gathered = 0;
    const index_t at = block_flag_scan<prefill_threads>(is_candidate, gathered);
    if (is_candidate) candidates[count + at] = static_cast<std::int32_t>(slot);
    count += gathered;
  }
  __syncthreads();  // candidates written by other threads are read below
  if (quota <= 0) return;
  index_t eligible_here = 0;
  for (index_t c = threadIdx.x; c < count; c += blockDim.x) {
    const float value = selector.rule.pooled_score(c, count, [&](index_t i) { return scores[candidates[i]]; });
    pooled[candidates[c]] = value;
    eligible_here += value >= selector.min_score;
  }
  const index_t eligible = block_sum<prefill_threads>(eligible_here);  // also orders the pooled writes before the reads below
  const index_t wanted = quota < eligible ? quota : eligible;
  if (wanted == 0) return;
  auto key_of = [&](index_t c) -> std::uint64_t {
    const std::int32_t slot = candidates[c];
    return pooled[slot] >= selector.min_score ? rank_key(pooled[slot], positions[slot]) : 0;
  };
  const std::uint64_t threshold = wanted == eligible ? 1 : kth_largest_key<prefill_threads>(count, wanted, key_of);
  for (index_t c = threadIdx.x; c < count; c += blockDim.x)
    if (key_of(c) >= threshold) keep[candidates[c]] = 1;
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
  const index_t h = blockIdx.x, s = p.grid_sequence(blockIdx.y), l = p.grid_layer(blockIdx.y);
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
