// SPDX-License-Identifier: Apache-2.0
/// @file
/// @brief Key-norm scorer (KNorm): low key norm means important.
#pragma once

#include <kvcompact/detail/lane_sums.hpp>
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

  /// @brief Negated L2 norms of @p Count keys at once, the definition of the score: each key's squares
  /// are summed in detail::simd_lanes strided partial sums (dimension d into lane d % simd_lanes, each
  /// lane in order) that detail::sum_lanes() combines in its fixed pairwise order. A batch gives every
  /// key the score slot_score() gives it alone; the CPU backend's lane loop vectorises along the
  /// dimensions (memory-bound), a CUDA thread keeps the lanes in registers: the same bits on both.
  /// @tparam Count keys in the batch
  /// @param keys keys(i, d) returns dimension d of key i @param dims head dimension
  /// @param scores [Count] receives -||key i||
  KVCOMPACT_EXEC_CHECK_DISABLE
  template <int Count, class Keys>
  KVCOMPACT_HOST_DEVICE void slot_scores(const Keys& keys, index_t dims, const index_t*, float* scores) const {
    constexpr int lanes = detail::simd_lanes;
    for (int i = 0; i < Count; ++i) {
      float sums[lanes];
      for (int l = 0; l < lanes; ++l) sums[l] = 0.0f;
      index_t d = 0;
      for (; d + lanes <= dims; d += lanes)
        for (int l = 0; l < lanes; ++l) sums[l] += keys(i, d + l) * keys(i, d + l);
      for (int l = 0; d + l < dims; ++l) sums[l] += keys(i, d + l) * keys(i, d + l);
      scores[i] = -std::sqrt(detail::sum_lanes(sums));
    }
  }
  /// @brief Negated L2 norm of the key (slot_scores() of one key). @param key key(d) returns dimension d
  /// @param dims head dimension @param position the slot's position @return -||key||
  template <class Key>
  KVCOMPACT_HOST_DEVICE float slot_score(const Key& key, index_t dims, index_t position) const {
    float score = 0.0f;
    slot_scores<1>(single_key<Key>{key}, dims, &position, &score);
    return score;
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
