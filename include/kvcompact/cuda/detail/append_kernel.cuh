// SPDX-License-Identifier: Apache-2.0
/// @file
/// @brief Decode-time insertion with eviction on the device: one block per (KV head, sequence) computes
/// the head's decode scores, lets the policy pick victims and merge them (the selection contract's
/// group code on the block, see decode_eviction.cuh), and writes the new token into a freed slot. No
/// host sync, no memmove, no allocation.
#pragma once

#include <kvcompact/cuda/detail/decode_eviction.cuh>
#include <kvcompact/cuda/detail/device_status.cuh>
#include <kvcompact/cuda/detail/launch.cuh>
#include <kvcompact/detail/slot_ops.hpp>
#include <kvcompact/layer_context.hpp>


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
  device_status* status;                ///< fault record
};

/// One block per (KV head, sequence) of one storage layer.
template <class Policy, class T, class Layout>
KVCOMPACT_KERNEL void __launch_bounds__(append_threads)
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
  if (threadIdx.x == 0) {
    nan_slot = -1;
    scratch.order_ready[h] = 0;
  }
  __syncthreads();
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
  const index_t chosen = merge_and_claim(workers, policy, ctx, static_cast<int>(h), p.cache.lengths[head], layer_slots, [&](index_t from, index_t to) {
    if (!::kvcompact::detail::move_slot(p.cache, states, s, p.layer, h, from, to)) report(p.status, device_fault::page_out_of_range, s, p.layer, h, from);
  });
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
