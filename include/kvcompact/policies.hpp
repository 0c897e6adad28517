// SPDX-License-Identifier: Apache-2.0
/// @file
/// @brief Presets: each published method as a composition of components, and a runtime-name dispatcher.
///
/// Every factory checks its arguments and throws kvcompact::error naming the bad one: budgets,
/// windows, kernels and group sizes must be positive (odd for pooling kernels), shares lie in
/// [0, 1], and protected tokens never exceed the budget. Protected tokens (sinks, recent tokens, the
/// observation window) above the budget are rejected rather than capped, by the factories and by
/// the sessions alike: the selectors never evict a protected token, so such a policy could only keep
/// more than its budget. A policy that evicts during decode needs one slot beyond its protected
/// tokens (`streaming_llm(4, 4)` is rejected: four sinks leave nothing to evict).
///
/// Budgets are kvcompact::policies::budget_size: a slot count, or a share of the prompt
/// (budget_size::share(0.25, prompt_length)). The method knobs have names in the options structs
/// (kvcompact::policies::snapkv_options and friends): kvpress's SnapKV, average pooling over 5 keys
/// and the mean over the window rows, is
/// `snapkv({.budget = 512, .window = 64, .scoring = {.pool = pooling::average, .kernel = 5, .rows = reduction::mean}})`.
#pragma once

#include <kvcompact/mergers/average.hpp>
#include <kvcompact/mergers/cam.hpp>
#include <kvcompact/mergers/drop.hpp>
#include <kvcompact/mergers/gaussian_pivot.hpp>
#include <kvcompact/mergers/nearest_key.hpp>
#include <kvcompact/layouts/layer_condensed.hpp>
#include <kvcompact/detail/parameter_checks.hpp>
#include <kvcompact/error.hpp>
#include <kvcompact/policy.hpp>
#include <kvcompact/scorers/accumulated_attention.hpp>
#include <kvcompact/scorers/key_norm.hpp>
#include <kvcompact/scorers/last_query.hpp>
#include <kvcompact/scorers/observation_window.hpp>
#include <kvcompact/scorers/recency.hpp>
#include <kvcompact/scorers/recent_query.hpp>
#include <kvcompact/selectors/adaptive_heads.hpp>
#include <kvcompact/selectors/budgets.hpp>
#include <kvcompact/selectors/elastic.hpp>
#include <kvcompact/selectors/hit_window.hpp>
#include <kvcompact/selectors/layer_table.hpp>
#include <kvcompact/selectors/merging_sets.hpp>
#include <kvcompact/selectors/top_k.hpp>
#include <kvcompact/selectors/windows.hpp>

#include <array>
#include <cmath>
#include <concepts>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

KVCOMPACT_NAMESPACE_BEGIN

namespace policies {

/// @brief A budget: a number of slots, or a share of the prompt resolved against its length.
///
/// An integer converts implicitly (`snapkv(256)`); a share is spelled `budget_size::share(0.25, prompt_length)`
/// and becomes `round(share * prompt_length)` slots, at least 1. Per-layer and per-head schedules
/// (PyramidKV, Ada-KV, WindowKV) take it as their average. A floating-point number does not convert
/// (so `snapkv(0.25)` does not compile instead of silently keeping 0 slots).
class budget_size {
 public:
  /// @brief A slot count (checked to be positive by the factory that takes it). @param slots slots per head
  template <std::integral Slots>
  constexpr budget_size(Slots slots) : slots_(static_cast<index_t>(slots)) {}  // NOLINT(google-explicit-constructor): `snapkv(256)` reads best

  /// @brief A share of the prompt. @param fraction share in (0, 1] (checked by the factory that takes it)
  /// @param prompt_length prompt tokens, positive @return the budget
  [[nodiscard]] static constexpr budget_size share(double fraction, index_t prompt_length) {
    budget_size b{0};
    b.share_ = fraction;
    b.prompt_length_ = prompt_length;
    b.is_share_ = true;
    return b;
  }

  /// @brief Whether the budget is a share of the prompt. @return true for share()
  [[nodiscard]] constexpr bool is_share() const { return is_share_; }

