// SPDX-License-Identifier: Apache-2.0
/// @file
/// @brief kvcompact::channels::pruned_policy: a token policy followed by a key-channel selector.
#pragma once

#include <kvcompact/channels/concepts.hpp>
#include <kvcompact/policy.hpp>

KVCOMPACT_NAMESPACE_BEGIN

namespace channels {

/// @brief Any token policy composed with a key-channel selector (ThinK + SnapKV in the paper): the
/// engine runs `tokens` through a session's compress_prefill, then `channels` through
/// prune_key_channels on the same cache and window, and decodes with append_pruned / attend_pruned.
/// @tparam Policy a kvcompact::compression_policy @tparam Selector a kvcompact::channel_selector
template <class Policy, class Selector>
struct pruned_policy {
  static_assert(compression_policy<Policy>, "kvcompact: channels::pruned_policy<Policy, Selector>: Policy must be a kvcompact::policy<Scorer, Selector, Merger>");
  static_assert(detail::check_channel_selector<Selector>(), "kvcompact: channels::pruned_policy<Policy, Selector>: Selector is not a kvcompact::channel_selector");

  using token_policy_type = Policy;        ///< the token policy
  using channel_selector_type = Selector;  ///< the channel selector

  Policy tokens{};     ///< picks the kept slots
  Selector channels{}; ///< picks the kept key channels of those slots
};

}  // namespace channels

KVCOMPACT_NAMESPACE_END
