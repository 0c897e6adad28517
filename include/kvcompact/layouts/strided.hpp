// SPDX-License-Identifier: Apache-2.0
/// @file
/// @brief Contiguous cache layouts with arbitrary strides (BHSD, BSHD and anything strided).
#pragma once

#include <kvcompact/error.hpp>
#include <kvcompact/layouts/concepts.hpp>

#include <limits>
#include <string>

KVCOMPACT_NAMESPACE_BEGIN

namespace layouts {

/// @brief A strided layout: offset = sequence * sequence_stride + layer * layer_stride +
/// kv_head * head_stride + slot * slot_stride (+ dim * dim_stride), all in elements.
struct strided {
  index_t sequences;        ///< number of sequences (batch)
  index_t layers;           ///< number of storage layers
  index_t kv_heads;         ///< number of KV heads
  index_t slots;            ///< slots per (sequence, layer, head)
  index_t dims;             ///< head dimension
  index_t sequence_stride;  ///< elements between sequences
  index_t layer_stride;     ///< elements between layers
  index_t head_stride;      ///< elements between heads
  index_t slot_stride;      ///< elements between slots
  index_t element_stride;   ///< elements between head-dimension entries

  /// @brief Number of sequences. @return sequences
  KVCOMPACT_HOST_DEVICE index_t num_sequences() const { return sequences; }
  /// @brief Number of storage layers. @return layers
  KVCOMPACT_HOST_DEVICE index_t num_layers() const { return layers; }
  /// @brief Number of KV heads. @return kv_heads
  KVCOMPACT_HOST_DEVICE index_t num_kv_heads() const { return kv_heads; }
  /// @brief Slots per (sequence, layer, head). @return slots
  KVCOMPACT_HOST_DEVICE index_t capacity() const { return slots; }
  /// @brief Head dimension. @return dims
  KVCOMPACT_HOST_DEVICE index_t head_dim() const { return dims; }
  /// @brief Stride of the head dimension. @return element_stride
  KVCOMPACT_HOST_DEVICE index_t dim_stride() const { return element_stride; }
  /// @brief Element offset of dimension 0 of one slot.
  /// @param sequence sequence index
  /// @param layer storage layer
  /// @param kv_head KV head
  /// @param slot slot index
  /// @return the offset in elements
  KVCOMPACT_HOST_DEVICE index_t offset(index_t sequence, index_t layer, index_t kv_head, index_t slot) const {
    return sequence * sequence_stride + layer * layer_stride + kv_head * head_stride + slot * slot_stride;
  }
  /// @brief Checks the extents (kvcompact::detail::require_valid_extents), that every stride is
  /// non-negative (the dim stride positive), and that no two entries share memory: sorted by stride,
  /// each axis of extent > 1 must stride past everything the smaller axes span. Every dense or padded
  /// layout of a real engine nests this way (BHSD, BSHD, per-layer pools); all-zero strides, heads
  /// that overlap, sequences on the same memory and interleavings that need no nesting are rejected.
  /// @param where name of the calling entry point, used in the error message
  void validate(const char* where) const {
    detail::require_valid_extents(*this, where);
    detail::require(sequence_stride >= 0 && layer_stride >= 0 && head_stride >= 0 && slot_stride >= 0 && element_stride > 0,
                    where, "layout", "strides of a strided layout must be non-negative (dim stride positive)");
    struct axis {
      const char* name;
      index_t extent, stride;
    };
    axis axes[5] = {{"sequence", sequences, sequence_stride}, {"layer", layers, layer_stride}, {"head", kv_heads, head_stride},
                    {"slot", slots, slot_stride}, {"dim", dims, element_stride}};
    for (int i = 1; i < 5; ++i)  // insertion sort by stride
      for (int k = i; k > 0 && axes[k].stride < axes[k - 1].stride; --k) {
        const axis t = axes[k];
        axes[k] = axes[k - 1];
        axes[k - 1] = t;
      }
    index_t span = 0;  // largest offset the smaller axes reach
    for (const axis& a : axes) {
      if (a.extent == 1) continue;
      if (a.stride <= span)
        throw error(where, "layout",
                    std::string("strides alias: the ") + a.name + " stride " + std::to_string(a.stride) + " does not pass the " +
                        std::to_string(span) + " elements the smaller axes span, so two entries would share memory");
      detail::require(a.stride <= (std::numeric_limits<index_t>::max() - span) / (a.extent - 1), where, "layout",
                      "the largest offset overflows a 64-bit index");
      span += a.stride * (a.extent - 1);
    }
  }
};

/// @brief Dense layout with memory order [layer][sequence][head][slot][dim] (per layer BHSD, as in
/// PyTorch caches of shape batch x heads x seq x dim).
/// @param sequences batch size
/// @param layers storage layers
/// @param kv_heads KV heads
/// @param slots capacity per head
/// @param dims head dimension
/// @return the strided layout
inline strided bhsd(index_t sequences, index_t layers, index_t kv_heads, index_t slots, index_t dims) {
  return strided{sequences, layers, kv_heads, slots, dims,
                 kv_heads * slots * dims, sequences * kv_heads * slots * dims, slots * dims, dims, 1};
}

/// @brief Dense layout with memory order [layer][sequence][slot][head][dim] (per layer BSHD, as in
/// caches of shape batch x seq x heads x dim).
/// @param sequences batch size
/// @param layers storage layers
/// @param kv_heads KV heads
/// @param slots capacity per head
/// @param dims head dimension
/// @return the strided layout
inline strided bshd(index_t sequences, index_t layers, index_t kv_heads, index_t slots, index_t dims) {
  return strided{sequences, layers, kv_heads, slots, dims,
                 slots * kv_heads * dims, sequences * slots * kv_heads * dims, dims, kv_heads * dims, 1};
}

}  // namespace layouts

KVCOMPACT_NAMESPACE_END
