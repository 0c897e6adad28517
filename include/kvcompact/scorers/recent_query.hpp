// SPDX-License-Identifier: Apache-2.0
/// @file
/// @brief Recent-query attention scorer (CORM).
#pragma once

#include <kvcompact/scorers/concepts.hpp>

KVCOMPACT_NAMESPACE_BEGIN

namespace scorers {

/// @brief CORM's importance test (@ref methods_corm): query i finds key j important when
/// `a[i][j] >= alpha / n_i`, with n_i the keys it saw (or its position + 1). Any query head of the
/// group may find it important (OR, @ref methods_corm_gqa).
///
/// The decode state is `last_hit`, the latest query position that found the slot important (its own
/// position when none did). The prefill score depends on the mode:
/// - `mode::last_hit` (faithful CORM): the latest window position that found the slot important, or
///   -1; pair with kvcompact::selectors::hit_window;
/// - `mode::importance` (budgeted CORM): `u = max_i a[i][j] * n_i`; pair with a top-k selector whose
///   `min_score` is `alpha`, so minor slots never fill the budget.
struct recent_query {
  /// @brief What the prefill score is.
  enum class mode : std::uint8_t {
    last_hit,    ///< latest important window position (faithful CORM)
    importance,  ///< normalised importance u (budgeted CORM)
  };
  /// @brief What n_i is in the threshold alpha / n_i.
  enum class threshold_reference : std::uint8_t {
    cache_length,  ///< keys the query attended (default)
    position,      ///< the query's position + 1
  };
  using component_kind = scorer_tag;                              ///< opt-in to kvcompact::slot_scorer
  using state_type = float;                                       ///< last_hit, as float
  static constexpr score_source source = score_source::attention; ///< reads attention
  static constexpr bool shares_across_kv_heads = false;           ///< per KV head
  reduction rows = reduction::max;                                ///< latest hit / largest importance over rows
  reduction group = reduction::max;                               ///< OR over the group
  float alpha = 1.0f;                                             ///< threshold multiplier on 1/n
  mode score_mode = mode::last_hit;                               ///< what the prefill score is
  threshold_reference reference = threshold_reference::cache_length;  ///< what n is

  /// @brief n_i for a query. @param visible_keys keys it attended @param query_position its position @return n_i
  KVCOMPACT_HOST_DEVICE float reference_count(index_t visible_keys, index_t query_position) const {
    return static_cast<float>(reference == threshold_reference::cache_length ? visible_keys : query_position + 1);
  }
  /// @brief Term of one query row.
  /// @param probability attention probability @param visible_keys keys the query attended @param query_position its position
  /// @return last_hit mode: the query position when important, else -1; importance mode: probability * n_i
  KVCOMPACT_HOST_DEVICE float row_term(float probability, index_t visible_keys, index_t query_position) const {
    const float normalised = probability * reference_count(visible_keys, query_position);
    if (score_mode == mode::importance) return normalised;
    return normalised >= alpha ? static_cast<float>(query_position) : -1.0f;
  }
  /// @brief State of a new slot. @param position its position @return @p position
  KVCOMPACT_HOST_DEVICE state_type initial_state(float, index_t position) const { return static_cast<float>(position); }
  /// @brief last_hit after prefill.
  /// @param score prefill score @param position slot position @param last_prompt_position position of the last prompt token
  /// @return the latest important position (importance mode: the last prompt position when u >= alpha), at least @p position
  KVCOMPACT_HOST_DEVICE state_type state_from_prefill(float score, index_t position, index_t last_prompt_position) const {
    const float hit = score_mode == mode::last_hit ? score : (score >= alpha ? static_cast<float>(last_prompt_position) : -1.0f);
    return hit > static_cast<float>(position) ? hit : static_cast<float>(position);
  }
  /// @brief Moves last_hit to the current query when it found the slot important.
  /// @param state last_hit @param term the group-reduced row term of the current query @param query_position current position
  KVCOMPACT_HOST_DEVICE void observe(state_type& state, float term, index_t query_position) const {
    const bool important = score_mode == mode::last_hit ? term >= 0.0f : term >= alpha;
    if (important) state = static_cast<float>(query_position);
  }
  /// @brief Eviction rank. @param state last_hit @return last_hit (older hits are evicted first)
  KVCOMPACT_HOST_DEVICE float decode_score(const state_type& state, index_t) const { return state; }
};

}  // namespace scorers

KVCOMPACT_NAMESPACE_END
