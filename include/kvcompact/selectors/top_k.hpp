// SPDX-License-Identifier: Apache-2.0
/// @file
/// @brief Top-k selection with protected sinks and recent tokens and optional pooling.
#pragma once

#include <kvcompact/selectors/budgets.hpp>
#include <kvcompact/selectors/candidates.hpp>

#include <cfloat>

KVCOMPACT_NAMESPACE_BEGIN

namespace selectors {

/// @brief Keeps the protected tokens plus the best-scoring others up to the budget, per KV head
/// (@ref methods_p5, @ref methods_p6). Decode: when a head is at its budget, evicts its lowest-scoring unprotected
/// slot (H2O, TOVA, KNorm, StreamingLLM with kvcompact::scorers::recency). A kvcompact::ranked_selector
/// of head scope: the backend ranks (partial selection, no full sort).
/// @tparam Schedule a kvcompact::budget_schedule (protected slots included)
template <budget_schedule Schedule>
struct top_k {
  using component_kind = ranked_selector_tag;                  ///< opt-in to kvcompact::ranked_selector
  static constexpr selection_scope scope = selection_scope::head;  ///< every head on its own
  using schedule_type = Schedule;       ///< the budget schedule
  Schedule schedule;                    ///< slots per head, protected included
  candidate_rule rule{};                ///< protected tokens and pooling
  float min_score = -FLT_MAX;           ///< candidates scoring below are never kept (budgeted CORM uses alpha)
  bool decode_eviction = true;          ///< evict during decode (false: prefill-only methods append)

  /// @brief Budget of a layer. @param layer layer @param num_layers layers @param length slots held @return the schedule's budget
  KVCOMPACT_HOST_DEVICE index_t budget(index_t layer, index_t num_layers, index_t length) const {
    return schedule.budget(layer, num_layers, length);
  }

  /// @brief Prefill verdict: all kept under budget, protected kept, the rest candidates.
  /// @param ctx selection context @param h KV head @param slot slot @return the verdict
  template <class Ctx>
  KVCOMPACT_HOST_DEVICE slot_verdict verdict(const Ctx& ctx, int h, index_t slot) const {
    return rule.verdict(ctx, h, slot, budget(ctx.layer(), ctx.num_layers(), ctx.length(h)));
  }

  /// @brief Rank key: the candidate's (pooled) score. @param candidates the head's candidates in position order
  /// @param i candidate index @return the key
  template <class Candidates>
  KVCOMPACT_HOST_DEVICE float rank_key(const Candidates& candidates, index_t i) const {
    return rule.rank_key(candidates, i);
  }

  /// @brief Candidates kept: the budget minus the protected slots.
  /// @param ctx selection context @param h KV head @param protected_count protected slots @return the quota
  template <class Ctx>
  KVCOMPACT_HOST_DEVICE index_t keep_count(const Ctx& ctx, int h, index_t protected_count) const {
    return candidate_rule::quota(ctx.length(h), budget(ctx.layer(), ctx.num_layers(), ctx.length(h)), protected_count);
  }

  /// @brief Candidates scoring below min_score are never kept. @return min_score
  KVCOMPACT_HOST_DEVICE float key_floor() const { return min_score; }
  /// @brief Keys read neighbours only when pooling. @return true without pooling
  KVCOMPACT_HOST_DEVICE bool local_keys() const { return rule.local(); }
  /// @brief Verdicts, keys and quota read the head's scores, positions and length, the layer and the
  /// step, never the head's index. @return true
  KVCOMPACT_HOST_DEVICE bool same_for_equal_heads() const { return true; }

  /// @brief Decode verdict: protected slots stay, the others are candidates.
  /// @param ctx selection context (scores are decode scores) @param h KV head @param slot slot @return the verdict
  template <class Ctx>
  KVCOMPACT_HOST_DEVICE slot_verdict decode_verdict(const Ctx& ctx, int h, index_t slot) const {
    return rule.protects(ctx.position(h, slot), ctx.step()) ? slot_verdict::keep : slot_verdict::candidate;
  }

  /// @brief Decode evictions: as many as the incoming token needs to fit the head's budget.
  /// @param ctx selection context @param h KV head @return the candidates to evict (0 without decode eviction)
  template <class Ctx>
  KVCOMPACT_HOST_DEVICE index_t decode_evictions(const Ctx& ctx, int h) const {
    const index_t excess = ctx.length(h) + 1 - ctx.budget(h);
    return decode_eviction && excess > 0 ? excess : 0;
  }
};

}  // namespace selectors

KVCOMPACT_NAMESPACE_END
