// SPDX-License-Identifier: Apache-2.0
/// @file
/// @brief Ada-KV: head-wise adaptive budgets inside a layer.
#pragma once

#include <kvcompact/selectors/budgets.hpp>
#include <kvcompact/selectors/candidates.hpp>

KVCOMPACT_NAMESPACE_BEGIN

namespace selectors {

/// @brief Ada-KV allocation (@ref methods_adakv): the layer's `H * B` best (pooled) candidate scores
/// over all KV heads decide how many each head keeps,
/// `alloc[h] = round(cnt[h] (1 - floor_fraction) + floor(B_h floor_fraction))`, with `B_h` the head's budget
/// less its protected tokens; each head then keeps its own top-alloc[h] plus its protected tokens.
/// Per-head lengths differ. Prefill-only: decode appends. With a kvcompact::rank_group the layer-wide
/// ranking spans the KV heads of every rank (the `strict` repair does not: one rank only).
/// A kvcompact::ranked_selector of layer scope:
/// the backend ranks the layer's candidates (partial selection), allocate() turns the counts into
/// allocations.
/// @tparam Schedule a kvcompact::budget_schedule giving the per-head average (protected included)
template <budget_schedule Schedule>
struct adaptive_heads {
  using component_kind = ranked_selector_tag;                   ///< opt-in to kvcompact::ranked_selector
  static constexpr selection_scope scope = selection_scope::layer;  ///< layer-wide ranking, per-head allocation
  Schedule schedule;                    ///< average slots per head, protected included
  candidate_rule rule{};                ///< protected window and pooling
  double floor_fraction = 0.2;          ///< alpha_f: share of B every head gets regardless of scores
  bool strict = false;                  ///< repair rounding so the layer keeps exactly H * B candidates

  /// @brief Average budget of a layer. @param layer layer @param num_layers layers @param length slots held @return the schedule's budget
  KVCOMPACT_HOST_DEVICE index_t budget(index_t layer, index_t num_layers, index_t length) const {
    return schedule.budget(layer, num_layers, length);
  }

  /// @brief Prefill verdict: all kept under budget, protected kept, the rest candidates.
  /// @param ctx selection context @param h KV head @param slot slot @return the verdict
  template <class Ctx>
  KVCOMPACT_HOST_DEVICE slot_verdict verdict(const Ctx& ctx, int h, index_t slot) const {
    return rule.verdict(ctx, h, slot, head_budget(ctx, h));
  }

  /// @brief Rank key: the candidate's (pooled) score. @param candidates the head's candidates in position order
  /// @param i candidate index @return the key
  template <class Candidates>
  KVCOMPACT_HOST_DEVICE float rank_key(const Candidates& candidates, index_t i) const {
    return rule.rank_key(candidates, i);
  }

  /// @brief The head's share of the layer total H * B: its budget minus its protected slots.
  /// @param ctx selection context @param h KV head @param protected_count protected slots @return the quota
  template <class Ctx>
  KVCOMPACT_HOST_DEVICE index_t keep_count(const Ctx& ctx, int h, index_t protected_count) const {
    return candidate_rule::quota(ctx.length(h), head_budget(ctx, h), protected_count);
  }

  /// @brief alloc[h] from the head's share of the layer's best candidates (at most its candidates).
  /// @param ctx selection context @param layer the layer's quotas and shares @param h KV head @return the allocation
  template <class Ctx, class Layer>
  KVCOMPACT_HOST_DEVICE index_t allocate(const Ctx& ctx, const Layer& layer, int h) const {
    if (ctx.length(h) <= head_budget(ctx, h)) return 0;  // not compressed
    const index_t floor_share = static_cast<index_t>(static_cast<double>(layer.quota(h)) * floor_fraction);  // floor(B_h floor_fraction)
    const index_t alloc = static_cast<index_t>(static_cast<double>(layer.share(h)) * (1.0 - floor_fraction) + static_cast<double>(floor_share) + 0.5);
    return alloc < layer.candidates(h) ? alloc : layer.candidates(h);
  }

  /// @brief Strict mode repairs the rounding so the allocations sum to H * B. @return strict
  KVCOMPACT_HOST_DEVICE bool exact_total() const { return strict; }
  /// @brief Keys read neighbours only when pooling. @return true without pooling
  KVCOMPACT_HOST_DEVICE bool local_keys() const { return rule.local(); }

  /// @brief Ada-KV appends during decode: every slot stays. @return kvcompact::slot_verdict::keep
  template <class Ctx>
  KVCOMPACT_HOST_DEVICE slot_verdict decode_verdict(const Ctx&, int, index_t) const {
    return slot_verdict::keep;
  }
  /// @brief No decode eviction. @return 0
  template <class Ctx>
  KVCOMPACT_HOST_DEVICE index_t decode_evictions(const Ctx&, int) const {
    return 0;
  }

 private:
  template <class Ctx>
  KVCOMPACT_HOST_DEVICE index_t head_budget(const Ctx& ctx, int h) const {
    return budget(ctx.layer(), ctx.num_layers(), ctx.length(h));
  }
};

}  // namespace selectors

KVCOMPACT_NAMESPACE_END
