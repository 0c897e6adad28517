// SPDX-License-Identifier: Apache-2.0
/// @file
/// @brief Paged cache layout (block table + page size), vLLM / FlashInfer style.
#pragma once

#include <kvcompact/error.hpp>
#include <kvcompact/layouts/concepts.hpp>

#include <cstdint>
#include <limits>
#include <string>

KVCOMPACT_NAMESPACE_BEGIN

namespace layouts {

/// @brief Order of the three innermost axes inside one page.
enum class page_format : std::uint8_t {
  nhd,  ///< [page slot][head][dim] (vLLM's default, FlashInfer NHD)
  hnd,  ///< [head][page slot][dim] (FlashInfer HND)
};

/// @brief A paged layout: slot `s` of a sequence lives in page `block_table[sequence * table_stride + s / page_size]`
/// at in-page index `s % page_size`. Pages of one layer form a pool `[page][...]`; layers are
/// `layer_stride` elements apart (one allocation for all layers, or a per-layer pool with layer_stride = pool size).
struct paged {
  const std::int32_t* block_table;  ///< [sequences][table_stride] page indices, host- or device-readable
  index_t table_stride;             ///< entries per sequence row of the block table
  index_t pages_per_sequence;       ///< pages a sequence may use (<= table_stride)
  index_t sequences;                ///< number of sequences
  index_t layers;                   ///< number of storage layers
  index_t kv_heads;                 ///< number of KV heads
  index_t dims;                     ///< head dimension
  index_t page_size;                ///< slots per page
  index_t num_pages;                ///< pages in one layer's pool
  index_t layer_stride;             ///< elements between two layers' pools
  page_format format;               ///< order of the innermost axes

  /// @brief Number of sequences. @return sequences
  KVCOMPACT_HOST_DEVICE index_t num_sequences() const { return sequences; }
  /// @brief Number of storage layers. @return layers
  KVCOMPACT_HOST_DEVICE index_t num_layers() const { return layers; }
  /// @brief Number of KV heads. @return kv_heads
  KVCOMPACT_HOST_DEVICE index_t num_kv_heads() const { return kv_heads; }
  /// @brief Slots addressable per sequence: pages_per_sequence * page_size. @return the capacity
  KVCOMPACT_HOST_DEVICE index_t capacity() const { return pages_per_sequence * page_size; }
  /// @brief Head dimension. @return dims
  KVCOMPACT_HOST_DEVICE index_t head_dim() const { return dims; }
  /// @brief Stride of the head dimension (always 1). @return 1
  KVCOMPACT_HOST_DEVICE index_t dim_stride() const { return 1; }
  /// @brief Elements in one page (all heads). @return page_size * kv_heads * dims
  KVCOMPACT_HOST_DEVICE index_t page_elements() const { return page_size * kv_heads * dims; }
  /// @brief Element offset of dimension 0 of one slot.
  /// @param sequence sequence index
  /// @param layer storage layer
  /// @param kv_head KV head
  /// @param slot slot index within the sequence
  /// @return the offset in elements
  KVCOMPACT_HOST_DEVICE index_t offset(index_t sequence, index_t layer, index_t kv_head, index_t slot) const {
    const index_t page = block_table[sequence * table_stride + slot / page_size];
    const index_t in_page = slot % page_size;
    const index_t inner = format == page_format::nhd ? (in_page * kv_heads + kv_head) * dims : (kv_head * page_size + in_page) * dims;
    return layer * layer_stride + page * page_elements() + inner;
  }
  /// @brief Whether a slot's page-table entry names a page of the pool (device kernels check every
  /// slot they touch with it, since a device-resident table cannot be validated on the host).
  /// @param sequence sequence index @param slot slot index within the sequence
  /// @return true when the slot maps into the pool
  KVCOMPACT_HOST_DEVICE bool slot_in_range(index_t sequence, index_t slot) const {
    if (slot < 0 || slot / page_size >= pages_per_sequence) return false;
    const index_t page = block_table[sequence * table_stride + slot / page_size];
    return page >= 0 && page < num_pages;
  }
  /// @brief Checks extents and the page-table pointer without reading the table (which may live in
  /// device memory): positive extents, `pages_per_sequence` in [1, table_stride], layer pools that do
  /// not overlap, every offset within a 64-bit index.
  /// @param where name of the calling entry point, used in the error message
  void validate_extents(const char* where) const {
    detail::require(sequences > 0 && layers > 0 && kv_heads > 0 && dims > 0 && page_size > 0 && num_pages > 0, where, "layout",
                    "every extent of a paged layout must be positive");
    detail::require(pages_per_sequence > 0 && pages_per_sequence <= table_stride, where, "layout.pages_per_sequence",
                    "must be in [1, table_stride]");
    detail::require(pages_per_sequence <= std::numeric_limits<std::int32_t>::max() / page_size, where, "layout.pages_per_sequence",
                    "pages_per_sequence x page_size does not fit the int32 lengths and positions");
    detail::require_valid_extents(*this, where);
    constexpr index_t most = std::numeric_limits<index_t>::max();
    detail::require(page_size <= most / kv_heads / dims && num_pages <= most / page_elements(), where, "layout",
                    "the page pool's size overflows a 64-bit index");
    detail::require(layer_stride >= num_pages * page_elements() || layers == 1, where, "layout.layer_stride",
                    "layer pools overlap: layer_stride is smaller than num_pages * page_size * kv_heads * head_dim");
    detail::require(layers == 1 || layer_stride <= (most - num_pages * page_elements()) / (layers - 1), where, "layout.layer_stride",
                    "the largest offset overflows a 64-bit index");
    detail::require(block_table != nullptr, where, "layout.block_table", "null pointer");
  }
  /// @brief Checks extents, the page-table pointer and every entry of a host-readable table: each
  /// names a page of the pool, and no page is named twice (compaction rewrites slots in place, so a
  /// page shared by two sequences, or twice by one, would be overwritten through the other entry;
  /// an engine that shares prefix pages copies them before a session compresses them).
  /// @param where name of the calling entry point, used in the error message
  void validate(const char* where) const {
    validate_extents(where);
    for (index_t s = 0; s < sequences; ++s) {
      for (index_t p = 0; p < pages_per_sequence; ++p) {
        const index_t page = block_table[s * table_stride + p];
        if (page < 0 || page >= num_pages) {
          throw error(where, "layout.block_table",
                      "page index " + std::to_string(page) + " of sequence " + std::to_string(s) + " entry " + std::to_string(p) +
                          " is outside [0, " + std::to_string(num_pages) + ")");
        }
      }
    }
    // Pages seen so far, one bit per page of the window [first, first + window_pages) of the pool; one
    // pass over the table per window keeps this free of allocation.
    constexpr index_t window_pages = 1 << 16;
    std::uint64_t seen[window_pages / 64];
    for (index_t first = 0; first < num_pages; first += window_pages) {
      for (auto& word : seen) word = 0;
      for (index_t s = 0; s < sequences; ++s)
        for (index_t p = 0; p < pages_per_sequence; ++p) {
          const index_t page = block_table[s * table_stride + p] - first;
          if (page < 0 || page >= window_pages) continue;
          std::uint64_t& word = seen[page / 64];
          const std::uint64_t bit = std::uint64_t{1} << (page % 64);
          if (word & bit)
            throw error(where, "layout.block_table",
                        "page " + std::to_string(page + first) + " is named twice (again by sequence " + std::to_string(s) + " entry " +
                            std::to_string(p) + "): pages must not be shared");
          word |= bit;
        }
    }
  }
};

}  // namespace layouts

KVCOMPACT_NAMESPACE_END
