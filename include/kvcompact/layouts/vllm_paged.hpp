// SPDX-License-Identifier: Apache-2.0
/// @file
/// @brief vLLM's paged KV cache, viewed in place: one `[2, num_blocks, block_size, num_kv_heads, head_size]`
/// tensor per attention layer, addressed through vLLM's block table.
#pragma once

#include <kvcompact/detail/layer_offsets.hpp>
#include <kvcompact/error.hpp>
#include <kvcompact/layouts/concepts.hpp>
#include <kvcompact/layouts/paged.hpp>

#include <cstdint>
#include <string>

KVCOMPACT_NAMESPACE_BEGIN

namespace layouts {

/// @brief The KV cache of vLLM's FlashAttention backend (V1 engine), exactly as vLLM lays it out.
///
/// vLLM allocates one tensor per attention layer and views it with the backend's
/// `get_kv_cache_shape(num_blocks, block_size, num_kv_heads, head_size)`, which is
/// `(2, num_blocks, block_size, num_kv_heads, head_size)`: `kv_cache[0]` holds the keys, `kv_cache[1]`
/// the values. With `VLLM_KV_CACHE_LAYOUT=HND` the backend's stride order `(0, 1, 3, 2, 4)` keeps that
/// shape but stores each block as `[num_kv_heads][block_size][head_size]` (page_format::hnd). Token
/// `i` of a sequence lives in block `block_table[seq][i / block_size]` at index `i % block_size`
/// (vLLM's `slot_mapping` is `block * block_size + i % block_size`).
///
/// Layers are separate allocations, so the layout holds one element offset per layer, counted from
/// the layer tensor at the lowest address: with `base` that tensor's `data_ptr()`,
/// `layer_offsets[l] = (kv_caches[l].data_ptr() - base) / element_size`, `cache.keys = base` and
/// `cache.values = base + value_offset()`. The layers' tensors must not overlap; layers that share one
/// tensor (vLLM's cross-layer KV sharing) are a layouts::layer_condensed map over this layout.
///
/// `block_table` and `layer_offsets` are read wherever the backend runs: host memory for
/// kvcompact::cpu::session, device memory for kvcompact::cuda::session. The engine owns the blocks:
/// a head's slots `[0, length]` (one more for kvcompact::cpu::session::append) must lie in blocks it
/// has given the sequence. After compression, blocks past the longest head's length are free again.
///
/// Facts from vllm-project/vllm: `vllm/v1/attention/backends/flash_attn.py` at commit
/// 0084b783bcda6d7ee15c337b1062cbee9985c954 (`FlashAttentionBackend.get_kv_cache_shape`,
/// `get_kv_cache_stride_order`); `vllm/v1/worker/gpu_model_runner.py` at commit
/// 4e1790651fc758c06c7a903dd4cd82364ac91b27 (`_allocate_kv_cache_tensors`: one `torch.zeros` per KV
/// cache tensor; `_reshape_kv_cache_tensors`: allocated in stride order, viewed with the shape above).
/// Not covered: the cross-layer tensor of `allocate_uniform_kv_caches` (KV-connector transfers) and
/// the `(num_blocks, 2, ...)` strides of hybrid attention/Mamba models.
struct vllm_paged {
  const std::int32_t* block_table;  ///< [num_seqs][block_table_stride] block ids, vLLM's int32 `block_table`
  index_t block_table_stride;       ///< entries per row of block_table (vLLM's max_num_blocks_per_req)
  index_t num_seqs;                 ///< sequences (rows of block_table)
  const index_t* layer_offsets;     ///< [layers] elements from cache.keys to layer l's `kv_cache[0]`, each >= 0
  index_t layers;                   ///< attention layers
  index_t num_blocks;               ///< blocks per layer tensor (its dimension 1)
  index_t block_size;               ///< tokens per block
  index_t kv_heads;                 ///< KV heads of this tensor-parallel rank (vLLM's num_kv_heads)
  index_t head_size;                ///< head dimension
  page_format format;               ///< nhd: vLLM's default cache layout; hnd: `VLLM_KV_CACHE_LAYOUT=HND`

