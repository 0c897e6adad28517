// SPDX-License-Identifier: Apache-2.0
/// @file
/// @brief Decode-time insertion with eviction on the device: one block per (KV head, sequence) computes
/// the head's decode scores, lets the policy pick victims and merge them (the selection contract's
/// group code on the block, see decode_eviction.cuh), and writes the new token into a freed slot. No
/// host sync, no memmove, no allocation.
#pragma once

#include <kvcompact/cuda/detail/decode_eviction.cuh>
#include <kvcompact/cuda/detail/decode_victims.cuh>
#include <kvcompact/cuda/detail/device_status.cuh>
#include <kvcompact/cuda/detail/launch.cuh>
#include <kvcompact/detail/decode_eviction.hpp>
#include <kvcompact/detail/slot_ops.hpp>
#include <kvcompact/layer_context.hpp>


#include <climits>
#include <cstdint>

KVCOMPACT_NAMESPACE_BEGIN
namespace cuda::detail {

/// Per-(sequence, KV head) scratch the decode path hands to selectors and mergers (device arrays).
struct decode_scratch {
  float* scores;               ///< [S][Hkv][capacity]
  float* floats;               ///< [S][Hkv][capacity]
  std::int32_t* indices;       ///< [S][Hkv][2][capacity]
  std::int32_t* order;         ///< [S][Hkv][capacity]
  std::uint8_t* keep;          ///< [S][Hkv][capacity]
  std::int32_t* targets;       ///< [S][Hkv][capacity]
  std::uint8_t* order_ready;   ///< [S][Hkv][Hkv]: private to each (sequence, head) block
  std::int32_t* shared;        ///< [S][capacity + 2]
};

/// Everything one decode insertion of one storage layer reads and writes (device pointers).
template <class T, class Layout, class State>
struct append_problem {
  kv_cache<T, Layout> cache;            ///< the cache
  index_t layer;                        ///< storage layer
  index_t query_heads;                  ///< query heads
  const T* keys;                        ///< [S][Hkv][D] new keys
  const T* values;                      ///< [S][Hkv][D] new values
  const std::int32_t* positions;        ///< [S]; a negative position skips the sequence
  State* states;                        ///< [S][L][Hkv][capacity] decode state
  std::int32_t* budgets;                ///< [S][L][Hkv] decode budgets
  decode_scratch scratch;               ///< selector scratch
  eviction_record* records;             ///< [S][L][Hkv] victims found by the last attention pass
  std::int32_t generation;              ///< the session's generation (records of older ones are stale)
  device_status* status;                ///< fault record
};

/// Outcome of placing a token without scanning its head.
struct quick_slot {
  bool scan;     ///< the head must be scanned (the general path)
  index_t slot;  ///< otherwise the slot the token takes (-1: the head is full, -2: a NaN key was reported)
};

/// Places the token without reading the head's slots when the policy's decode eviction allows it:
/// no eviction (appends), no excess over the budget (appends), or an excess of one under a ranked
/// eviction whose victim the last attention pass recorded for this step. Thread 0 only.
template <class Policy, class T, class Layout>
__device__ quick_slot place_without_scan(const append_problem<T, Layout, typename Policy::scorer_type::state_type>& p, const Policy& policy,
                                         index_t s, index_t h, index_t head, index_t position) {
  const auto kind = ::kvcompact::detail::decode_eviction_of(policy);
  if (kind == ::kvcompact::detail::decode_eviction_kind::general) return {true, -1};
  const index_t capacity = p.cache.layout.capacity();
  const index_t length = p.cache.lengths[head];
  const auto append = [&]() -> quick_slot {
    if (length >= ::kvcompact::detail::layer_capacity(p.cache.layout, p.layer)) return {false, -1};  // below capacity in ragged layouts
    p.cache.lengths[head] = static_cast<std::int32_t>(length + 1);
    return {false, length};
  };
  const index_t excess = length + 1 - p.budgets[head];
  if (kind == ::kvcompact::detail::decode_eviction_kind::none) return append();
  const eviction_record record = p.records[head];
  const bool fresh = record.generation == p.generation && (record.step == position || record.step + index_t{1} == position);
  if (fresh && record.victims.nan_slot >= 0) {
    report(p.status, device_fault::nan_score, s, p.layer, h, record.victims.nan_slot);
    return {false, -2};
  }
  if (excess <= 0) return append();
  if (excess > 1 || !fresh) return {true, -1};
  const victim chosen = record.step == position ? record.victims.now : record.victims.next;
  if (chosen.slot < 0) return append();  // every slot is protected: nothing to evict
  if (chosen.slot >= length || p.cache.positions[head * capacity + chosen.slot] != chosen.position) return {true, -1};
  return {false, chosen.slot};
}

/// One block per (KV head, sequence) of one storage layer.
template <class Policy, class T, class Layout>
KVCOMPACT_KERNEL void __launch_bounds__(append_threads, 1)
    append_kernel(append_problem<T, Layout, typename Policy::scorer_type::state_type> p, Policy policy) {
  const index_t h = blockIdx.x, s = blockIdx.y;
  const index_t position = p.positions[s];
  if (position < 0) return;
  const Layout& layout = p.cache.layout;
  const index_t capacity = layout.capacity(), kv_heads = layout.num_kv_heads(), dims = layout.head_dim();
  const index_t head = p.cache.head_index(s, p.layer, h);
  const std::int32_t raw_length = p.cache.lengths[head];
  const index_t layer_slots = ::kvcompact::detail::layer_capacity(layout, p.layer);  // below capacity in ragged layouts
  if (raw_length < 0 || raw_length > layer_slots) {
    if (threadIdx.x == 0) report(p.status, device_fault::bad_length, s, p.layer, h, raw_length);
    return;
  }
  const index_t per_sequence = kv_heads * capacity;
  const decode_scratch& d = p.scratch;
  const layer_scratch scratch{d.scores + s * per_sequence,        d.scores + s * per_sequence,   d.floats + s * per_sequence,
                              d.indices + 2 * s * per_sequence,   d.order + s * per_sequence,    d.order_ready + (s * kv_heads + h) * kv_heads,
                              d.keep + s * per_sequence,          d.targets + s * per_sequence,  d.shared + s * (capacity + 2),
                              p.budgets + p.cache.head_index(s, p.layer, 0)};
  layer_context<T, Layout> ctx(p.cache, scratch, s, p.layer, p.query_heads, position);
  auto* states = p.states;
  __shared__ index_t nan_slot;
  __shared__ index_t chosen;
  __shared__ bool scan;
  __syncthreads();  // every thread has read the head's length before thread 0 may append to it
  if (threadIdx.x == 0) {
    const quick_slot quick = place_without_scan(p, policy, s, h, head, position);
    scan = quick.scan;
    chosen = quick.slot;
    nan_slot = -1;
    scratch.order_ready[h] = 0;
  }
  __syncthreads();
  if (scan) {
    for (index_t j = threadIdx.x; j < raw_length; j += blockDim.x) {
      const float rank = policy.scorer.decode_score(states[head * capacity + j], ctx.position(h, j));
      if (isnan(rank)) nan_slot = j;
      scratch.scores[h * capacity + j] = rank;
      ctx.keep(h, j, true);
      ctx.set_target(h, j, -1);
    }
    __syncthreads();
    if (nan_slot >= 0) {
      if (threadIdx.x == 0) report(p.status, device_fault::nan_score, s, p.layer, h, nan_slot);
      return;
    }
    const append_group workers;
    decode_victims(workers, policy, ctx, static_cast<int>(h));
    const index_t claimed = merge_and_claim(workers, policy, ctx, static_cast<int>(h), p.cache.lengths[head], layer_slots, [&](index_t from, index_t to) {
      if (!::kvcompact::detail::move_slot(p.cache, states, s, p.layer, h, from, to)) report(p.status, device_fault::page_out_of_range, s, p.layer, h, from);
    });
    if (threadIdx.x == 0) chosen = claimed;
    __syncthreads();
  }
  if (chosen == -2) return;  // NaN key, reported
  if (threadIdx.x == 0) p.records[head].step = INT32_MIN;  // the head changes: the victims found before are stale
  if (chosen < 0) {
    if (threadIdx.x == 0) report(p.status, device_fault::head_full, s, p.layer, h, layer_slots);
    return;
  }
  const index_t offset = checked_offset(layout, s, p.layer, h, chosen, p.status);
  if (offset < 0) return;
  const index_t stride = layout.dim_stride();
  for (index_t e = threadIdx.x; e < dims; e += blockDim.x) {
    p.cache.keys[offset + e * stride] = p.keys[(s * kv_heads + h) * dims + e];
    p.cache.values[offset + e * stride] = p.values[(s * kv_heads + h) * dims + e];
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    p.cache.positions[head * capacity + chosen] = static_cast<std::int32_t>(position);
    states[head * capacity + chosen] = ::kvcompact::detail::new_slot_state(policy, p.cache, s, p.layer, h, chosen);
  }
}

}  // namespace cuda::detail
KVCOMPACT_NAMESPACE_END
