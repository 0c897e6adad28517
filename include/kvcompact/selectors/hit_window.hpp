// SPDX-License-Identifier: Apache-2.0
/// @file
/// @brief CORM's budget-free rule: keep what one of the last w queries found important.
#pragma once

#include <kvcompact/selectors/concepts.hpp>

KVCOMPACT_NAMESPACE_BEGIN

namespace selectors {

/// @brief Keeps the protected tokens and every slot whose latest hit (kvcompact::scorers::recent_query
/// in `mode::last_hit`) lies within the last `window` query positions (@ref methods_corm_selection, @ref methods_corm_state). No
/// budget: the cache keeps whatever survives, so per-head lengths differ.
///
/// Decode: before the token at step t is inserted, CORM's decision for step t-1 is applied
/// (evict j with (t-1) - last_hit >= window that is not protected at t-1), which is exactly the
/// per-step rule since no attention happens between the two.
struct hit_window {
  using component_kind = selector_tag;  ///< opt-in to kvcompact::keep_selector
  index_t window = 1024;                ///< w: queries consulted
  index_t recent = 1024;                ///< r >= w: newest tokens always kept
  index_t sinks = 0;                    ///< s: first tokens always kept (0 is faithful)

  /// @brief Budget-free: the budget is the length. @param length slots held @return @p length
  KVCOMPACT_HOST_DEVICE index_t budget(index_t, index_t, index_t length) const { return length; }

  /// @brief Whether a slot stays at step @p t: protected, or hit by one of the last `window` queries.
  /// Each slot's decision is independent of the others (backends may take them in parallel).
  /// @param last_hit the slot's score (latest important query position) @param position its position
  /// @param t the newest position @return true when kept
  KVCOMPACT_HOST_DEVICE bool keeps(float last_hit, index_t position, index_t t) const {
    return detail::is_protected(position, t, sinks, recent) || last_hit > static_cast<float>(t - window);
  }

  /// @brief Prefill: keep protected slots and those hit within the window. @param ctx selection context
  template <class Ctx>
  KVCOMPACT_HOST_DEVICE void select(Ctx& ctx) const {
    for (int h = 0; h < ctx.kv_heads(); ++h)
      for (index_t j = 0; j < ctx.length(h); ++j) ctx.keep(h, j, keeps(ctx.score(h, j), ctx.position(h, j), ctx.step()));
  }

  /// @brief Decode: evict the slots no recent query found important (CORM's decision for the step
  /// before the incoming token). @param ctx selection context @param h KV head
  template <class Ctx>
  KVCOMPACT_HOST_DEVICE void select_decode(Ctx& ctx, int h) const {
    for (index_t j = 0; j < ctx.length(h); ++j)
      if (!keeps(ctx.score(h, j), ctx.position(h, j), ctx.step() - 1)) ctx.keep(h, j, false);
  }
};

}  // namespace selectors

KVCOMPACT_NAMESPACE_END