  /// @brief Number of sequences. @return num_seqs
  KVCOMPACT_HOST_DEVICE index_t num_sequences() const { return num_seqs; }
  /// @brief Number of storage layers. @return layers
  KVCOMPACT_HOST_DEVICE index_t num_layers() const { return layers; }
  /// @brief Number of KV heads. @return kv_heads
  KVCOMPACT_HOST_DEVICE index_t num_kv_heads() const { return kv_heads; }
  /// @brief Slots addressable per sequence: block_table_stride * block_size. @return the capacity
  KVCOMPACT_HOST_DEVICE index_t capacity() const { return block_table_stride * block_size; }
  /// @brief Head dimension. @return head_size
  KVCOMPACT_HOST_DEVICE index_t head_dim() const { return head_size; }
  /// @brief Stride of the head dimension (always 1). @return 1
  KVCOMPACT_HOST_DEVICE index_t dim_stride() const { return 1; }
  /// @brief Elements of one block of keys (or values): block_size * kv_heads * head_size. @return the count
  KVCOMPACT_HOST_DEVICE index_t block_elements() const { return block_size * kv_heads * head_size; }
  /// @brief Elements from a layer's `kv_cache[0]` to its `kv_cache[1]`: num_blocks * block_elements().
  /// @return the distance, so that `cache.values = cache.keys + value_offset()`
  KVCOMPACT_HOST_DEVICE index_t value_offset() const { return num_blocks * block_elements(); }
  /// @brief Element offset of dimension 0 of one slot (keys from cache.keys, values from cache.values).
  /// @param sequence sequence index @param layer storage layer @param kv_head KV head @param slot slot within the sequence
  /// @return the offset in elements
  KVCOMPACT_HOST_DEVICE index_t offset(index_t sequence, index_t layer, index_t kv_head, index_t slot) const {
    const index_t block = block_table[sequence * block_table_stride + slot / block_size];
    const index_t in_block = slot % block_size;
    const index_t inner = format == page_format::nhd ? (in_block * kv_heads + kv_head) * head_size : (kv_head * block_size + in_block) * head_size;
    return layer_offsets[layer] + block * block_elements() + inner;
  }
  /// @brief Whether a slot's block-table entry names a block of the tensor (device kernels check every
  /// slot they touch with it). @param sequence sequence index @param slot slot within the sequence
  /// @return true when the slot maps into the tensor
  KVCOMPACT_HOST_DEVICE bool slot_in_range(index_t sequence, index_t slot) const {
    if (slot < 0 || slot >= capacity()) return false;
    const index_t block = block_table[sequence * block_table_stride + slot / block_size];
    return block >= 0 && block < num_blocks;
  }
  /// @brief Checks extents and pointers without reading the tables (which may live in device memory).
  /// @param where name of the calling entry point, used in the error message
  void validate_extents(const char* where) const {
    detail::require(num_seqs > 0 && layers > 0 && num_blocks > 0 && block_size > 0 && kv_heads > 0 && head_size > 0, where, "layout",
                    "every extent of a vllm_paged layout must be positive");
    detail::require(block_table_stride > 0, where, "layout.block_table_stride", "must be positive");
    detail::require(block_table != nullptr, where, "layout.block_table", "null pointer");
    detail::require(layer_offsets != nullptr, where, "layout.layer_offsets", "null pointer");
  }
  /// @brief Checks extents, pointers, the layer offsets (non-negative, tensors disjoint) and every
  /// entry of a host-readable block table.
  /// @param where name of the calling entry point, used in the error message
  void validate(const char* where) const {
    validate_extents(where);
    detail::validate_layer_offsets(layer_offsets, layers, 2 * value_offset(), where, "layout.layer_offsets");
    for (index_t s = 0; s < num_seqs; ++s)
      for (index_t b = 0; b < block_table_stride; ++b) {
        const index_t block = block_table[s * block_table_stride + b];
        if (block < 0 || block >= num_blocks)
          throw error(where, "layout.block_table",
                      "block " + std::to_string(block) + " of sequence " + std::to_string(s) + " entry " + std::to_string(b) +
                          " is outside [0, " + std::to_string(num_blocks) + ")");
      }
  }
};

}  // namespace layouts

KVCOMPACT_NAMESPACE_END
