// SPDX-License-Identifier: Apache-2.0
/// @file
/// @brief Tensor-parallel shards: the engine's all-reduce, handed to a session whose KV heads are one
/// rank's share of the model's, for the decisions that span KV heads (kvcompact::rank_group).
#pragma once

#include <kvcompact/error.hpp>
#include <kvcompact/numeric.hpp>
#include <kvcompact/types.hpp>

#include <concepts>
#include <cstdint>
#include <string>

KVCOMPACT_NAMESPACE_BEGIN

namespace detail {
/// Checks the fields of a rank group (kvcompact::rank_group, kvcompact::cuda::device_rank_group):
/// @p ranks at least 1, @p rank in [0, ranks), an all-reduce (@p reduces) when there are several ranks.
/// @throws kvcompact::error naming "group.ranks", "group.rank" or "group.all_reduce_sum"
inline void validate_rank_fields(int ranks, int rank, bool reduces, const char* where) {
  require(ranks >= 1, where, "group.ranks", [&] { return "is " + std::to_string(ranks) + ", must be at least 1"; });
  require(rank >= 0 && rank < ranks, where, "group.rank", [&] { return "is " + std::to_string(rank) + ", outside [0, " + std::to_string(ranks) + ")"; });
  require(ranks == 1 || reduces, where, "group.all_reduce_sum", "null pointer, but the group has several ranks");
}
}  // namespace detail

/// @brief One rank of a tensor-parallel group: the session's KV heads are heads
/// `[rank * kv_heads, (rank + 1) * kv_heads)` of the model (and its query heads the matching GQA
/// groups), and `all_reduce_sum` is the engine's all-reduce over the group (NCCL, MPI, a thread
/// barrier...). Every rank calls the same session entry points in the same order; the session calls
/// `all_reduce_sum` where a decision spans the KV heads of a layer (the layer's newest position,
/// Ada-KV's layer-wide ranking, scores shared across KV heads, WindowKV's windows), so each rank keeps
/// exactly what one unsharded session would keep for its heads.
struct rank_group {
  int ranks = 1;            ///< ranks in the group (1: no sharding, the hook is never called)
  int rank = 0;             ///< this rank, in [0, ranks); ranks hold consecutive KV heads in rank order
  void* context = nullptr;  ///< passed back to all_reduce_sum (the engine's communicator)
  /// Sums @p count values element-wise over the ranks, in place, returning the same result on every
  /// rank; called by every rank with the same count. Sums of counts below 2^53 are exact.
  void (*all_reduce_sum)(void* context, double* values, index_t count) = nullptr;

  /// @brief Checks the fields.
  /// @param where the entry point (for the error message)
  /// @throws kvcompact::error naming "group.ranks", "group.rank" or "group.all_reduce_sum"
  void validate(const char* where) const { detail::validate_rank_fields(ranks, rank, all_reduce_sum != nullptr, where); }
};

/// @brief Sums a selector's stage ahead of it finished over the query heads of every rank of a
/// tensor-parallel group (the CUDA backend's kvcompact::cuda::detail::rank_sums_kernel, for a
/// kvcompact::rank_summing_selector): the selector reads them from its context instead of summing its
/// own heads.
struct rank_summed_values {
  const double* values = nullptr;  ///< the finished sums as kvcompact::detail::float_as_exchanged() values (null: none)
  int ranks = 1;                   ///< ranks whose query heads the sums span
};

/// @brief A selector that, before it decides a layer, sums values over the layer's query heads in
/// query-head order by a running float sum a backend can carry on from rank to rank (WindowKV's window
/// scores): `rank_sum_count(ctx)` values of the layer (they may depend on the context's scores, orders
/// and lengths, not on what earlier layers published), the i-th carried on from `running` over the
/// context's own query heads by `continue_rank_sum(ctx, i, running)`. With several ranks the CUDA
/// backend runs that stage rank after rank and hands the finished sums to the selector through the
/// context (kvcompact::rank_summed_values); the host backend's selector calls
/// kvcompact::detail::continue_across_ranks itself.
/// @tparam Selector the selector @tparam Ctx its selection context
template <class Selector, class Ctx>
concept rank_summing_selector = requires(const Selector& selector, const Ctx& ctx, index_t i, float running) {
  { selector.rank_sum_count(ctx) } -> std::convertible_to<index_t>;
  { selector.continue_rank_sum(ctx, i, running) } -> std::convertible_to<float>;
};

