// SPDX-License-Identifier: Apache-2.0
/// @file
/// @brief ThinK presets: SnapKV's token selection followed by channels::think.
#pragma once

#include <kvcompact/channels/pruned_policy.hpp>
#include <kvcompact/channels/think.hpp>
#include <kvcompact/policies.hpp>

#include <array>
#include <string>
#include <string_view>

KVCOMPACT_NAMESPACE_BEGIN

namespace policies {

/// @brief ThinK + SnapKV as evaluated in the paper: SnapKV keeps @p budget slots per head (observation
/// window @p window), then ThinK drops `floor(pruning_ratio * head_dim)` key channels of every kept slot
/// but the @p window newest.
/// @param budget slots per head @param pruning_ratio fraction of key channels dropped, in [0, 1)
/// @param window observation window rows and unpruned newest slots
/// @return the composed policy
/// @throws kvcompact::error naming "think.pruning_ratio" or a SnapKV argument
inline auto think_snapkv(index_t budget, float pruning_ratio = 0.4f, index_t window = 32) {
  const channels::think think{pruning_ratio, window};
  think.validate("think_snapkv");
  return channels::pruned_policy<decltype(snapkv(budget, window)), channels::think>{snapkv(budget, window), think};
}

/// @brief Names accepted by with_channel_preset(): ThinK + SnapKV at the paper's two pruning ratios.
inline constexpr std::array<std::string_view, 2> channel_preset_names{"think_snapkv", "think_snapkv_r50"};

/// @brief Builds the channel-pruning preset called @p name (pruning ratio 0.4 for think_snapkv, 0.5 for
/// think_snapkv_r50; budget and window from @p options, the window capped at half the budget as in
/// with_preset) and calls `f(policy)` with it.
/// @param name one of channel_preset_names @param options budget and window @param f a generic callable
/// @return what @p f returns
/// @throws kvcompact::error for an unknown name or a budget SnapKV cannot meet
template <class F>
decltype(auto) with_channel_preset(std::string_view name, const preset_options& options, F&& f) {
  detail::require(options.budget > 0, "with_channel_preset", "options.budget", "must be positive");
  const index_t window = options.window < options.budget ? options.window : options.budget / 2;
  if (name == "think_snapkv") return f(think_snapkv(options.budget, 0.4f, window));
  if (name == "think_snapkv_r50") return f(think_snapkv(options.budget, 0.5f, window));
  throw error("with_channel_preset", "name", "unknown channel-pruning preset \"" + std::string(name) + "\"");
}

}  // namespace policies

KVCOMPACT_NAMESPACE_END
