// SPDX-License-Identifier: Apache-2.0
/// @file
/// @brief Parameter rules of the built-in components, each defined once. The preset factories
/// (kvcompact::policies) apply them to their own arguments, and both sessions apply them to the
/// fields of whatever policy they are given (validate_policy), so a hand-composed policy gets the
/// same checks as a preset before any memory is touched.
#pragma once

#include <kvcompact/error.hpp>
#include <kvcompact/mergers/average.hpp>
#include <kvcompact/mergers/cam.hpp>
#include <kvcompact/mergers/gaussian_pivot.hpp>
#include <kvcompact/scorers/recent_query.hpp>
#include <kvcompact/selectors/adaptive_heads.hpp>
#include <kvcompact/selectors/budgets.hpp>
#include <kvcompact/selectors/hit_window.hpp>
#include <kvcompact/selectors/merging_sets.hpp>
#include <kvcompact/selectors/top_k.hpp>
#include <kvcompact/selectors/windows.hpp>

#include <cmath>
#include <string>
#include <string_view>

KVCOMPACT_NAMESPACE_BEGIN
namespace detail {

// ---- the rules ----------------------------------------------------------------------------------

/// A count that must be at least 1 (budgets, windows, kernels, group sizes).
inline void require_positive(index_t value, const char* where, std::string_view argument) {
  require(value > 0, where, argument, [&] { return "must be positive, got " + std::to_string(value); });
}

/// A count that may be 0 (sinks, recent tokens, skipped layers).
inline void require_non_negative(index_t value, const char* where, std::string_view argument) {
  require(value >= 0, where, argument, [&] { return "must not be negative, got " + std::to_string(value); });
}

/// A share in [0, 1] (NaN rejected).
inline void require_unit_interval(double value, const char* where, std::string_view argument) {
  require(value >= 0.0 && value <= 1.0, where, argument, [&] { return "must be in [0, 1], got " + std::to_string(value); });
}

/// A kept fraction in (0, 1] (NaN rejected).
inline void require_kept_fraction(double value, const char* where, std::string_view argument) {
  require(value > 0.0 && value <= 1.0, where, argument, [&] { return "must be in (0, 1], got " + std::to_string(value); });
}

/// A finite number that is not negative (thresholds, kernel widths).
inline void require_finite_non_negative(double value, const char* where, std::string_view argument) {
  require(std::isfinite(value) && value >= 0.0, where, argument, [&] { return "must be finite and not negative, got " + std::to_string(value); });
}

/// A similarity threshold: a number, not NaN (cosines lie in [-1, 1]; thresholds outside keep all or nothing).
inline void require_not_nan(double value, const char* where, std::string_view argument) {
  require(!std::isnan(value), where, argument, "is NaN");
}

/// A pooling kernel: odd and positive (a window centred on each candidate).
inline void require_pool_kernel(selectors::pooling pool, index_t kernel, const char* where, std::string_view argument) {
  require(pool == selectors::pooling::none || (kernel > 0 && kernel % 2 == 1), where, argument,
          [&] { return "a pooling kernel must be odd and positive, got " + std::to_string(kernel); });
}

/// @p larger must be at least @p smaller (CORM's recent tokens cover its query window; a pyramid's
/// average covers its observation window).
inline void require_at_least(index_t larger, index_t smaller, const char* where, std::string_view argument, std::string_view smaller_name) {
  require(larger >= smaller, where, argument,
          [&] { return "is " + std::to_string(larger) + ", below " + std::string(smaller_name) + " " + std::to_string(smaller); });
}

/// Slots a top-k head needs to meet its budget: its protected tokens (sinks and recent ones), and,
/// when it evicts during decode, one candidate besides the protected slots that remain at the next
/// step (the sinks and the newest `recent - 1`). Protected tokens above the budget are rejected, not
/// capped: the selectors never evict a protected token.
template <class Schedule>
index_t smallest_budget(const selectors::top_k<Schedule>& selector) {
  const index_t recent = selector.rule.recent;
  return selector.rule.sinks + (selector.decode_eviction && recent < 1 ? 1 : recent);
}

/// The protected tokens of a selector fit its budget.
inline void require_protected_fit(index_t needed, index_t budget, const char* where, std::string_view argument) {
  require(needed <= budget, where, argument, [&] {
    return "the protected tokens (sinks and recent, plus one evictable slot when the policy evicts during decode) need " +
           std::to_string(needed) + " slots, above the budget of " + std::to_string(budget);
  });
}

// ---- the components' fields, as the sessions see them --------------------------------------------

/// Budget schedules.
inline void check_schedule(const budgets::fixed& b, const char* where) { require_positive(b.slots, where, "policy.selector.schedule.slots"); }
/// Budget schedules.
inline void check_schedule(const budgets::fraction& b, const char* where) { require_kept_fraction(b.ratio, where, "policy.selector.schedule.ratio"); }
/// Budget schedules.
inline void check_schedule(const budgets::pyramid& b, const char* where) {
  require_positive(b.average, where, "policy.selector.schedule.average");
  require_non_negative(b.window, where, "policy.selector.schedule.window");
  require_at_least(b.average, b.window, where, "policy.selector.schedule.average", "the window");
  require_positive(b.beta, where, "policy.selector.schedule.beta");
}
/// Budget schedules.
inline void check_schedule(const budgets::group_pyramid& b, const char* where) {
  require_positive(b.average, where, "policy.selector.schedule.average");
  require_positive(b.group, where, "policy.selector.schedule.group");
  require_positive(b.beta, where, "policy.selector.schedule.beta");
}
/// A user-written schedule: nothing known to check.
template <class Schedule>
void check_schedule(const Schedule&, const char*) {}

/// Protected tokens and pooling of score-based selectors.
inline void check_rule(const selectors::candidate_rule& rule, const char* where) {
  require_non_negative(rule.sinks, where, "policy.selector.rule.sinks");
  require_non_negative(rule.recent, where, "policy.selector.rule.recent");
  require_pool_kernel(rule.pool, rule.kernel, where, "policy.selector.rule.kernel");
}

/// @p needed protected slots fit the budget of every layer that can compress (a layer whose budget is
/// the whole capacity never evicts).
template <class Selector, class Layout>
void require_protected_fit_in_layers(const Selector& s, index_t needed, const Layout& layout, const char* where) {
  const index_t layers = layout.num_layers();
  for (index_t l = 0; l < layers; ++l) {
    const index_t capacity = layer_capacity(layout, l);
    const index_t budget = s.budget(l, layers, capacity);
    if (budget < capacity) require_protected_fit(needed, budget, where, "policy.selector.rule");
  }
}

/// Top-k: schedule, rule, and protected tokens within every layer's budget.
template <class Schedule>
void check_selector(const selectors::top_k<Schedule>& s, const auto& layout, const char* where) {
  check_schedule(s.schedule, where);
  check_rule(s.rule, where);
  require_not_nan(s.min_score, where, "policy.selector.min_score");
  require_protected_fit_in_layers(s, smallest_budget(s), layout, where);
}
/// Ada-KV: schedule, rule, floor share, protected tokens within the average budget.
template <class Schedule>
void check_selector(const selectors::adaptive_heads<Schedule>& s, const auto& layout, const char* where) {
  check_schedule(s.schedule, where);
  check_rule(s.rule, where);
  require_unit_interval(s.floor_fraction, where, "policy.selector.floor_fraction");
  require_protected_fit_in_layers(s, s.rule.sinks + s.rule.recent, layout, where);
}
/// CORM: a query window of at least one position, covered by the recent tokens.
inline void check_selector(const selectors::hit_window& s, const auto&, const char* where) {
  require_positive(s.window, where, "policy.selector.window");
  require_at_least(s.recent, s.window, where, "policy.selector.recent", "the window");
  require_non_negative(s.sinks, where, "policy.selector.sinks");
}
/// WindowKV: positive window and group, non-negative suffix.
template <class Schedule>
void check_selector(const selectors::windows<Schedule>& s, const auto&, const char* where) {
  check_schedule(s.schedule, where);
  require_positive(s.window, where, "policy.selector.window");
  require_non_negative(s.suffix, where, "policy.selector.suffix");
  require_positive(s.group, where, "policy.selector.group");
}
/// KVMerger: schedule, thresholds, protected shares, skipped layers.
template <class Schedule>
void check_selector(const selectors::merging_sets<Schedule>& s, const auto&, const char* where) {
  check_schedule(s.schedule, where);
  require_not_nan(s.eps, where, "policy.selector.eps");
  require(s.eps_min >= -1.0f && s.eps_min <= 1.0f, where, "policy.selector.eps_min", "must be in [-1, 1] (a cosine)");
  require_unit_interval(s.recent_fraction, where, "policy.selector.recent_fraction");
  require_unit_interval(s.top_fraction, where, "policy.selector.top_fraction");
  require_non_negative(s.skip_first, where, "policy.selector.skip_first");
  require_non_negative(s.skip_last, where, "policy.selector.skip_last");
}
/// A user-written selector: its own validate(where), when it has one.
template <class Selector>
void check_selector(const Selector& s, const auto&, const char* where) {
  if constexpr (requires { s.validate(where); }) s.validate(where);
}

/// CaM: at least one target per evicted value.
inline void check_merger(const mergers::cam& m, const char* where) { require_positive(m.merge_count, where, "policy.merger.merge_count"); }
/// KVMerger's Gaussian merge: a finite, non-negative kernel width; a threshold that is a number.
inline void check_merger(const mergers::gaussian_pivot& m, const char* where) {
  require_finite_non_negative(m.sigma, where, "policy.merger.sigma");
  require_not_nan(m.min_similarity, where, "policy.merger.min_similarity");
}
/// Average merge: a threshold that is a number.
inline void check_merger(const mergers::average& m, const char* where) { require_not_nan(m.min_similarity, where, "policy.merger.min_similarity"); }
/// Any other merger: its own validate(where), when it has one.
template <class Merger>
void check_merger(const Merger& m, const char* where) {
  if constexpr (requires { m.validate(where); }) m.validate(where);
}

/// CORM's importance threshold: finite and not negative.
inline void check_scorer(const scorers::recent_query& s, const char* where) { require_finite_non_negative(s.alpha, where, "policy.scorer.alpha"); }
/// Any other scorer: its own validate(where), when it has one.
template <class Scorer>
void check_scorer(const Scorer& s, const char* where) {
  if constexpr (requires { s.validate(where); }) s.validate(where);
}

/// Every check a session runs on its policy at construction: the components' fields (user
/// components through their optional `validate(where)`), then every layer's budget against that
/// layer's capacity (kvcompact::detail::require_budgets_fit).
/// @throws kvcompact::error naming the field ("policy.selector.rule.kernel") or "policy"
template <class Policy, class Layout>
void validate_policy(const Policy& policy, const Layout& layout, const char* where) {
  check_scorer(policy.scorer, where);
  check_selector(policy.selector, layout, where);
  check_merger(policy.merger, where);
  require_budgets_fit(policy.selector, layout, where);
}

/// Layers whose heads all share one selection decision: WindowKV's group (every head of every layer
/// of a group must hold the same positions); 0 for selectors that decide per head.
template <class Selector>
index_t decision_group(const Selector&) {
  return 0;
}
/// WindowKV.
template <class Schedule>
index_t decision_group(const selectors::windows<Schedule>& s) {
  return s.group;
}

/// Whether a selector shares one decision across the layers of a group (WindowKV): such a policy
/// compresses all layers in one compress_prefill() call, not layer by layer.
template <class Selector>
inline constexpr bool decides_across_layers = false;
/// WindowKV.
template <class Schedule>
inline constexpr bool decides_across_layers<selectors::windows<Schedule>> = true;

/// The smallest decode budget set_budget() accepts: what a top-k selector that evicts during decode
/// needs (smallest_budget), 1 otherwise.
template <class Selector>
index_t smallest_decode_budget(const Selector&) {
  return 1;
}
/// Top-k.
template <class Schedule>
index_t smallest_decode_budget(const selectors::top_k<Schedule>& s) {
  return s.decode_eviction ? smallest_budget(s) : 1;
}

}  // namespace detail
KVCOMPACT_NAMESPACE_END
