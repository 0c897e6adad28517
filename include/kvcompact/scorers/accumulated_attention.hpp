// SPDX-License-Identifier: Apache-2.0
/// @file
/// @brief Accumulated-attention scorers (H2O heavy hitters; the layer-shared form of PrefixKV).
#pragma once

#include <kvcompact/scorers/concepts.hpp>
#include <kvcompact/window_need.hpp>

KVCOMPACT_NAMESPACE_BEGIN

namespace scorers {

/// @brief Attention accumulated over every query so far (@ref methods_h2o): prefill sums the
/// window rows (pass all prompt queries for the original H2O), each decode step adds the current
/// query's probability, reduced over the GQA group.
struct accumulated_attention {
  using component_kind = scorer_tag;                              ///< opt-in to kvcompact::slot_scorer
  using state_type = float;                                       ///< accumulated attention
  static constexpr score_source source = score_source::attention; ///< reads attention
  static constexpr bool shares_across_kv_heads = false;           ///< one score per KV head
  static constexpr window_need prefill_window = window_need::all_prompt;  ///< the column sums of every prompt query
  reduction rows = reduction::sum;                                ///< over window rows
  reduction group = reduction::mean;                              ///< over the query heads of a KV head

  /// @brief Term of one query row. @param probability attention probability @return @p probability
  KVCOMPACT_HOST_DEVICE float row_term(float probability, index_t, index_t) const { return probability; }
  /// @brief State of a new slot. @return 0 (its own attention is added when it is attended)
  KVCOMPACT_HOST_DEVICE state_type initial_state(float, index_t) const { return 0.0f; }
  /// @brief State after prefill. @param score accumulated prefill attention @return @p score
  KVCOMPACT_HOST_DEVICE state_type state_from_prefill(float score, index_t, index_t) const { return score; }
  /// @brief Adds the current query's group-reduced probability. @param state accumulator @param term the probability
  KVCOMPACT_HOST_DEVICE void observe(state_type& state, float term, index_t) const { state += term; }
  /// @brief Eviction rank. @param state the state @return the accumulated attention
  KVCOMPACT_HOST_DEVICE float decode_score(const state_type& state, index_t) const { return state; }
};

/// @brief kvcompact::scorers::accumulated_attention shared by every KV head of a layer (@ref methods_prefixkv):
/// a slot's score is the mean over all query heads of the layer, so all KV heads keep the same tokens.
struct layer_accumulated_attention : accumulated_attention {
  static constexpr bool shares_across_kv_heads = true;  ///< averaged over all query heads of the layer
};

}  // namespace scorers

KVCOMPACT_NAMESPACE_END
