// SPDX-License-Identifier: Apache-2.0
/// @file
/// @brief KVMerger's merging-set identification: runs of adjacent similar keys collapse into a pivot.
#pragma once

#include <kvcompact/detail/heap_sort.hpp>
#include <kvcompact/selectors/budgets.hpp>
#include <kvcompact/selectors/concepts.hpp>

#include <cmath>

KVCOMPACT_NAMESPACE_BEGIN

namespace selectors {

/// @brief KVMerger (@ref methods_kvmerger_sets, @ref methods_kvmerger_budget). Protected: the newest `recent_fraction` of the tokens and
/// the `top_fraction` best-scoring of the others (aggregated attention, e.g.
/// kvcompact::scorers::accumulated_attention over all prompt queries); both counts are rounded down.
/// The rest is scanned from the newest token to the oldest; a token joins its newer neighbour's set
/// when the cosine similarity of their keys is at least `eps`. Each set keeps its pivot, the member
/// with the highest score (lower position on ties), and every other member gets the pivot as merge
/// target (pair with kvcompact::mergers::gaussian_pivot).
///
/// Faithful mode (`budgeted = false`): fixed `eps`; layers `[0, skip_first)` and the last `skip_last`
/// are untouched (the paper leaves the first two and the last layer alone); the schedule is not used
/// and the kept size is data-dependent.
///
/// Budgeted mode [ext]: a head never keeps more than the schedule's budget `B`, in every layer
/// (`skip_first` / `skip_last` do not apply). The protected counts are capped to `B`, the recent ones
/// first, then the top-scoring ones. Then the largest `eps` in `[eps_min, 1]` whose set count plus
/// protected count fits `B` is found by bisection; if even `eps_min` does not fit, the sets with the
/// lowest pivot scores are dropped whole. A head holding at most `B` slots keeps everything.
/// Prefill-only: decode appends.
/// @tparam Schedule a kvcompact::budget_schedule used by the budgeted mode
template <budget_schedule Schedule>
struct merging_sets {
  using component_kind = selector_tag;  ///< opt-in to kvcompact::keep_selector
  Schedule schedule;                    ///< budget of the budgeted mode
  float eps = 0.75f;                    ///< cosine threshold (faithful mode)
  double recent_fraction = 0.17;        ///< rho_r: newest tokens protected
  double top_fraction = 0.12;           ///< rho_a: best-scoring tokens protected
  index_t skip_first = 2;               ///< bottom layers left untouched (faithful mode)
  index_t skip_last = 1;                ///< top layers left untouched (faithful mode)
  bool budgeted = false;                ///< meet the schedule's budget by choosing eps per head
  float eps_min = -1.0f;                ///< lowest eps the budgeted mode may use

  /// @brief Budget of a layer (budgeted mode). @param layer layer @param num_layers layers @param length slots held @return the budget
  KVCOMPACT_HOST_DEVICE index_t budget(index_t layer, index_t num_layers, index_t length) const {
    return schedule.budget(layer, num_layers, length);
  }

  /// @brief Prefill: sets, pivots and merge targets for every head. @param ctx selection context
  template <class Ctx>
  KVCOMPACT_HOST_DEVICE void select(Ctx& ctx) const {
    const bool skipped = !budgeted && (ctx.layer() < skip_first || ctx.layer() >= ctx.num_layers() - skip_last);
    for (int h = 0; h < ctx.kv_heads(); ++h) {
      const index_t n = ctx.length(h);
      const index_t wanted = budgeted ? budget(ctx.layer(), ctx.num_layers(), n) : n;
      const index_t limit = wanted > 0 ? wanted : 0;
      if (skipped || n < 2 || (budgeted && limit >= n)) {
        for (index_t j = 0; j < n; ++j) ctx.keep(h, j, true);
        continue;
      }
      const index_t protected_count = mark_protected(ctx, h, limit);
      similarities(ctx, h);
      const index_t room = limit - protected_count;
      build_sets(ctx, h, budgeted ? choose_eps(ctx, h, room) : eps, room);
    }
  }

  /// @brief KVMerger appends during decode: no eviction.
  template <class Ctx>
  KVCOMPACT_HOST_DEVICE void select_decode(Ctx&, int) const {}

 private:
  // index_scratch(h, 1)[slot] = 1 for protected slots; they are kept and form singleton sets. At most
  // `limit` are protected: the recent ones first, then the top-scoring ones.
  template <class Ctx>
  KVCOMPACT_HOST_DEVICE index_t mark_protected(Ctx& ctx, int h, index_t limit) const {
    const index_t n = ctx.length(h);
    const std::int32_t* order = ctx.order(h);
    std::int32_t* flag = ctx.index_scratch(h, 1);
    std::int32_t* rest = ctx.index_scratch(h, 0);
    index_t recent = static_cast<index_t>(recent_fraction * static_cast<double>(n));
    index_t top = static_cast<index_t>(top_fraction * static_cast<double>(n));
    if (recent > limit) recent = limit;
    if (top > limit - recent) top = limit - recent;
    index_t count = 0;
    for (index_t i = 0; i < n; ++i) {
      flag[order[i]] = i >= n - recent;
      if (!flag[order[i]]) rest[count++] = order[i];
    }
    detail::heap_sort(rest, count, [&](std::int32_t a, std::int32_t b) {
      return detail::ranks_before(ctx.score(h, a), ctx.position(h, a), ctx.score(h, b), ctx.position(h, b));
    });
    for (index_t i = 0; i < top && i < count; ++i) flag[rest[i]] = 1;
    index_t total = 0;
    for (index_t j = 0; j < n; ++j) {
      if (flag[j]) ctx.keep(h, j, true);
      total += flag[j];
    }
    return total;
  }

