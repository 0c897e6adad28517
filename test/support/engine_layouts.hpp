// SPDX-License-Identifier: Apache-2.0
/// @file
/// @brief The paged KV caches of vLLM and FlashInfer as those engines allocate them, for tests of
/// kvcompact::layouts::vllm_paged and kvcompact::layouts::flashinfer_paged: per-layer tensors placed
/// like separate allocations (random order, gaps), random permuted block tables / CSR page tables,
/// and the engine's own element index of (layer, K or V, page, entry, head, dim), computed from the
/// tensor's shape and stride order as the engine declares them (not from the kvcompact layouts).
#pragma once

#include "support/reference.hpp"

#include <kvcompact/layouts/flashinfer_paged.hpp>
#include <kvcompact/layouts/vllm_paged.hpp>

#include <algorithm>
#include <cstdint>
#include <numeric>
#include <random>
#include <vector>

namespace kvtest {

/// @brief Strides of a tensor of logical shape @p shape whose memory is a contiguous tensor of the
/// dimensions taken in @p order (vLLM's allocation with a stride order: `empty(shape[order])` viewed
/// back with the inverse permutation).
inline std::vector<index_t> strides_for_order(const std::vector<index_t>& shape, const std::vector<int>& order) {
  std::vector<index_t> logical(shape.size());
  index_t stride = 1;
  for (std::size_t i = order.size(); i-- > 0;) {
    logical[static_cast<std::size_t>(order[i])] = stride;
    stride *= shape[static_cast<std::size_t>(order[i])];
  }
  return logical;
}

/// @brief Element index of @p index in a tensor with @p strides.
inline index_t element_at(const std::vector<index_t>& strides, const std::vector<index_t>& index) {
  index_t e = 0;
  for (std::size_t i = 0; i < index.size(); ++i) e += strides[i] * index[i];
  return e;
}

/// @brief Offsets of @p layers tensors of @p footprint elements each, placed in one arena as separate
/// allocations land: a random order and random gaps, counted from the lowest tensor (which is at 0).
/// @param arena_elements receives the arena size
inline std::vector<index_t> scattered_layer_offsets(index_t layers, index_t footprint, std::mt19937& rng, index_t& arena_elements) {
  std::vector<index_t> order(static_cast<std::size_t>(layers));
  std::iota(order.begin(), order.end(), 0);
  shuffle_portable(order, rng);
  std::vector<index_t> offsets(static_cast<std::size_t>(layers));
  index_t next = 0;
  for (index_t l : order) {
    offsets[static_cast<std::size_t>(l)] = next;
    next += footprint + uniform_int(rng, 0, 40);  // gap: another allocation between two layers
  }
  arena_elements = next;
  return offsets;
}

/// @brief vLLM's per-layer `[2, num_blocks, block_size, num_kv_heads, head_size]` tensors (FlashAttention
/// backend; HND: stride order (0, 1, 3, 2, 4)) with a random permuted block table.
struct vllm_memory {
  std::vector<std::int32_t> block_table;    ///< [sequences][blocks per sequence]
  std::vector<index_t> layer_offsets;       ///< [layers]
  kvcompact::layouts::vllm_paged layout{};  ///< points into the two vectors above (do not copy this object)
  index_t arena_elements = 0;               ///< elements of the arena holding every layer's tensor
  std::vector<index_t> tensor_strides;      ///< strides of one layer's tensor, dims (kv, block, entry, head, dim)

