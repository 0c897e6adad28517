// SPDX-License-Identifier: Apache-2.0
/// @file
/// @brief CaM: evicted values spread over the following kept values.
#pragma once

#include <kvcompact/mergers/merge_runs.hpp>

#include <cstdint>

KVCOMPACT_NAMESPACE_BEGIN

namespace mergers {

/// @brief CaM merge (@ref methods_cam_merge). For each evicted slot e (position order) with targets
/// M(e) = the next `merge_count` kept slots in position order: `p = clamp(score[e] / ref, 0, 1)` with
/// `ref` the max (or mean) score over M(e); `z` = p (expected mode, deterministic) or a Bernoulli(p)
/// draw from a counter-based hash of (seed, sequence, layer, head, position); then
/// `V[m] += z * V[e] / |M(e)|` for m in M(e). Keys are untouched. Works at prefill and at decode-time
/// eviction (streaming CaM).
struct cam {
  /// @brief Reference statistic of the targets.
  enum class reference_rule : std::uint8_t {
    max,   ///< max score over the targets (prompt simulation)
    mean,  ///< mean score over the targets (generation / streaming)
  };
  using component_kind = merger_tag;     ///< opt-in to kvcompact::entry_merger
  static constexpr bool merges = true;   ///< rewrites values of kept slots
  index_t merge_count = 32;              ///< M: kept slots receiving one evicted value
  reference_rule reference = reference_rule::max;  ///< ref(K)
  bool expected = true;                  ///< z = p instead of a Bernoulli draw
  std::uint64_t seed = 0;                ///< seed of the Bernoulli draws

  /// @brief Uniform number in [0, 1) from a counter-based hash (splitmix64).
  /// @param sequence sequence @param layer layer @param head head @param position evicted position
  /// @return the draw
  KVCOMPACT_HOST_DEVICE float uniform(index_t sequence, index_t layer, index_t head, index_t position) const {
    std::uint64_t x = seed ^ (static_cast<std::uint64_t>(position) * 0x9e3779b97f4a7c15ull) ^
                      (static_cast<std::uint64_t>(sequence) << 48) ^ (static_cast<std::uint64_t>(layer) << 32) ^
                      (static_cast<std::uint64_t>(head) << 24);
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    x ^= x >> 31;
    return static_cast<float>(x >> 40) / 16777216.0f;
  }

  /// @brief Spreads every evicted value of head @p h over its targets. Two parallel steps: one worker
  /// per evicted slot finds its targets through the kept slots' ranks and draws z; then one worker per
  /// (kept slot, dimension) gathers the contributions of the evicted slots that target it, in position
  /// order, exactly as the sequential rule adds them (no atomics, the same rounding on both backends).
  /// @param group the kvcompact::execution_group @param ctx selection context @param h KV head
  template <class Group, class Ctx>
  KVCOMPACT_HOST_DEVICE void merge(Group& group, Ctx& ctx, int h) const {
    const std::int32_t* order = ctx.order(h);
    const detail::kept_ranks kept = detail::rank_kept(group, ctx, h);
    float* weight = ctx.float_scratch(h);  // [order rank of an evicted slot]: z, 0 when nothing is added
    auto targets_of = [&](index_t i) {     // targets of the evicted slot at order rank i: kept ranks [before, before + targets)
      const index_t left = kept.count - kept.before[i];
      return left < merge_count ? left : merge_count;
    };
    group.for_each(ctx.length(h), [&](index_t i) {
      const std::int32_t evicted = order[i];
      if (ctx.kept(h, evicted)) return;
      const index_t targets = targets_of(i);
      weight[i] = 0.0f;
      if (targets <= 0) return;
      float reference_score = reference == reference_rule::max ? -3.402823466e38f : 0.0f;
      for (index_t t = 0; t < targets; ++t) {
        const float s = ctx.score(h, order[kept.at[kept.before[i] + t]]);
        reference_score = reference == reference_rule::max ? (s > reference_score ? s : reference_score) : reference_score + s;
      }
      if (reference == reference_rule::mean) reference_score /= static_cast<float>(targets);
      const float own = ctx.score(h, evicted);
      float p = reference_score > 0.0f ? own / reference_score : (own > 0.0f ? 1.0f : 0.0f);
      p = p < 0.0f ? 0.0f : (p > 1.0f ? 1.0f : p);
      weight[i] = expected ? p : (uniform(ctx.sequence(), ctx.layer(), h, ctx.position(h, evicted)) < p ? 1.0f : 0.0f);
    });
    const index_t dims = ctx.head_dim();
    group.for_each(kept.count * dims, [&](index_t e) {
      const index_t r = e / dims, d = e % dims;
      const std::int32_t target = order[kept.at[r]];
      // Evicted slots targeting the r-th kept slot lie between the (r - merge_count)-th kept slot and it.
      const index_t first = r >= merge_count ? kept.at[r - merge_count] + 1 : 0;
      for (index_t i = first; i < kept.at[r]; ++i) {
        if (ctx.kept(h, order[i]) || weight[i] == 0.0f) continue;
        const float share = weight[i] / static_cast<float>(targets_of(i));
        ctx.set_value(h, target, d, ctx.value(h, target, d) + share * ctx.value(h, order[i], d));
      }
    });
  }
};

}  // namespace mergers

KVCOMPACT_NAMESPACE_END
