// SPDX-License-Identifier: Apache-2.0
/// @file
/// @brief The kvcompact::slot_scorer concept: per-slot importance.
#pragma once

#include <kvcompact/types.hpp>

#include <concepts>
#include <type_traits>

KVCOMPACT_NAMESPACE_BEGIN

/// @brief Tag a scorer derives its `component_kind` from (opt-in to kvcompact::slot_scorer).
struct scorer_tag {};

/// @brief What a scorer reads to score a slot.
enum class score_source : std::uint8_t {
  slot,       ///< the slot itself: its key and position (`slot_score(key, dims, position)`)
  attention,  ///< attention probabilities of observation-window queries (prefill) and of the current query (decode)
};

/// @brief One key as a batch of one (`keys(0, d)` is `key(d)`): lets a slot scorer whose score is
/// defined by a batched `slot_scores<Count>()` define `slot_score()` as the batch of one.
/// @tparam Key the key accessor, `key(d)` returns dimension d as float
template <class Key>
struct single_key {
  const Key& key;  ///< the key
  /// @brief Dimension @p d of the key. @param d dimension @return key(d)
  KVCOMPACT_EXEC_CHECK_DISABLE
  KVCOMPACT_HOST_DEVICE float operator()(int, index_t d) const { return key(d); }
};

namespace detail {
template <class S>
concept declares_scorer = requires { typename S::component_kind; } && std::derived_from<typename S::component_kind, scorer_tag>;
template <class S>
concept scorer_has_source = requires {
  { S::source } -> std::convertible_to<score_source>;
};
template <class S>
concept scorer_has_state = requires { typename S::state_type; } && std::is_trivially_copyable_v<typename S::state_type>;
struct probe_key_row {
  KVCOMPACT_HOST_DEVICE float operator()(index_t) const { return 0.0f; }
};
template <class S>
concept scorer_has_math = scorer_has_source<S> && (S::source == score_source::slot
    ? requires(const S& s, probe_key_row key, index_t i) { { s.slot_score(key, i, i) } -> std::convertible_to<float>; }
    : requires(const S& s, float p, index_t i) {
        { s.row_term(p, i, i) } -> std::convertible_to<float>;
        { s.rows } -> std::convertible_to<reduction>;
        { s.group } -> std::convertible_to<reduction>;
        { S::shares_across_kv_heads } -> std::convertible_to<bool>;
      });
struct probe_key_batch {
  KVCOMPACT_HOST_DEVICE float operator()(int, index_t) const { return 0.0f; }
};
/// Whether a slot scorer scores batches of keys (`slot_scores<Count>(keys, dims, positions, scores)`).
template <class S>
concept scores_slot_batches = requires(const S& s, probe_key_batch keys, index_t i, const index_t* positions, float* scores) {
  s.template slot_scores<2>(keys, i, positions, scores);
};
template <class S>
concept scorer_has_decode = scorer_has_state<S> && requires(const S& s, typename S::state_type& st, float f, index_t i) {
  { s.initial_state(f, i) } -> std::convertible_to<typename S::state_type>;
  { s.state_from_prefill(f, i, i) } -> std::convertible_to<typename S::state_type>;
  s.observe(st, f, i);
  { s.decode_score(st, i) } -> std::convertible_to<float>;
};
}  // namespace detail

/// @brief A per-slot importance scorer.
///
/// Requirements on a type `S` (all functions `KVCOMPACT_HOST_DEVICE` and const):
/// 1. `using component_kind = kvcompact::scorer_tag;` (opt-in);
/// 2. `static constexpr kvcompact::score_source source`;
///    - `score_source::slot`: `float slot_score(Key key, index_t dims, index_t position)` where
///      `key(d)` returns dimension d as float; optionally also `template <int Count> void
///      slot_scores(Keys keys, index_t dims, const index_t* positions, float* scores)`, the scores of
///      Count keys at once (`keys(i, d)` is dimension d of key i; positions and scores hold Count
///      entries), which must give each key exactly its slot_score() (define slot_score() as the batch
///      of one, kvcompact::single_key): the CPU backend then scores 16 slots per call, so a
///      per-key sequential sum (scorers::key_norm) runs as 16 independent sums;
///    - `score_source::attention`: members `reduction rows` and `reduction group`, a static
///      `bool shares_across_kv_heads`, and `float row_term(float probability, index_t visible_keys,
///      index_t query_position)`: the score of a slot is `group`-reduced over the query heads of its KV
///      head (all query heads when shared) of the `rows`-reduced terms of the window queries;
/// 3. a trivially copyable `state_type` (per-slot decode state) with `initial_state(slot_score, position)`
///    for a new token, `state_from_prefill(prefill_score, position, last_prompt_position)`,
///    `observe(state&, current_query_term, query_position)` (attention scorers fold the group-reduced term of the
///    current query into the state) and `decode_score(state, position)` (higher means keep);
/// 4. trivially copyable itself.
///
/// Example: a slot scorer keeping keys of small L1 norm (compiled and tested by test/unit/user_components.cpp):
/// @snippet user_components.cpp slot scorer
template <class S>
concept slot_scorer = detail::declares_scorer<S> && detail::scorer_has_math<S> && detail::scorer_has_decode<S> &&
                      std::is_trivially_copyable_v<S>;

namespace detail {
/// Static-assert ladder naming the first requirement of slot_scorer that @p S misses.
template <class S>
constexpr bool check_scorer() {
  static_assert(declares_scorer<S>, "kvcompact: the scorer type must declare  using component_kind = kvcompact::scorer_tag;");
  static_assert(!(declares_scorer<S>) || scorer_has_source<S>, "kvcompact: the scorer type must declare  static constexpr kvcompact::score_source source");
  static_assert(!(declares_scorer<S> && scorer_has_source<S>) || scorer_has_math<S>,
                "kvcompact: the scorer lacks its scoring math: slot_score(key, dims, position) for score_source::slot, or rows, group, "
                "shares_across_kv_heads and row_term(probability, visible_keys, query_position) for score_source::attention");
  static_assert(!(declares_scorer<S> && scorer_has_source<S> && scorer_has_math<S>) || scorer_has_state<S>, "kvcompact: the scorer must declare a trivially copyable state_type");
  static_assert(!(declares_scorer<S> && scorer_has_source<S> && scorer_has_math<S> && scorer_has_state<S>) || scorer_has_decode<S>,
                "kvcompact: the scorer lacks initial_state, state_from_prefill, observe or decode_score");
  static_assert(!(declares_scorer<S> && scorer_has_source<S> && scorer_has_math<S> && scorer_has_state<S> && scorer_has_decode<S>) || std::is_trivially_copyable_v<S>, "kvcompact: the scorer type must be trivially copyable");
  return slot_scorer<S>;
}
}  // namespace detail

KVCOMPACT_NAMESPACE_END
