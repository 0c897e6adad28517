// SPDX-License-Identifier: Apache-2.0
/// @file
/// @brief Where each array of the CUDA backend lives inside the caller's state and workspace.
#pragma once

#include <kvcompact/cuda/detail/compaction.cuh>
#include <kvcompact/cuda/detail/decode_update_kernel.cuh>
#include <kvcompact/cuda/detail/top_k.cuh>
#include <kvcompact/detail/ranked_selection.hpp>
#include <kvcompact/selectors/layer_ranking.hpp>
#include <kvcompact/types.hpp>

#include <cstddef>
#include <cstdint>

KVCOMPACT_NAMESPACE_BEGIN
namespace cuda::detail {

/// The padded head dimension of the window-scoring tiles for @p head_dim (at most 256): 64, 128 or 256.
KVCOMPACT_HOST_DEVICE constexpr int padded_head_dim(index_t head_dim) { return head_dim <= 64 ? 64 : head_dim <= 128 ? 128 : 256; }
/// Window rows per query head padded to the 8-row tiles of the scoring kernels.
KVCOMPACT_HOST_DEVICE constexpr index_t padded_window_rows(index_t rows) { return (rows + 7) / 8 * 8; }

/// Fewest keys one block of the window-scoring kernels takes (a multiple of both kernels' key tiles).
inline constexpr index_t window_chunk_quantum = 256;
/// Blocks the window-scoring kernels are planned for at most: key chunks per head are capped so that
/// heads x chunks stays near this (several waves on any current GPU), which bounds the statistics array.
inline constexpr index_t window_block_target = 1024;

/// Most key chunks per head the statistics array is sized for.
KVCOMPACT_HOST_DEVICE inline index_t window_chunk_cap(index_t heads, index_t capacity) {
  const index_t by_blocks = (window_block_target + heads - 1) / heads;
  const index_t by_keys = (capacity + window_chunk_quantum - 1) / window_chunk_quantum;
  return by_blocks < by_keys ? by_blocks : by_keys;
}
/// Most blocks one head's decode attention is split into.
inline constexpr index_t max_decode_splits = 64;

/// Byte offsets of the backend's arrays. Every array starts on a 256-byte boundary.
struct workspace_plan {
  // Prefill, per (sequence, layer, kv head, slot) unless noted.
  std::size_t scores = 0;        ///< float: slot scores
  std::size_t floats = 0;        ///< float: selector scratch (pooled scores)
  std::size_t indices = 0;       ///< int32 x 2: selector scratch (candidates, sort keys)
  std::size_t order = 0;         ///< int32: slots in position order
  std::size_t targets = 0;       ///< int32: merge targets
  std::size_t keep = 0;          ///< uint8: keep flags
  std::size_t query_scores = 0;  ///< float [S][L][Hq][capacity]: row-reduced scores per query head
  std::size_t order_ready = 0;   ///< uint8 [S][L][Hkv]
  std::size_t ranking = 0;       ///< kvcompact::detail::ranked_head [S][L][Hkv]: ranked selectors' per-head state
  std::size_t shared = 0;        ///< int32 [S][capacity + 2]: store shared by the layers of a sequence
  std::size_t step = 0;          ///< int32 [S][L]: newest position of each layer
  std::size_t layer_faults = 0;  ///< int32 [S][L]: nonzero leaves the layer as it is
  std::size_t rank_exchange = 0;  ///< double [S][L][max(16, capacity)]: what the ranks of a tensor-parallel group sum (rank_exchange.cuh, layer_ranking_exchange.cuh)
  std::size_t layer_cuts = 0;     ///< kvcompact::detail::layer_cut [S][L]: each layer's ranking across ranks (layer_ranking_exchange.cuh)
  std::size_t stats = 0;         ///< float [S][L][Hkv][key chunks][3][G x padded rows]: per-chunk softmax statistics of window rows
  std::size_t row_lse = 0;       ///< float [S][L][Hkv][G x padded rows]: log2 of each window row's softmax denominator (scaled logits)
  std::size_t row_visible = 0;   ///< int32 [S][L][Hkv][G x padded rows]: keys each window row sees
  std::size_t window_queries = 0;  ///< storage type [S][L][Hq][padded rows][padded head_dim]: the window in the storage type
  std::size_t top_k_counts = 0;  ///< int32 [S][L][Hkv]: a ranked selector's candidates per head
  std::size_t top_k_quota = 0;   ///< int32 [S][L][Hkv]: the candidates each head keeps
  std::size_t top_k_scratch = 0;        ///< launch_top_k's scratch (one scope per head)
  std::size_t top_k_scratch_bytes = 0;  ///< its size
  std::size_t compaction = 0;           ///< launch_compaction's scratch
  std::size_t compaction_bytes = 0;     ///< its size
  // Decode.
  std::size_t logits = 0;              ///< float [S][Hq][capacity]
  std::size_t partial_out = 0;         ///< float [S][Hq][splits][head_dim]
  std::size_t partial_max = 0;         ///< float [S][Hq][splits]
  std::size_t partial_sum = 0;         ///< float [S][Hq][splits]
  std::size_t partial_count = 0;       ///< int32 [S][Hkv][splits]
  std::size_t head_max = 0;            ///< float [S][Hq]: softmax maximum of each query head
  std::size_t head_sum = 0;            ///< float [S][Hq]: softmax sum of each query head
  std::size_t head_visible = 0;        ///< int32 [S][Hkv]: keys each query of a head attended
  std::size_t tile_victims = 0;        ///< victim_pair [S][Hkv][update tiles]: eviction candidates of each state-pass block
  std::size_t decode_order_ready = 0;  ///< uint8 [S][Hkv][Hkv]: one private array per (sequence, head) block
  std::size_t total = 0;               ///< bytes in all

