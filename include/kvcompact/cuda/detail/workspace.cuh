// SPDX-License-Identifier: Apache-2.0
/// @file
/// @brief Where each array of the CUDA backend lives inside the caller's state and workspace.
#pragma once

#include <kvcompact/detail/ranked_selection.hpp>
#include <kvcompact/types.hpp>

#include <cstddef>
#include <cstdint>

KVCOMPACT_NAMESPACE_BEGIN
namespace cuda::detail {

/// Keys scored by one block of the window-scoring kernels.
inline constexpr index_t window_key_chunk = 512;
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
  std::size_t stats = 0;         ///< float [S][L][Hkv][3][rows x G][key chunks]: softmax statistics of window rows
  // Decode.
  std::size_t logits = 0;              ///< float [S][Hq][capacity]
  std::size_t partial_out = 0;         ///< float [S][Hq][splits][head_dim]
  std::size_t partial_max = 0;         ///< float [S][Hq][splits]
  std::size_t partial_sum = 0;         ///< float [S][Hq][splits]
  std::size_t partial_count = 0;       ///< int32 [S][Hkv][splits]
  std::size_t decode_order_ready = 0;  ///< uint8 [S][Hkv][Hkv]: one private array per (sequence, head) block
  std::size_t total = 0;               ///< bytes in all

  /// Lays the arrays out for a cache of @p sequences x @p layers x @p kv_heads x @p capacity slots.
  static workspace_plan make(index_t sequences, index_t layers, index_t kv_heads, index_t capacity, index_t head_dim, index_t query_heads,
                             index_t window_rows) {
    workspace_plan p;
    std::size_t at = 0;
    const auto take = [&](std::size_t& field, index_t count, std::size_t element) {
      field = at;
      at += (static_cast<std::size_t>(count) * element + 255) / 256 * 256;
    };
    const index_t slot_heads = sequences * layers * kv_heads * capacity;
    const index_t chunks = (capacity + window_key_chunk - 1) / window_key_chunk;
    const index_t group = query_heads / kv_heads;
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
    take(p.stats, sequences * layers * kv_heads * 3 * group * window_rows * chunks, 4);
    take(p.logits, sequences * query_heads * capacity, 4);
    take(p.partial_out, sequences * query_heads * max_decode_splits * head_dim, 4);
    take(p.partial_max, sequences * query_heads * max_decode_splits, 4);
    take(p.partial_sum, sequences * query_heads * max_decode_splits, 4);
    take(p.partial_count, sequences * kv_heads * max_decode_splits, 4);
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