  // float_scratch(h)[i] = cos(K[order[i]], K[order[i + 1]])
  template <class Ctx>
  KVCOMPACT_HOST_DEVICE void similarities(Ctx& ctx, int h) const {
    const std::int32_t* order = ctx.order(h);
    float* sim = ctx.float_scratch(h);
    for (index_t i = 0; i + 1 < ctx.length(h); ++i) {
      float dot = 0.0f, a2 = 0.0f, b2 = 0.0f;
      for (index_t d = 0; d < ctx.head_dim(); ++d) {
        const float a = ctx.key(h, order[i], d), b = ctx.key(h, order[i + 1], d);
        dot += a * b;
        a2 += a * a;
        b2 += b * b;
      }
      const float norms = std::sqrt(a2) * std::sqrt(b2);
      sim[i] = norms > 0.0f ? dot / norms : 0.0f;
    }
  }

  // Whether the token at order index i joins the set of the token at i + 1.
  template <class Ctx>
  KVCOMPACT_HOST_DEVICE bool chains(Ctx& ctx, int h, index_t i, float threshold) const {
    const std::int32_t* order = ctx.order(h);
    const std::int32_t* flag = ctx.index_scratch(h, 1);
    return !flag[order[i]] && !flag[order[i + 1]] && ctx.float_scratch(h)[i] >= threshold;
  }

  // Number of sets among unprotected tokens at a threshold.
  template <class Ctx>
  KVCOMPACT_HOST_DEVICE index_t count_sets(Ctx& ctx, int h, float threshold) const {
    const std::int32_t* order = ctx.order(h);
    const std::int32_t* flag = ctx.index_scratch(h, 1);
    index_t sets = 0;
    for (index_t i = ctx.length(h) - 1; i >= 0; --i) {
      if (flag[order[i]]) continue;
      if (i == ctx.length(h) - 1 || !chains(ctx, h, i, threshold)) ++sets;
    }
    return sets;
  }

  template <class Ctx>
  KVCOMPACT_HOST_DEVICE float choose_eps(Ctx& ctx, int h, index_t room) const {
    if (count_sets(ctx, h, 1.0f + 1e-6f) <= room) return 1.0f + 1e-6f;  // nothing needs merging
    if (count_sets(ctx, h, eps_min) > room) return eps_min;              // fallback drops whole sets
    float lo = eps_min, hi = 1.0f + 1e-6f;                               // count(lo) fits, count(hi) does not
    for (int it = 0; it < 40; ++it) {
      const float mid = 0.5f * (lo + hi);
      if (count_sets(ctx, h, mid) <= room) lo = mid;
      else hi = mid;
    }
    return lo;
  }

  // Builds the sets at `threshold`, keeps pivots, assigns targets; drops the worst sets beyond `room`.
  template <class Ctx>
  KVCOMPACT_HOST_DEVICE void build_sets(Ctx& ctx, int h, float threshold, index_t room) const {
    const std::int32_t* order = ctx.order(h);
    const std::int32_t* flag = ctx.index_scratch(h, 1);
    std::int32_t* pivots = ctx.index_scratch(h, 0);
    index_t sets = 0;
    index_t end = ctx.length(h);  // sets are order ranges [begin, end) of unprotected tokens
    for (index_t i = ctx.length(h) - 1; i >= -1; --i) {
      const bool closes = i < 0 || flag[order[i]] || !chains(ctx, h, i, threshold);
      if (!closes) continue;
      const index_t begin = i + 1;
      if (begin < end && !flag[order[begin]]) {
        std::int32_t pivot = order[begin];
        for (index_t m = begin + 1; m < end; ++m)
          if (detail::ranks_before(ctx.score(h, order[m]), ctx.position(h, order[m]), ctx.score(h, pivot), ctx.position(h, pivot)))
            pivot = order[m];
        for (index_t m = begin; m < end; ++m) ctx.set_target(h, order[m], order[m] == pivot ? -1 : pivot);
        ctx.keep(h, pivot, true);
        pivots[sets++] = pivot;
      }
      end = (i >= 0 && flag[order[i]]) ? i : begin;
    }
    if (sets <= room) return;
    detail::heap_sort(pivots, sets, [&](std::int32_t a, std::int32_t b) {
      return !detail::ranks_before(ctx.score(h, a), ctx.position(h, a), ctx.score(h, b), ctx.position(h, b));
    });
    for (index_t s = 0; s < sets - (room > 0 ? room : 0); ++s) {  // worst sets first: dropped whole
      const std::int32_t pivot = pivots[s];
      ctx.keep(h, pivot, false);
      for (index_t j = 0; j < ctx.length(h); ++j)
        if (ctx.target(h, j) == pivot) ctx.set_target(h, j, -1);
    }
  }
};

}  // namespace selectors

KVCOMPACT_NAMESPACE_END
