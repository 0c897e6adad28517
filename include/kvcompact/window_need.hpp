// SPDX-License-Identifier: Apache-2.0
/// @file
/// @brief Which prompt queries a policy wants as its prefill observation window (kvcompact::window_need_of).
#pragma once

#include <kvcompact/policy.hpp>

#include <concepts>
#include <cstdint>
#include <type_traits>

KVCOMPACT_NAMESPACE_BEGIN

/// @brief The observation window a policy's prefill compression reads.
enum class window_need : std::uint8_t {
  none,         ///< no queries: the scorer reads the slots themselves (StreamingLLM, KNorm)
  recent_rows,  ///< the last `w` prompt queries (SnapKV family, TOVA, CORM, WindowKV)
  all_prompt,   ///< every prompt query: scores accumulate over the whole prompt (H2O, KVMerger, CaM, PrefixKV)
};

namespace detail {
template <class S>
concept declares_prefill_window = requires { S::prefill_window; };

/// The window a scorer wants: its `prefill_window` when it declares one, else the last rows for an
/// attention scorer and none for a slot scorer.
template <class S>
constexpr window_need scorer_window_need() {
  if constexpr (declares_prefill_window<S>) {
    static_assert(std::same_as<std::remove_cv_t<decltype(S::prefill_window)>, window_need>,
                  "kvcompact: a scorer's prefill_window must be a  static constexpr kvcompact::window_need");
    return S::prefill_window;
  } else {
    return S::source == score_source::attention ? window_need::recent_rows : window_need::none;
  }
}
}  // namespace detail

/// @brief The observation window policy @p P wants from compress_prefill() (and compress_prefill_layer()).
///
/// A scorer states it with `static constexpr kvcompact::window_need prefill_window` (the accumulated-
/// attention scorers say window_need::all_prompt); without it an attention scorer wants the last rows
/// and a slot scorer none. Engines size and fill the window from it instead of guessing from a preset
/// name (window_rows_for()).
/// @tparam P a kvcompact::compression_policy
template <class P>
struct window_need_of {
  static_assert(compression_policy<P>, "kvcompact: window_need_of<P>: P must be a kvcompact::policy<Scorer, Selector, Merger>");
  /// @brief The policy's window.
  static constexpr window_need value = detail::scorer_window_need<typename P::scorer_type>();
};

/// @brief Shorthand for `window_need_of<P>::value`.
/// @tparam P a kvcompact::compression_policy
template <class P>
inline constexpr window_need window_need_v = window_need_of<std::remove_cvref_t<P>>::value;

/// @brief Rows of the observation window policy @p P wants for a prompt of @p prompt_length tokens.
/// @tparam P a kvcompact::compression_policy
/// @param prompt_length prompt tokens @param recent_rows the engine's window w for window_need::recent_rows
/// @return 0 for window_need::none, @p prompt_length for window_need::all_prompt, else min(@p recent_rows, @p prompt_length)
template <class P>
constexpr index_t window_rows_for(index_t prompt_length, index_t recent_rows) {
  switch (window_need_v<P>) {
    case window_need::none: return 0;
    case window_need::all_prompt: return prompt_length;
    default: return recent_rows < prompt_length ? recent_rows : prompt_length;
  }
}

/// @brief window_rows_for() of the policy @p policy (for generic lambdas that hold a policy object).
/// @param policy the policy @param prompt_length prompt tokens @param recent_rows the window w for window_need::recent_rows
/// @return the rows policy @p policy wants
template <class P>
constexpr index_t window_rows_for(const P& policy, index_t prompt_length, index_t recent_rows) {
  static_cast<void>(policy);
  return window_rows_for<P>(prompt_length, recent_rows);
}

KVCOMPACT_NAMESPACE_END
