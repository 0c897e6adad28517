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
/// slot (H2O, TOVA, KNorm, StreamingLLM with kvcompact::scorers::recency).
/// @tparam Schedule a kvcompact::budget_schedule (protected slots included)
template <budget_schedule Schedule>
struct top_k {
  using component_kind = selector_tag;  ///< opt-in to kvcompact::keep_selector
  using schedule_type = Schedule;       ///< the budget schedule
  Schedule schedule;                    ///< slots per head, protected included
  candidate_rule rule{};                ///< protected tokens and pooling
  float min_score = -FLT_MAX;           ///< candidates scoring below are never kept (budgeted CORM uses alpha)
  bool decode_eviction = true;          ///< evict during decode (false: prefill-only methods append)

  /// @brief Budget of a layer. @param layer layer @param num_layers layers @param length slots held @return the schedule's budget
  KVCOMPACT_HOST_DEVICE index_t budget(index_t layer, index_t num_layers, index_t length) const {
    return schedule.budget(layer, num_layers, length);
  }

  /// @brief Prefill selection for every KV head of the context. @param ctx selection context
  template <class Ctx>
  KVCOMPACT_HOST_DEVICE void select(Ctx& ctx) const {
    for (int h = 0; h < ctx.kv_heads(); ++h) {
      const index_t n = ctx.length(h);
      const index_t b = budget(ctx.layer(), ctx.num_layers(), n);
      if (n <= b) {
        for (index_t j = 0; j < n; ++j) ctx.keep(h, j, true);
        continue;
      }
      const index_t protected_count = rule.keep_protected(ctx, h);
      const index_t count = rule.gather(ctx, h);
      rule.rank(ctx, h, count);
      const std::int32_t* ranked = ctx.index_scratch(h, 0);
      const float* pooled = ctx.float_scratch(h);
      for (index_t i = 0; i < count && protected_count + i < b; ++i) {
        if (pooled[ranked[i]] < min_score) break;
        ctx.keep(h, ranked[i], true);
      }
    }
  }

  /// @brief Decode-time eviction: frees slots until the incoming token fits the head's budget.
  /// @param ctx selection context (scores are decode scores) @param h KV head
  template <class Ctx>
  KVCOMPACT_HOST_DEVICE void select_decode(Ctx& ctx, int h) const {
    if (!decode_eviction) return;
    const index_t excess = ctx.length(h) + 1 - ctx.budget(h);
    if (excess <= 0) return;
    const index_t count = rule.gather(ctx, h);
    rule.rank(ctx, h, count);
    const std::int32_t* ranked = ctx.index_scratch(h, 0);
    for (index_t i = 0; i < excess && i < count; ++i) ctx.keep(h, ranked[count - 1 - i], false);
  }
};

}  // namespace selectors

KVCOMPACT_NAMESPACE_END