  /// @brief The engine's element index of (layer, kv, block, entry, head, dim) in the arena.
  index_t engine_element(index_t layer, index_t kv, index_t block, index_t entry, index_t head, index_t dim) const {
    return layer_offsets[static_cast<std::size_t>(layer)] + element_at(tensor_strides, {kv, block, entry, head, dim});
  }
};

/// @brief Fills @p out for a cache of @p shape: capacity / block_size blocks per sequence (all distinct,
/// randomly permuted, @p spare blocks unused), layers scattered in one arena.
inline void make_vllm_memory(vllm_memory& out, const cache_shape& shape, index_t block_size, kvcompact::layouts::page_format format,
                             index_t spare, std::uint32_t seed) {
  std::mt19937 rng(seed);
  const index_t per_sequence = shape.capacity / block_size;
  const index_t num_blocks = shape.sequences * per_sequence + spare;
  std::vector<std::int32_t> pool(static_cast<std::size_t>(num_blocks));
  std::iota(pool.begin(), pool.end(), 0);
  shuffle_portable(pool, rng);
  out.block_table.assign(pool.begin(), pool.begin() + shape.sequences * per_sequence);
  const std::vector<index_t> tensor_shape{2, num_blocks, block_size, shape.kv_heads, shape.head_dim};
  const std::vector<int> order = format == kvcompact::layouts::page_format::nhd ? std::vector<int>{0, 1, 2, 3, 4} : std::vector<int>{0, 1, 3, 2, 4};
  out.tensor_strides = strides_for_order(tensor_shape, order);
  out.layer_offsets = scattered_layer_offsets(shape.layers, 2 * num_blocks * block_size * shape.kv_heads * shape.head_dim, rng, out.arena_elements);
  out.layout = kvcompact::layouts::vllm_paged{out.block_table.data(), per_sequence, shape.sequences, out.layer_offsets.data(), shape.layers,
                                              num_blocks, block_size, shape.kv_heads, shape.head_dim, format};
}

/// @brief FlashInfer's paged cache: per layer one `(max_num_pages, 2, ...)` tensor or separate K and V
/// `(max_num_pages, ...)` tensors, NHD or HND pages, a CSR page table with a different number of pages
/// per request, page ids randomly permuted.
struct flashinfer_memory {
  std::vector<std::int32_t> indptr;               ///< [requests + 1]
  std::vector<std::int32_t> indices;              ///< [indptr.back()]
  std::vector<index_t> layer_offsets;             ///< [layers]
  kvcompact::layouts::flashinfer_paged layout{};  ///< points into the vectors above (do not copy this object)
  index_t arena_elements = 0;                     ///< elements of the arena holding every layer's K and V
  index_t value_shift = 0;                        ///< cache.values = cache.keys + value_shift
  std::vector<index_t> tensor_strides;            ///< one tensor: dims (page, kv, entry, head, dim); two: (page, entry, head, dim)
  bool one_tensor = true;                         ///< K and V in one tensor per layer

