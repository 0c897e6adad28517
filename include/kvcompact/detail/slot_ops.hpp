// SPDX-License-Identifier: Apache-2.0
/// @file
/// @brief Per-slot operations shared by the backends: a slot's score and initial state, moving a
/// slot, and where an incoming token goes after decode-time eviction.
#pragma once

#include <kvcompact/kv_cache.hpp>
#include <kvcompact/policy.hpp>

#include <cstdint>

KVCOMPACT_NAMESPACE_BEGIN
namespace detail {

/// Score of a slot for slot scorers (its key and position); 0 for attention scorers, whose scores
/// come from queries.
template <class Policy, class T, class Layout>
KVCOMPACT_HOST_DEVICE float slot_score(const Policy& policy, const kv_cache<T, Layout>& cache, index_t sequence, index_t layer, index_t head,
                                       index_t slot) {
  if constexpr (Policy::needs_attention) {
    return 0.0f;
  } else {
    const index_t base = cache.layout.offset(sequence, layer, head, slot);
    const index_t stride = cache.layout.dim_stride();
    auto key = [&](index_t d) { return to_float(cache.keys[base + d * stride]); };
    return policy.scorer.slot_score(key, cache.layout.head_dim(), cache.positions[cache.slot_index(sequence, layer, head, slot)]);
  }
}

/// Decode state of a slot just written.
template <class Policy, class T, class Layout>
KVCOMPACT_HOST_DEVICE typename Policy::scorer_type::state_type new_slot_state(const Policy& policy, const kv_cache<T, Layout>& cache,
                                                                             index_t sequence, index_t layer, index_t head, index_t slot) {
  const index_t position = cache.positions[cache.slot_index(sequence, layer, head, slot)];
  return policy.scorer.initial_state(slot_score(policy, cache, sequence, layer, head, slot), position);
}

/// Moves slot @p from of a head to slot @p to: K and V (bit-identical), position and decode state.
/// Returns false, moving nothing, when the layout says one of the slots does not map into storage.
template <class T, class Layout, class State>
KVCOMPACT_HOST_DEVICE bool move_slot(const kv_cache<T, Layout>& cache, State* states, index_t sequence, index_t layer, index_t head,
                                     index_t from, index_t to) {
  if (!slot_in_range(cache.layout, sequence, from) || !slot_in_range(cache.layout, sequence, to)) return false;
  const index_t src = cache.layout.offset(sequence, layer, head, from), dst = cache.layout.offset(sequence, layer, head, to);
  for (index_t d = 0; d < cache.layout.head_dim(); ++d) {
    const index_t o = d * cache.layout.dim_stride();
    cache.keys[dst + o] = cache.keys[src + o];
    cache.values[dst + o] = cache.values[src + o];
  }
  const index_t first = cache.slot_index(sequence, layer, head, 0);
  cache.positions[first + to] = cache.positions[first + from];
  states[first + to] = states[first + from];
  return true;
}

/// The first evicted slot of a head and how many are evicted.
struct eviction_summary {
  index_t first;  ///< lowest evicted slot (the length when none)
  index_t count;  ///< evicted slots
};

/// Picks the slot an incoming token takes once decode-time eviction has cleared the keep flags of
/// its victims: the first evicted slot in slot order. The later evicted slots below the new length
/// are filled with the last kept slots (the first such hole with the last kept slot, and so on:
/// swap-remove, one `move(from, to)` per hole, which must move K, V, position and state), and
/// @p length shrinks accordingly. Without a victim the token goes after the last slot. Returns -1
/// (nothing changed) when the head is full and nothing was evicted. Group code
/// (kvcompact::execution_group): the moves run in parallel; `ctx.index_scratch(h, 0)` is scratch.
KVCOMPACT_EXEC_CHECK_DISABLE
template <class Group, class Ctx, class Move>
KVCOMPACT_HOST_DEVICE index_t claim_slot(const Group& group, const Ctx& ctx, int h, std::int32_t& length, index_t capacity, const Move& move) {
  const index_t n = length;
  auto sum = [](index_t a, index_t b) { return a + b; };
  const eviction_summary evicted = group.reduce(
      n, [&](index_t j) { return ctx.kept(h, j) ? eviction_summary{n, 0} : eviction_summary{j, 1}; }, eviction_summary{n, 0},
      [](eviction_summary a, eviction_summary b) { return eviction_summary{a.first < b.first ? a.first : b.first, a.count + b.count}; });
  const index_t slot = evicted.first;
  if (evicted.count <= 1) {  // no victim: the token goes after the last slot; one victim: into its slot
    const index_t taken = evicted.count == 1 ? slot : (n < capacity ? n : -1);
    group.once([&] {
      if (evicted.count == 0 && n < capacity) length = static_cast<std::int32_t>(n + 1);
    });
    return taken;
  }
  const index_t kept_length = n - evicted.count + 1;  // the new token included
  std::int32_t* holes = ctx.index_scratch(h, 0);
  // As many holes below the new length as kept slots above it.
  const index_t sources = group.exclusive_scan(
      kept_length, [&](index_t j) { return j > slot && !ctx.kept(h, j) ? index_t{1} : index_t{0}; }, index_t{0}, sum,
      [&](index_t j, index_t rank, index_t is_hole) {
        if (is_hole) holes[rank] = static_cast<std::int32_t>(j);
      });
  const index_t tail = n - kept_length;
  group.exclusive_scan(tail, [&](index_t k) { return ctx.kept(h, kept_length + k) ? index_t{1} : index_t{0}; }, index_t{0}, sum,
                       [&](index_t k, index_t rank, index_t is_kept) {
                         if (!is_kept) return;
                         const index_t to = holes[sources - 1 - rank];
                         move(kept_length + k, to);
                         ctx.keep(h, to, true);
                       });
  group.once([&] { length = static_cast<std::int32_t>(kept_length); });
  return slot;
}

}  // namespace detail
KVCOMPACT_NAMESPACE_END
