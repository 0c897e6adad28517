// SPDX-License-Identifier: Apache-2.0
/// @file
/// @brief WindowKV: keep whole windows of consecutive tokens, indices shared inside a layer group.
#pragma once

#include <kvcompact/detail/order_keys.hpp>
#include <kvcompact/selectors/budgets.hpp>
#include <kvcompact/selectors/concepts.hpp>
#include <kvcompact/tensor_parallel.hpp>

KVCOMPACT_NAMESPACE_BEGIN

namespace selectors {

/// @brief WindowKV's task type (@ref methods_windowkv_task): the engine passes it, the library runs no classifier.
enum class task_type : std::uint8_t {
  localization,  ///< question answering: windows scored by the mean of their top `window/2` scores (code's "qa")
  aggregation,   ///< summarization, code, few-shot: windows scored by their mean score (code's "other")
};

/// @brief WindowKV selection (@ref methods_windowkv_scoring, @ref methods_windowkv_selection, @ref methods_windowkv_groups). The newest `suffix` tokens are always kept; the
/// others, in position order, form windows of `window` tokens from the oldest; the lowest-scoring
/// windows are dropped until the review tokens fit the group budget. Layer `l` is a group leader when
/// `l % group == 0`; it publishes its kept windows and the following layers of its group reuse them.
/// A window's score averages the row-reduced scores of ALL query heads of the layer
/// (`ctx.query_score`), so every KV head keeps the same windows whatever the scorer (WindowKV's own is
/// kvcompact::scorers::last_query; slot scorers such as KNorm give every query head its KV head's
/// score); on a tensor-parallel group (kvcompact::rank_group, kvcompact::cuda::device_rank_group) the
/// average spans every rank's query heads, summed in the unsharded order (rank_summing_selector).
///
/// A kvcompact::cooperative_selector of layer scope: one worker per window scores it (the same
/// arithmetic on both backends), the worst windows are found by partial selection, and every slot's
/// flag is set in parallel; leaders publish through the context's shared store before their
/// followers run. Prefill-only: decode appends.
/// @tparam Schedule a kvcompact::budget_schedule of review tokens (suffix excluded), e.g. budgets::group_pyramid
template <budget_schedule Schedule>
struct windows {
  using component_kind = cooperative_selector_tag;                  ///< opt-in to kvcompact::cooperative_selector
  static constexpr selection_scope scope = selection_scope::layer;  ///< a layer at a time, leaders before followers
  Schedule schedule;                       ///< review-token budget per layer
  index_t window = 8;                      ///< omega: tokens per window
  index_t suffix = 32;                     ///< alpha: newest tokens always kept (the observation window)
  index_t group = 8;                       ///< gamma: layers sharing one leader's windows
  task_type task = task_type::localization;  ///< selects the window scoring
  bool strict_budget = false;              ///< drop windows until the kept review tokens fit the budget exactly or below

  /// @brief Slots a head keeps at most: review budget plus suffix (up to window - 1 more in faithful
  /// mode), capped at @p length. A layer whose share of a pyramid exceeds what it holds keeps
  /// everything ("R <= b: no compression", @ref methods_windowkv_scoring), so a pyramid whose lower groups get
  /// more than the cache's capacity is valid as long as it is applied to a cache that holds them.
  /// @param layer layer @param num_layers layers @param length slots held @return the budget
  KVCOMPACT_HOST_DEVICE index_t budget(index_t layer, index_t num_layers, index_t length) const {
    const index_t wanted = schedule.budget(layer, num_layers, length) + suffix;
    return wanted < length ? wanted : length;
  }

