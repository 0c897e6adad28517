// SPDX-License-Identifier: Apache-2.0
/// @file
/// @brief Nearest-key merger: every evicted slot is written into the kept slot whose key is most similar,
/// whatever its position (the write rule of the bounded slot memory, @ref methods_bct_write).
#pragma once

#include <kvcompact/detail/order_keys.hpp>
#include <kvcompact/mergers/merge_runs.hpp>

KVCOMPACT_NAMESPACE_BEGIN

namespace mergers {

/// @brief Content-addressed merge: each evicted slot joins the kept slot of highest key cosine
/// similarity (the first in slot order among equals), any position, unless the selector gave it a
/// target; each kept slot's key and value
/// become the mean over itself and the evicted slots that joined it in this call (so content written
/// into a slot again later weighs as much as everything already in it). Evicted slots less similar than
/// `min_similarity` to every kept slot are dropped.
///
/// Group code in four steps. Only when some evicted slot has no target yet: every slot's key norm, once,
/// into `ctx.float_scratch(h)`, then the nearest kept slot of each such slot (one worker per slot when
/// there are more of them than workers, as at prefill; else the group reduces over the kept slots of
/// each, as for decode's single victim). Then the joining slots sorted by target (stable, so each set
/// stays in slot order); one worker per (set, dimension) folds the set into its target's running mean,
/// in slot order. Each mean's arithmetic stays in one worker, so the backends agree bit for bit.
struct nearest_key {
  using component_kind = merger_tag;    ///< opt-in to kvcompact::entry_merger
  static constexpr bool merges = true;  ///< rewrites kept slots
  float min_similarity = -1.0f;         ///< cosine below which an evicted slot is dropped instead of merged

  /// @brief Merges the evicted slots of head @p h.
  /// @param group the kvcompact::execution_group @param ctx selection context @param h KV head
  template <class Group, class Ctx>
  KVCOMPACT_HOST_DEVICE void merge(Group& group, Ctx& ctx, int h) const {
    const index_t n = ctx.length(h);
    auto unassigned = [&](index_t j) { return !ctx.kept(h, j) && ctx.target(h, j) < 0; };
    float* norms = ctx.float_scratch(h);
    // Candidate k for evicted slot j: higher similarity first, then lower slot; 0 when k is not kept or too far.
    auto candidate = [&](index_t j, index_t k) -> std::uint64_t {
      if (!ctx.kept(h, k)) return 0;
      const float similarity = detail::key_cosine(ctx, h, j, k, norms[j], norms[k]);
      return similarity >= min_similarity ? ::kvcompact::detail::order_key(similarity, static_cast<std::uint32_t>(k)) : 0;
    };
    auto assign = [&](index_t j, std::uint64_t best) {
      if (best != 0) ctx.set_target(h, j, static_cast<index_t>(0xffffffffu - static_cast<std::uint32_t>(best)));
    };
    // The group's reduce returns the same count to every worker, so all of them take the same branches
    // below and reach the same collectives. A head with nothing evicted, or whose evicted slots the
    // selector all targeted, skips the norms.
    const index_t pending = group.reduce(n, [&](index_t j) { return unassigned(j) ? index_t{1} : index_t{0}; }, index_t{0}, plus{});
    if (pending > 0) {
      // Every slot's key norm once, rather than two per (evicted, kept) pair.
      group.for_each(n, [&](index_t j) { norms[j] = detail::key_norm(ctx, h, j); });
      if (pending > group.size()) {
        group.for_each(n, [&](index_t j) {
          if (!unassigned(j)) return;
          std::uint64_t best = 0;
          for (index_t k = 0; k < n; ++k) {
            const std::uint64_t key = candidate(j, k);
            best = key > best ? key : best;
          }
          assign(j, best);
        });
      } else {
        for (index_t j = 0; j < n; ++j) {
          if (!unassigned(j)) continue;
          const std::uint64_t best = group.reduce(n, [&](index_t k) { return candidate(j, k); }, std::uint64_t{0}, larger{});
          group.once([&] { assign(j, best); });
        }
      }
    }
    // The slots joining a kept target, in slot order, then sorted by target (stable).
    std::int32_t* joining = ctx.index_scratch(h, 0);
    auto joins = [&](index_t j) { return !ctx.kept(h, j) && ctx.target(h, j) >= 0 && ctx.kept(h, ctx.target(h, j)); };
    const index_t count = group.exclusive_scan(
        n, [&](index_t j) { return joins(j) ? index_t{1} : index_t{0}; }, index_t{0}, plus{},
        [&](index_t j, index_t before, index_t joined) {
          if (joined) joining[before] = static_cast<std::int32_t>(j);
        });
    group.sort(joining, count, [&](std::int32_t j) { return static_cast<unsigned>(ctx.target(h, j)); }, ctx.index_scratch(h, 1));
    const index_t dims = ctx.head_dim();
    group.for_each(count * dims, [&](index_t e) {
      const index_t first = e / dims, d = e % dims;
      const index_t target = ctx.target(h, joining[first]);
      if (first > 0 && ctx.target(h, joining[first - 1]) == target) return;  // not the first of its set
      float key = ctx.key(h, target, d), value = ctx.value(h, target, d);
      index_t members = 1;
      for (index_t i = first; i < count && ctx.target(h, joining[i]) == target; ++i) {
        const float weight = 1.0f / static_cast<float>(++members);
        key += (ctx.key(h, joining[i], d) - key) * weight;
        value += (ctx.value(h, joining[i], d) - value) * weight;
      }
      ctx.set_key(h, target, d, key);
      ctx.set_value(h, target, d, value);
    });
  }

 private:
  struct plus {
    KVCOMPACT_HOST_DEVICE index_t operator()(index_t a, index_t b) const { return a + b; }
  };
  struct larger {
    KVCOMPACT_HOST_DEVICE std::uint64_t operator()(std::uint64_t a, std::uint64_t b) const { return a > b ? a : b; }
  };
};

}  // namespace mergers

KVCOMPACT_NAMESPACE_END
