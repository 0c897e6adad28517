// SPDX-License-Identifier: Apache-2.0
/// @file
/// @brief The decode step's state pass, launched right after decode_attention_kernel (as its
/// programmatic dependent on sm_90, so its launch overlaps the attention's tail): one thread per slot
/// turns the slot's logits into probabilities with the head's final softmax maximum and sum, folds
/// the scorer's group-reduced term into the slot's state exactly as the CPU backend's attend() does,
/// and, for ranked decode evictions, keeps the worst candidates it sees; per head, the last block to
/// finish reduces the blocks' candidates into the eviction_record the next insertion reads, so that
/// insertion never scans the head.
#pragma once

#include <kvcompact/cuda/detail/block_primitives.cuh>
#include <kvcompact/cuda/detail/decode_kernels.cuh>
#include <kvcompact/cuda/detail/decode_victims.cuh>
#include <kvcompact/cuda/detail/last_block.cuh>
#include <kvcompact/cuda/detail/ptx_grid_dependency.cuh>
#include <kvcompact/detail/decode_eviction.hpp>
#include <kvcompact/tensor_parallel.hpp>

#include <cmath>
#include <cstdint>

KVCOMPACT_NAMESPACE_BEGIN
namespace cuda::detail {

/// Threads per block of decode_update_kernel.
inline constexpr int update_threads = 256;
/// Slots each thread of decode_update_kernel handles.
inline constexpr int update_slots_per_thread = 4;
/// Slots per block of decode_update_kernel.
inline constexpr int update_tile = update_threads * update_slots_per_thread;

/// What decode_update_kernel updates and records (device pointers).
template <class State>
struct update_problem {
  State* states;                  ///< [S][L][Hkv][capacity] decode states
  eviction_record* records;       ///< [S][L][Hkv] victims for the next insertion
  victim_pair* tile_victims;      ///< [S][Hkv][tiles] each block's candidates
  std::int32_t* arrivals;         ///< [S][Hkv] blocks done (0 between launches)
  int tiles;                      ///< blocks per head (capacity / update_tile, rounded up)
  std::int32_t generation;        ///< the session's generation, stamped on the records
  bool update_states;             ///< fold the query's attention into the states (the scorer reads attention)
  bool find_victims;              ///< record the candidates of a ranked decode eviction
  /// Scores shared across KV heads on one rank of several: [S][capacity] the group reduction's
  /// running accumulators (kvcompact::detail::float_as_exchanged()) handed from rank to rank
  /// (continue_across_ranks in rank_exchange.cuh); null on one rank.
  double* running = nullptr;
  bool hand_on = false;    ///< with `running`: carry the accumulators on over this rank's query heads and write them back, nothing else
  bool continues = false;  ///< with `hand_on`: start from `running` (a rank after the first) instead of the identity
  int ranks = 1;           ///< ranks whose query heads the shared reduction spans
};

/// Bytes of dynamic shared memory of decode_update_kernel: softmax statistics of the reduced query
/// heads, lengths and visible-key counts of the KV heads.
inline std::size_t update_shared_bytes(index_t reduced_query_heads, index_t kv_heads) {
  return static_cast<std::size_t>(2 * reduced_query_heads + 2 * kv_heads) * 4;
}

/// The body of decode_update_kernel (see there).
template <class Policy, class T, class Layout>
__device__ void update_states_and_find_victims(const decode_problem<T, Layout>& p, const update_problem<typename Policy::scorer_type::state_type>& u,
                                               const Policy& policy) {
  constexpr bool shared_scores = Policy::shares_scores_across_kv_heads;
  KVCOMPACT_DYNAMIC_SHARED(float, shared);
  const index_t query_position = p.query_positions[blockIdx.z];
  if (query_position < 0) return;
  const int s = static_cast<int>(blockIdx.z), tile = static_cast<int>(blockIdx.x), tid = static_cast<int>(threadIdx.x);
  const Layout& layout = p.cache.layout;
  const int capacity = static_cast<int>(layout.capacity()), kv_heads = static_cast<int>(layout.num_kv_heads());
  const int first_kv = shared_scores ? 0 : static_cast<int>(blockIdx.y), last_kv = shared_scores ? kv_heads : first_kv + 1;
  const int reduced = shared_scores ? p.query_heads : p.group;  // query heads the group reduction runs over
  const int first_query = shared_scores ? 0 : first_kv * p.group;
  float* maxima = shared;
  float* sums = maxima + reduced;
  auto* lengths = reinterpret_cast<std::int32_t*>(sums + reduced);
  std::int32_t* visible = lengths + kv_heads;
  if (u.update_states)
    for (int i = tid; i < reduced; i += update_threads) {
      const index_t query = static_cast<index_t>(s) * p.query_heads + first_query + i;
      maxima[i] = p.head_max[query];
      sums[i] = p.head_sum[query];
    }
  for (int kh = tid; kh < kv_heads; kh += update_threads) {
    const std::int32_t length = p.cache.lengths[p.cache.head_index(s, p.storage_layer, kh)];
    lengths[kh] = length >= 0 && length <= capacity ? length : 0;  // the attention kernel reports a bad one
    visible[kh] = u.update_states ? p.head_visible[static_cast<index_t>(s) * kv_heads + kh] : 0;
  }
  __syncthreads();
  auto attended = [&](int kh, int slot) {  // the query attended the slot of KV head kh
    const index_t head = p.cache.head_index(s, p.storage_layer, kh);
    return slot < lengths[kh] && ::kvcompact::detail::attends(layout, p.model_layer, p.cache.positions[head * capacity + slot], query_position);
  };
  // The current query's group-reduced term of each of the thread's slots (as cpu::session::attend).
  float term[update_slots_per_thread] = {};
  if constexpr (Policy::needs_attention) {
    const auto& scorer = policy.scorer;
    if (u.update_states)
KVCOMPACT_UNROLL
      for (int k = 0; k < update_slots_per_thread; ++k) {
        const int slot = tile * update_tile + tid + k * update_threads;
        if (slot >= capacity) break;
        const index_t running_slot = static_cast<index_t>(s) * capacity + slot;
        if (u.running != nullptr && !u.hand_on) {  // every rank has added its query heads
          term[k] = ::kvcompact::detail::reduction_finish(scorer.group, ::kvcompact::detail::exchanged_as_float(u.running[running_slot]), reduced * u.ranks);
          continue;
        }
        float acc = u.hand_on && u.continues ? ::kvcompact::detail::exchanged_as_float(u.running[running_slot])
                                             : ::kvcompact::detail::reduction_identity(scorer.group);
        for (int kh = first_kv; kh < last_kv; ++kh) {  // the KV heads of the reduced query heads
          const bool seen = attended(kh, slot);
          const float* logits = p.logits + ((static_cast<index_t>(s) * kv_heads + kh) * capacity + slot) * p.group;
          for (int g = 0; g < p.group; ++g) {
            const int i = (kh - first_kv) * p.group + g;
            const float row_term = seen ? scorer.row_term(exp2f(logits[g] - maxima[i]) / sums[i], visible[kh], query_position) : 0.0f;
            acc = ::kvcompact::detail::reduction_combine(scorer.group, acc, row_term);
          }
        }
        if (u.hand_on)
          u.running[running_slot] = ::kvcompact::detail::float_as_exchanged(acc);
        else
          term[k] = ::kvcompact::detail::reduction_finish(scorer.group, acc, reduced);
      }
    if (u.hand_on) return;
  }
  for (int kh = first_kv; kh < last_kv; ++kh) {
    const index_t head = p.cache.head_index(s, p.storage_layer, kh);
    victim_pair found = no_victims();
KVCOMPACT_UNROLL
    for (int k = 0; k < update_slots_per_thread; ++k) {
      const int slot = tile * update_tile + tid + k * update_threads;
      if (slot >= lengths[kh]) break;
      const index_t position = p.cache.positions[head * capacity + slot];
      auto& state = u.states[head * capacity + slot];
      if constexpr (Policy::needs_attention)
        if (u.update_states && ::kvcompact::detail::attends(layout, p.model_layer, position, query_position))
          policy.scorer.observe(state, term[k], query_position);
      if (u.find_victims) {
        const auto now = ::kvcompact::detail::decode_eviction_verdict(policy, state, position, query_position);
        const auto next = ::kvcompact::detail::decode_eviction_verdict(policy, state, position, query_position + 1);
        const victim candidate{now.key, static_cast<std::int32_t>(position), slot};
        if (isnan(now.key)) found.nan_slot = slot;
        if (now.candidate) found.now = worse_victim(found.now, candidate);
        if (next.candidate) found.next = worse_victim(found.next, candidate);
      }
    }
    if (!u.find_victims) continue;
    found = block_reduce<update_threads>(found, combine_victims{});
    const index_t record = static_cast<index_t>(s) * kv_heads + kh;
    if (tid == 0) u.tile_victims[record * u.tiles + tile] = found;
    if (!block_arrives_last(u.arrivals + record, u.tiles)) continue;
    victim_pair all = no_victims();
    for (int i = tid; i < u.tiles; i += update_threads) all = combine_victims{}(all, u.tile_victims[record * u.tiles + i]);
    all = block_reduce<update_threads>(all, combine_victims{});
    if (tid == 0) u.records[head] = eviction_record{u.generation, static_cast<std::int32_t>(query_position), all};
  }
}

/// Grid (tiles, KV heads or 1 when the scorer shares its score across KV heads, sequences),
/// update_threads threads, update_shared_bytes(): see the file comment. Reads the attention kernel's
/// logits and statistics only after waiting for it; a pass that only finds victims (scorers that read
/// no attention) overlaps the attention kernel.
template <class Policy, class T, class Layout>
KVCOMPACT_KERNEL void __launch_bounds__(update_threads, 4)
    decode_update_kernel(const decode_problem<T, Layout> p, const update_problem<typename Policy::scorer_type::state_type> u, const Policy policy) {
  if (u.update_states) wait_for_prerequisite_grids();
  update_states_and_find_victims(p, u, policy);
  wait_for_prerequisite_grids();  // this kernel completes after the attention kernel
}

}  // namespace cuda::detail
KVCOMPACT_NAMESPACE_END
