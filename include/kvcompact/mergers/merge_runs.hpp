// SPDX-License-Identifier: Apache-2.0
/// @file
/// @brief Shared machinery of the mergers, as group code (kvcompact::execution_group): ranking the
/// kept slots in position order, assigning evicted slots to an adjacent kept slot, and collapsing
/// each run of slots that share a pivot (one worker per pivot).
#pragma once

#include <kvcompact/mergers/concepts.hpp>

#include <cmath>

KVCOMPACT_NAMESPACE_BEGIN

namespace mergers {
namespace detail {

/// Where the kept slots of a head lie in position order (see rank_kept()).
struct kept_ranks {
  const std::int32_t* before;  ///< [order rank i]: kept slots at order ranks below i
  const std::int32_t* at;      ///< [r]: order rank of the r-th kept slot
  index_t count;               ///< kept slots
};

/// Ranks the kept slots of head @p h in position order: `ctx.index_scratch(h, 1)[i]` = kept slots
/// before order rank i, `ctx.index_scratch(h, 0)[r]` = order rank of the r-th kept slot.
template <class Group, class Ctx>
KVCOMPACT_HOST_DEVICE kept_ranks rank_kept(const Group& group, const Ctx& ctx, int h) {
  const std::int32_t* order = ctx.order(h);
  std::int32_t* before = ctx.index_scratch(h, 1);
  std::int32_t* at = ctx.index_scratch(h, 0);
  const index_t count = group.exclusive_scan(
      ctx.length(h), [&](index_t i) { return ctx.kept(h, order[i]) ? index_t{1} : index_t{0}; }, index_t{0},
      [](index_t a, index_t b) { return a + b; }, [&](index_t i, index_t kept_before, index_t is_kept) {
        before[i] = static_cast<std::int32_t>(kept_before);
        if (is_kept) at[kept_before] = static_cast<std::int32_t>(i);
      });
  return {before, at, count};
}

/// Euclidean norm of the key of slot @p slot of head @p h (the sum of squares taken in dimension order).
template <class Ctx>
KVCOMPACT_HOST_DEVICE float key_norm(const Ctx& ctx, int h, index_t slot) {
  float squares = 0.0f;
  for (index_t d = 0; d < ctx.head_dim(); ++d) {
    const float x = ctx.key(h, slot, d);
    squares += x * x;
  }
  return std::sqrt(squares);
}

/// Cosine similarity of the keys of two slots of head @p h whose key_norm()s are @p norm_a and
/// @p norm_b (0 when either key is zero).
template <class Ctx>
KVCOMPACT_HOST_DEVICE float key_cosine(const Ctx& ctx, int h, index_t a, index_t b, float norm_a, float norm_b) {
  float dot = 0.0f;
  for (index_t d = 0; d < ctx.head_dim(); ++d) dot += ctx.key(h, a, d) * ctx.key(h, b, d);
  const float norms = norm_a * norm_b;
  return norms > 0.0f ? dot / norms : 0.0f;
}

/// Cosine similarity of the keys of two slots of head @p h.
template <class Ctx>
KVCOMPACT_HOST_DEVICE float key_cosine(const Ctx& ctx, int h, index_t a, index_t b) {
  return key_cosine(ctx, h, a, b, key_norm(ctx, h, a), key_norm(ctx, h, b));
}

/// Calls `choose(slot, previous, next)` for every evicted slot of head @p h without a target, with its
/// kept neighbours in position order (the older and the newer, -1 where there is none); `choose`
/// returns the target to set, or -1 to leave the slot without one (dropped). One worker per evicted slot.
template <class Group, class Ctx, class Choose>
KVCOMPACT_HOST_DEVICE void assign_between_neighbours(const Group& group, const Ctx& ctx, int h, const kept_ranks& kept, const Choose& choose) {
  const std::int32_t* order = ctx.order(h);
  group.for_each(ctx.length(h), [&](index_t i) {
    const std::int32_t slot = order[i];
    if (ctx.kept(h, slot) || ctx.target(h, slot) >= 0) return;
    const index_t r = kept.before[i];
    const index_t previous = r > 0 ? order[kept.at[r - 1]] : -1;
    const index_t next = r < kept.count ? order[kept.at[r]] : -1;
    const index_t target = choose(static_cast<index_t>(slot), previous, next);
    if (target >= 0) ctx.set_target(h, slot, target);
  });
}

/// Gives every evicted slot without a target the adjacent kept slot (older or newer neighbour in
/// position order) whose key is more similar, when that similarity is at least @p min_similarity.
template <class Group, class Ctx>
KVCOMPACT_HOST_DEVICE void assign_adjacent(const Group& group, const Ctx& ctx, int h, const kept_ranks& kept, float min_similarity) {
  assign_between_neighbours(group, ctx, h, kept, [&](index_t slot, index_t previous, index_t next) {
    const float to_previous = previous >= 0 ? key_cosine(ctx, h, slot, previous) : -2.0f;
    const float to_next = next >= 0 ? key_cosine(ctx, h, slot, next) : -2.0f;
    const index_t best = to_previous >= to_next ? previous : next;
    const float similarity = to_previous >= to_next ? to_previous : to_next;
    return best >= 0 && similarity >= min_similarity ? best : index_t{-1};
  });
}

/// Gives every evicted slot without a target the adjacent kept slot nearer in position, the older one
/// when both are as near (Elastic Cache's anchors, @ref methods_elastic_merge).
template <class Group, class Ctx>
KVCOMPACT_HOST_DEVICE void assign_nearest_position(const Group& group, const Ctx& ctx, int h, const kept_ranks& kept) {
  assign_between_neighbours(group, ctx, h, kept, [&](index_t slot, index_t previous, index_t next) {
    if (previous < 0 || next < 0) return previous >= 0 ? previous : next;
    const index_t p = ctx.position(h, slot);
    return p - ctx.position(h, previous) <= ctx.position(h, next) - p ? previous : next;
  });
}

/// True when the slot belongs to the set of @p pivot: the pivot itself or an evicted slot targeting it.
template <class Ctx>
KVCOMPACT_HOST_DEVICE bool in_set(const Ctx& ctx, int h, index_t slot, index_t pivot) {
  return slot == pivot || (!ctx.kept(h, slot) && ctx.target(h, slot) == pivot);
}

/// Calls `collapse(pivot, first, last, size)`, one worker per kept slot, for every kept slot whose set
/// (the pivot and the evicted slots targeting it, which must lie between the pivot's kept neighbours
/// in position order) has `size > 1` members; order[first..last] spans the set and may contain slots
/// of other sets (evicted neighbours can choose different pivots), so callers visit only the slots for
/// which in_set() holds. A collapse writes only its pivot's key and value (and per-member scratch at
/// the members' order ranks).
template <class Group, class Ctx, class Collapse>
KVCOMPACT_HOST_DEVICE void for_each_run(const Group& group, const Ctx& ctx, int h, const kept_ranks& kept, const Collapse& collapse) {
  const std::int32_t* order = ctx.order(h);
  const index_t n = ctx.length(h);
  group.for_each(kept.count, [&](index_t r) {
    const index_t i = kept.at[r];
    const index_t pivot = order[i];
    const index_t lowest = r > 0 ? kept.at[r - 1] + 1 : 0, highest = r + 1 < kept.count ? kept.at[r + 1] - 1 : n - 1;
    index_t first = i, last = i, size = 1;
    for (index_t k = i - 1; k >= lowest; --k)
      if (ctx.target(h, order[k]) == pivot) first = k, ++size;
    for (index_t k = i + 1; k <= highest; ++k)
      if (ctx.target(h, order[k]) == pivot) last = k, ++size;
    if (size > 1) collapse(pivot, first, last, size);
  });
}

}  // namespace detail
}  // namespace mergers

KVCOMPACT_NAMESPACE_END
