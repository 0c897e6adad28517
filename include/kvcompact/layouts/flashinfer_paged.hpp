// SPDX-License-Identifier: Apache-2.0
/// @file
/// @brief FlashInfer's paged KV cache (`paged_kv_t`: CSR page table, NHD or HND pages), viewed in place.
#pragma once

#include <kvcompact/detail/layer_offsets.hpp>
#include <kvcompact/error.hpp>
#include <kvcompact/layouts/concepts.hpp>
#include <kvcompact/layouts/paged.hpp>

#include <cstdint>
#include <string>

KVCOMPACT_NAMESPACE_BEGIN

namespace layouts {

/// @brief Element strides of FlashInfer's `paged_kv_t`: element `(p, h, e, f)` (page id, head, entry,
/// feature) is at `p * page + h * head + e * entry + f`.
struct flashinfer_strides {
  index_t page;   ///< stride_page: elements between two pages
  index_t entry;  ///< stride_n: elements between two entries (tokens) of a page
  index_t head;   ///< stride_h: elements between two heads
};

/// @brief The paged KV cache of FlashInfer, exactly as FlashInfer lays it out (`paged_kv_t`).
///
/// Pages form a pool; request `b` owns the pages `indices[indptr[b]] ... indices[indptr[b + 1] - 1]`
/// in token order (CSR: `kv_indptr`, `kv_indices`), so token `i` lives in page
/// `indices[indptr[b] + i / page_size]` at entry `i % page_size`. A page is
/// `[page_size][num_heads][head_dim]` (NHD) or `[num_heads][page_size][head_dim]` (HND), and the cache
/// is either one tensor `(max_num_pages, 2, ...)` holding both (keys at index 0, values at 1: then
/// `cache.values = cache.keys + page_size * num_heads * head_dim`) or two tensors `(max_num_pages, ...)`.
/// strides() gives the strides of each of these four forms; any other strides work too, as in
/// `paged_kv_t`'s constructor with custom strides. FlashInfer's `last_page_len` is not needed:
/// kvcompact keeps each head's length in `kv_cache::lengths` (heads of a request may differ after
/// compression; the request needs pages for its longest head).
///
/// Layers are separate tensors (FlashInfer runs one layer per call): `layer_offsets[l]` is the
/// element offset of layer l's keys from `cache.keys` and of its values from `cache.values`, counted
/// from the layer at the lowest address. `indptr`, `indices` and `layer_offsets` are read wherever the
/// backend runs: host memory for kvcompact::cpu::session, device memory for kvcompact::cuda::session.
///
/// Facts from flashinfer-ai/flashinfer at commit fb28d7242b3506a2348265962041acc1fb56cca4:
/// `include/flashinfer/page.cuh` (`paged_kv_t`: fields, `get_elem_offset`, the NHD/HND strides of its
/// constructors), `docs/tutorials/kv_layout.rst` (CSR page table, the one- and two-tensor shapes).
struct flashinfer_paged {
  const std::int32_t* indptr;     ///< [batch_size + 1] kv_indptr (int32): request b owns indices[indptr[b], indptr[b + 1])
  const std::int32_t* indices;    ///< [indptr[batch_size]] kv_indices (int32): page ids
  index_t batch_size;             ///< requests
  index_t max_pages_per_request;  ///< most pages a request may own: capacity() = max_pages_per_request * page_size
  const index_t* layer_offsets;   ///< [layers] elements from cache.keys (cache.values) to layer l's keys (values), each >= 0
  index_t layers;                 ///< attention layers
  index_t max_num_pages;          ///< pages in each layer's pool (dimension 0 of its tensor)
  index_t page_size;              ///< entries (tokens) per page
  index_t num_heads;              ///< KV heads
  index_t dims;                   ///< head_dim
  flashinfer_strides stride;     ///< stride_page, stride_n, stride_h of `paged_kv_t`

  /// @brief The strides FlashInfer uses for its documented tensors (`paged_kv_t`'s constructors, kv_layout.rst).
  /// @param format nhd: pages `[page_size][num_heads][head_dim]`; hnd: `[num_heads][page_size][head_dim]`
  /// @param page_size entries per page @param num_heads KV heads @param head_dim head dimension
  /// @param kv_in_one_tensor true for the single `(max_num_pages, 2, ...)` tensor, false for separate K and V tensors
  /// @return the strides
  static constexpr flashinfer_strides strides(page_format format, index_t page_size, index_t num_heads, index_t head_dim,
                                              bool kv_in_one_tensor) {
    const index_t page = page_size * num_heads * head_dim * (kv_in_one_tensor ? 2 : 1);
    return format == page_format::nhd ? flashinfer_strides{page, num_heads * head_dim, head_dim}
                                      : flashinfer_strides{page, head_dim, page_size * head_dim};
  }

