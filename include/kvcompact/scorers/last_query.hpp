// SPDX-License-Identifier: Apache-2.0
/// @file
/// @brief Last-query attention scorer (TOVA).
#pragma once

#include <kvcompact/scorers/concepts.hpp>

KVCOMPACT_NAMESPACE_BEGIN

namespace scorers {

/// @brief The current query's attention averaged over all query heads of the layer (@ref
/// methods_tova): the same score, hence the same keep-set, for every KV head. At prefill pass the last prompt
/// query as a one-row window.
struct last_query {
  using component_kind = scorer_tag;                              ///< opt-in to kvcompact::slot_scorer
  using state_type = float;                                       ///< the last query's attention
  static constexpr score_source source = score_source::attention; ///< reads attention
  static constexpr bool shares_across_kv_heads = true;            ///< averaged over all query heads of the layer
  reduction rows = reduction::sum;                                ///< over window rows (one row for TOVA)
  reduction group = reduction::mean;                              ///< over all query heads

  /// @brief Term of one query row. @param probability attention probability @return @p probability
  KVCOMPACT_HOST_DEVICE float row_term(float probability, index_t, index_t) const { return probability; }
  /// @brief State of a new slot. @return 0 (replaced when it is attended)
  KVCOMPACT_HOST_DEVICE state_type initial_state(float, index_t) const { return 0.0f; }
  /// @brief State after prefill. @param score last prompt query's attention @return @p score
  KVCOMPACT_HOST_DEVICE state_type state_from_prefill(float score, index_t, index_t) const { return score; }
  /// @brief Replaces the state with the current query's attention. @param state the state @param term the probability
  KVCOMPACT_HOST_DEVICE void observe(state_type& state, float term, index_t) const { state = term; }
  /// @brief Eviction rank. @param state the state @return the last attention
  KVCOMPACT_HOST_DEVICE float decode_score(const state_type& state, index_t) const { return state; }
};

}  // namespace scorers

KVCOMPACT_NAMESPACE_END
