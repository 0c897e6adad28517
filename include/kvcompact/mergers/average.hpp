// SPDX-License-Identifier: Apache-2.0
/// @file
/// @brief Average merger: a kept slot becomes the mean of itself and the evicted slots it absorbs.
#pragma once

#include <kvcompact/mergers/merge_runs.hpp>

KVCOMPACT_NAMESPACE_BEGIN

namespace mergers {

/// @brief Every evicted slot joins the more similar adjacent kept slot (or the selector's target), and
/// each kept slot's key and value become the plain means over its run.
struct average {
  using component_kind = merger_tag;    ///< opt-in to kvcompact::entry_merger
  static constexpr bool merges = true;  ///< rewrites kept slots
  float min_similarity = -1.0f;         ///< evicted slots less similar than this to both neighbours are dropped

  /// @brief Averages every run of head @p h into its kept slot, one worker per run.
  /// @param group the kvcompact::execution_group @param ctx selection context @param h KV head
  template <class Group, class Ctx>
  KVCOMPACT_HOST_DEVICE void merge(Group& group, Ctx& ctx, int h) const {
    const detail::kept_ranks kept = detail::rank_kept(group, ctx, h);
    detail::assign_adjacent(group, ctx, h, kept, min_similarity);
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