namespace detail {

/// Hands @p count values of rank @p from to every rank of @p group with one all-reduce: rank @p from
/// publishes its @p values, every other rank overwrites its @p values with zeros, and the sum leaves
/// rank @p from's values, exactly, on every rank. Every rank of the group calls it with the same
/// @p from and @p count.
KVCOMPACT_HOST_DEVICE inline void publish_from_rank(const rank_group& group, int from, double* values, index_t count) {
  if (group.rank != from)
    for (index_t i = 0; i < count; ++i) values[i] = 0.0;
  group.all_reduce_sum(group.context, values, count);
}

/// The largest of @p value over the ranks of @p group (one all-reduce per rank; host code).
inline index_t max_across_ranks(const rank_group& group, index_t value) {
  index_t largest = value;
  for (int r = 0; r < group.ranks && group.ranks > 1; ++r) {
    double published = static_cast<double>(value);
    publish_from_rank(group, r, &published, 1);
    largest = static_cast<index_t>(published) > largest ? static_cast<index_t>(published) : largest;
  }
  return largest;
}

/// A float's bit pattern as the integer-valued double an all-reduce carries from one rank to the
/// others (publish_from_rank(); on the device cuda::detail::continue_across_ranks): sums of integers
/// below 2^53 are exact, so exchanged_as_float() gives the float back bit for bit (negative zeros and
/// NaN payloads too).
/// @param value the float @return its bits as a double
KVCOMPACT_HOST_DEVICE inline double float_as_exchanged(float value) { return static_cast<double>(float_bits(value)); }
/// The float whose bit pattern float_as_exchanged() carried. @param bits the double @return the float
KVCOMPACT_HOST_DEVICE inline float exchanged_as_float(double bits) { return bits_float(static_cast<std::uint32_t>(bits)); }

/// Hands @p count floats of rank @p from to every rank of @p group, bit for bit (host code), as
/// float_as_exchanged() values through publish_from_rank(). One all-reduce per 1024 values.
inline void broadcast_floats(const rank_group& group, int from, float* values, index_t count) {
  constexpr index_t chunk = 1024;
  double bits[chunk];
  for (index_t first = 0; first < count; first += chunk) {
    const index_t n = count - first < chunk ? count - first : chunk;
    if (group.rank == from)
      for (index_t i = 0; i < n; ++i) bits[i] = float_as_exchanged(values[first + i]);
    publish_from_rank(group, from, bits, n);
    for (index_t i = 0; i < n; ++i) values[first + i] = exchanged_as_float(bits[i]);
  }
}

/// Continues a running reduction over the query heads of every rank of @p group in the order of one
/// unsharded session: ranks hold consecutive query heads, so rank 0 runs @p add_local, which carries
/// the @p count running @p values on over this rank's heads, then hands them to rank 1, and so on;
/// afterwards every rank holds the values the last rank finished, bit for bit what one session
/// computes. Without a group of several ranks (and in device code, which has none) add_local runs once.
/// Calls broadcast_floats() once per rank.
KVCOMPACT_EXEC_CHECK_DISABLE
template <class AddLocal>
KVCOMPACT_HOST_DEVICE void continue_across_ranks(const rank_group* group, float* values, index_t count, const AddLocal& add_local) {
#if defined(__CUDA_ARCH__)
  add_local();
#else
  if (group == nullptr || group->ranks == 1) {
    add_local();
    return;
  }
  for (int r = 0; r < group->ranks; ++r) {
    if (r == group->rank) add_local();
    broadcast_floats(*group, r, values, count);
  }
#endif
}

/// The rank group of a selection context (none for contexts without one: single-rank, device code).
template <class Ctx>
KVCOMPACT_HOST_DEVICE const rank_group* rank_group_of(const Ctx& ctx) {
  if constexpr (requires { ctx.ranks(); }) return ctx.ranks();
  else return nullptr;
}

/// The sums a rank-summing selector's stage finished over every rank, as @p ctx hands them on (none
/// for contexts without them: one rank, the host backend).
template <class Ctx>
KVCOMPACT_HOST_DEVICE rank_summed_values rank_summed_of(const Ctx& ctx) {
  if constexpr (requires { ctx.rank_summed(); }) return ctx.rank_summed();
  else return {};
}

/// Sums @p count values over the ranks of @p ctx's group in place (nothing to do with one rank).
template <class Ctx>
KVCOMPACT_HOST_DEVICE void sum_across_ranks(const Ctx& ctx, double* values, index_t count) {
  const rank_group* group = rank_group_of(ctx);
  if (group != nullptr && group->ranks > 1) group->all_reduce_sum(group->context, values, count);
}

/// Sum over every rank of @p local, and the sum over the ranks before this one.
struct rank_sums {
  double total;   ///< over every rank
  double before;  ///< over the ranks before this one
};

/// The sum of @p local over the ranks and its exclusive prefix in rank order (one all-reduce per rank).
template <class Ctx>
KVCOMPACT_HOST_DEVICE rank_sums prefix_across_ranks(const Ctx& ctx, double local) {
  const rank_group* group = rank_group_of(ctx);
  if (group == nullptr || group->ranks == 1) return {local, 0.0};
  rank_sums sums{0.0, 0.0};
  for (int r = 0; r < group->ranks; ++r) {
    double value = local;
    publish_from_rank(*group, r, &value, 1);
    sums.total += value;
    if (r < group->rank) sums.before += value;
  }
  return sums;
}

}  // namespace detail

KVCOMPACT_NAMESPACE_END
