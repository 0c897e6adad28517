// SPDX-License-Identifier: Apache-2.0
/// @file
/// @brief Elastic Cache's selector: anchors chosen by importance at prefill, a frozen prefix with
/// oldest-first truncation during decode.
#pragma once

#include <kvcompact/detail/ranked_selection.hpp>
#include <kvcompact/error.hpp>
#include <kvcompact/selectors/top_k.hpp>

#include <string>

KVCOMPACT_NAMESPACE_BEGIN

namespace selectors {

/// @brief Elastic Cache (@ref methods_elastic): the prompt keeps its `sinks` first tokens, its last token
/// and the most important others, `length - floor(evicted * length)` in all; the evicted ones are
/// merged into these anchors by the policy's merger (kvcompact::mergers::average with
/// kvcompact::mergers::assignment::nearest_position). During decode the first `tau` slots in position
/// order stay forever and the slot just after them leaves whenever the head holds more than the kept
/// share of the tokens seen (@ref methods_elastic_decode), without being merged.
///
/// A kvcompact::cooperative_selector of head scope: prefill runs kvcompact::selectors::top_k's ranked
/// phases as its own group code, decode evicts at most one slot per head.
///
/// `tau` comes from the head's decode budget, which the sessions set at prefill to the slots kept
/// (`m`, budget() of the prompt length): `tau = m + offset` (`offset` itself when positive, `m / 2`
/// when `m + offset < 1`). No other state is kept.
struct elastic {
  using component_kind = cooperative_selector_tag;              ///< opt-in to kvcompact::cooperative_selector
  static constexpr selection_scope scope = selection_scope::head;  ///< decides per KV head
  double evicted = 0.2;                 ///< r: evicted share of the prompt and of every later length, in [0, 1)
  index_t sinks = 1;                    ///< s: first tokens kept at prefill (the last prompt token is kept too)
  index_t offset = -25;                 ///< delta: the frozen prefix is the prefill's kept slots plus this

  /// @brief Slots a head keeps. @param layer layer @param num_layers layers @param length slots held
  /// @return length - floor(evicted * length), at least the protected sinks + 1
  KVCOMPACT_HOST_DEVICE index_t budget(index_t layer, index_t num_layers, index_t length) const {
    return prefill_selector().budget(layer, num_layers, length);
  }

  /// @brief Prefill selection of head @p h: protected tokens plus the best-scoring others (top_k's
  /// verdicts, keys and partial selection). @param group the kvcompact::execution_group
  /// @param ctx selection context @param h KV head
  template <class Group, class Ctx>
  KVCOMPACT_HOST_DEVICE void select(Group& group, Ctx& ctx, int h) const {
    const auto rule = prefill_selector();
    const detail::ranked_head head = detail::gather_candidates(group, rule, ctx, h);
    detail::keep_best_candidates(group, rule, ctx, h, head);
  }

  /// @brief Decode-time truncation of head @p h: when the head holds at least `(1 - evicted)` times the
  /// tokens seen with the incoming one (`ctx.step() + 1`), the slot at rank frozen_slots(budget) in position
  /// order (the newest slot if the head holds fewer) is evicted and marked as its own merge target, which
  /// the pivot mergers read as "dropped".
  /// @param group the kvcompact::execution_group @param ctx selection context (order(h) ready) @param h KV head
  template <class Group, class Ctx>
  KVCOMPACT_HOST_DEVICE void select_decode(Group& group, Ctx& ctx, int h) const {
    const index_t length = ctx.length(h);
    const double seen = static_cast<double>(ctx.step()) + 1.0;
    if (length == 0 || static_cast<double>(length + 1) - seen * (1.0 - evicted) < 1.0) return;
    index_t rank = frozen_slots(ctx.budget(h));
    rank = rank < length ? rank : length - 1;
    group.once([&] {
      const index_t victim = ctx.order(h)[rank];
      ctx.keep(h, victim, false);
      ctx.set_target(h, victim, victim);
    });
  }

  /// @brief Slots that decode never evicts. @param kept slots kept at prefill (the head's decode budget)
  /// @return `offset` when positive, else `kept + offset`, or `kept / 2` when that is below 1
  KVCOMPACT_HOST_DEVICE index_t frozen_slots(index_t kept) const {
    if (offset > 0) return offset;
    return kept + offset >= 1 ? kept + offset : kept / 2;
  }

  /// @brief Checks the fields (called by the sessions). @param where the calling entry point
  /// @throws kvcompact::error naming `policy.selector.evicted` (outside [0, 1) or NaN) or `policy.selector.sinks` (negative)
  void validate(const char* where) const {
    detail::require(evicted >= 0.0 && evicted < 1.0, where, "policy.selector.evicted",
                    [&] { return "must be in [0, 1), got " + std::to_string(evicted); });
    detail::require(sinks >= 0, where, "policy.selector.sinks", [&] { return "must not be negative, got " + std::to_string(sinks); });
  }

 private:
  KVCOMPACT_HOST_DEVICE top_k<budgets::evicted_share> prefill_selector() const {
    return {budgets::evicted_share{evicted, sinks + 1}, candidate_rule{sinks, 1}};
  }
};

}  // namespace selectors

KVCOMPACT_NAMESPACE_END
