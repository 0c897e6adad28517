// SPDX-License-Identifier: Apache-2.0
/// @file
/// @brief Ada-KV: head-wise adaptive budgets inside a layer.
#pragma once

#include <kvcompact/selectors/budgets.hpp>
#include <kvcompact/selectors/candidates.hpp>
#include <kvcompact/selectors/layer_ranking.hpp>

KVCOMPACT_NAMESPACE_BEGIN

namespace selectors {

/// @brief Ada-KV allocation (@ref methods_adakv): the layer's `H * B` best (pooled) candidate scores
/// over all KV heads decide how many each head keeps,
/// `alloc[h] = round(cnt[h] (1 - floor_fraction) + floor(B_h floor_fraction))`, with `B_h` the head's budget
/// less its protected tokens; each head then keeps its own top-alloc[h] plus its protected tokens.
/// Per-head lengths differ. Prefill-only: decode appends. With a kvcompact::rank_group the layer-wide
/// ranking spans the KV heads of every rank (the `strict` repair does not: one rank only).
/// @tparam Schedule a kvcompact::budget_schedule giving the per-head average (protected included)
template <budget_schedule Schedule>
struct adaptive_heads {
  using component_kind = selector_tag;  ///< opt-in to kvcompact::keep_selector
  Schedule schedule;                    ///< average slots per head, protected included
  candidate_rule rule{};                ///< protected window and pooling
  double floor_fraction = 0.2;          ///< alpha_f: share of B every head gets regardless of scores
  bool strict = false;                  ///< repair rounding so the layer keeps exactly H * B candidates

  /// @brief Average budget of a layer. @param layer layer @param num_layers layers @param length slots held @return the schedule's budget
  KVCOMPACT_HOST_DEVICE index_t budget(index_t layer, index_t num_layers, index_t length) const {
    return schedule.budget(layer, num_layers, length);
  }

  /// @brief Prefill selection over all heads of the layer. @param ctx selection context
  template <class Ctx>
  KVCOMPACT_HOST_DEVICE void select(Ctx& ctx) const {
    const int heads = ctx.kv_heads();
    index_t total = 0;  // H * B
    for (int h = 0; h < heads; ++h) {
      const index_t n = ctx.length(h);
      const index_t b = budget(ctx.layer(), ctx.num_layers(), n);
      if (n <= b) {
        for (index_t j = 0; j < n; ++j) ctx.keep(h, j, true);
        ctx.index_scratch(h, 1)[0] = -1;  // head not compressed
        continue;
      }
      const index_t protected_count = rule.keep_protected(ctx, h);
      const index_t count = rule.gather(ctx, h);
      rule.rank(ctx, h, count);
      const index_t base = b > protected_count ? b - protected_count : 0;
      total += base;
      ctx.index_scratch(h, 1)[0] = 0;      // cnt[h]
      ctx.index_scratch(h, 1)[1] = static_cast<std::int32_t>(count);
    }
    // cnt[h]: members of the layer-wide top H x B, over the KV heads of every tensor-parallel rank.
    double layer_total = static_cast<double>(total);
    detail::sum_across_ranks(ctx, &layer_total, 1);
    detail::layer_top_counts(
        ctx, static_cast<index_t>(layer_total),
        [&](int h) { return ctx.index_scratch(h, 1)[0] < 0 ? index_t{-1} : index_t{ctx.index_scratch(h, 1)[1]}; },
        [&](int h, index_t taken) { ctx.index_scratch(h, 1)[0] = static_cast<std::int32_t>(taken); });
    index_t allocated = 0;
    for (int h = 0; h < heads; ++h) {
      std::int32_t* state = ctx.index_scratch(h, 1);
      if (state[0] < 0) continue;
      const index_t n = ctx.length(h), protected_count = n - state[1];  // state[1]: the head's candidates
      const index_t b = budget(ctx.layer(), ctx.num_layers(), n);
      const auto floor_share = static_cast<index_t>(static_cast<double>(b > protected_count ? b - protected_count : 0) * floor_fraction);
      index_t alloc = static_cast<index_t>(static_cast<double>(state[0]) * (1.0 - floor_fraction) + static_cast<double>(floor_share) + 0.5);
      if (alloc > state[1]) alloc = state[1];
      state[0] = static_cast<std::int32_t>(alloc);
      allocated += alloc;
    }
    if (strict) repair(ctx, allocated, total);
    for (int h = 0; h < heads; ++h) {
      const std::int32_t* state = ctx.index_scratch(h, 1);
      for (index_t i = 0; i < state[0]; ++i) ctx.keep(h, ctx.index_scratch(h, 0)[i], true);
    }
  }

  /// @brief Ada-KV appends during decode: no eviction.
  template <class Ctx>
  KVCOMPACT_HOST_DEVICE void select_decode(Ctx&, int) const {}

 private:
  /// Moves single slots between heads until the layer keeps exactly @p total candidates: takes from
  /// the head whose next-dropped candidate is worst, gives to the head whose next candidate is best.
  template <class Ctx>
  KVCOMPACT_HOST_DEVICE void repair(Ctx& ctx, index_t allocated, index_t total) const {
    const int heads = ctx.kv_heads();
    while (allocated != total) {
      int chosen = -1;
      float chosen_score = 0.0f;
      for (int h = 0; h < heads; ++h) {
        const std::int32_t* state = ctx.index_scratch(h, 1);
        if (state[0] < 0) continue;
        const bool can = allocated > total ? state[0] > 0 : state[0] < state[1];
        if (!can) continue;
        const index_t rank = allocated > total ? state[0] - 1 : state[0];
        const float s = ctx.float_scratch(h)[ctx.index_scratch(h, 0)[rank]];
        if (chosen < 0 || (allocated > total ? s < chosen_score : s > chosen_score)) {
          chosen = h;
          chosen_score = s;
        }
      }
      if (chosen < 0) return;
      ctx.index_scratch(chosen, 1)[0] += allocated > total ? -1 : 1;
      allocated += allocated > total ? -1 : 1;
    }
  }
};

}  // namespace selectors

KVCOMPACT_NAMESPACE_END
