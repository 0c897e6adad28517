// SPDX-License-Identifier: Apache-2.0
/// @file
/// @brief Layer-wide ranking of per-head candidate lists (Ada-KV's allocation), over the KV heads of
/// every tensor-parallel rank (kvcompact::rank_group, kvcompact::cuda::device_rank_group): a 4-bit
/// radix select whose rounds are written once as group code (kvcompact::execution_group). The CPU
/// backend runs the rounds in one call with the host all-reduce in between (layer_top_counts()); the
/// CUDA backend runs each round as a kernel and all-reduces on its stream in between.
#pragma once

#include <kvcompact/detail/order_keys.hpp>
#include <kvcompact/tensor_parallel.hpp>
#include <kvcompact/types.hpp>

#include <cstdint>

KVCOMPACT_NAMESPACE_BEGIN

namespace detail {

/// Where a layer's ranking across ranks stands between the rounds of its radix select.
struct layer_cut {
  double total;             ///< candidates to take, over every rank's heads
  double candidates;        ///< candidates, over every rank's heads
  double needed;            ///< candidates still to take among those whose key starts as `threshold` does
  double tied;              ///< this rank's candidates whose key is `threshold` (after the last round)
  double tied_before;       ///< such candidates on the ranks before this one
  std::uint32_t threshold;  ///< the digits chosen so far of the key of the total-th best candidate
  std::uint32_t pad;        ///< keeps the size a multiple of 8 bytes
};

/// The state before the first round, from the layer-wide @p total and @p candidates (sums over the ranks).
KVCOMPACT_HOST_DEVICE inline layer_cut start_layer_cut(double total, double candidates) { return {total, candidates, total, 0.0, 0.0, 0u, 0u}; }

/// Whether the layer takes every candidate or none, so no round is needed.
KVCOMPACT_HOST_DEVICE inline bool takes_all_or_none(const layer_cut& cut) { return cut.total >= cut.candidates || cut.total <= 0.0; }

/// Shift of the first round's digit; each round moves down by layer_digit_bits.
inline constexpr int layer_first_shift = 28;
/// Bits of a round's digit (16 bins).
inline constexpr int layer_digit_bits = 4;
/// Bins of a round.
inline constexpr int layer_digit_bins = 16;

/// Candidates per digit of one round.
struct digit_counts {
  std::uint32_t n[layer_digit_bins];  ///< candidates whose digit is the index
};

/// Element-wise sum of two digit_counts.
struct digit_counts_sum {
  /// @return a + b, bin by bin
  KVCOMPACT_HOST_DEVICE digit_counts operator()(const digit_counts& a, const digit_counts& b) const {
    digit_counts c{};
    for (int d = 0; d < layer_digit_bins; ++d) c.n[d] = a.n[d] + b.n[d];
    return c;
  }
};

/// Sum of two counts.
struct count_sum {
  /// @return a + b
  KVCOMPACT_HOST_DEVICE index_t operator()(index_t a, index_t b) const { return a + b; }
};

/// One head's candidates above a layer's threshold and at it (take_counts()).
struct threshold_counts {
  index_t greater;  ///< candidates whose key exceeds the threshold
  index_t tied;     ///< candidates whose key is the threshold
};

/// Field-wise sum of two threshold_counts.
struct threshold_counts_sum {
  /// @return a + b, field by field
  KVCOMPACT_HOST_DEVICE threshold_counts operator()(const threshold_counts& a, const threshold_counts& b) const {
    return {a.greater + b.greater, a.tied + b.tied};
  }
};

/// One round (group code): this rank's candidates by their digit at @p shift, among those whose key
/// starts with the digits chosen so far. @p list has `heads()`, `count(h)` (candidates of head h,
/// negative for a head that takes no part) and `key(h, i)` (the 32-bit order key of candidate i,
/// kvcompact::detail::orderable_bits of its score).
/// @param group execution group @param list the layer's candidates @param cut the state @param shift the digit's shift
/// @return the counts, in every worker
template <class Group, class Candidates>
KVCOMPACT_HOST_DEVICE digit_counts count_digits(const Group& group, const Candidates& list, const layer_cut& cut, int shift) {
  const std::uint32_t above = shift == layer_first_shift ? 0u : ~((1u << (shift + layer_digit_bits)) - 1u);  // the digits already chosen
  digit_counts bins{};
  for (int h = 0; h < list.heads(); ++h) {
    const digit_counts head = group.reduce(
        list.count(h) > 0 ? list.count(h) : index_t{0},
        [&](index_t i) {
          digit_counts one{};
          const std::uint32_t k = list.key(h, i);
          if ((k & above) == (cut.threshold & above)) one.n[(k >> shift) & (layer_digit_bins - 1)] = 1;
          return one;
        },
        digit_counts{}, digit_counts_sum{});
    bins = digit_counts_sum{}(bins, head);
  }
  return bins;
}

/// Chooses the round's digit from the counts over every rank (@p bins, layer_digit_bins doubles):
/// the highest digit whose candidates, with those of higher digits, reach `needed`.
/// @param cut the state, updated @param bins the round's counts over the ranks @param shift the digit's shift
KVCOMPACT_HOST_DEVICE inline void choose_digit(layer_cut& cut, const double* bins, int shift) {
  int digit = layer_digit_bins - 1;
  for (; digit > 0 && bins[digit] < cut.needed; --digit) cut.needed -= bins[digit];
  cut.threshold |= static_cast<std::uint32_t>(digit) << shift;
}

/// This rank's candidates whose key is the threshold, after the last round (group code).
/// @return their count, in every worker
template <class Group, class Candidates>
KVCOMPACT_HOST_DEVICE index_t count_tied(const Group& group, const Candidates& list, const layer_cut& cut) {
  index_t tied = 0;
  for (int h = 0; h < list.heads(); ++h)
    tied += group.reduce(
        list.count(h) > 0 ? list.count(h) : index_t{0}, [&](index_t i) { return list.key(h, i) == cut.threshold ? index_t{1} : index_t{0}; },
        index_t{0}, count_sum{});
  return tied;
}

/// Hands every taking head its count of the layer's best (group code; `set_taken(h, n)` runs on one
/// worker): all or none when takes_all_or_none(), else the candidates above the threshold and,
/// lower heads first, the `needed` candidates tied at it that the ranks before left (`tied_before` set).
/// One pass over each head counts both.
template <class Group, class Candidates, class SetTaken>
KVCOMPACT_HOST_DEVICE void take_counts(const Group& group, const Candidates& list, const layer_cut& cut, const SetTaken& set_taken) {
  if (takes_all_or_none(cut)) {
    for (int h = 0; h < list.heads(); ++h)
      if (list.count(h) >= 0) group.once([&] { set_taken(h, cut.total <= 0.0 ? 0 : list.count(h)); });
    return;
  }
  double remaining = cut.needed - cut.tied_before;
  for (int h = 0; h < list.heads(); ++h) {
    if (list.count(h) < 0) continue;
    const threshold_counts at = group.reduce(
        list.count(h),
        [&](index_t i) {
          const std::uint32_t key = list.key(h, i);
          return threshold_counts{key > cut.threshold ? index_t{1} : index_t{0}, key == cut.threshold ? index_t{1} : index_t{0}};
        },
        threshold_counts{0, 0}, threshold_counts_sum{});
    const index_t take = remaining <= 0.0 ? 0 : (remaining >= static_cast<double>(at.tied) ? at.tied : static_cast<index_t>(remaining));
    remaining -= static_cast<double>(take);
    group.once([&] { set_taken(h, at.greater + take); });
  }
}

/// How many candidates of each KV head belong to the @p total best of the layer, over the KV heads of
/// every rank of @p ctx's group (host code, one worker): @p list as in count_digits(). Equal scores go
/// to the lower head first (ranks hold consecutive heads), then in list order, as a merge of the lists
/// that prefers the lower head on ties. Each head's count is passed to `set_taken(h, n)`. The rounds of
/// count_digits() and choose_digit(): 8 all-reduces of 16 counts, plus one per rank for the ties.
/// @param group execution group (one worker) @param ctx selection context
/// @param total layer-wide number of candidates to take @param list the layer's candidates
/// @param set_taken receives each taking head's count
template <class Group, class Ctx, class Candidates, class SetTaken>
KVCOMPACT_HOST_DEVICE void layer_top_counts(const Group& group, const Ctx& ctx, index_t total, const Candidates& list, const SetTaken& set_taken) {
  double candidates = 0.0;
  for (int h = 0; h < list.heads(); ++h) candidates += list.count(h) > 0 ? static_cast<double>(list.count(h)) : 0.0;
  sum_across_ranks(ctx, &candidates, 1);
  layer_cut cut = start_layer_cut(static_cast<double>(total), candidates);
  if (!takes_all_or_none(cut)) {
    for (int shift = layer_first_shift; shift >= 0; shift -= layer_digit_bits) {
      const digit_counts counts = count_digits(group, list, cut, shift);
      double bins[layer_digit_bins];
      for (int d = 0; d < layer_digit_bins; ++d) bins[d] = static_cast<double>(counts.n[d]);
      sum_across_ranks(ctx, bins, layer_digit_bins);
      choose_digit(cut, bins, shift);
    }
    cut.tied = static_cast<double>(count_tied(group, list, cut));
    cut.tied_before = prefix_across_ranks(ctx, cut.tied).before;
  }
  take_counts(group, list, cut, set_taken);
}

}  // namespace detail

KVCOMPACT_NAMESPACE_END
