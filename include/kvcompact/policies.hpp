// SPDX-License-Identifier: Apache-2.0
/// @file
/// @brief Presets: each published method as a composition of components, and a runtime-name dispatcher.
#pragma once

#include <kvcompact/mergers/average.hpp>
#include <kvcompact/mergers/cam.hpp>
#include <kvcompact/mergers/drop.hpp>
#include <kvcompact/mergers/gaussian_pivot.hpp>
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
#include <kvcompact/selectors/hit_window.hpp>
#include <kvcompact/selectors/merging_sets.hpp>
#include <kvcompact/selectors/top_k.hpp>
#include <kvcompact/selectors/windows.hpp>

#include <array>
#include <string>
#include <string_view>

KVCOMPACT_NAMESPACE_BEGIN

namespace policies {

/// @brief StreamingLLM (@ref methods_streaming_llm): `sinks` first tokens plus the newest, `budget` in all.
/// @param budget slots per head @param sinks attention sinks @return the policy
inline auto streaming_llm(index_t budget, index_t sinks = 4) {
  return policy<scorers::recency, selectors::top_k<budgets::fixed>>{{}, {budgets::fixed{budget}, {sinks, 0}}, {}};
}

/// @brief H2O (@ref methods_h2o): `recent` newest tokens plus the heaviest accumulated attention, `budget` in all.
/// Pass every prompt query as the window for the original column sums.
/// @param budget slots per head @param recent recent tokens kept @return the policy
inline auto h2o(index_t budget, index_t recent) {
  return policy<scorers::accumulated_attention, selectors::top_k<budgets::fixed>>{{}, {budgets::fixed{budget}, {0, recent}}, {}};
}

/// @brief TOVA (@ref methods_tova): the top `budget` by the last query's head-averaged attention (one-row window).
/// @param budget slots per head @return the policy
inline auto tova(index_t budget) {
  return policy<scorers::last_query, selectors::top_k<budgets::fixed>>{{}, {budgets::fixed{budget}}, {}};
}

/// @brief SnapKV (@ref methods_snapkv): window-summed attention, max-pooled, top `budget - window` plus the window.
/// @param budget slots per head (window included) @param window observation window w @param kernel pooling kernel
/// @return the policy
inline auto snapkv(index_t budget, index_t window = 32, index_t kernel = 7) {
  using selector = selectors::top_k<budgets::fixed>;
  return policy<scorers::observation_window, selector>{
      {}, selector{budgets::fixed{budget}, {0, window, selectors::pooling::max, kernel}, -3.402823466e38f, false}, {}};
}

/// @brief PyramidKV (@ref methods_pyramidkv): SnapKV scores with a per-layer pyramid of budgets averaging `average`.
/// @param average average slots per head (window included) @param window observation window @param kernel pooling kernel
/// @return the policy
inline auto pyramidkv(index_t average, index_t window = 32, index_t kernel = 7) {
  using selector = selectors::top_k<budgets::pyramid>;
  return policy<scorers::observation_window, selector>{
      {}, selector{budgets::pyramid{average, window}, {0, window, selectors::pooling::max, kernel}, -3.402823466e38f, false}, {}};
}

/// @brief Ada-KV (@ref methods_adakv): window-mean attention, max-pooled; head-wise budgets averaging `budget`.
/// @param budget average slots per head (window included) @param window observation window
/// @param floor_fraction alpha_f @return the policy
inline auto adakv(index_t budget, index_t window = 32, double floor_fraction = 0.2) {
  using selector = selectors::adaptive_heads<budgets::fixed>;
  scorers::observation_window scorer{};
  scorer.rows = reduction::mean;
  return policy<scorers::observation_window, selector>{scorer, selector{budgets::fixed{budget}, {0, window, selectors::pooling::max, 7}, floor_fraction}, {}};
}

/// @brief KNorm (@ref methods_knorm): the `budget` keys of lowest L2 norm.
/// @param budget slots per head @return the policy
inline auto knorm(index_t budget) { return policy<scorers::key_norm, selectors::top_k<budgets::fixed>>{{}, {budgets::fixed{budget}}, {}}; }

/// @brief CORM (@ref methods_corm_selection, faithful, budget-free): keeps what one of the last `window` queries found important.
/// @param window w @param recent r >= w @param sinks explicit sinks @return the policy
inline auto corm(index_t window, index_t recent, index_t sinks = 0) {
  return policy<scorers::recent_query, selectors::hit_window>{{}, {window, recent, sinks}, {}};
}

/// @brief Budgeted CORM (@ref methods_corm_budgeted): the `recent` newest plus the most important above the threshold, `budget` in all.
/// @param budget slots per head @param recent recent tokens kept (and window rows) @param alpha threshold multiplier
/// @return the policy
inline auto corm_budgeted(index_t budget, index_t recent, float alpha = 1.0f) {
  scorers::recent_query scorer{};
  scorer.score_mode = scorers::recent_query::mode::importance;
  scorer.alpha = alpha;
  return policy<scorers::recent_query, selectors::top_k<budgets::fixed>>{scorer, {budgets::fixed{budget}, {0, recent}, alpha}, {}};
}

/// @brief WindowKV (@ref methods_windowkv): whole windows of `window` tokens under a group pyramid averaging `average`
/// review tokens, indices shared by groups of `group` layers; the `suffix` newest tokens are kept.
/// @param average average review tokens per layer @param group layers per group @param task the engine's task type
/// @param window tokens per window @param suffix observation window @return the policy
inline auto windowkv(index_t average, index_t group, selectors::task_type task = selectors::task_type::localization, index_t window = 8,
                     index_t suffix = 32) {
  using selector = selectors::windows<budgets::group_pyramid>;
  return policy<scorers::last_query, selector>{{}, selector{budgets::group_pyramid{average, group}, window, suffix, group, task}, {}};
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
  detail::require(fraction > 0.0 && fraction <= 1.0, "kvmerger_protection", "fraction", "must be in (0, 1], got " + std::to_string(fraction));
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
  detail::require(fraction > 0.0 && fraction <= 1.0, "kvmerger", "fraction", "must be in (0, 1], got " + std::to_string(fraction));
  detail::require(recent_fraction >= 0.0 && recent_fraction <= 1.0, "kvmerger", "recent_fraction",
                  "must be in [0, 1], got " + std::to_string(recent_fraction));
  detail::require(top_fraction >= 0.0 && top_fraction <= 1.0, "kvmerger", "top_fraction", "must be in [0, 1], got " + std::to_string(top_fraction));
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
/// @param budget slots per head @param start first tokens kept @param merge_count M @return the policy
inline auto cam(index_t budget, index_t start, index_t merge_count = 32) {
  mergers::cam merger{};
  merger.merge_count = merge_count;
  return policy<scorers::accumulated_attention, selectors::top_k<budgets::fixed>, mergers::cam>{
      {}, {budgets::fixed{budget}, {start, budget - start}}, merger};
}

/// @brief Runtime parameters shared by the name dispatcher.
struct preset_options {
  index_t budget;          ///< slots per head (average for per-layer or per-head schedules)
  index_t prompt_length;   ///< prompt tokens (fractional presets derive their ratio from it)
  index_t window = 32;     ///< observation window / recent tokens
  index_t sinks = 4;       ///< attention sinks where the method has them
  index_t layer_group = 0; ///< WindowKV layer group (0: all layers in groups of 4)
};

/// @brief Names accepted by with_preset().
inline constexpr std::array<std::string_view, 12> preset_names{"streaming_llm", "h2o", "tova", "snapkv", "pyramidkv", "adakv",
                                                               "knorm", "corm", "corm_budgeted", "windowkv", "kvmerger", "cam"};

/// @brief Builds the preset called @p name and calls `f(policy)` with it (one instantiation per preset).
/// @param name one of preset_names @param options budgets and windows @param f a generic callable
/// @return what @p f returns
/// @throws kvcompact::error for an unknown name or a budget the method cannot meet
template <class F>
decltype(auto) with_preset(std::string_view name, const preset_options& options, F&& f) {
  const index_t b = options.budget;
  detail::require(b > 0, "with_preset", "options.budget", "must be positive");
  const index_t w = options.window < b ? options.window : b / 2;
  const index_t s = options.sinks < b ? options.sinks : 0;
  const double fraction = options.prompt_length > 0 ? static_cast<double>(b) / static_cast<double>(options.prompt_length) : 1.0;
  if (name == "streaming_llm") return f(streaming_llm(b, s));
  if (name == "h2o") return f(h2o(b, w));
  if (name == "tova") return f(tova(b));
  if (name == "snapkv") return f(snapkv(b, w));
  if (name == "pyramidkv") return f(pyramidkv(b, w));
  if (name == "adakv") return f(adakv(b, w));
  if (name == "knorm") return f(knorm(b));
  if (name == "corm") return f(corm(w, w, s));
  if (name == "corm_budgeted") return f(corm_budgeted(b, w));
  if (name == "windowkv") return f(windowkv(b > w ? b - w : 1, options.layer_group > 0 ? options.layer_group : 4, selectors::task_type::localization, 8, w));
  if (name == "kvmerger") return f(kvmerger(fraction < 1.0 ? fraction : 1.0));
  if (name == "cam") return f(cam(b, s));
  throw error("with_preset", "name", "unknown preset \"" + std::string(name) + "\"");
}

}  // namespace policies

KVCOMPACT_NAMESPACE_END
