// SPDX-License-Identifier: Apache-2.0
/// @file
/// @brief The adapter between a policy's decode-time eviction and a backend's fused eviction: what
/// kind of rule the policy applies when a token arrives at a full head, and, for ranked rules,
/// whether a slot is an eviction candidate at step t and its rank key. Backends that find the
/// victims while they update the scorer's state (the CUDA decode kernels) ask only these two
/// functions; everything else takes the selector's own `select_decode`.
#pragma once

#include <kvcompact/policy.hpp>
#include <kvcompact/selectors/candidates.hpp>
#include <kvcompact/selectors/top_k.hpp>

#include <cstdint>
#include <type_traits>

KVCOMPACT_NAMESPACE_BEGIN
namespace detail {

/// What a policy does at decode when the incoming token exceeds a head's budget.
enum class decode_eviction_kind : std::uint8_t {
  none,     ///< nothing is evicted (the token is appended while capacity lasts)
  ranked,   ///< the `excess` worst candidates go: lowest key first, among equal keys the higher position
  general,  ///< anything else (pooled ranks, budget-free rules, merging): the selector's and merger's own code
};

/// Whether @p Selector is a kvcompact::selectors::top_k.
template <class Selector>
struct is_top_k_selector : std::false_type {};
/// A top-k selector.
template <class Schedule>
struct is_top_k_selector<selectors::top_k<Schedule>> : std::true_type {};

/// The decode eviction of @p policy (host and device).
/// @param policy the policy @return its kind
template <class Policy>
KVCOMPACT_HOST_DEVICE decode_eviction_kind decode_eviction_of(const Policy& policy) {
  if constexpr (is_top_k_selector<typename Policy::selector_type>::value && !Policy::merges) {
    if (!policy.selector.decode_eviction) return decode_eviction_kind::none;
    return policy.selector.rule.pool == selectors::pooling::none ? decode_eviction_kind::ranked : decode_eviction_kind::general;
  } else {
    return decode_eviction_kind::general;
  }
}

/// A slot seen by a ranked decode eviction.
struct decode_verdict {
  bool candidate;  ///< the slot may be evicted at this step (not protected)
  float key;       ///< its rank key (the scorer's decode score); lower keys are evicted first
};

/// The per-slot rule of a ranked decode eviction (decode_eviction_of() == ranked): whether the slot
/// holding @p position with decode state @p state is a candidate when the token at @p step arrives,
/// and its key. The key is given for protected slots too (backends check every key for NaN).
/// @param policy the policy @param state the slot's decode state @param position its position
/// @param step position of the incoming token @return the verdict
template <class Policy>
KVCOMPACT_HOST_DEVICE decode_verdict decode_eviction_verdict(const Policy& policy, const typename Policy::scorer_type::state_type& state,
                                                             index_t position, index_t step) {
  const float key = policy.scorer.decode_score(state, position);
  if constexpr (is_top_k_selector<typename Policy::selector_type>::value) return {!policy.selector.rule.protects(position, step), key};
  else return {false, key};
}

}  // namespace detail
KVCOMPACT_NAMESPACE_END
