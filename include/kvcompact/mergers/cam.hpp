// SPDX-License-Identifier: Apache-2.0
/// @file
/// @brief CaM: evicted values spread over the following kept values.
#pragma once

#include <kvcompact/mergers/concepts.hpp>

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

  /// @brief Spreads every evicted value of head @p h over its targets. @param ctx selection context @param h KV head
  template <class Ctx>
  KVCOMPACT_HOST_DEVICE void merge(Ctx& ctx, int h) const {
    const std::int32_t* order = ctx.order(h);
    const index_t n = ctx.length(h);
    std::int32_t* next_kept = ctx.index_scratch(h, 1);  // order index of the first kept slot at or after i, n if none
    index_t next = n;
    for (index_t i = n - 1; i >= 0; --i) {
      if (ctx.kept(h, order[i])) next = i;
      next_kept[i] = static_cast<std::int32_t>(next);
    }
    for (index_t i = 0; i < n; ++i) {
      const std::int32_t evicted = order[i];
      if (ctx.kept(h, evicted)) continue;
      index_t targets = 0;
      float reference_score = reference == reference_rule::max ? -3.402823466e38f : 0.0f;
      for (index_t k = next_kept[i]; k < n && targets < merge_count; k = k + 1 < n ? next_kept[k + 1] : n) {
        const float s = ctx.score(h, order[k]);
        reference_score = reference == reference_rule::max ? (s > reference_score ? s : reference_score) : reference_score + s;
        ++targets;
      }
      if (targets == 0) continue;
      if (reference == reference_rule::mean) reference_score /= static_cast<float>(targets);
      const float own = ctx.score(h, evicted);
      float p = reference_score > 0.0f ? own / reference_score : (own > 0.0f ? 1.0f : 0.0f);
      p = p < 0.0f ? 0.0f : (p > 1.0f ? 1.0f : p);
      const float z = expected ? p : (uniform(ctx.sequence(), ctx.layer(), h, ctx.position(h, evicted)) < p ? 1.0f : 0.0f);
      if (z == 0.0f) continue;
      const float share = z / static_cast<float>(targets);
      index_t done = 0;
      for (index_t k = next_kept[i]; k < n && done < targets; k = k + 1 < n ? next_kept[k + 1] : n, ++done)
        for (index_t d = 0; d < ctx.head_dim(); ++d)
          ctx.set_value(h, order[k], d, ctx.value(h, order[k], d) + share * ctx.value(h, evicted, d));
    }
  }
};

}  // namespace mergers

KVCOMPACT_NAMESPACE_END