  /// @brief The engine's element index of (layer, kv, page, entry, head, dim) in the arena.
  index_t engine_element(index_t layer, index_t kv, index_t page, index_t entry, index_t head, index_t dim) const {
    const index_t base = layer_offsets[static_cast<std::size_t>(layer)];
    if (one_tensor) return base + element_at(tensor_strides, {page, kv, entry, head, dim});
    return base + kv * value_shift + element_at(tensor_strides, {page, entry, head, dim});
  }
};

/// @brief Fills @p out: request b owns @p pages[b] pages (at most shape.capacity / page_size).
inline void make_flashinfer_memory(flashinfer_memory& out, const cache_shape& shape, const std::vector<index_t>& pages, index_t page_size,
                                   kvcompact::layouts::page_format format, bool one_tensor, index_t spare, std::uint32_t seed) {
  namespace lay = kvcompact::layouts;
  std::mt19937 rng(seed);
  out.one_tensor = one_tensor;
  out.indptr.assign(1, 0);
  for (index_t n : pages) out.indptr.push_back(out.indptr.back() + static_cast<std::int32_t>(n));
  const index_t max_num_pages = out.indptr.back() + spare;
  std::vector<std::int32_t> pool(static_cast<std::size_t>(max_num_pages));
  std::iota(pool.begin(), pool.end(), 0);
  shuffle_portable(pool, rng);
  out.indices.assign(pool.begin(), pool.begin() + out.indptr.back());
  const index_t H = shape.kv_heads, D = shape.head_dim;
  // FlashInfer's documented shapes (kv_layout.rst): the entry and head dimensions swap between NHD and HND.
  const bool nhd = format == lay::page_format::nhd;
  std::vector<index_t> tensor_shape = one_tensor ? std::vector<index_t>{max_num_pages, 2, nhd ? page_size : H, nhd ? H : page_size, D}
                                                 : std::vector<index_t>{max_num_pages, nhd ? page_size : H, nhd ? H : page_size, D};
  std::vector<int> order(tensor_shape.size());
  std::iota(order.begin(), order.end(), 0);
  std::vector<index_t> contiguous = strides_for_order(tensor_shape, order);
  if (!nhd) std::swap(contiguous[contiguous.size() - 3], contiguous[contiguous.size() - 2]);  // index as (..., entry, head, dim)
  out.tensor_strides = contiguous;
  const index_t tensor_elements = max_num_pages * page_size * H * D * (one_tensor ? 2 : 1);
  out.layer_offsets = scattered_layer_offsets(shape.layers, tensor_elements, rng, out.arena_elements);
  if (one_tensor) {
    out.value_shift = page_size * H * D;  // kv_data[:, 1]
  } else {
    out.value_shift = out.arena_elements;  // the V tensors follow the K tensors, placed the same way
    out.arena_elements *= 2;
  }
  out.layout = lay::flashinfer_paged{out.indptr.data(), out.indices.data(), shape.sequences, shape.capacity / page_size, out.layer_offsets.data(),
                                     shape.layers, max_num_pages, page_size, H, D,
                                     lay::flashinfer_paged::strides(format, page_size, H, D, one_tensor)};
}

/// @brief Pages each sequence needs for its prompt plus @p extra slots (at most capacity / page_size).
inline std::vector<index_t> pages_for(const std::vector<index_t>& prompts, index_t extra, index_t page_size, index_t capacity) {
  std::vector<index_t> pages;
  for (index_t n : prompts) pages.push_back(std::min(capacity, n + extra + page_size - 1) / page_size);
  return pages;
}

/// @brief Sets every head of sequence s to hold its prompt: lengths[s][l][h] = prompts[s] (slot j keeps
/// the position make_random_cache gave it: j for a dense cache).
template <class T>
void set_prompt_lengths(random_cache<T>& c, const std::vector<index_t>& prompts) {
  for (index_t s = 0; s < c.shape.sequences; ++s)
    for (index_t l = 0; l < c.shape.layers; ++l)
      for (index_t h = 0; h < c.shape.kv_heads; ++h)
        c.lengths[static_cast<std::size_t>(c.head_index(s, l, h))] = static_cast<std::int32_t>(prompts[static_cast<std::size_t>(s)]);
}

/// @brief The engine caches the tests compare with the contiguous one: vLLM NHD and HND, FlashInfer
/// NHD (K and V in one tensor) and HND (two tensors), whose requests own the pages their prompt plus
/// `extra` slots need.
struct engine_layout_set {
  vllm_memory vllm_nhd, vllm_hnd;                  ///< vLLM's layouts
  flashinfer_memory flashinfer_nhd, flashinfer_hnd;  ///< FlashInfer's layouts

  engine_layout_set(const engine_layout_set&) = delete;  // the layouts point into the members' tables
  engine_layout_set& operator=(const engine_layout_set&) = delete;
  engine_layout_set(const cache_shape& shape, const std::vector<index_t>& prompts, index_t extra, index_t page_size, std::uint32_t seed) {
    const std::vector<index_t> pages = pages_for(prompts, extra, page_size, shape.capacity);
    make_vllm_memory(vllm_nhd, shape, page_size, kvcompact::layouts::page_format::nhd, 3, seed);
    make_vllm_memory(vllm_hnd, shape, page_size, kvcompact::layouts::page_format::hnd, 0, seed + 1);
    make_flashinfer_memory(flashinfer_nhd, shape, pages, page_size, kvcompact::layouts::page_format::nhd, true, 2, seed + 2);
    make_flashinfer_memory(flashinfer_hnd, shape, pages, page_size, kvcompact::layouts::page_format::hnd, false, 0, seed + 3);
  }
  /// @brief Calls `f(layout, name)` for each layout.
  template <class F>
  void for_each(F&& f) const {
    f(vllm_nhd.layout, "vllm NHD");
    f(vllm_hnd.layout, "vllm HND");
    f(flashinfer_nhd.layout, "flashinfer NHD, one tensor");
    f(flashinfer_hnd.layout, "flashinfer HND, K and V tensors");
  }
};

}  // namespace kvtest