  /// @brief Prefill selection of one layer; leaders decide, followers reuse.
  /// @param workers the kvcompact::execution_group @param ctx selection context
  template <class Group, class Ctx>
  KVCOMPACT_HOST_DEVICE void select(Group& workers, Ctx& ctx) const {
    std::int32_t* store = ctx.shared_store();  // [0]: review length R or -1 (keep all); [1]: windows; [2 + k]: kept flag
    if (ctx.layer() % group == 0) decide(workers, ctx, store);
    const index_t review = store[0];
    for (int h = 0; h < ctx.kv_heads(); ++h) {
      const std::int32_t* order = ctx.order(h);
      workers.for_each(ctx.length(h), [&](index_t i) { ctx.keep(h, order[i], review < 0 || i >= review || store[2 + i / window] != 0); });
    }
  }

  /// @brief WindowKV appends during decode: no eviction.
  template <class Group, class Ctx>
  KVCOMPACT_HOST_DEVICE void select_decode(Group&, Ctx&, int) const {}

  /// @brief Window scores of @p ctx's layer summed over its query heads before the windows are ranked
  /// (kvcompact::rank_summing_selector): a group leader's windows when it drops some, none for a
  /// follower or a layer kept whole. @param ctx selection context @return the count
  template <class Ctx>
  KVCOMPACT_HOST_DEVICE index_t rank_sum_count(const Ctx& ctx) const {
    return drops_windows(ctx) ? (review_length(ctx) + window - 1) / window : 0;
  }

  /// @brief Window @p k's score sum carried on from @p running over @p ctx's query heads, in
  /// query-head order (each head adds its window score: mean, or mean of the top window/2); the slot
  /// orders of @p ctx's heads are ready. @param ctx selection context @param k window
  /// @param running the sum over the query heads before this context's @return the sum after them
  template <class Ctx>
  KVCOMPACT_HOST_DEVICE float continue_rank_sum(const Ctx& ctx, index_t k, float running) const {
    return add_head_scores(ctx, k * window, window_end(k, review_length(ctx)), running);
  }

 private:
  // The rules rank_sum_count(), continue_rank_sum() and decide() share, one definition each.
  // The layer's review tokens: KV head 0's slots but the newest `suffix`.
  template <class Ctx>
  KVCOMPACT_HOST_DEVICE index_t review_length(const Ctx& ctx) const {
    return ctx.length(0) - suffix;
  }
  // The layer's review-token budget (suffix excluded).
  template <class Ctx>
  KVCOMPACT_HOST_DEVICE index_t review_budget(const Ctx& ctx) const {
    return schedule.budget(ctx.layer(), ctx.num_layers(), ctx.length(0));
  }
  // Whether the layer drops windows: a group leader whose review tokens exceed its budget (every other
  // layer keeps all its tokens or reuses its leader's windows).
  template <class Ctx>
  KVCOMPACT_HOST_DEVICE bool drops_windows(const Ctx& ctx) const {
    return ctx.layer() % group == 0 && review_length(ctx) > review_budget(ctx);
  }
  // The order rank one past window @p k of @p review tokens (the last window may be shorter).
  KVCOMPACT_HOST_DEVICE index_t window_end(index_t k, index_t review) const { return (k + 1) * window < review ? (k + 1) * window : review; }