  /// @brief Number of sequences (requests). @return batch_size
  KVCOMPACT_HOST_DEVICE index_t num_sequences() const { return batch_size; }
  /// @brief Number of storage layers. @return layers
  KVCOMPACT_HOST_DEVICE index_t num_layers() const { return layers; }
  /// @brief Number of KV heads. @return num_heads
  KVCOMPACT_HOST_DEVICE index_t num_kv_heads() const { return num_heads; }
  /// @brief Slots addressable per request: max_pages_per_request * page_size. @return the capacity
  KVCOMPACT_HOST_DEVICE index_t capacity() const { return max_pages_per_request * page_size; }
  /// @brief Head dimension. @return dims
  KVCOMPACT_HOST_DEVICE index_t head_dim() const { return dims; }
  /// @brief Stride of the head dimension (always 1). @return 1
  KVCOMPACT_HOST_DEVICE index_t dim_stride() const { return 1; }
  /// @brief Element offset of dimension 0 of one slot (`paged_kv_t::get_elem_offset` plus the layer's offset).
  /// @param sequence request @param layer storage layer @param kv_head KV head @param slot slot within the request
  /// @return the offset in elements
  KVCOMPACT_HOST_DEVICE index_t offset(index_t sequence, index_t layer, index_t kv_head, index_t slot) const {
    const index_t page = indices[indptr[sequence] + slot / page_size];
    return layer_offsets[layer] + page * stride.page + kv_head * stride.head + (slot % page_size) * stride.entry;
  }
  /// @brief Whether a slot lies in a page the request owns and that page is in the pool (device kernels
  /// check every slot they touch with it). @param sequence request @param slot slot within the request
  /// @return true when the slot maps into the pool
  KVCOMPACT_HOST_DEVICE bool slot_in_range(index_t sequence, index_t slot) const {
    if (slot < 0 || slot >= capacity() || slot / page_size >= indptr[sequence + 1] - indptr[sequence]) return false;
    const index_t page = indices[indptr[sequence] + slot / page_size];
    return page >= 0 && page < max_num_pages;
  }
  /// @brief Checks extents, pointers and strides without reading the tables (which may live in device memory).
  /// @param where name of the calling entry point, used in the error message
  void validate_extents(const char* where) const {
    detail::require(batch_size > 0 && layers > 0 && max_num_pages > 0 && page_size > 0 && num_heads > 0 && dims > 0 && max_pages_per_request > 0,
                    where, "layout", "every extent of a flashinfer_paged layout must be positive");
    detail::require(indptr != nullptr, where, "layout.indptr", "null pointer");
    detail::require(indices != nullptr, where, "layout.indices", "null pointer");
    detail::require(layer_offsets != nullptr, where, "layout.layer_offsets", "null pointer");
    const flashinfer_strides& s = stride;
    const bool nhd = s.head >= dims && s.entry >= num_heads * s.head;
    const bool hnd = s.entry >= dims && s.head >= page_size * s.entry;
    detail::require((nhd || hnd) && s.page >= (nhd ? page_size * s.entry : num_heads * s.head), where, "layout.stride",
                    "entries or heads of a page overlap (want NHD: stride_h >= head_dim, stride_n >= num_heads * stride_h; or HND: "
                    "stride_n >= head_dim, stride_h >= page_size * stride_n; and stride_page covering the page)");
  }
  /// @brief Checks extents, strides, the layer offsets and a host-readable page table: indptr starts
  /// at 0 and never decreases, no request owns more than max_pages_per_request pages, every page id
  /// is in the pool. @param where name of the calling entry point, used in the error message
  void validate(const char* where) const {
    validate_extents(where);
    detail::validate_layer_offsets(layer_offsets, layers, max_num_pages * stride.page, where, "layout.layer_offsets");
    detail::require(indptr[0] == 0, where, "layout.indptr", "must start at 0");
    for (index_t b = 0; b < batch_size; ++b) {
      const index_t pages = indptr[b + 1] - indptr[b];
      if (pages < 0 || pages > max_pages_per_request)
        throw error(where, "layout.indptr",
                    "request " + std::to_string(b) + " owns " + std::to_string(pages) + " pages, outside [0, " +
                        std::to_string(max_pages_per_request) + "]");
      for (index_t p = indptr[b]; p < indptr[b + 1]; ++p)
        if (indices[p] < 0 || indices[p] >= max_num_pages)
          throw error(where, "layout.indices",
                      "page " + std::to_string(indices[p]) + " of request " + std::to_string(b) + " is outside [0, " +
                          std::to_string(max_num_pages) + ")");
    }
  }
};

}  // namespace layouts

KVCOMPACT_NAMESPACE_END
