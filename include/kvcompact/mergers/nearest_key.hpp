// SPDX-License-Identifier: Apache-2.0
/// @file
/// @brief Nearest-key merger: every evicted slot is written into the kept slot whose key is most similar,
/// whatever its position (the write rule of the bounded slot memory, @ref methods_bct_write).
#pragma once

#include <kvcompact/mergers/merge_runs.hpp>

KVCOMPACT_NAMESPACE_BEGIN

namespace mergers {

/// @brief Content-addressed merge: each evicted slot joins the kept slot of highest key cosine
/// similarity (the first in slot order among equals), any position, unless the selector gave it a
/// target; each kept slot's key and value
/// become the mean over itself and the evicted slots that joined it in this call (so content written
/// into a slot again later weighs as much as everything already in it). Evicted slots less similar than
/// `min_similarity` to every kept slot are dropped.
struct nearest_key {
  using component_kind = merger_tag;    ///< opt-in to kvcompact::entry_merger
  static constexpr bool merges = true;  ///< rewrites kept slots
  float min_similarity = -1.0f;         ///< cosine below which an evicted slot is dropped instead of merged

  /// @brief Merges the evicted slots of head @p h. @param ctx selection context @param h KV head
  template <class Ctx>
  KVCOMPACT_HOST_DEVICE void merge(Ctx& ctx, int h) const {
    const index_t n = ctx.length(h);
    for (index_t j = 0; j < n; ++j) {  // every evicted slot picks its target from the keys as they were
      if (ctx.kept(h, j) || ctx.target(h, j) >= 0) continue;
      index_t best = -1;
      float best_similarity = min_similarity;
      for (index_t k = 0; k < n; ++k) {
        if (!ctx.kept(h, k)) continue;
        const float similarity = detail::key_cosine(ctx, h, j, k);
        if (best < 0 ? similarity >= best_similarity : similarity > best_similarity) best = k, best_similarity = similarity;
      }
      if (best >= 0) ctx.set_target(h, j, best);
    }
    std::int32_t* members = ctx.index_scratch(h, 1);  // per kept slot: itself plus the slots merged into it so far
    for (index_t j = 0; j < n; ++j) members[j] = 1;
    for (index_t j = 0; j < n; ++j) {  // running mean over each set, evicted slots in slot order
      const index_t target = ctx.kept(h, j) ? -1 : ctx.target(h, j);
      if (target < 0) continue;
      const float weight = 1.0f / static_cast<float>(++members[target]);
      for (index_t d = 0; d < ctx.head_dim(); ++d) {
        const float k = ctx.key(h, target, d), v = ctx.value(h, target, d);
        ctx.set_key(h, target, d, k + (ctx.key(h, j, d) - k) * weight);
        ctx.set_value(h, target, d, v + (ctx.value(h, j, d) - v) * weight);
      }
    }
  }
};

}  // namespace mergers

KVCOMPACT_NAMESPACE_END
