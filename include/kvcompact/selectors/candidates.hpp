// SPDX-License-Identifier: Apache-2.0
/// @file
/// @brief Candidate gathering shared by the score-based selectors: unprotected slots in position
/// order, optional 1-D pooling of their scores (@ref methods_p3), best-first ranking.
#pragma once

#include <kvcompact/detail/heap_sort.hpp>
#include <kvcompact/selectors/concepts.hpp>

KVCOMPACT_NAMESPACE_BEGIN

namespace selectors {

/// @brief 1-D pooling of scores along the key axis (SnapKV family).
enum class pooling : std::uint8_t {
  none,     ///< raw scores
  average,  ///< mean over the kernel, zero padding counted (PyTorch avg_pool1d default)
  max,      ///< max over the kernel, padding ignored
};

/// @brief Protected tokens and pooling, shared by score-based selectors.
struct candidate_rule {
  index_t sinks = 0;              ///< the first `sinks` positions are always kept
  index_t recent = 0;             ///< the `recent` newest positions are always kept
  pooling pool = pooling::none;   ///< pooling of candidate scores
  index_t kernel = 1;             ///< pooling kernel (odd)

  /// @brief Whether a slot is protected. @param position its position @param step newest position
  /// @return true for sinks and recent tokens
  KVCOMPACT_HOST_DEVICE bool protects(index_t position, index_t step) const {
    return detail::is_protected(position, step, sinks, recent);
  }

  /// @brief Gathers the unprotected slots of head @p h in position order into `ctx.index_scratch(h, 0)`
  /// and writes their (pooled) scores into `ctx.float_scratch(h)[slot]`.
  /// @param ctx selection context @param h KV head
  /// @return the number of candidates
  template <class Ctx>
  KVCOMPACT_HOST_DEVICE index_t gather(Ctx& ctx, int h) const {
    std::int32_t* candidates = ctx.index_scratch(h, 0);
    float* pooled = ctx.float_scratch(h);
    const std::int32_t* order = ctx.order(h);
    const index_t n = ctx.length(h);
    index_t count = 0;
    for (index_t i = 0; i < n; ++i)
      if (!protects(ctx.position(h, order[i]), ctx.step())) candidates[count++] = order[i];
    for (index_t i = 0; i < count; ++i)
      pooled[candidates[i]] = pooled_score(i, count, [&](index_t c) { return ctx.score(h, candidates[c]); });
    return count;
  }

  /// @brief Pooled score of candidate @p i of @p count (candidates in position order).
  /// @param i candidate index @param count number of candidates
  /// @param score_of `score_of(c)` returns the raw score of candidate c
  /// @return the raw score without pooling, else the pooled value over the kernel around @p i
  template <class ScoreOf>
  KVCOMPACT_HOST_DEVICE float pooled_score(index_t i, index_t count, const ScoreOf& score_of) const {
    const index_t half = pool == pooling::none ? 0 : kernel / 2;
    if (half == 0) return score_of(i);
    float acc = pool == pooling::max ? score_of(i) : 0.0f;
    for (index_t o = i - half; o <= i + half; ++o) {
      if (o < 0 || o >= count) continue;  // zero padding: adds nothing to the sum, ignored by max
      const float s = score_of(o);
      acc = pool == pooling::max ? (s > acc ? s : acc) : acc + s;
    }
    return pool == pooling::max ? acc : acc / static_cast<float>(kernel);
  }

  /// @brief Sorts gathered candidates best-first by pooled score, lower position first on ties.
  /// @param ctx selection context @param h KV head @param count candidates gathered by gather()
  template <class Ctx>
  KVCOMPACT_HOST_DEVICE void rank(Ctx& ctx, int h, index_t count) const {
    const float* pooled = ctx.float_scratch(h);
    detail::heap_sort(ctx.index_scratch(h, 0), count, [&](std::int32_t a, std::int32_t b) {
      return detail::ranks_before(pooled[a], ctx.position(h, a), pooled[b], ctx.position(h, b));
    });
  }

  /// @brief Marks every protected slot of head @p h kept. @param ctx selection context @param h KV head
  /// @return how many were marked
  template <class Ctx>
  KVCOMPACT_HOST_DEVICE index_t keep_protected(Ctx& ctx, int h) const {
    index_t count = 0;
    for (index_t j = 0; j < ctx.length(h); ++j) {
      if (protects(ctx.position(h, j), ctx.step())) {
        ctx.keep(h, j, true);
        ++count;
      }
    }
    return count;
  }
};

}  // namespace selectors

KVCOMPACT_NAMESPACE_END
