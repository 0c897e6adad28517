// SPDX-License-Identifier: Apache-2.0
/// @file
/// @brief kvcompact::policy: a scorer, a selector and a merger composed as one type.
#pragma once

#include <kvcompact/mergers/concepts.hpp>
#include <kvcompact/mergers/drop.hpp>
#include <kvcompact/scorers/concepts.hpp>
#include <kvcompact/selectors/concepts.hpp>

#include <type_traits>

KVCOMPACT_NAMESPACE_BEGIN

namespace detail {
template <class S, bool = (slot_scorer<S> && S::source == score_source::attention)>
struct shares_scores : std::false_type {};
template <class S>
struct shares_scores<S, true> : std::bool_constant<S::shares_across_kv_heads> {};
}  // namespace detail

/// @brief A compression policy: what scores a slot, what is kept, what happens to the rest.
///
/// The template parameters are checked in the body with plain-sentence static assertions, so a
/// wrong component type gets one readable line from g++ and nvcc alike. The capability flags let
/// backends compile away stages a policy does not use.
/// @tparam Scorer a kvcompact::slot_scorer
/// @tparam Selector a kvcompact::keep_selector
/// @tparam Merger a kvcompact::entry_merger (kvcompact::mergers::drop by default)
///
/// Example: CORM's importance, WindowKV's windows and KVMerger's merge in one policy (built and run by
/// examples/compose_components.cpp); the presets of kvcompact::policies are built the same way:
/// @snippet compose_components.cpp compose
template <class Scorer, class Selector, class Merger = mergers::drop>
struct policy {
  static_assert(detail::check_scorer<Scorer>(), "kvcompact: policy<Scorer, Selector, Merger>: Scorer is not a kvcompact::slot_scorer");
  static_assert(detail::check_selector<Selector>(), "kvcompact: policy<Scorer, Selector, Merger>: Selector is not a kvcompact::keep_selector");
  static_assert(detail::check_merger<Merger>(), "kvcompact: policy<Scorer, Selector, Merger>: Merger is not a kvcompact::entry_merger");

  using scorer_type = Scorer;      ///< the scorer
  using selector_type = Selector;  ///< the selector
  using merger_type = Merger;      ///< the merger

  Scorer scorer{};      ///< scores slots
  Selector selector{};  ///< picks the keep-set
  Merger merger{};      ///< folds evicted entries into kept ones

  /// @brief True when the scorer needs attention probabilities (observation window at prefill, current query at decode).
  static constexpr bool needs_attention = Scorer::source == score_source::attention;
  /// @brief True when evicted entries are merged (values or keys of kept slots change).
  static constexpr bool merges = Merger::merges;
  /// @brief True when one score is shared by every KV head of a layer (slots stay aligned across heads).
  static constexpr bool shares_scores_across_kv_heads = detail::shares_scores<Scorer>::value;
};

namespace detail {
template <class P>
struct is_policy : std::false_type {};
template <class S, class L, class M>
struct is_policy<policy<S, L, M>> : std::true_type {};
}  // namespace detail

/// @brief A specialisation of kvcompact::policy (whose components satisfy their concepts).
template <class P>
concept compression_policy = detail::is_policy<std::remove_cv_t<P>>::value;

KVCOMPACT_NAMESPACE_END
