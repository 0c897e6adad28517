// SPDX-License-Identifier: Apache-2.0
/// @file
/// @brief Key-norm scorer (KNorm): low key norm means important.
#pragma once

#include <kvcompact/scorers/concepts.hpp>

#include <cmath>

KVCOMPACT_NAMESPACE_BEGIN

namespace scorers {

/// @brief Scores a slot by the negated L2 norm of its key (@ref methods_knorm). Attention-free, so it
/// works with any attention kernel; the norm is computed once when a token is inserted.
struct key_norm {
  using component_kind = scorer_tag;                         ///< opt-in to kvcompact::slot_scorer
  using state_type = float;                                  ///< the slot's score
  static constexpr score_source source = score_source::slot; ///< reads keys

  /// @brief Negated L2 norm of the key. @param key key(d) returns dimension d @param dims head dimension @return -||key||
  template <class Key>
  KVCOMPACT_HOST_DEVICE float slot_score(const Key& key, index_t dims, index_t) const {
    float sum = 0.0f;
    for (index_t d = 0; d < dims; ++d) sum += key(d) * key(d);
    return -std::sqrt(sum);
  }
  /// @brief State of a new slot. @param score its slot score @return @p score
  KVCOMPACT_HOST_DEVICE state_type initial_state(float score, index_t) const { return score; }
  /// @brief State after prefill. @param score prefill score @return @p score
  KVCOMPACT_HOST_DEVICE state_type state_from_prefill(float score, index_t, index_t) const { return score; }
  /// @brief Norms do not change: nothing to observe.
  KVCOMPACT_HOST_DEVICE void observe(state_type&, float, index_t) const {}
  /// @brief Eviction rank. @param state the state @return the score
  KVCOMPACT_HOST_DEVICE float decode_score(const state_type& state, index_t) const { return state; }
};

}  // namespace scorers

KVCOMPACT_NAMESPACE_END
