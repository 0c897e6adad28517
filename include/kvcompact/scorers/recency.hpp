// SPDX-License-Identifier: Apache-2.0
/// @file
/// @brief Recency scorer: newer tokens score higher (StreamingLLM's eviction order).
#pragma once

#include <kvcompact/scorers/concepts.hpp>

KVCOMPACT_NAMESPACE_BEGIN

namespace scorers {

/// @brief Scores a slot by its logical position, so top-k keeps the most recent tokens and decode
/// evicts the oldest unprotected one. With protected sinks this is StreamingLLM (@ref methods_streaming_llm).
struct recency {
  using component_kind = scorer_tag;                         ///< opt-in to kvcompact::slot_scorer
  using state_type = float;                                  ///< the position, as float
  static constexpr score_source source = score_source::slot; ///< reads positions only

  /// @brief Score of a slot: its position. @param position logical position @return position as float
  template <class Key>
  KVCOMPACT_HOST_DEVICE float slot_score(const Key&, index_t, index_t position) const {
    return static_cast<float>(position);
  }
  /// @brief State of a new slot. @param score its slot score @return @p score
  KVCOMPACT_HOST_DEVICE state_type initial_state(float score, index_t) const { return score; }
  /// @brief State after prefill. @param score prefill score @return @p score
  KVCOMPACT_HOST_DEVICE state_type state_from_prefill(float score, index_t, index_t) const { return score; }
  /// @brief Positions do not change: nothing to observe.
  KVCOMPACT_HOST_DEVICE void observe(state_type&, float, index_t) const {}
  /// @brief Eviction rank. @param state the state @return the position
  KVCOMPACT_HOST_DEVICE float decode_score(const state_type& state, index_t) const { return state; }
};

}  // namespace scorers

KVCOMPACT_NAMESPACE_END
