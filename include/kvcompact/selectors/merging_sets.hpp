// SPDX-License-Identifier: Apache-2.0
/// @file
/// @brief KVMerger's merging-set identification: runs of adjacent similar keys collapse into a pivot.
#pragma once

#include <kvcompact/detail/order_keys.hpp>
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
///
/// A kvcompact::cooperative_selector of head scope: protected marking by partial selection, the
/// neighbour similarities one worker per pair, set counts for the eps bisection as parallel counts,
/// set boundaries and pivots by segmented scans, the worst sets dropped by partial selection.
/// @tparam Schedule a kvcompact::budget_schedule used by the budgeted mode
template <budget_schedule Schedule>
struct merging_sets {
  using component_kind = cooperative_selector_tag;                 ///< opt-in to kvcompact::cooperative_selector
  static constexpr selection_scope scope = selection_scope::head;  ///< every head on its own
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

  /// @brief Prefill: sets, pivots and merge targets of one head.
  /// @param workers the kvcompact::execution_group @param ctx selection context @param h KV head
  template <class Group, class Ctx>
  KVCOMPACT_HOST_DEVICE void select(Group& workers, Ctx& ctx, int h) const {
    const bool skipped = !budgeted && (ctx.layer() < skip_first || ctx.layer() >= ctx.num_layers() - skip_last);
    const index_t n = ctx.length(h);
    const index_t wanted = budgeted ? budget(ctx.layer(), ctx.num_layers(), n) : n;
    const index_t limit = wanted > 0 ? wanted : 0;
    if (skipped || n < 2 || (budgeted && limit >= n)) {
      workers.for_each(n, [&](index_t j) { ctx.keep(h, j, true); });
      return;
    }
    const index_t protected_count = mark_protected(workers, ctx, h, limit);
    workers.for_each(n - 1, [&](index_t i) { ctx.float_scratch(h)[i] = similarity(ctx, h, i); });
    const index_t room = limit - protected_count;
    build_sets(workers, ctx, h, budgeted ? choose_eps(workers, ctx, h, room) : eps, room);
  }

  /// @brief KVMerger appends during decode: no eviction.
  template <class Group, class Ctx>
  KVCOMPACT_HOST_DEVICE void select_decode(Group&, Ctx&, int) const {}

 private:
  // Running arg-max of a segmented scan over order ranks: `start` opens a new set, `best` is the
  // order rank of the best member so far (-1: none).
  struct set_best {
    std::int32_t start;
    std::int32_t best;
  };

  // Sum of two counts.
  struct add {
    KVCOMPACT_HOST_DEVICE index_t operator()(index_t a, index_t b) const { return a + b; }
  };

  // index_scratch(h, 1)[slot] = 1 for protected slots; they are kept and form singleton sets. At most
  // `limit` are protected: the recent ones first, then the top-scoring ones.
  template <class Group, class Ctx>
  KVCOMPACT_HOST_DEVICE index_t mark_protected(Group& workers, Ctx& ctx, int h, index_t limit) const {
    const index_t n = ctx.length(h);
    const std::int32_t* order = ctx.order(h);
    std::int32_t* flag = ctx.index_scratch(h, 1);
    index_t recent = static_cast<index_t>(recent_fraction * static_cast<double>(n));
    index_t top = static_cast<index_t>(top_fraction * static_cast<double>(n));
    if (recent > limit) recent = limit;
    if (top > limit - recent) top = limit - recent;
    auto older_key = [&](index_t i) { return i < n - recent ? detail::rank_key(ctx.score(h, order[i]), ctx.position(h, order[i])) : 0; };
    const std::uint64_t cut = workers.kth_largest(n, top, older_key);
    workers.for_each(n, [&](index_t i) { flag[order[i]] = i >= n - recent || older_key(i) >= cut; });
    return workers.reduce(
        n,
        [&](index_t j) {
          if (flag[j]) ctx.keep(h, j, true);
          return static_cast<index_t>(flag[j]);
        },
        index_t{0}, add{});
  }

  // cos(K[order[i]], K[order[i + 1]])
  template <class Ctx>
  KVCOMPACT_HOST_DEVICE float similarity(const Ctx& ctx, int h, index_t i) const {
    const std::int32_t* order = ctx.order(h);
    float dot = 0.0f, a2 = 0.0f, b2 = 0.0f;
    for (index_t d = 0; d < ctx.head_dim(); ++d) {
      const float a = ctx.key(h, order[i], d), b = ctx.key(h, order[i + 1], d);
      dot += a * b;
      a2 += a * a;
      b2 += b * b;
    }
    const float norms = std::sqrt(a2) * std::sqrt(b2);
    return norms > 0.0f ? dot / norms : 0.0f;
  }

  // Whether the token at order index i joins the set of the token at i + 1.
  template <class Ctx>
  KVCOMPACT_HOST_DEVICE bool chains(const Ctx& ctx, int h, index_t i, float threshold) const {
    const std::int32_t* order = ctx.order(h);
    const std::int32_t* flag = ctx.index_scratch(h, 1);
    return !flag[order[i]] && !flag[order[i + 1]] && ctx.float_scratch(h)[i] >= threshold;
  }

