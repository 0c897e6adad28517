// SPDX-License-Identifier: Apache-2.0
/// @file
/// @brief Decode-time eviction and merging on the device through the selection contract, for the
/// append kernel: the block path (one block per head, the same group code the CPU backend runs) and
/// the per-slot pieces a fused "worst candidate" search needs.
///
/// Block path, in order: decode_victims() (the selector: a ranked selector's verdicts and its
/// `decode_evictions` worst candidates, or a cooperative selector's select_decode), then
/// merge_and_claim() (the merger, then the slot the incoming token takes).
///
/// Fused path, for selectors where fusable_decode_eviction() holds (ranked, local keys): a kernel
/// that already visits every slot (the attention / state-update pass) may find the victims itself:
/// a slot whose ranked_decode_verdict() is `evict` goes; of the `candidate` slots, the
/// ranked_decode_evictions() largest ranked_decode_key() values go; it clears their keep flags and
/// then calls merge_and_claim(). Both paths evict the same slots.
#pragma once

#include <kvcompact/cuda/detail/block_group.cuh>
#include <kvcompact/detail/selection.hpp>
#include <kvcompact/detail/slot_ops.hpp>

KVCOMPACT_NAMESPACE_BEGIN
namespace cuda::detail {

/// Threads per block of the append kernel.
inline constexpr int append_threads = 256;
/// The execution group of the append kernel.
using append_group = block_group<append_threads>;

/// Clears the keep flags of head @p h's decode victims (every slot starts kept; scores are decode scores).
template <class Policy, class Ctx>
__device__ void decode_victims(const append_group& workers, const Policy& policy, const Ctx& ctx, int h) {
  ::kvcompact::detail::select_decode(workers, policy.selector, ctx, h);
}

/// After the victims are marked: merges them if the policy merges, then claims the incoming token's
/// slot (kvcompact::detail::claim_slot). Returns the slot, -1 when the head is full.
template <class Policy, class Ctx, class Move>
__device__ index_t merge_and_claim(const append_group& workers, const Policy& policy, const Ctx& ctx, int h, std::int32_t& length,
                                   index_t capacity, const Move& move) {
  ::kvcompact::detail::merge_head(workers, policy.merger, ctx, h);
  return ::kvcompact::detail::claim_slot(workers, ctx, h, length, capacity, move);
}

/// Whether a fused victim search may replace decode_victims(): a ranked selector whose rank keys read
/// only their own candidate.
template <class Selector>
__device__ bool fusable_decode_eviction(const Selector& selector) {
  if constexpr (ranked_selector<Selector>) return ::kvcompact::detail::local_keys(selector);
  else return false;
}

/// Decode verdict of one slot of a ranked selector (`evict`: goes regardless; `candidate`: ranked).
template <class Selector, class Ctx>
__device__ slot_verdict ranked_decode_verdict(const Selector& selector, const Ctx& ctx, int h, index_t slot) {
  return selector.decode_verdict(ctx, h, slot);
}

/// How many of head @p h's candidates a ranked selector evicts.
template <class Selector, class Ctx>
__device__ index_t ranked_decode_evictions(const Selector& selector, const Ctx& ctx, int h) {
  return selector.decode_evictions(ctx, h);
}

/// Eviction key of a candidate slot of a ranked selector with local keys: larger is evicted first
/// (lowest rank key, then the higher position). `ctx.score(h, slot)` must hold the decode score.
template <class Selector, class Ctx>
__device__ std::uint64_t ranked_decode_key(const Selector& selector, const Ctx& ctx, int h, index_t slot) {
  return ::kvcompact::detail::local_eviction_key(selector, ctx, h, slot);
}

}  // namespace cuda::detail
KVCOMPACT_NAMESPACE_END