  /// Lays the arrays out for a cache of @p sequences x @p layers x @p kv_heads x @p capacity slots of
  /// @p element_bytes-byte elements; window scoring takes up to @p window_rows rows.
  static workspace_plan make(index_t sequences, index_t layers, index_t kv_heads, index_t capacity, index_t head_dim, index_t query_heads,
                             index_t window_rows, index_t element_bytes) {
    workspace_plan p;
    std::size_t at = 0;
    const auto take = [&](std::size_t& field, index_t count, std::size_t element) {
      field = at;
      at += (static_cast<std::size_t>(count) * element + 255) / 256 * 256;
    };
    const index_t slot_heads = sequences * layers * kv_heads * capacity;
    const index_t heads = sequences * layers * kv_heads;
    const index_t group_rows = query_heads / kv_heads * padded_window_rows(window_rows);
    const index_t tile_slots = compaction_tile_slots(head_dim, static_cast<std::size_t>(element_bytes));
    take(p.scores, slot_heads, 4);
    take(p.floats, slot_heads, 4);
    take(p.indices, 2 * slot_heads, 4);
    take(p.order, slot_heads, 4);
    take(p.targets, slot_heads, 4);
    take(p.keep, slot_heads, 1);
    take(p.query_scores, sequences * layers * query_heads * capacity, 4);
    take(p.order_ready, sequences * layers * kv_heads, 1);
    take(p.ranking, sequences * layers * kv_heads, sizeof(::kvcompact::detail::ranked_head));
    take(p.shared, sequences * (capacity + 2), 4);
    take(p.step, sequences * layers, 4);
    take(p.layer_faults, sequences * layers, 4);
    const index_t exchanged = capacity > ::kvcompact::detail::layer_digit_bins ? capacity : ::kvcompact::detail::layer_digit_bins;
    // Shared scores and WindowKV's window sums: a slot each; Ada-KV: digit bins. Planned for every
    // session, grouped or not: the engine sizes and allocates the workspace (workspace_bytes() knows no
    // group) before it constructs the session and calls set_rank_group(), so a group-only slot would need
    // the rank count in workspace_bytes() and a size check in set_rank_group(), a change to every
    // tensor-parallel engine's sizing call. It costs 8 / kv_heads bytes per slot of a head (the scores
    // alone take 4).
    take(p.rank_exchange, exchanged * sequences * layers, sizeof(double));
    take(p.layer_cuts, sequences * layers, sizeof(::kvcompact::detail::layer_cut));
    take(p.stats, heads * window_chunk_cap(heads, capacity) * 3 * group_rows, 4);
    take(p.row_lse, heads * group_rows, 4);
    take(p.row_visible, heads * group_rows, 4);
    take(p.window_queries, sequences * layers * query_heads * padded_window_rows(window_rows) * padded_head_dim(head_dim),
         static_cast<std::size_t>(element_bytes));
    take(p.top_k_counts, heads, 4);
    take(p.top_k_quota, heads, 4);
    p.top_k_scratch_bytes = top_k_workspace_bytes(heads, 1, capacity);
    take(p.top_k_scratch, static_cast<index_t>(p.top_k_scratch_bytes), 1);
    p.compaction_bytes = tile_slots > 0 ? compaction_workspace_bytes(heads, capacity, tile_slots) : 0;
    take(p.compaction, static_cast<index_t>(p.compaction_bytes), 1);
    take(p.logits, sequences * query_heads * capacity, 4);
    take(p.partial_out, sequences * query_heads * max_decode_splits * head_dim, 4);
    take(p.partial_max, sequences * query_heads * max_decode_splits, 4);
    take(p.partial_sum, sequences * query_heads * max_decode_splits, 4);
    take(p.partial_count, sequences * kv_heads * max_decode_splits, 4);
    take(p.head_max, sequences * query_heads, 4);
    take(p.head_sum, sequences * query_heads, 4);
    take(p.head_visible, sequences * kv_heads, 4);
    take(p.tile_victims, sequences * kv_heads * ((capacity + update_tile - 1) / update_tile), sizeof(victim_pair));
    take(p.decode_order_ready, sequences * kv_heads * kv_heads, 1);
    p.total = at;
    return p;
  }
};

/// The array of type @p T at byte @p offset of @p base.
template <class T>
T* at_offset(std::byte* base, std::size_t offset) {
  return reinterpret_cast<T*>(base + offset);
}

}  // namespace cuda::detail
KVCOMPACT_NAMESPACE_END