  // The window of order ranks [begin, end): @p total plus each of the context's query heads' score of
  // it, in query-head order, computed by one worker. Both modes average over ALL query heads of the
  // layer (docs/methods.md 4.5; decide() divides) using ctx.query_score, so they agree for any scorer;
  // ctx.score(0, ...) would be only KV head 0's group for a scorer that is not shared across KV heads
  // (KNorm, SnapKV-style, CORM).
  template <class Ctx>
  KVCOMPACT_HOST_DEVICE float add_head_scores(const Ctx& ctx, index_t begin, index_t end, float total) const {
    const int group_size = ctx.query_heads() / ctx.kv_heads();
    const index_t p = window / 2 > 0 ? window / 2 : 1;  // top count p = omega / 2, at least 1
    const index_t top = p < end - begin ? p : end - begin;
    for (int g = 0; g < ctx.query_heads(); ++g) {
      const std::int32_t* own = ctx.order(g / group_size);  // query head g's scores are indexed by its KV head's slots
      auto value = [&](index_t i) { return ctx.query_score(g, own[i]); };
      float sum = 0.0f;
      if (task == task_type::aggregation) {
        for (index_t i = begin; i < end; ++i) sum += value(i);
        total += sum / static_cast<float>(end - begin);
        continue;
      }
      // The top values in descending order (value, then rank), one pass per value taken.
      index_t taken = -1;
      for (index_t t = 0; t < top; ++t) {
        index_t best = -1;
        for (index_t i = begin; i < end; ++i) {
          const float v = value(i);
          const bool after_taken = taken < 0 || v < value(taken) || (v == value(taken) && i > taken);
          if (after_taken && (best < 0 || v > value(best))) best = i;
        }
        sum += value(best);
        taken = best;
      }
      total += sum / static_cast<float>(top);
    }
    return total;
  }

  template <class Group, class Ctx>
  KVCOMPACT_HOST_DEVICE void decide(Group& workers, Ctx& ctx, std::int32_t* store) const {
    if (!drops_windows(ctx)) {  // R <= b: no compression (decide() runs on group leaders only)
      workers.once([&] { store[0] = -1; });
      return;
    }
    const index_t review = review_length(ctx), b = review_budget(ctx), count = rank_sum_count(ctx);
    auto size_of = [&](index_t k) { return window_end(k, review) - k * window; };
    float* scores = ctx.float_scratch(0);
    workers.once([&] {
      store[0] = static_cast<std::int32_t>(review);
      store[1] = static_cast<std::int32_t>(count);
    });
    // On several ranks the average spans the query heads of every rank, summed in the unsharded
    // order: the device backend hands the finished sums in, the host backend's ranks sum here in turn.
    const rank_summed_values summed = detail::rank_summed_of(ctx);
    const rank_group* ranks = detail::rank_group_of(ctx);
    workers.for_each(count, [&](index_t k) {
      if (summed.values != nullptr)
        scores[k] = detail::exchanged_as_float(summed.values[k]) / static_cast<float>(ctx.query_heads() * summed.ranks);
      else
        scores[k] = ranks == nullptr ? continue_rank_sum(ctx, k, 0.0f) / static_cast<float>(ctx.query_heads()) : 0.0f;
      store[2 + k] = 1;
    });
    if (ranks != nullptr)
      workers.once([&] {
        detail::continue_across_ranks(ranks, scores, count, [&] {
          for (index_t k = 0; k < count; ++k) scores[k] = continue_rank_sum(ctx, k, scores[k]);
        });
        for (index_t k = 0; k < count; ++k) scores[k] /= static_cast<float>(ctx.query_heads() * ranks->ranks);
      });
    const index_t drop = (review - b + window - 1) / window;
    if (drop * window >= review) {
      workers.for_each(count, [&](index_t k) { store[2 + k] = 0; });
      return;
    }
    // worst first: lower score, and among equal scores the later window (the lower index is kept)
    auto worst_first = [&](index_t k) { return (static_cast<std::uint64_t>(~detail::orderable_bits(scores[k])) << 32) | static_cast<std::uint64_t>(k); };
    index_t dropped = drop;
    std::uint64_t cut = workers.kth_largest(count, dropped, worst_first);
    while (strict_budget && dropped < count) {
      const index_t kept_review = review - workers.reduce(count, [&](index_t k) { return worst_first(k) >= cut ? size_of(k) : index_t{0}; }, index_t{0},
                                                          [](index_t a, index_t c) { return a + c; });
      if (kept_review <= b) break;
      cut = workers.kth_largest(count, ++dropped, worst_first);
    }
    workers.for_each(count, [&](index_t k) {
      if (worst_first(k) >= cut) store[2 + k] = 0;
    });
  }
};

}  // namespace selectors

KVCOMPACT_NAMESPACE_END
