// SPDX-License-Identifier: Apache-2.0
/// @file
/// @brief The kvcompact::entry_merger concept: what happens to evicted entries.
#pragma once

#include <kvcompact/selectors/concepts.hpp>

#include <concepts>
#include <type_traits>

KVCOMPACT_NAMESPACE_BEGIN

/// @brief Tag a merger derives its `component_kind` from (opt-in to kvcompact::entry_merger).
struct merger_tag {};

namespace detail {
template <class M>
concept declares_merger = requires { typename M::component_kind; } && std::derived_from<typename M::component_kind, merger_tag>;
template <class M>
concept merger_has_merge = requires(const M& m, probe_group& group, probe_selection_context& ctx, int h) {
  { M::merges } -> std::convertible_to<bool>;
  m.merge(group, ctx, h);
};
}  // namespace detail

/// @brief A merger: folds evicted entries into kept ones before compaction.
///
/// Requirements on a type `M`:
/// 1. `using component_kind = kvcompact::merger_tag;` (opt-in);
/// 2. `static constexpr bool merges`: false lets backends skip the stage (kvcompact::mergers::drop);
/// 3. `KVCOMPACT_HOST_DEVICE void merge(Group& group, Ctx& ctx, int head) const`: group code (see
///    kvcompact::execution_group) run by one worker on the CPU and by a thread block on the GPU, after
///    selection (prefill) or decode-time eviction; reads keep flags, merge targets, scores, keys and
///    values from the selection context (`ctx.order(head)` is ready) and rewrites keys and values of
///    kept slots;
/// 4. trivially copyable.
///
/// Example: a merger adding evicted values to the next kept slot (compiled and tested by test/unit/user_components.cpp):
/// @snippet user_components.cpp merger
template <class M>
concept entry_merger = detail::declares_merger<M> && detail::merger_has_merge<M> && std::is_trivially_copyable_v<M>;

namespace detail {
/// Static-assert ladder naming the first requirement of entry_merger that @p M misses.
template <class M>
constexpr bool check_merger() {
  static_assert(declares_merger<M>, "kvcompact: the merger type must declare  using component_kind = kvcompact::merger_tag;");
  static_assert(!(declares_merger<M>) || merger_has_merge<M>, "kvcompact: the merger lacks  static constexpr bool merges  or merge(group, context, head)");
  static_assert(!(declares_merger<M> && merger_has_merge<M>) || std::is_trivially_copyable_v<M>, "kvcompact: the merger type must be trivially copyable");
  return entry_merger<M>;
}
}  // namespace detail

KVCOMPACT_NAMESPACE_END
