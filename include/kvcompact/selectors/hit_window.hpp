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
/// per-step rule since no attention happens between the two. A kvcompact::ranked_selector whose
/// verdicts alone decide: every slot is judged on its own (backends take them in parallel).
struct hit_window {
  using component_kind = ranked_selector_tag;                  ///< opt-in to kvcompact::ranked_selector
  static constexpr selection_scope scope = selection_scope::head;  ///< every head on its own
  index_t window = 1024;                ///< w: queries consulted
  index_t recent = 1024;                ///< r >= w: newest tokens always kept
  index_t sinks = 0;                    ///< s: first tokens always kept (0 is faithful)

  /// @brief Budget-free: the budget is the length. @param length slots held @return @p length
  KVCOMPACT_HOST_DEVICE index_t budget(index_t, index_t, index_t length) const { return length; }

  /// @brief Whether a slot stays at step @p t: protected, or hit by one of the last `window` queries.
  /// @param last_hit the slot's score (latest important query position) @param position its position
  /// @param t the newest position @return true when kept
  KVCOMPACT_HOST_DEVICE bool keeps(float last_hit, index_t position, index_t t) const {
    return detail::is_protected(position, t, sinks, recent) || last_hit > static_cast<float>(t - window);
  }

  /// @brief Prefill: keep protected slots and those hit within the window, evict the rest (no candidates).
  /// @param ctx selection context @param h KV head @param slot slot @return the verdict
  template <class Ctx>
  KVCOMPACT_HOST_DEVICE slot_verdict verdict(const Ctx& ctx, int h, index_t slot) const {
    return keeps(ctx.score(h, slot), ctx.position(h, slot), ctx.step()) ? slot_verdict::keep : slot_verdict::evict;
  }

  /// @brief Never called: the verdicts leave no candidates. @param candidates candidates @param i index @return the score
  template <class Candidates>
  KVCOMPACT_HOST_DEVICE float rank_key(const Candidates& candidates, index_t i) const {
    return candidates.score(i);
  }

  /// @brief No candidates to keep. @return 0
  template <class Ctx>
  KVCOMPACT_HOST_DEVICE index_t keep_count(const Ctx&, int, index_t) const {
    return 0;
  }

  /// @brief Keys are the scores themselves. @return true
  KVCOMPACT_HOST_DEVICE bool local_keys() const { return true; }

  /// @brief Decode: evict the slots no recent query found important (CORM's decision for the step
  /// before the incoming token). @param ctx selection context (scores are decode scores) @param h KV head
  /// @param slot slot @return the verdict
  template <class Ctx>
  KVCOMPACT_HOST_DEVICE slot_verdict decode_verdict(const Ctx& ctx, int h, index_t slot) const {
    return keeps(ctx.score(h, slot), ctx.position(h, slot), ctx.step() - 1) ? slot_verdict::keep : slot_verdict::evict;
  }

  /// @brief No ranked evictions: the verdicts decide. @return 0
  template <class Ctx>
  KVCOMPACT_HOST_DEVICE index_t decode_evictions(const Ctx&, int) const {
    return 0;
  }
};

}  // namespace selectors

KVCOMPACT_NAMESPACE_END
