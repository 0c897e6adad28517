// SPDX-License-Identifier: Apache-2.0
/// @file
/// @brief User layouts written outside namespace kvcompact and usable in device code, for the GPU
/// tests: rows at offsets 16-byte copies cannot use, and a head dimension interleaved across heads.
#pragma once

#include <kvcompact/config.hpp>
#include <kvcompact/layouts/concepts.hpp>

/// Memory order [kv_head][layer][sequence][slot][dim] with three padding elements after every slot.
struct head_major_padded {
  kvcompact::index_t sequences, layers, kv_heads, slots, dims;  ///< extents
  KVCOMPACT_HOST_DEVICE kvcompact::index_t num_sequences() const { return sequences; }
  KVCOMPACT_HOST_DEVICE kvcompact::index_t num_layers() const { return layers; }
  KVCOMPACT_HOST_DEVICE kvcompact::index_t num_kv_heads() const { return kv_heads; }
  KVCOMPACT_HOST_DEVICE kvcompact::index_t capacity() const { return slots; }
  KVCOMPACT_HOST_DEVICE kvcompact::index_t head_dim() const { return dims; }
  KVCOMPACT_HOST_DEVICE kvcompact::index_t dim_stride() const { return 1; }
  KVCOMPACT_HOST_DEVICE kvcompact::index_t offset(kvcompact::index_t sequence, kvcompact::index_t layer, kvcompact::index_t kv_head,
                                                  kvcompact::index_t slot) const {
    return (((kv_head * layers + layer) * sequences + sequence) * slots + slot) * (dims + 3);
  }
};
static_assert(kvcompact::kv_layout<head_major_padded>);

/// Memory order [layer][sequence][slot][dim][kv_head]: the head dimension is interleaved across the
/// KV heads (dim_stride = kv_heads).
struct interleaved_dims {
  kvcompact::index_t sequences, layers, kv_heads, slots, dims;  ///< extents
  KVCOMPACT_HOST_DEVICE kvcompact::index_t num_sequences() const { return sequences; }
  KVCOMPACT_HOST_DEVICE kvcompact::index_t num_layers() const { return layers; }
  KVCOMPACT_HOST_DEVICE kvcompact::index_t num_kv_heads() const { return kv_heads; }
  KVCOMPACT_HOST_DEVICE kvcompact::index_t capacity() const { return slots; }
  KVCOMPACT_HOST_DEVICE kvcompact::index_t head_dim() const { return dims; }
  KVCOMPACT_HOST_DEVICE kvcompact::index_t dim_stride() const { return kv_heads; }
  KVCOMPACT_HOST_DEVICE kvcompact::index_t offset(kvcompact::index_t sequence, kvcompact::index_t layer, kvcompact::index_t kv_head,
                                                  kvcompact::index_t slot) const {
    return ((layer * sequences + sequence) * slots + slot) * dims * kv_heads + kv_head;
  }
};
static_assert(kvcompact::kv_layout<interleaved_dims>);
