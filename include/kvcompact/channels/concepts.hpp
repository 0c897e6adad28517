// SPDX-License-Identifier: Apache-2.0
/// @file
/// @brief The kvcompact::channel_selector concept: which key channels of a head stay in the cache.
#pragma once

#include <kvcompact/types.hpp>

#include <concepts>
#include <type_traits>

KVCOMPACT_NAMESPACE_BEGIN

/// @brief Tag a channel selector declares as `using component_kind = kvcompact::channel_selector_tag;`.
struct channel_selector_tag {};

namespace detail {
template <class C>
concept declares_channel_selector = requires { typename C::component_kind; } && std::derived_from<typename C::component_kind, channel_selector_tag>;
template <class C>
concept channel_selector_has_rule = requires(const C& c, index_t n, float x, const char* where) {
  { c.kept_channels(n) } -> std::convertible_to<index_t>;
  { c.channel_score(x, x) } -> std::convertible_to<float>;
  { c.unpruned_tail() } -> std::convertible_to<index_t>;
  c.validate(where);
};
}  // namespace detail

/// @brief A key-channel selector: after token selection, it decides per KV head which channels of the
/// cached keys are kept (ThinK's query-driven pruning is kvcompact::channels::think).
///
/// Requirements on a type `C`:
/// 1. `using component_kind = kvcompact::channel_selector_tag;`
/// 2. `KVCOMPACT_HOST_DEVICE index_t kept_channels(index_t head_dim) const`: channels kept per head,
///    in [1, head_dim];
/// 3. `KVCOMPACT_HOST_DEVICE float channel_score(float query_energy, float key_energy) const`: the
///    importance of one channel from the mean square of the observation-window queries of the head's
///    GQA group in that channel and the mean square of the head's kept keys in it; the backends keep the
///    `kept_channels` channels of highest score (ties: the lower channel index),
/// 4. `index_t unpruned_tail() const`: newest slots of each head that keep every channel;
/// 5. `void validate(const char* where) const` throwing kvcompact::error for bad parameters;
/// 6. `C` is trivially copyable (it is passed to kernels by value).
template <class C>
concept channel_selector = detail::declares_channel_selector<C> && detail::channel_selector_has_rule<C> && std::is_trivially_copyable_v<C>;

namespace detail {
/// Static-assert ladder naming the first requirement of channel_selector that @p C misses.
template <class C>
constexpr bool check_channel_selector() {
  static_assert(declares_channel_selector<C>,
                "kvcompact: the channel selector type must declare  using component_kind = kvcompact::channel_selector_tag;");
  static_assert(!declares_channel_selector<C> || channel_selector_has_rule<C>,
                "kvcompact: the channel selector lacks kept_channels(head_dim), channel_score(query_energy, key_energy), unpruned_tail() or "
                "validate(where)");
  static_assert(!(declares_channel_selector<C> && channel_selector_has_rule<C>) || std::is_trivially_copyable_v<C>,
                "kvcompact: the channel selector type must be trivially copyable");
  return channel_selector<C>;
}
}  // namespace detail

KVCOMPACT_NAMESPACE_END
