// SPDX-License-Identifier: Apache-2.0
/// @file
/// @brief What the prefill-compression kernels share: the cache, the window, and the arrays of the
/// workspace, with the selection context of one (sequence, layer) built over them.
#pragma once

#include <kvcompact/cuda/detail/device_status.cuh>
#include <kvcompact/detail/ranked_selection.hpp>
#include <kvcompact/kv_cache.hpp>
#include <kvcompact/layer_context.hpp>
#include <kvcompact/query_window.hpp>

#include <cstdint>

KVCOMPACT_NAMESPACE_BEGIN
namespace cuda::detail {

/// Everything compress_prefill's kernels read and write (device pointers). Slot arrays are
/// `[S][L][Hkv][capacity]` unless noted.
template <class T, class Layout, class State>
struct prefill_problem {
  kv_cache<T, Layout> cache;   ///< the cache
  index_t query_heads;         ///< query heads
  float scale;                 ///< logit scale
  query_window window;         ///< observation-window queries (attention scorers)
  float* scores;               ///< slot scores
  float* floats;               ///< selector scratch
  std::int32_t* indices;       ///< [S][L][Hkv][2][capacity] selector scratch
  std::int32_t* order;         ///< slots in position order
  std::int32_t* targets;       ///< merge targets
  std::uint8_t* keep;          ///< keep flags
  float* query_scores;         ///< [S][L][Hq][capacity]
  std::uint8_t* order_ready;   ///< [S][L][Hkv]
  ::kvcompact::detail::ranked_head* ranking;  ///< [S][L][Hkv] ranked selectors' per-head state
  std::int32_t* shared;        ///< [S][capacity + 2]
  std::int32_t* step;          ///< [S][L] newest position
  std::int32_t* layer_faults;  ///< [S][L] nonzero: leave the layer as it is
  float* stats;                ///< [S][L][Hkv][chunks][3][G x padded rows] per-chunk softmax statistics (max, sum, visible keys)
  index_t chunks;              ///< key chunks per head of the window kernels
  index_t chunk_keys;          ///< keys per chunk (a multiple of window_chunk_quantum)
  float* row_lse;              ///< [S][L][Hkv][G x padded rows] log2 softmax denominator of each window row (scaled logits)
  std::int32_t* row_visible;   ///< [S][L][Hkv][G x padded rows] keys each window row sees (-1: a padding row)
  T* window_queries;           ///< [S][L][Hq][padded rows][padded head_dim] the window in the storage type
  index_t padded_rows;         ///< window rows per query head, padded to a multiple of 8
  index_t staged_rows;         ///< window rows the score kernel stages in shared memory at once
  bool rows_resident;          ///< every window row of a score block fits in shared memory (staged once)
  State* states;               ///< decode state
  std::int32_t* budgets;       ///< [S][L][Hkv] decode budgets
  device_status* status;       ///< fault record
  index_t first_layer;         ///< first storage layer of this call (compress_prefill_layer: the layer; else 0)
  index_t grid_layers;         ///< storage layers of this call; the grid's layer extent is S x grid_layers

  /// Sequence of a block of a grid over S x grid_layers. @param block the block index @return the sequence
  KVCOMPACT_HOST_DEVICE index_t grid_sequence(unsigned block) const { return static_cast<index_t>(block) / grid_layers; }
  /// Storage layer of a block of a grid over S x grid_layers. @param block the block index @return the layer
  KVCOMPACT_HOST_DEVICE index_t grid_layer(unsigned block) const { return first_layer + static_cast<index_t>(block) % grid_layers; }
  /// Storage layers.
  KVCOMPACT_HOST_DEVICE index_t layers() const { return cache.layout.num_layers(); }
  /// First slot-array element of a head. @param s sequence @param l layer @param h KV head
  KVCOMPACT_HOST_DEVICE index_t head_base(index_t s, index_t l, index_t h) const {
    return cache.head_index(s, l, h) * cache.layout.capacity();
  }
  /// The selection context of one (sequence, layer) over the workspace arrays.
  KVCOMPACT_HOST_DEVICE layer_context<T, Layout> context(index_t s, index_t l) const {
    const index_t capacity = cache.layout.capacity(), first = head_base(s, l, 0);
    const layer_scratch scratch{scores + first,
                                query_scores + cache.head_index(s, l, 0) / cache.layout.num_kv_heads() * query_heads * capacity,
                                floats + first,
                                indices + 2 * first,
                                order + first,
                                order_ready + cache.head_index(s, l, 0),
                                keep + first,
                                targets + first,
                                shared + s * (capacity + 2),
                                budgets + cache.head_index(s, l, 0)};
    return layer_context<T, Layout>(cache, scratch, s, l, query_heads, step[s * layers() + l]);
  }
};

}  // namespace cuda::detail
KVCOMPACT_NAMESPACE_END