  // Whether the unprotected token at order index i is the last (newest) of its set.
  template <class Ctx>
  KVCOMPACT_HOST_DEVICE bool ends_set(const Ctx& ctx, int h, index_t i, float threshold) const {
    return !ctx.index_scratch(h, 1)[ctx.order(h)[i]] && (i == ctx.length(h) - 1 || !chains(ctx, h, i, threshold));
  }

  // Number of sets among unprotected tokens at a threshold.
  template <class Group, class Ctx>
  KVCOMPACT_HOST_DEVICE index_t count_sets(Group& workers, Ctx& ctx, int h, float threshold) const {
    return workers.reduce(ctx.length(h), [&](index_t i) { return ends_set(ctx, h, i, threshold) ? index_t{1} : index_t{0}; }, index_t{0}, add{});
  }

  template <class Group, class Ctx>
  KVCOMPACT_HOST_DEVICE float choose_eps(Group& workers, Ctx& ctx, int h, index_t room) const {
    if (count_sets(workers, ctx, h, 1.0f + 1e-6f) <= room) return 1.0f + 1e-6f;  // nothing needs merging
    if (count_sets(workers, ctx, h, eps_min) > room) return eps_min;              // fallback drops whole sets
    float lo = eps_min, hi = 1.0f + 1e-6f;                                        // count(lo) fits, count(hi) does not
    for (int it = 0; it < 40; ++it) {
      const float mid = 0.5f * (lo + hi);
      if (count_sets(workers, ctx, h, mid) <= room) lo = mid;
      else hi = mid;
    }
    return lo;
  }

  // Builds the sets at `threshold` (maximal chained runs of unprotected tokens in position order),
  // keeps each set's pivot (best by score, then lower position) and gives the other members the pivot
  // as target; drops the worst sets beyond `room` whole.
  template <class Group, class Ctx>
  KVCOMPACT_HOST_DEVICE void build_sets(Group& workers, Ctx& ctx, int h, float threshold, index_t room) const {
    const index_t n = ctx.length(h);
    const std::int32_t* order = ctx.order(h);
    const std::int32_t* flag = ctx.index_scratch(h, 1);
    std::int32_t* pivot_of_end = ctx.index_scratch(h, 0);  // at a set's last order rank: its pivot's order rank
    auto better = [&](std::int32_t a, std::int32_t b) {   // a later in order than b; ties keep b
      return detail::ranks_before(ctx.score(h, order[a]), ctx.position(h, order[a]), ctx.score(h, order[b]), ctx.position(h, order[b]));
    };
    auto combine = [&](set_best a, set_best b) -> set_best {
      if (b.start) return b;
      return {a.start, b.best >= 0 && (a.best < 0 || better(b.best, a.best)) ? b.best : a.best};
    };
    workers.exclusive_scan(
        n,
        [&](index_t i) -> set_best {
          if (flag[order[i]]) return {1, -1};
          return {i == 0 || !chains(ctx, h, i - 1, threshold) ? 1 : 0, static_cast<std::int32_t>(i)};
        },
        set_best{0, -1}, combine, [&](index_t i, set_best before, set_best own) {
          if (ends_set(ctx, h, i, threshold)) pivot_of_end[i] = combine(before, own).best;
        });
    // Each member takes the pivot of the first set end at or after it (scanned from the newest).
    workers.exclusive_scan(
        n, [&](index_t r) { return ends_set(ctx, h, n - 1 - r, threshold) ? n - 1 - r : n; }, n, [](index_t a, index_t b) { return a < b ? a : b; },
        [&](index_t r, index_t after, index_t own) {
          const index_t i = n - 1 - r;
          if (flag[order[i]]) return;
          const index_t end = own < after ? own : after;
          const std::int32_t pivot = order[pivot_of_end[end]];
          ctx.set_target(h, order[i], order[i] == pivot ? -1 : pivot);
          if (order[i] == pivot) ctx.keep(h, pivot, true);
        });
    const index_t sets = count_sets(workers, ctx, h, threshold);
    if (sets <= room) return;
    auto set_key = [&](index_t i) {
      if (!ends_set(ctx, h, i, threshold)) return std::uint64_t{0};
      const std::int32_t pivot = order[pivot_of_end[i]];
      return detail::rank_key(ctx.score(h, pivot), ctx.position(h, pivot));
    };
    const std::uint64_t cut = workers.kth_largest(n, room > 0 ? room : 0, set_key);
    workers.for_each(n, [&](index_t i) {  // members of the worst sets: dropped whole
      const std::int32_t slot = order[i];
      if (flag[slot]) return;
      const index_t pivot = ctx.target(h, slot) >= 0 ? ctx.target(h, slot) : slot;
      if (detail::rank_key(ctx.score(h, pivot), ctx.position(h, pivot)) >= cut) return;
      if (slot == pivot) ctx.keep(h, slot, false);
      ctx.set_target(h, slot, -1);
    });
  }
};

}  // namespace selectors

KVCOMPACT_NAMESPACE_END
