// SPDX-License-Identifier: Apache-2.0
/// @file
/// @brief Eviction candidates found during decode: a victim (key, position, slot), kvcompact's order
/// between two of them, and the per-head record the attention pass leaves for the next insertion
/// (the worst candidate at the attending step and at the step after, and any NaN key).
#pragma once

#include <kvcompact/cuda/detail/execution.cuh>
#include <kvcompact/selectors/concepts.hpp>

#include <cstdint>

KVCOMPACT_NAMESPACE_BEGIN
namespace cuda::detail {

/// A candidate victim: its rank key, position and slot (-1: none).
struct victim {
  float key;              ///< rank key (decode score)
  std::int32_t position;  ///< logical position
  std::int32_t slot;      ///< slot, -1 for no candidate
};

/// No candidate.
KVCOMPACT_HOST_DEVICE inline victim no_victim() { return {0.0f, 0, -1}; }

/// The candidate evicted first of @p a and @p b: kvcompact's ranking (higher key first, then lower
/// position) read backwards, so the lower key, and among equal keys the higher position.
KVCOMPACT_HOST_DEVICE inline victim worse_victim(const victim& a, const victim& b) {
  if (a.slot < 0) return b;
  if (b.slot < 0) return a;
  return ::kvcompact::detail::ranks_before(a.key, a.position, b.key, b.position) ? b : a;
}

/// worse_victim() as a function object (for block reductions).
struct pick_worse {
  /// @return the worse of @p a and @p b
  KVCOMPACT_HOST_DEVICE victim operator()(const victim& a, const victim& b) const { return worse_victim(a, b); }
};

/// What one pass over a head's slots found: the worst candidate if the next token arrives at the
/// attending step t, the worst if it arrives at t + 1 (protection windows move with the step), and
/// a slot whose key is NaN.
struct victim_pair {
  victim now;              ///< worst candidate at step t
  victim next;             ///< worst candidate at step t + 1
  std::int32_t nan_slot;   ///< a slot whose key is NaN, or -1
};

/// Nothing found.
KVCOMPACT_HOST_DEVICE inline victim_pair no_victims() { return {no_victim(), no_victim(), -1}; }

/// Combines two victim_pair results (associative and commutative).
struct combine_victims {
  /// @return the worse victims of @p a and @p b, and either NaN slot
  KVCOMPACT_HOST_DEVICE victim_pair operator()(const victim_pair& a, const victim_pair& b) const {
    return {worse_victim(a.now, b.now), worse_victim(a.next, b.next), a.nan_slot > b.nan_slot ? a.nan_slot : b.nan_slot};
  }
};

/// Victims of one head left by the last attention pass for the next insertion into that head. Valid
/// while `generation` is the session's and `step` is the attending step; an insertion consumes it.
struct eviction_record {
  std::int32_t generation;  ///< session generation (prefill compression starts a new one; 0: never written)
  std::int32_t step;        ///< the attending step t (INT32_MIN once consumed)
  victim_pair victims;      ///< what the pass found
};

}  // namespace cuda::detail
KVCOMPACT_NAMESPACE_END
