// SPDX-License-Identifier: Apache-2.0
/// @file
/// @brief How the backends run a kvcompact::ranked_selector, written once as group code
/// (kvcompact::execution_group) in phases: gather each head's candidates and keys, allocate across
/// the layer (layer scope), keep each head's best candidates; and decode-time eviction. The CPU
/// backend runs the phases with one worker (partial selection by a radix select), the CUDA backend
/// with a thread block per head or layer (radix select); both rank with the same 64-bit keys, so
/// the keep-sets agree exactly.
#pragma once

#include <kvcompact/detail/order_keys.hpp>
#include <kvcompact/selectors/concepts.hpp>
#include <kvcompact/selectors/layer_ranking.hpp>

#include <cstdint>
#include <type_traits>

KVCOMPACT_NAMESPACE_BEGIN
namespace detail {

/// Per-head state of a ranked selection between its phases.
struct ranked_head {
  std::int32_t candidates;       ///< gathered into index_scratch(h, 0) in position order, keys in float_scratch(h)
  std::int32_t protected_count;  ///< slots judged keep
  std::int32_t eligible;         ///< candidates whose key reaches the selector's floor
  std::int32_t quota;            ///< keep_count()
  std::int32_t wanted;           ///< candidates to keep: the quota, or the layer allocation
  std::int32_t share;            ///< layer scope: candidates among the layer's best `total`
  std::int32_t first;            ///< layer scope: candidates of the heads before this one
  std::int32_t pad;              ///< keeps the cut 8-byte aligned
  std::uint64_t cut;             ///< layer scope: rank key of the head's last allocated candidate
};

/// How the ranked phases hold the selection context in their loops: a local copy of a trivially
/// copyable context (the backends' kvcompact::layer_context, a view whose arrays lie behind pointers),
/// else a reference. The loops store keep flags (bytes, which may alias anything) through the
/// context's pointers: through a reference the compiler reloaded the context's fields in every
/// iteration (KNorm at 16k tokens on the CPU: phases 1 and 3 about 1.2 -> 0.6 ms).
template <class Ctx>
using loop_context = std::conditional_t<std::is_trivially_copyable_v<Ctx>, Ctx, const Ctx&>;

/// One head's candidates in position order, as rank_key() sees them (kvcompact::detail::probe_candidates).
template <class Ctx>
struct candidate_list {
  const Ctx& ctx;               ///< selection context
  int h;                        ///< KV head
  const std::int32_t* slots;    ///< candidate slots
  index_t n;                    ///< candidates
  /// Candidates.
  KVCOMPACT_HOST_DEVICE index_t count() const { return n; }
  /// Score of candidate i (a decode score at decode).
  KVCOMPACT_HOST_DEVICE float score(index_t i) const { return ctx.score(h, slots[i]); }
  /// Position of candidate i.
  KVCOMPACT_HOST_DEVICE index_t position(index_t i) const { return ctx.position(h, slots[i]); }
  /// Slot of candidate i.
  KVCOMPACT_HOST_DEVICE index_t slot(index_t i) const { return slots[i]; }
  /// The KV head.
  KVCOMPACT_HOST_DEVICE int head() const { return h; }
};

/// Phase 1 (per head): applies the prefill verdicts (keep flags of `keep` slots), gathers the
/// candidates in position order into `ctx.index_scratch(h, 0)` and their rank keys into
/// `ctx.float_scratch(h)`. `ctx.order(h)` must be ready. Returns the head's state (same in every worker).
template <class Group, class Selector, class Ctx>
KVCOMPACT_HOST_DEVICE ranked_head gather_candidates(const Group& group, const Selector& selector, const Ctx& context, int h) {
  const loop_context<Ctx> ctx = context;
  const index_t n = ctx.length(h);
  const std::int32_t* order = ctx.order(h);
  std::int32_t* slots = ctx.index_scratch(h, 0);
  float* keys = ctx.float_scratch(h);
  const index_t protected_count = group.reduce(
      n,
      [&](index_t j) {
        const bool keep = selector.verdict(ctx, h, j) == slot_verdict::keep;
        if (keep) ctx.keep(h, j, true);
        return keep ? index_t{1} : index_t{0};
      },
      index_t{0}, count_sum{});
  const index_t count = group.exclusive_scan(
      n, [&](index_t i) { return selector.verdict(ctx, h, order[i]) == slot_verdict::candidate ? index_t{1} : index_t{0}; }, index_t{0},
      count_sum{}, [&](index_t i, index_t at, index_t is_candidate) {
        if (is_candidate) slots[at] = order[i];
      });
  const candidate_list<Ctx> list{ctx, h, slots, count};
  const float floor = key_floor(selector);
  const index_t eligible = group.reduce(
      count,
      [&](index_t c) {
        keys[c] = selector.rank_key(list, c);
        return keys[c] >= floor ? index_t{1} : index_t{0};
      },
      index_t{0}, count_sum{});
  const auto quota = static_cast<std::int32_t>(selector.keep_count(ctx, h, protected_count));
  return {static_cast<std::int32_t>(count), static_cast<std::int32_t>(protected_count), static_cast<std::int32_t>(eligible), quota, quota, 0, 0, 0, 0};
}

/// Rank key of candidate @p c of head @p h after phase 1 (0 below the selector's floor).
template <class Selector, class Ctx>
KVCOMPACT_HOST_DEVICE std::uint64_t candidate_key(const Selector& selector, const Ctx& ctx, int h, index_t c) {
  const float key = ctx.float_scratch(h)[c];
  return key >= key_floor(selector) ? rank_key(key, ctx.position(h, ctx.index_scratch(h, 0)[c])) : 0;
}

/// The key threshold above which a head keeps `wanted` of its candidates (phase 1 done).
template <class Group, class Selector, class Ctx>
KVCOMPACT_HOST_DEVICE std::uint64_t head_cut(const Group& group, const Selector& selector, const Ctx& ctx, int h, const ranked_head& head,
                                             index_t wanted) {
  if (wanted <= 0) return ~std::uint64_t{0};
  if (wanted >= head.eligible) return 1;
  return group.kth_largest(head.candidates, wanted, [&](index_t c) { return candidate_key(selector, ctx, h, c); });
}

/// Phase 3 (per head): keeps the head's `wanted` best candidates (those reaching the floor). Sets
/// every candidate's keep flag (candidates start not kept), without a branch on the random verdict.
template <class Group, class Selector, class Ctx>
KVCOMPACT_HOST_DEVICE void keep_best_candidates(const Group& group, const Selector& selector, const Ctx& context, int h, const ranked_head& head) {
  const loop_context<Ctx> ctx = context;
  const std::uint64_t cut = head_cut(group, selector, ctx, h, head, head.wanted);
  const std::int32_t* slots = ctx.index_scratch(h, 0);
  group.for_each(head.candidates, [&](index_t c) { ctx.keep(h, slots[c], candidate_key(selector, ctx, h, c) >= cut); });
}

/// A layer's quotas and shares as a layer-scope selector's allocate() sees them
/// (kvcompact::detail::probe_layer_allocation).
struct layer_allocation {
  const ranked_head* state;  ///< [heads]
  int count;                 ///< KV heads
  index_t sum;               ///< sum of the quotas
  /// KV heads.
  KVCOMPACT_HOST_DEVICE int heads() const { return count; }
  /// Sum of the quotas.
  KVCOMPACT_HOST_DEVICE index_t total() const { return sum; }
  /// keep_count() of head h.
  KVCOMPACT_HOST_DEVICE index_t quota(int h) const { return state[h].quota; }
  /// Candidates of head h among the layer's total() best.
  KVCOMPACT_HOST_DEVICE index_t share(int h) const { return state[h].share; }
  /// Candidates of head h.
  KVCOMPACT_HOST_DEVICE index_t candidates(int h) const { return state[h].candidates; }
};

/// The layer's candidates as one list: item i of [0, items) is candidate i - first of the head holding it.
template <class Selector, class Ctx>
struct layer_items {
  const Selector& selector;   ///< the selector
  const Ctx& ctx;             ///< selection context
  const ranked_head* heads;   ///< [kv_heads] phase-1 states with `first` set
  index_t stride;             ///< most candidates of a head: (head, candidate) -> head * stride + candidate
  /// The head of item i (binary search over the heads' first items).
  KVCOMPACT_HOST_DEVICE int head_of(index_t i) const {
    int lo = 0, hi = ctx.kv_heads() - 1;
    while (lo < hi) {
      const int mid = (lo + hi + 1) / 2;
      if (heads[mid].first <= i) lo = mid;
      else hi = mid - 1;
    }
    return lo;
  }
  /// Layer order: higher key, then lower head, then lower position (0 below the floor).
  KVCOMPACT_HOST_DEVICE std::uint64_t best_first(int h, index_t c) const {
    const float key = ctx.float_scratch(h)[c];
    return key >= key_floor(selector) ? order_key(key, static_cast<std::uint32_t>(h * stride + c)) : 0;
  }
  /// Reverse of the heads' own rankings across heads: lower key, then lower head, then higher position.
  KVCOMPACT_HOST_DEVICE std::uint64_t worst_first(int h, index_t c) const {
    const std::uint64_t tie = static_cast<std::uint64_t>((ctx.kv_heads() - 1 - h) * stride + c);
    return (static_cast<std::uint64_t>(~orderable_bits(ctx.float_scratch(h)[c])) << 32) | tie;
  }
  /// Whether candidate c of head h is among the head's current allocation.
  KVCOMPACT_HOST_DEVICE bool allocated(int h, index_t c) const { return candidate_key(selector, ctx, h, c) >= heads[h].cut; }
};

/// A layer's candidates as the ranking across ranks sees them (kvcompact::detail::layer_top_counts):
/// the 32-bit order keys of their scores, no key floor.
template <class Ctx>
struct layer_score_list {
  const Ctx& ctx;             ///< selection context
  const ranked_head* state;   ///< [kv_heads] phase-1 states
  /// KV heads.
  KVCOMPACT_HOST_DEVICE int heads() const { return ctx.kv_heads(); }
  /// Candidates of head h.
  KVCOMPACT_HOST_DEVICE index_t count(int h) const { return state[h].candidates; }
  /// Order key of candidate c of head h.
  KVCOMPACT_HOST_DEVICE std::uint32_t key(int h, index_t c) const { return orderable_bits(ctx.float_scratch(h)[c]); }
};

/// A layer's sums over its heads (phase 1 done).
struct layer_sums {
  index_t total;   ///< sum of the quotas
  index_t items;   ///< candidates
  index_t stride;  ///< most candidates of a head (at least 1)
};

/// The layer's sums; sets every head's `first` (group code).
template <class Group, class Ctx>
KVCOMPACT_HOST_DEVICE layer_sums number_layer_items(const Group& group, const Ctx& ctx, ranked_head* heads) {
  const int count = ctx.kv_heads();
  layer_sums sums{0, 0, 1};
  for (int h = 0; h < count; ++h) {
    sums.total += heads[h].quota;
    sums.items += heads[h].candidates;
    sums.stride = heads[h].candidates > sums.stride ? heads[h].candidates : sums.stride;
  }
  group.once([&] {
    std::int32_t first = 0;
    for (int h = 0; h < count; ++h) {
      heads[h].first = first;
      first += heads[h].candidates;
    }
  });
  return sums;
}

/// Phase 2a (layer scope, one group per layer, @p sums from number_layer_items()): each head's
/// `share` of the layer's best candidates, as many as the quotas sum to (over every rank's heads
/// with a host kvcompact::rank_group).
template <class Group, class Selector, class Ctx>
KVCOMPACT_HOST_DEVICE void share_layer(const Group& group, const Selector& selector, const Ctx& ctx, ranked_head* heads, const layer_sums& sums) {
  const int count = ctx.kv_heads();
  if (rank_group_of(ctx) != nullptr) {  // host only: the layer's ranking spans the heads of every rank (no key floor)
    double layer_total = static_cast<double>(sums.total);
    sum_across_ranks(ctx, &layer_total, 1);
    layer_top_counts(group, ctx, static_cast<index_t>(layer_total), layer_score_list<Ctx>{ctx, heads},
                     [&](int h, index_t taken) { heads[h].share = static_cast<std::int32_t>(taken); });
    return;
  }
  const layer_items<Selector, Ctx> layer{selector, ctx, heads, sums.stride};
  auto item_key = [&](index_t i) {
    const int h = layer.head_of(i);
    return layer.best_first(h, i - heads[h].first);
  };
  const std::uint64_t cut = group.kth_largest(sums.items, sums.total, item_key);
  for (int h = 0; h < count; ++h) {
    const index_t share = group.reduce(heads[h].candidates, [&](index_t c) { return layer.best_first(h, c) >= cut ? index_t{1} : index_t{0}; },
                                       index_t{0}, count_sum{});
    group.once([&] { heads[h].share = static_cast<std::int32_t>(share); });
  }
}

/// Phase 2a across ranks from a finished radix select (@p cut: its rounds done, `tied_before` set; the
/// CUDA backend's rounds between device all-reduces): each head's `share` (group code).
template <class Group, class Ctx>
KVCOMPACT_HOST_DEVICE void share_layer_from_cut(const Group& group, const Ctx& ctx, ranked_head* heads, const layer_cut& cut) {
  take_counts(group, layer_score_list<Ctx>{ctx, heads}, cut, [&](int h, index_t taken) { heads[h].share = static_cast<std::int32_t>(taken); });
}

/// Phase 2b (layer scope, one group per layer, shares set, @p sums from number_layer_items()): the
/// selector's allocation and the exact-total repair. Sets every head's `wanted`.
template <class Group, class Selector, class Ctx>
KVCOMPACT_HOST_DEVICE void allocate_from_shares(const Group& group, const Selector& selector, const Ctx& ctx, ranked_head* heads,
                                                const layer_sums& sums) {
  const int count = ctx.kv_heads();
  const index_t total = sums.total;
  const layer_items<Selector, Ctx> layer{selector, ctx, heads, sums.stride};
  const layer_allocation view{heads, count, total};
  group.for_each(count, [&](index_t h) { heads[h].wanted = static_cast<std::int32_t>(selector.allocate(ctx, view, static_cast<int>(h))); });
  if (!exact_total(selector)) return;
  index_t allocated = 0;
  for (int h = 0; h < count; ++h) allocated += heads[h].wanted;
  if (allocated == total) return;
  for (int h = 0; h < count; ++h) {
    const std::uint64_t head_cut_key = head_cut(group, selector, ctx, h, heads[h], heads[h].wanted);
    group.once([&] { heads[h].cut = head_cut_key; });
  }
  // Giving: the best unallocated candidates of the layer; taking: the worst allocated ones. Both
  // follow the greedy one-slot-at-a-time repair exactly, as a single partial selection.
  const bool give = allocated < total;
  auto move_key = [&](int h, index_t c) -> std::uint64_t {
    const bool in = layer.allocated(h, c);
    if (give) return in ? 0 : layer.best_first(h, c);
    return in ? layer.worst_first(h, c) : 0;
  };
  const std::uint64_t move_cut = group.kth_largest(sums.items, give ? total - allocated : allocated - total, [&](index_t i) {
    const int h = layer.head_of(i);
    return move_key(h, i - heads[h].first);
  });
  for (int h = 0; h < count; ++h) {
    const index_t moved = group.reduce(heads[h].candidates, [&](index_t c) { return move_key(h, c) >= move_cut ? index_t{1} : index_t{0}; },
                                       index_t{0}, count_sum{});
    group.once([&] { heads[h].wanted += static_cast<std::int32_t>(give ? moved : -moved); });
  }
}

/// Phase 2 (layer scope, one group per layer): each head's share of the layer's `total` best
/// candidates (share_layer()), the selector's allocation and the exact-total repair
/// (allocate_from_shares()). Sets every head's `wanted`.
template <class Group, class Selector, class Ctx>
KVCOMPACT_HOST_DEVICE void allocate_layer(const Group& group, const Selector& selector, const Ctx& ctx, ranked_head* heads) {
  const layer_sums sums = number_layer_items(group, ctx, heads);
  share_layer(group, selector, ctx, heads, sums);
  allocate_from_shares(group, selector, ctx, heads, sums);
}

/// Eviction key of a candidate slot of a ranked selector whose keys are local (larger: evicted first;
/// the lowest rank key, then the higher position). `ctx.score(h, slot)` holds the decode score.
template <class Selector, class Ctx>
KVCOMPACT_HOST_DEVICE std::uint64_t local_eviction_key(const Selector& selector, const Ctx& ctx, int h, index_t slot) {
  const std::int32_t only = static_cast<std::int32_t>(slot);
  return eviction_key(selector.rank_key(candidate_list<Ctx>{ctx, h, &only, 1}, 0), ctx.position(h, slot));
}

/// Decode-time eviction of a ranked selector for head @p h (every slot starts kept; scores are decode
/// scores): slots judged `evict` go, then the `decode_evictions` worst candidates. With local keys each
/// candidate's key is computed in place (no gathering, no position order); otherwise the candidates
/// are gathered in position order (ctx.order(h) is prepared here) so keys may pool neighbours.
template <class Group, class Selector, class Ctx>
KVCOMPACT_HOST_DEVICE void evict_ranked(const Group& group, const Selector& selector, const Ctx& ctx, int h) {
  const index_t n = ctx.length(h);
  const index_t excess = selector.decode_evictions(ctx, h);
  group.for_each(n, [&](index_t j) {
    if (selector.decode_verdict(ctx, h, j) == slot_verdict::evict) ctx.keep(h, j, false);
  });
  if (excess <= 0) return;
  if (local_keys(selector)) {
    auto key_of = [&](index_t j) {
      return selector.decode_verdict(ctx, h, j) == slot_verdict::candidate ? local_eviction_key(selector, ctx, h, j) : std::uint64_t{0};
    };
    const std::uint64_t cut = group.kth_largest(n, excess, key_of);
    group.for_each(n, [&](index_t j) {
      if (key_of(j) >= cut) ctx.keep(h, j, false);
    });
    return;
  }
  ctx.prepare_order(group, h);
  const std::int32_t* order = ctx.order(h);
  std::int32_t* slots = ctx.index_scratch(h, 0);
  float* keys = ctx.float_scratch(h);
  const index_t count = group.exclusive_scan(
      n, [&](index_t i) { return selector.decode_verdict(ctx, h, order[i]) == slot_verdict::candidate ? index_t{1} : index_t{0}; }, index_t{0},
      count_sum{}, [&](index_t i, index_t at, index_t is_candidate) {
        if (is_candidate) slots[at] = order[i];
      });
  const candidate_list<Ctx> list{ctx, h, slots, count};
  group.for_each(count, [&](index_t c) { keys[c] = selector.rank_key(list, c); });
  auto key_of = [&](index_t c) { return eviction_key(keys[c], ctx.position(h, slots[c])); };
  const std::uint64_t cut = group.kth_largest(count, excess, key_of);
  group.for_each(count, [&](index_t c) {
    if (key_of(c) >= cut) ctx.keep(h, slots[c], false);
  });
}

}  // namespace detail
KVCOMPACT_NAMESPACE_END
