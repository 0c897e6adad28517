// SPDX-License-Identifier: Apache-2.0
/// @file
/// @brief KVMerger's Gaussian-kernel merge of a set into its pivot.
#pragma once

#include <kvcompact/mergers/merge_runs.hpp>

#include <cmath>

KVCOMPACT_NAMESPACE_BEGIN

namespace mergers {

/// @brief Gaussian-kernel weighted merge (@ref methods_kvmerger_merge). For a set S with pivot p:
/// `g[i] = exp(-||K_i - K_p||^2 / (2 sigma^2))`, `w[i] = g[i] / sum g`, `K* = sum w K`,
/// `V* = scale * sum w V` with scale `|S|` (paper) or 1; the result is stored in the pivot's slot.
/// Sets come from the selector's merge targets (kvcompact::selectors::merging_sets); evicted slots
/// without a target join the more similar adjacent kept slot when their cosine is at least
/// `min_similarity`, so the merger also composes with other selectors. A set's evicted members must lie
/// between its pivot's kept neighbours in position order (they need not be contiguous).
struct gaussian_pivot {
  /// @brief How sigma is chosen.
  enum class sigma_rule : std::uint8_t {
    fixed,          ///< sigma as given (paper's grid-search value 5)
    mean_distance,  ///< sigma = sum_i ||K_i - K_p|| / (sqrt(2) |S|) per set [ext]
  };
  /// @brief How merged values are scaled.
  enum class value_rule : std::uint8_t {
    set_size,  ///< multiply by |S| (paper)
    one,       ///< plain weighted average
  };
  using component_kind = merger_tag;     ///< opt-in to kvcompact::entry_merger
  static constexpr bool merges = true;   ///< rewrites pivots
  float sigma = 5.0f;                    ///< kernel width (fixed rule)
  sigma_rule sigma_mode = sigma_rule::fixed;  ///< how sigma is chosen
  value_rule value_scale = value_rule::set_size;  ///< how values are scaled
  float min_similarity = 0.75f;          ///< threshold for slots the selector left without a target

  /// @brief Merges every set of head @p h into its pivot, one worker per set.
  /// @param group the kvcompact::execution_group @param ctx selection context @param h KV head
  template <class Group, class Ctx>
  KVCOMPACT_HOST_DEVICE void merge(Group& group, Ctx& ctx, int h) const {
    const detail::kept_ranks kept = detail::rank_kept(group, ctx, h);
    detail::assign_adjacent(group, ctx, h, kept, min_similarity);
    const std::int32_t* order = ctx.order(h);
    float* weight = ctx.float_scratch(h);  // at each member's order rank (members of different sets never share one)
    detail::for_each_run(group, ctx, h, kept, [&](index_t pivot, index_t first, index_t last, index_t members) {
      auto distance2 = [&](index_t slot) {
        float sum = 0.0f;
        for (index_t d = 0; d < ctx.head_dim(); ++d) {
          const float diff = ctx.key(h, slot, d) - ctx.key(h, pivot, d);
          sum += diff * diff;
        }
        return sum;
      };
      const float size = static_cast<float>(members);
      float width = sigma;
      if (sigma_mode == sigma_rule::mean_distance) {
        float total = 0.0f;
        for (index_t i = first; i <= last; ++i)
          if (detail::in_set(ctx, h, order[i], pivot)) total += std::sqrt(distance2(order[i]));
        width = total / (std::sqrt(2.0f) * size);
      }
      float norm = 0.0f;
      for (index_t i = first; i <= last; ++i) {
        if (!detail::in_set(ctx, h, order[i], pivot)) continue;
        const float d2 = distance2(order[i]);
        weight[i] = width > 0.0f ? std::exp(-d2 / (2.0f * width * width)) : (d2 == 0.0f ? 1.0f : 0.0f);
        norm += weight[i];
      }
      const float scale = value_scale == value_rule::set_size ? size : 1.0f;
      for (index_t d = 0; d < ctx.head_dim(); ++d) {
        float k = 0.0f, v = 0.0f;
        for (index_t i = first; i <= last; ++i) {
          if (!detail::in_set(ctx, h, order[i], pivot)) continue;
          k += weight[i] * ctx.key(h, order[i], d);
          v += weight[i] * ctx.value(h, order[i], d);
        }
        ctx.set_key(h, pivot, d, k / norm);
        ctx.set_value(h, pivot, d, scale * v / norm);
      }
    });
  }
};

}  // namespace mergers

KVCOMPACT_NAMESPACE_END
