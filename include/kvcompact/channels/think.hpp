// SPDX-License-Identifier: Apache-2.0
/// @file
/// @brief ThinK (arXiv 2407.21018): query-driven pruning of key channels.
#pragma once

#include <kvcompact/channels/concepts.hpp>
#include <kvcompact/error.hpp>

#include <cmath>
#include <string>

KVCOMPACT_NAMESPACE_BEGIN

namespace channels {

/// @brief ThinK's channel selection: a channel's importance is its share of the query-key products of
/// the observation window, `mean(q_c^2) * mean(k_c^2)` (the squared Frobenius norm of the window's
/// q_c k_c^T up to a per-head constant), and the `floor(pruning_ratio * head_dim)` least important
/// channels of each KV head are dropped from every kept slot but the newest @ref full_tail.
///
/// The query mean runs over every query head of the KV head's GQA group (one channel set per KV head,
/// so pruned keys are stored once per KV head). Values are not pruned.
struct think {
  using component_kind = channel_selector_tag;  ///< opt-in to kvcompact::channel_selector
  float pruning_ratio = 0.4f;  ///< fraction of channels dropped, in [0, 1) (the paper uses 0.4 and 0.5)
  index_t full_tail = 32;      ///< newest slots per head kept at full width (the paper: the 32 observation-window tokens)

  /// @brief Channels kept per head: head_dim - floor(pruning_ratio * head_dim).
  /// @param head_dim the head dimension @return the kept channel count, at least 1
  KVCOMPACT_HOST_DEVICE index_t kept_channels(index_t head_dim) const {
    return head_dim - static_cast<index_t>(pruning_ratio * static_cast<float>(head_dim));
  }
  /// @brief Importance of one channel.
  /// @param query_energy mean square of the window queries in the channel
  /// @param key_energy mean square of the kept keys in the channel
  /// @return their product
  KVCOMPACT_HOST_DEVICE float channel_score(float query_energy, float key_energy) const { return query_energy * key_energy; }
  /// @brief Newest slots per head that keep every channel. @return full_tail
  index_t unpruned_tail() const { return full_tail; }
  /// @brief Checks the parameters.
  /// @param where name of the calling entry point, used in error messages
  /// @throws kvcompact::error naming "think.pruning_ratio" (outside [0, 1)) or "think.full_tail" (negative)
  void validate(const char* where) const {
    detail::require(std::isfinite(pruning_ratio) && pruning_ratio >= 0.0f && pruning_ratio < 1.0f, where, "think.pruning_ratio",
                    [&] { return "is " + std::to_string(pruning_ratio) + ", outside [0, 1)"; });
    detail::require(full_tail >= 0, where, "think.full_tail", [&] { return "is " + std::to_string(full_tail) + ", must not be negative"; });
  }
};

}  // namespace channels

KVCOMPACT_NAMESPACE_END
