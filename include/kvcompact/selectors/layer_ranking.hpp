// SPDX-License-Identifier: Apache-2.0
/// @file
/// @brief Layer-wide ranking of per-head candidate lists (Ada-KV's allocation), over the KV heads of
/// every tensor-parallel rank (kvcompact::rank_group).
#pragma once

#include <kvcompact/detail/order_keys.hpp>
#include <kvcompact/tensor_parallel.hpp>
#include <kvcompact/types.hpp>

#include <cstdint>

KVCOMPACT_NAMESPACE_BEGIN

namespace detail {

/// How many candidates of each KV head belong to the @p total best of the layer, over the KV heads of
/// every rank of @p ctx's group: head h has `count_of(h)` candidates whose order keys are
/// `key_of(h, i)` (kvcompact::detail::orderable_bits of their scores); `count_of(h)` is negative for a head
/// that takes no part. Equal scores go to the lower head first (ranks hold consecutive heads), then in
/// list order, as a merge of the lists that prefers the lower head on ties. Each head's count is passed
/// to `set_taken(h, n)`. A 4-bit radix select over the score keys: 8 all-reduces of 16 counts, plus
/// one per rank for the ties.
/// @param ctx selection context @param total layer-wide number of candidates to take
/// @param count_of candidates of a head, or negative @param key_of order key of a head's candidate
/// @param set_taken receives each taking head's count
template <class Ctx, class CountOf, class KeyOf, class SetTaken>
KVCOMPACT_HOST_DEVICE void layer_top_counts(const Ctx& ctx, index_t total, const CountOf& count_of, const KeyOf& key_of, const SetTaken& set_taken) {
  auto key = [&](int h, index_t i) { return key_of(h, i); };
  double candidates = 0.0;
  for (int h = 0; h < ctx.kv_heads(); ++h) candidates += count_of(h) > 0 ? static_cast<double>(count_of(h)) : 0.0;
  sum_across_ranks(ctx, &candidates, 1);
  if (static_cast<double>(total) >= candidates || total <= 0) {
    for (int h = 0; h < ctx.kv_heads(); ++h)
      if (count_of(h) >= 0) set_taken(h, total <= 0 ? 0 : count_of(h));
    return;
  }
  std::uint32_t threshold = 0;  // the key of the total-th best candidate, four bits at a time
  double needed = static_cast<double>(total);  // of the candidates whose key starts as threshold does
  for (int shift = 28; shift >= 0; shift -= 4) {
    double bins[16] = {};
    const std::uint32_t above = shift == 28 ? 0u : ~((1u << (shift + 4)) - 1u);  // the digits already chosen
    for (int h = 0; h < ctx.kv_heads(); ++h)
      for (index_t i = 0; i < count_of(h); ++i)
        if ((key(h, i) & above) == (threshold & above)) bins[(key(h, i) >> shift) & 15u] += 1.0;
    sum_across_ranks(ctx, bins, 16);
    int digit = 15;
    for (; digit > 0 && bins[digit] < needed; --digit) needed -= bins[digit];
    threshold |= static_cast<std::uint32_t>(digit) << shift;
  }
  double tied_here = 0.0;  // `needed` of the candidates with the threshold key are taken, lower heads first
  for (int h = 0; h < ctx.kv_heads(); ++h)
    for (index_t i = 0; i < count_of(h); ++i) tied_here += key(h, i) == threshold ? 1.0 : 0.0;
  double remaining = needed - prefix_across_ranks(ctx, tied_here).before;
  for (int h = 0; h < ctx.kv_heads(); ++h) {
    if (count_of(h) < 0) continue;
    index_t greater = 0, tied = 0;
    for (index_t i = 0; i < count_of(h); ++i) {
      const std::uint32_t k = key(h, i);
      greater += k > threshold ? 1 : 0;
      tied += k == threshold ? 1 : 0;
    }
    const index_t take = remaining <= 0.0 ? 0 : (remaining >= static_cast<double>(tied) ? tied : static_cast<index_t>(remaining));
    remaining -= static_cast<double>(take);
    set_taken(h, greater + take);
  }
}

}  // namespace detail

KVCOMPACT_NAMESPACE_END
