// SPDX-License-Identifier: Apache-2.0
/// @file
/// @brief Average merger: a kept slot becomes the mean of itself and the evicted slots it absorbs.
#pragma once

#include <kvcompact/mergers/merge_runs.hpp>

#include <cstdint>

KVCOMPACT_NAMESPACE_BEGIN

namespace mergers {

/// @brief Which adjacent kept slot an evicted slot joins (when the selector gave it no target).
enum class assignment : std::uint8_t {
  similar_key,       ///< the one whose key is more similar (cosine), if at least `min_similarity`
  nearest_position,  ///< the one nearer in position, the older on a tie (Elastic Cache, @ref methods_elastic_merge)
};

/// @brief Every evicted slot joins an adjacent kept slot (chosen by `assign`, or the selector's target),
/// and each kept slot's key and value become the plain means over its run.
struct average {
  using component_kind = merger_tag;    ///< opt-in to kvcompact::entry_merger
  static constexpr bool merges = true;  ///< rewrites kept slots
  float min_similarity = -1.0f;         ///< similar_key: evicted slots less similar than this to both neighbours are dropped
  assignment assign = assignment::similar_key;  ///< how an evicted slot picks its kept neighbour

  /// @brief Averages every run of head @p h into its kept slot, one worker per run.
  /// @param group the kvcompact::execution_group @param ctx selection context @param h KV head
  template <class Group, class Ctx>
  KVCOMPACT_HOST_DEVICE void merge(Group& group, Ctx& ctx, int h) const {
    const detail::kept_ranks kept = detail::rank_kept(group, ctx, h);
    if (assign == assignment::nearest_position) detail::assign_nearest_position(group, ctx, h, kept);
    else detail::assign_adjacent(group, ctx, h, kept, min_similarity);
    const std::int32_t* order = ctx.order(h);
    detail::for_each_run(group, ctx, h, kept, [&](index_t pivot, index_t first, index_t last, index_t members) {
      const float size = static_cast<float>(members);
      for (index_t d = 0; d < ctx.head_dim(); ++d) {
        float k = 0.0f, v = 0.0f;
        for (index_t i = first; i <= last; ++i) {
          if (!detail::in_set(ctx, h, order[i], pivot)) continue;
          k += ctx.key(h, order[i], d);
          v += ctx.value(h, order[i], d);
        }
        ctx.set_key(h, pivot, d, k / size);
        ctx.set_value(h, pivot, d, v / size);
      }
    });
  }
};

}  // namespace mergers

KVCOMPACT_NAMESPACE_END
