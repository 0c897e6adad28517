// SPDX-License-Identifier: Apache-2.0
/// @file
/// @brief Running a selector or merger on one layer context with one execution group, whatever its
/// tier: the CPU backend calls these for every layer and head; the CUDA backend runs the same
/// pieces in its kernels (kvcompact::cuda::detail).
#pragma once

#include <kvcompact/detail/ranked_selection.hpp>
#include <kvcompact/mergers/concepts.hpp>

KVCOMPACT_NAMESPACE_BEGIN
namespace detail {

/// Whether a selector decides each KV head from that head's slots alone (head scope): its prefill
/// selection may then run head by head (select_head()), each head as soon as its scores are ready.
template <class Selector>
inline constexpr bool selects_each_head = Selector::scope == selection_scope::head;

/// Prefill selection of head @p h by one group, for a selector that decides each head on its own
/// (selects_each_head; the head's slots start not kept without a target). Reads and writes head
/// @p h's scratch only, so the other heads may be scored, selected or compacted before or after it.
template <class Group, class Selector, class Ctx>
KVCOMPACT_HOST_DEVICE void select_head(const Group& group, const Selector& selector, const Ctx& ctx, int h) {
  static_assert(selects_each_head<Selector>, "kvcompact: select_head: the selector decides a layer at a time (layer scope): use select_layer");
  ctx.prepare_order(group, h);
  if constexpr (ranked_selector<Selector>) {
    keep_best_candidates(group, selector, ctx, h, gather_candidates(group, selector, ctx, h));
  } else {
    selector.select(group, ctx, h);
  }
}

/// Prefill selection of every head of a layer context by one group (every slot starts not kept
/// without a target). @p heads holds kv_heads() entries of scratch for layer-scope ranked selectors.
template <class Group, class Selector, class Ctx>
KVCOMPACT_HOST_DEVICE void select_layer(const Group& group, const Selector& selector, const Ctx& ctx, ranked_head* heads) {
  if constexpr (selects_each_head<Selector>) {
    for (int h = 0; h < ctx.kv_heads(); ++h) select_head(group, selector, ctx, h);
  } else if constexpr (ranked_selector<Selector>) {
    for (int h = 0; h < ctx.kv_heads(); ++h) ctx.prepare_order(group, h);
    for (int h = 0; h < ctx.kv_heads(); ++h) {
      const ranked_head head = gather_candidates(group, selector, ctx, h);
      group.once([&] { heads[h] = head; });
    }
    allocate_layer(group, selector, ctx, heads);
    for (int h = 0; h < ctx.kv_heads(); ++h) keep_best_candidates(group, selector, ctx, h, heads[h]);
  } else {
    for (int h = 0; h < ctx.kv_heads(); ++h) ctx.prepare_order(group, h);
    selector.select(group, ctx);
  }
}

/// Decode-time eviction of head @p h by one group (every slot starts kept; scores are decode scores).
template <class Group, class Selector, class Ctx>
KVCOMPACT_HOST_DEVICE void select_decode(const Group& group, const Selector& selector, const Ctx& ctx, int h) {
  if constexpr (ranked_selector<Selector>) {
    evict_ranked(group, selector, ctx, h);
  } else {
    ctx.prepare_order(group, h);
    selector.select_decode(group, ctx, h);
  }
}

/// The merger on head @p h after selection or eviction (nothing for a merger that does not merge).
template <class Group, class Merger, class Ctx>
KVCOMPACT_HOST_DEVICE void merge_head(const Group& group, const Merger& merger, const Ctx& ctx, int h) {
  if constexpr (Merger::merges) {
    ctx.prepare_order(group, h);
    merger.merge(group, ctx, h);
  }
}

}  // namespace detail
KVCOMPACT_NAMESPACE_END
