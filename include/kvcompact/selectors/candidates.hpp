// SPDX-License-Identifier: Apache-2.0
/// @file
/// @brief The candidate rule shared by the score-based ranked selectors: protected sinks and recent
/// tokens, optional 1-D pooling of the candidates' scores in position order (@ref methods_p3), the
/// quota left for candidates.
#pragma once

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

  /// @brief Prefill verdict of a slot of a head whose budget is @p budget: everything is kept when the
  /// head holds at most its budget, protected slots are kept, the others are candidates.
  /// @param ctx selection context @param h KV head @param slot slot @param budget the head's budget
  /// @return kvcompact::slot_verdict::keep or kvcompact::slot_verdict::candidate
  template <class Ctx>
  KVCOMPACT_HOST_DEVICE slot_verdict verdict(const Ctx& ctx, int h, index_t slot, index_t budget) const {
    return ctx.length(h) <= budget || protects(ctx.position(h, slot), ctx.step()) ? slot_verdict::keep : slot_verdict::candidate;
  }

  /// @brief Candidates a head keeps beside its protected slots: none when it holds at most its budget
  /// (nothing is compressed), else what the budget leaves. @param length slots held @param budget the
  /// head's budget @param protected_count its protected slots @return the quota
  KVCOMPACT_HOST_DEVICE static index_t quota(index_t length, index_t budget, index_t protected_count) {
    return length <= budget || budget <= protected_count ? 0 : budget - protected_count;
  }

  /// @brief The rank key of candidate @p i: its (pooled) score.
  /// @param candidates the head's candidates in position order @param i candidate index
  /// @return the raw score without pooling, else the pooled value over the kernel around @p i
  template <class Candidates>
  KVCOMPACT_HOST_DEVICE float rank_key(const Candidates& candidates, index_t i) const {
    return pooled_score(i, candidates.count(), [&](index_t c) { return candidates.score(c); });
  }

  /// @brief Whether rank_key() reads only its own candidate (no pooling). @return true without pooling
  KVCOMPACT_HOST_DEVICE bool local() const { return pool == pooling::none || kernel / 2 == 0; }

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
};

}  // namespace selectors

KVCOMPACT_NAMESPACE_END
