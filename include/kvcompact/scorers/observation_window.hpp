// SPDX-License-Identifier: Apache-2.0
/// @file
/// @brief Observation-window attention scorer (SnapKV, PyramidKV, Ada-KV).
#pragma once

#include <kvcompact/scorers/concepts.hpp>

KVCOMPACT_NAMESPACE_BEGIN

namespace scorers {

/// @brief Sum (or mean) over the observation-window queries of each slot's attention probability,
/// reduced over the GQA group (@ref methods_p1, @ref methods_p2, @ref methods_p4; SnapKV: @ref methods_snapkv). Prefill-only: during decode the
/// state is left as it was, and new tokens enter with score 0.
struct observation_window {
  using component_kind = scorer_tag;                              ///< opt-in to kvcompact::slot_scorer
  using state_type = float;                                       ///< the prefill score
  static constexpr score_source source = score_source::attention; ///< reads window attention
  static constexpr bool shares_across_kv_heads = false;           ///< one score per KV head
  reduction rows = reduction::sum;                                ///< over window rows (SnapKV: sum; kvpress, Ada-KV: mean)
  reduction group = reduction::mean;                              ///< over the query heads of a KV head

  /// @brief Term of one window row. @param probability attention probability @return @p probability
  KVCOMPACT_HOST_DEVICE float row_term(float probability, index_t, index_t) const { return probability; }
  /// @brief State of a new slot. @return 0
  KVCOMPACT_HOST_DEVICE state_type initial_state(float, index_t) const { return 0.0f; }
  /// @brief State after prefill. @param score prefill score @return @p score
  KVCOMPACT_HOST_DEVICE state_type state_from_prefill(float score, index_t, index_t) const { return score; }
  /// @brief Prefill-only method: decode queries do not change the state.
  KVCOMPACT_HOST_DEVICE void observe(state_type&, float, index_t) const {}
  /// @brief Eviction rank. @param state the state @return the score
  KVCOMPACT_HOST_DEVICE float decode_score(const state_type& state, index_t) const { return state; }
};

}  // namespace scorers

KVCOMPACT_NAMESPACE_END