  /// @brief The budget in slots, checked.
  /// @param where the factory (for the error message) @param argument the argument's name
  /// @return the slot count, or round(share x prompt length) and at least 1
  /// @throws kvcompact::error naming @p argument when the count is not positive, the share lies outside
  /// (0, 1] (NaN included) or the prompt length is not positive
  [[nodiscard]] index_t slots(const char* where, std::string_view argument) const {
    if (!is_share_) {
      detail::require_positive(slots_, where, argument);
      return slots_;
    }
    detail::require_kept_fraction(share_, where, argument);
    detail::require(prompt_length_ > 0, where, argument,
                    [&] { return "is a share of a prompt of " + std::to_string(prompt_length_) + " tokens: the prompt length must be positive"; });
    const auto b = static_cast<index_t>(std::llround(share_ * static_cast<double>(prompt_length_)));
    return b < 1 ? 1 : b;
  }

 private:
  index_t slots_ = 0;
  double share_ = 0.0;
  index_t prompt_length_ = 0;
  bool is_share_ = false;
};

/// @brief How the observation-window presets score (SnapKV, PyramidKV, Ada-KV, XKV): pooling of the
/// candidates' scores along the keys and the reduction over the window rows.
struct window_scoring {
  selectors::pooling pool = selectors::pooling::max;  ///< pooling kind (SnapKV: max; kvpress: average)
  index_t kernel = 7;                                 ///< pooling kernel, odd (SnapKV: 7; kvpress: 5)
  reduction rows = reduction::sum;                    ///< over the window rows (SnapKV: sum; kvpress and Ada-KV: mean)
};

/// @brief Named options of snapkv() and pyramidkv().
struct snapkv_options {
  budget_size budget;          ///< slots per head, window included (pyramidkv(): the average over layers)
  index_t window = 32;         ///< observation window w, kept, at most the budget
  window_scoring scoring = {}; ///< pooling and row reduction
};

/// @brief Named options of adakv().
struct adakv_options {
  budget_size budget;                                               ///< average slots per head, window included
  index_t window = 32;                                              ///< observation window w, kept, at most the budget
  window_scoring scoring = {selectors::pooling::max, 7, reduction::mean};  ///< pooling and row reduction (Ada-KV: max over 7, mean)
  double floor_fraction = 0.2;                                      ///< alpha_f in [0, 1]: share of each head's budget it keeps regardless of scores
  bool strict = false;                                              ///< repair rounding so the layer keeps exactly H x B candidates
};

/// @brief Named options of streaming_llm().
struct streaming_options {
  budget_size budget;  ///< slots per head
  index_t sinks = 4;   ///< attention sinks, fewer than the budget
};

/// @brief Named options of h2o().
struct h2o_options {
  budget_size budget;  ///< slots per head
  index_t recent = 0;  ///< newest tokens kept
  index_t sinks = 0;   ///< first tokens kept (0 in H2O)
};

/// @brief Named options of cam().
struct cam_options {
  budget_size budget;       ///< slots per head
  index_t start = 4;        ///< first tokens kept, fewer than the budget
  index_t merge_count = 32; ///< M: kept values each evicted value is spread over
};

/// @brief StreamingLLM (@ref methods_streaming_llm): `sinks` first tokens plus the newest, `budget` in all.
/// @param budget_or_share slots per head @param sinks attention sinks, fewer than @p budget @return the policy
/// @throws kvcompact::error when @p budget is not positive or @p sinks is negative or not below @p budget
inline auto streaming_llm(budget_size budget_or_share, index_t sinks = 4) {
  const index_t budget = budget_or_share.slots("streaming_llm", "budget");
  detail::require_non_negative(sinks, "streaming_llm", "sinks");
  const policy<scorers::recency, selectors::top_k<budgets::fixed>> p{{}, {budgets::fixed{budget}, {sinks, 0}}, {}};
  detail::require_protected_fit(detail::smallest_budget(p.selector), budget, "streaming_llm", "sinks");
  return p;
}

/// @brief StreamingLLM by named options. @param o the options @return the policy
/// @throws kvcompact::error naming the bad option
inline auto streaming_llm(const streaming_options& o) { return streaming_llm(o.budget, o.sinks); }

/// @brief H2O (@ref methods_h2o) by named options; sinks kept besides the recent tokens.
/// Pass every prompt query as the window (kvcompact::window_need::all_prompt).
/// @param o the options @return the policy
/// @throws kvcompact::error naming the bad option
inline auto h2o(const h2o_options& o) {
  const index_t budget = o.budget.slots("h2o", "budget");
  detail::require_non_negative(o.recent, "h2o", "recent");
  detail::require_non_negative(o.sinks, "h2o", "sinks");
  const policy<scorers::accumulated_attention, selectors::top_k<budgets::fixed>> p{{}, {budgets::fixed{budget}, {o.sinks, o.recent}}, {}};
  detail::require_protected_fit(detail::smallest_budget(p.selector), budget, "h2o", "recent");
  return p;
}

/// @brief H2O (@ref methods_h2o): `recent` newest tokens plus the heaviest accumulated attention, `budget` in all.
/// Pass every prompt query as the window for the original column sums.
/// @param budget slots per head @param recent recent tokens kept, at most @p budget @return the policy
/// @throws kvcompact::error when @p budget is not positive or @p recent is negative or above @p budget
inline auto h2o(budget_size budget, index_t recent) { return h2o(h2o_options{budget, recent, 0}); }

/// @brief TOVA (@ref methods_tova): the top `budget` by the last query's head-averaged attention (one-row window).
/// @param budget_or_share slots per head @return the policy
/// @throws kvcompact::error when @p budget is not positive
inline auto tova(budget_size budget_or_share) {
  const index_t budget = budget_or_share.slots("tova", "budget");
  return policy<scorers::last_query, selectors::top_k<budgets::fixed>>{{}, {budgets::fixed{budget}}, {}};
}

/// @brief SnapKV (@ref methods_snapkv) by named options: window attention reduced over the rows, pooled,
/// top `budget - window` plus the window.
/// @param o the options @return the policy
/// @throws kvcompact::error naming the bad option
inline auto snapkv(const snapkv_options& o) {
  using selector = selectors::top_k<budgets::fixed>;
  const index_t budget = o.budget.slots("snapkv", "budget");
  detail::require_non_negative(o.window, "snapkv", "window");
  detail::require_pool_kernel(o.scoring.pool, o.scoring.kernel, "snapkv", "scoring.kernel");
  scorers::observation_window scorer{};
  scorer.rows = o.scoring.rows;
  const policy<scorers::observation_window, selector> p{
      scorer, selector{budgets::fixed{budget}, {0, o.window, o.scoring.pool, o.scoring.kernel}, -3.402823466e38f, false}, {}};
  detail::require_protected_fit(detail::smallest_budget(p.selector), budget, "snapkv", "window");
  return p;
}

/// @brief SnapKV with SnapKV's own scoring (max pooling, the sum over the window rows).
/// @param budget slots per head (window included) @param window observation window w, at most @p budget
/// @param kernel pooling kernel (odd) @return the policy
/// @throws kvcompact::error when an argument is out of range
inline auto snapkv(budget_size budget, index_t window = 32, index_t kernel = 7) {
  return snapkv(snapkv_options{budget, window, {selectors::pooling::max, kernel, reduction::sum}});
}

/// @brief PyramidKV (@ref methods_pyramidkv) by named options: SnapKV scores with a per-layer pyramid of
/// budgets averaging `o.budget`.
/// @param o the options (budget: the average) @return the policy
/// @throws kvcompact::error naming the bad option
inline auto pyramidkv(const snapkv_options& o) {
  const index_t average = o.budget.slots("pyramidkv", "average");
  detail::require_non_negative(o.window, "pyramidkv", "window");
  detail::require_at_least(average, o.window, "pyramidkv", "average", "the window");
  detail::require_pool_kernel(o.scoring.pool, o.scoring.kernel, "pyramidkv", "scoring.kernel");
  using selector = selectors::top_k<budgets::pyramid>;
  scorers::observation_window scorer{};
  scorer.rows = o.scoring.rows;
  return policy<scorers::observation_window, selector>{
      scorer, selector{budgets::pyramid{average, o.window}, {0, o.window, o.scoring.pool, o.scoring.kernel}, -3.402823466e38f, false}, {}};
}

/// @brief PyramidKV with SnapKV's own scoring (max pooling, the sum over the window rows).
/// @param average average slots per head (window included) @param window observation window, at most @p average
/// @param kernel pooling kernel (odd) @return the policy
/// @throws kvcompact::error when an argument is out of range
inline auto pyramidkv(budget_size average, index_t window = 32, index_t kernel = 7) {
  return pyramidkv(snapkv_options{average, window, {selectors::pooling::max, kernel, reduction::sum}});
}

/// @brief Ada-KV (@ref methods_adakv) by named options: window attention, pooled; head-wise budgets averaging `o.budget`.
/// @param o the options @return the policy
/// @throws kvcompact::error naming the bad option (a NaN floor included)
inline auto adakv(const adakv_options& o) {
  const index_t budget = o.budget.slots("adakv", "budget");
  detail::require_non_negative(o.window, "adakv", "window");
  detail::require_protected_fit(o.window, budget, "adakv", "window");
  detail::require_unit_interval(o.floor_fraction, "adakv", "floor_fraction");
  detail::require_pool_kernel(o.scoring.pool, o.scoring.kernel, "adakv", "scoring.kernel");
  using selector = selectors::adaptive_heads<budgets::fixed>;
  scorers::observation_window scorer{};
  scorer.rows = o.scoring.rows;
  return policy<scorers::observation_window, selector>{
      scorer, selector{budgets::fixed{budget}, {0, o.window, o.scoring.pool, o.scoring.kernel}, o.floor_fraction, o.strict}, {}};
}

/// @brief Ada-KV with its own scoring (max pooling over 7 keys, the mean over the window rows).
/// @param budget average slots per head (window included) @param window observation window, at most @p budget
/// @param floor_fraction alpha_f in [0, 1] @return the policy
/// @throws kvcompact::error when an argument is out of range (a NaN floor included)
inline auto adakv(budget_size budget, index_t window = 32, double floor_fraction = 0.2) {
  adakv_options o{.budget = budget};
  o.window = window;
  o.floor_fraction = floor_fraction;
  return adakv(o);
}

/// @brief KNorm (@ref methods_knorm): the `budget` keys of lowest L2 norm.
/// @param budget_or_share slots per head @return the policy
/// @throws kvcompact::error when @p budget is not positive
inline auto knorm(budget_size budget_or_share) {
  const index_t budget = budget_or_share.slots("knorm", "budget");
  return policy<scorers::key_norm, selectors::top_k<budgets::fixed>>{{}, {budgets::fixed{budget}}, {}};
}

/// @brief CORM (@ref methods_corm_selection, faithful, budget-free): keeps what one of the last `window` queries found important.
/// @param window w, positive @param recent r >= w @param sinks explicit sinks @return the policy
/// @throws kvcompact::error when an argument is out of range
inline auto corm(index_t window, index_t recent, index_t sinks = 0) {
  detail::require_positive(window, "corm", "window");
  detail::require_at_least(recent, window, "corm", "recent", "the window");
  detail::require_non_negative(sinks, "corm", "sinks");
  return policy<scorers::recent_query, selectors::hit_window>{{}, {window, recent, sinks}, {}};
}

/// @brief Budgeted CORM (@ref methods_corm_budgeted): the `recent` newest plus the most important above the threshold, `budget` in all.
/// @param budget_or_share slots per head @param recent recent tokens kept (and window rows), at most @p budget
/// @param alpha threshold multiplier, finite and not negative @return the policy
/// @throws kvcompact::error when an argument is out of range
inline auto corm_budgeted(budget_size budget_or_share, index_t recent, float alpha = 1.0f) {
  const index_t budget = budget_or_share.slots("corm_budgeted", "budget");
  detail::require_non_negative(recent, "corm_budgeted", "recent");
  detail::require_finite_non_negative(alpha, "corm_budgeted", "alpha");
  scorers::recent_query scorer{};
  scorer.score_mode = scorers::recent_query::mode::importance;
  scorer.alpha = alpha;
  const policy<scorers::recent_query, selectors::top_k<budgets::fixed>> p{scorer, {budgets::fixed{budget}, {0, recent}, alpha}, {}};
  detail::require_protected_fit(detail::smallest_budget(p.selector), budget, "corm_budgeted", "recent");
  return p;
}

/// @brief WindowKV (@ref methods_windowkv): whole windows of `window` tokens under a group pyramid averaging `average`
/// review tokens, indices shared by groups of `group` layers; the `suffix` newest tokens are kept.
/// @param average_or_share average review tokens per layer @param group layers per group @param task the engine's task type
/// @param window tokens per window @param suffix observation window @return the policy
/// @throws kvcompact::error when @p average, @p group or @p window is not positive or @p suffix is negative
inline auto windowkv(budget_size average_or_share, index_t group, selectors::task_type task = selectors::task_type::localization,
                     index_t window = 8, index_t suffix = 32) {
  const index_t average = average_or_share.slots("windowkv", "average");
  detail::require_positive(group, "windowkv", "group");
  detail::require_positive(window, "windowkv", "window");
  detail::require_non_negative(suffix, "windowkv", "suffix");
  using selector = selectors::windows<budgets::group_pyramid>;
  return policy<scorers::last_query, selector>{{}, selector{budgets::group_pyramid{average, group}, window, suffix, group, task}, {}};
}

/// @brief PrefixKV (@ref methods_prefixkv): attention accumulated over every prompt query, averaged over all
/// query heads of the layer (every KV head keeps the same tokens), under a per-layer table of kept
/// fractions found offline by PrefixKV's prefix search; the first `sinks` tokens and the last prompt
/// token are kept. Pass every prompt query as the window. Prompt only: decode appends (PrefixKV's own
/// decode rule is not reproduced, @ref methods_prefixkv_decode).
/// @param table kept fraction of each storage layer (kvcompact::budgets::load_layer_budgets)
/// @param sinks attention sinks (PrefixKV's evaluation uses 1)
/// @return the policy
inline auto prefixkv(budgets::layer_table table, index_t sinks = 1) {
  using selector = selectors::top_k<budgets::layer_table>;
  table.min_slots = table.min_slots > sinks + 1 ? table.min_slots : sinks + 1;
  return policy<scorers::layer_accumulated_attention, selector>{{}, selector{table, {sinks, 1}, -3.402823466e38f, false}, {}};
}

/// @brief XKV (@ref methods_xkv): SnapKV's scores and selection under a per-layer table of kept fractions
/// allocated offline by XKV's sensitivity profile and knapsack.
/// @param table kept fraction of each storage layer (kvcompact::budgets::load_layer_budgets)
/// @param window observation window w (kept, counted in each layer's budget)
/// @param scoring pooling and row reduction
/// @return the policy
/// @throws kvcompact::error naming `scoring.kernel` when the pooling kernel is not odd and positive
inline auto xkv(budgets::layer_table table, index_t window, const window_scoring& scoring) {
  detail::require_pool_kernel(scoring.pool, scoring.kernel, "xkv", "scoring.kernel");
  using selector = selectors::top_k<budgets::layer_table>;
  table.min_slots = table.min_slots > window ? table.min_slots : window;
  scorers::observation_window scorer{};
  scorer.rows = scoring.rows;
  return policy<scorers::observation_window, selector>{scorer, selector{table, {0, window, scoring.pool, scoring.kernel}, -3.402823466e38f, false}, {}};
}

/// @brief XKV with SnapKV's scoring (max pooling, the sum over the window rows).
/// @param table kept fraction of each storage layer @param window observation window w @param kernel pooling kernel
/// @return the policy
inline auto xkv(budgets::layer_table table, index_t window = 32, index_t kernel = 7) {
  return xkv(table, window, window_scoring{selectors::pooling::max, kernel, reduction::sum});
}

/// @brief The cache of a MixAttention model (@ref methods_mixattention_cache): storage layers read only by
/// sliding layers are ring buffers of `window + sinks` slots per head (the first `sinks` positions stay,
/// each new token overwrites the oldest other slot), every other storage layer keeps its tokens up to
/// `full_slots` (then it, too, drops its oldest non-sink slot). Use it over a
/// kvcompact::layouts::layer_condensed layout with the same map, whose inner
/// kvcompact::layouts::ragged_layers gives the ring layers `window + sinks` slots.
/// @param map the model's layer map (its window and sinks) @param full_slots slots of the other storage layers
/// @return the policy
/// @throws kvcompact::error naming `full_slots` when it is below `window + sinks` or not positive
inline auto mixattention(const layouts::layer_map& map, index_t full_slots) {
  index_t slots[layouts::layer_map::max_layers] = {};
  const index_t ring = index_t{map.window} + map.sinks;
  detail::require(full_slots > 0 && full_slots >= ring, "mixattention", "full_slots",
                  [&] { return std::to_string(full_slots) + " is below the ring layers' " + std::to_string(ring) + " slots"; });
  for (int s = 0; s < map.cache_layers; ++s) slots[s] = map.window_only(s) ? ring : full_slots;
  using selector = selectors::top_k<budgets::layer_table>;
  const auto table = budgets::layer_table::slots(std::span<const index_t>(slots, static_cast<std::size_t>(map.cache_layers)));
  return policy<scorers::recency, selector>{{}, selector{table, {map.sinks, 0}}, {}};
}

/// @brief The storage-layer capacities mixattention() needs: `window + sinks` slots for the layers read
/// only by sliding layers, @p full_slots for the others (pass them to kvcompact::layouts::ragged_layers::make).
/// @param map the model's layer map @param full_slots slots of the other storage layers
/// @return one capacity per storage layer
inline std::vector<index_t> mixattention_capacities(const layouts::layer_map& map, index_t full_slots) {
  std::vector<index_t> capacities;
  for (int s = 0; s < map.cache_layers; ++s) capacities.push_back(map.window_only(s) ? index_t{map.window} + map.sinks : full_slots);
  return capacities;
}

/// @brief A bounded slot memory (@ref methods_bct_write), the training-free stand-in for BCT's cache: at
/// most `slots` entries per head at any length. When a head is full, its least-attended entry outside
/// the `recent` newest is written into the entry whose key is most similar (kvcompact::mergers::nearest_key)
/// instead of being dropped; prefill compresses the prompt the same way. Pass every prompt query as the
/// window (accumulated attention).
/// @param slots_or_share M: entries per head @param recent newest tokens kept as they are
/// @return the policy
/// @throws kvcompact::error naming `recent` when it is not below @p slots
inline auto bounded_memory(budget_size slots_or_share, index_t recent = 32) {
  const index_t slots = slots_or_share.slots("bounded_memory", "slots");
  detail::require(recent >= 0 && recent < slots, "bounded_memory", "recent",
                  [&] { return "must be in [0, slots = " + std::to_string(slots) + "), got " + std::to_string(recent); });
  return policy<scorers::accumulated_attention, selectors::top_k<budgets::fixed>, mergers::nearest_key>{{}, {budgets::fixed{slots}, {0, recent}}, {}};
}

/// @brief Protected shares of the context in KVMerger (@ref methods_kvmerger_budget): tokens exempt from merging.
struct merge_protection {
  double recent;  ///< rho_r: newest tokens, as a fraction of the context
  double top;     ///< rho_a: best-scoring tokens (aggregated attention), as a fraction of the context
};

/// @brief The protected shares kvmerger(double) uses at kept fraction @p fraction.
///
/// The paper's settings (@ref methods_kvmerger_budget) are the anchors: 0.17 / 0.12 at a 50 % budget and
/// 0.08 / 0.02 at 35 %. Between 35 % and 50 % both shares are interpolated linearly; above 50 % the
/// 50 % shares are used; below 35 % the 35 % shares are scaled by `fraction / 0.35`, so the protected
/// tokens stay 2/7 (about 29 %) of the budget and the rest of the budget holds merged sets.
/// @param fraction kept fraction in (0, 1]
/// @return rho_r and rho_a
/// @throws kvcompact::error when @p fraction is outside (0, 1]
inline merge_protection kvmerger_protection(double fraction) {
  detail::require_kept_fraction(fraction, "kvmerger_protection", "fraction");
  constexpr merge_protection at35{0.08, 0.02}, at50{0.17, 0.12};
  if (fraction >= 0.5) return at50;
  if (fraction >= 0.35) {
    const double t = (fraction - 0.35) / 0.15;
    return {at35.recent + t * (at50.recent - at35.recent), at35.top + t * (at50.top - at35.top)};
  }
  const double scale = fraction / 0.35;
  return {at35.recent * scale, at35.top * scale};
}

/// @brief KVMerger (@ref methods_kvmerger), budgeted mode: merging sets chosen per head so that no head keeps more than
/// `fraction` of its length, in every layer; Gaussian-kernel merge into the pivot. Pass every prompt
/// query (aggregated attention).
/// @param fraction kept fraction in (0, 1] @param recent_fraction rho_r in [0, 1] @param top_fraction rho_a in [0, 1]
/// @return the policy
/// @throws kvcompact::error when an argument is out of range
inline auto kvmerger(double fraction, double recent_fraction, double top_fraction) {
  detail::require_kept_fraction(fraction, "kvmerger", "fraction");
  detail::require_unit_interval(recent_fraction, "kvmerger", "recent_fraction");
  detail::require_unit_interval(top_fraction, "kvmerger", "top_fraction");
  using selector = selectors::merging_sets<budgets::fraction>;
  selector s{budgets::fraction{fraction}};
  s.recent_fraction = recent_fraction;
  s.top_fraction = top_fraction;
  s.budgeted = true;
  return policy<scorers::accumulated_attention, selector, mergers::gaussian_pivot>{{}, s, {}};
}

/// @brief KVMerger (@ref methods_kvmerger), budgeted mode, with the protected shares of kvmerger_protection(@p fraction).
/// @param fraction kept fraction in (0, 1] @return the policy
/// @throws kvcompact::error when @p fraction is outside (0, 1]
inline auto kvmerger(double fraction) {
  const merge_protection p = kvmerger_protection(fraction);
  return kvmerger(fraction, p.recent, p.top);
}

/// @brief CaM (@ref methods_cam) over StreamingLLM-style eviction: `start` first and `budget - start` newest tokens
/// kept; each evicted value is spread over the next `merge_count` kept values.
/// @param budget_or_share slots per head
/// @param start first tokens kept, fewer than @p budget
/// @param merge_count M, positive
/// @return the policy
/// @throws kvcompact::error when an argument is out of range
inline auto cam(budget_size budget_or_share, index_t start, index_t merge_count = 32) {
  const index_t budget = budget_or_share.slots("cam", "budget");
  detail::require_non_negative(start, "cam", "start");
  detail::require_positive(merge_count, "cam", "merge_count");
  mergers::cam merger{};
  merger.merge_count = merge_count;
  const policy<scorers::accumulated_attention, selectors::top_k<budgets::fixed>, mergers::cam> p{
      {}, {budgets::fixed{budget}, {start, budget > start ? budget - start : 0}}, merger};
  detail::require_protected_fit(detail::smallest_budget(p.selector), budget, "cam", "start");
  return p;
}

/// @brief CaM by named options. @param o the options @return the policy
/// @throws kvcompact::error naming the bad option
inline auto cam(const cam_options& o) { return cam(o.budget, o.start, o.merge_count); }

/// @brief Elastic Cache (@ref methods_elastic): attention accumulated over every prompt query and averaged
/// over all query heads of the layer; the prompt keeps `T - floor((1 - fraction) T)` anchors (the first
/// `sinks` tokens, the last one and the most important others) and every other prompt token is averaged
/// into the anchor nearest in position (keys and values). During decode the first `m + offset` slots
/// (`m` the anchors kept) are frozen and the slot after them is dropped whenever the cache holds more than
/// `fraction` of the tokens seen. Pass every prompt query as the window.
/// @param fraction kept fraction in (0, 1] (the paper's evicted ratio is 1 - fraction)
/// @param sinks attention sinks (the paper's evaluation uses 1) @param offset delta (the paper's -25)
/// @return the policy
/// @throws kvcompact::error when @p fraction is outside (0, 1] or @p sinks is negative
inline auto elastic_cache(double fraction, index_t sinks = 1, index_t offset = -25) {
  detail::require_kept_fraction(fraction, "elastic_cache", "fraction");
  detail::require_non_negative(sinks, "elastic_cache", "sinks");
  mergers::average merger{};
  merger.assign = mergers::assignment::nearest_position;
  return policy<scorers::layer_accumulated_attention, selectors::elastic, mergers::average>{{}, selectors::elastic{1.0 - fraction, sinks, offset}, merger};
}

/// @brief Runtime parameters shared by the name dispatcher.
struct preset_options {
  index_t budget;          ///< slots per head (average for per-layer or per-head schedules)
  index_t prompt_length;   ///< prompt tokens (fractional presets derive their ratio from it)
  index_t window = 32;     ///< observation window / recent tokens
  index_t sinks = 4;       ///< attention sinks where the method has them
  index_t layer_group = 0; ///< WindowKV layer group (0: all layers in groups of 4)
  const budgets::layer_table* layer_budgets = nullptr;  ///< per-layer table of the calibrated presets (not owned)
  double budget_share = 0.0;  ///< when not 0: the budget is this share of prompt_length, in (0, 1] (replaces budget)
  std::optional<window_scoring> scoring{};  ///< pooling and row reduction of snapkv, pyramidkv, adakv and xkv (unset: each method's own)
};

/// @brief Names accepted by with_preset().
inline constexpr std::array<std::string_view, 14> preset_names{"streaming_llm", "h2o", "tova", "snapkv", "pyramidkv", "adakv", "knorm",
                                                               "corm", "corm_budgeted", "windowkv", "kvmerger", "cam", "bounded_memory",
                                                               "elastic_cache"};

/// @brief Names of the presets whose per-layer budgets come from an offline calibration: with_preset()
/// accepts them when preset_options::layer_budgets points to the table.
inline constexpr std::array<std::string_view, 2> calibrated_preset_names{"prefixkv", "xkv"};

/// @brief Builds the preset called @p name and calls `f(policy)` with it (one instantiation per preset).
/// @param name one of preset_names or calibrated_preset_names @param options budgets and windows @param f a generic callable
/// @return what @p f returns
/// @throws kvcompact::error for an unknown name, a budget the method cannot meet, or a calibrated preset
/// without preset_options::layer_budgets
template <class F>
decltype(auto) with_preset(std::string_view name, const preset_options& options, F&& f) {
  const index_t b = options.budget_share != 0.0 ? budget_size::share(options.budget_share, options.prompt_length).slots("with_preset", "options.budget_share")
                                                : budget_size(options.budget).slots("with_preset", "options.budget");
  const index_t w = options.window < b ? options.window : b / 2;
  const index_t s = options.sinks < b ? options.sinks : 0;
  const double fraction = options.prompt_length > 0 ? static_cast<double>(b) / static_cast<double>(options.prompt_length) : 1.0;
  if (name == "streaming_llm") return f(streaming_llm(b, s));
  if (name == "h2o") return f(h2o(b, w));
  if (name == "tova") return f(tova(b));
  if (name == "snapkv") return f(options.scoring ? snapkv({b, w, *options.scoring}) : snapkv(b, w));
  if (name == "pyramidkv") return f(options.scoring ? pyramidkv({b, w, *options.scoring}) : pyramidkv(b, w));
  if (name == "adakv") {
    adakv_options o{.budget = b};
    o.window = w;
    if (options.scoring) o.scoring = *options.scoring;
    return f(adakv(o));
  }
  if (name == "knorm") return f(knorm(b));
  if (name == "corm") return f(corm(w, w, s));
  if (name == "corm_budgeted") return f(corm_budgeted(b, w));
  if (name == "windowkv") return f(windowkv(b > w ? b - w : 1, options.layer_group > 0 ? options.layer_group : 4, selectors::task_type::localization, 8, w));
  if (name == "kvmerger") return f(kvmerger(fraction < 1.0 ? fraction : 1.0));
  if (name == "cam") return f(cam(b, s));
  if (name == "bounded_memory") return f(bounded_memory(b, w));
  if (name == "elastic_cache") return f(elastic_cache(fraction < 1.0 ? fraction : 1.0));
  if (name == "prefixkv" || name == "xkv") {
    detail::require(options.layer_budgets != nullptr, "with_preset", "options.layer_budgets",
                    "the " + std::string(name) + " preset needs its per-layer budget table (budgets::load_layer_budgets)");
    if (name == "prefixkv") return f(prefixkv(*options.layer_budgets));
    return options.scoring ? f(xkv(*options.layer_budgets, w, *options.scoring)) : f(xkv(*options.layer_budgets, w));
  }
  throw error("with_preset", "name", "unknown preset \"" + std::string(name) + "\"");
}

}  // namespace policies

KVCOMPACT_NAMESPACE_END
