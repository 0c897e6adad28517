// SPDX-License-Identifier: Apache-2.0
/// @file
/// @brief layouts::ragged_layers: storage layers of different capacities (ring-buffer window layers of
/// MixAttention next to full-length layers; a bounded slot memory per layer).
#pragma once

#include <kvcompact/error.hpp>
#include <kvcompact/layouts/concepts.hpp>

#include <cstdint>
#include <limits>
#include <span>
#include <string>

KVCOMPACT_NAMESPACE_BEGIN

namespace layouts {

/// @brief Storage layers that each hold their own number of slots per head (@ref methods_mixattention_cache).
///
/// Memory: one dense block per storage layer, `[sequence][kv_head][slot][dim]` (per-layer BHSD) with that
/// layer's capacity, the blocks one after another in layer order, so a window layer of 1024 slots next to
/// a layer of 32768 really takes 1/32 of its memory. `capacity()` is the largest layer's (the slot range
/// of the per-slot arrays: kv_cache::positions and the sessions' state keep that many per head);
/// `layer_capacity(layer)` is what the backends let a head of that layer hold. Trivially copyable (a
/// fixed table of at most 256 layers), so it is passed to kernels by value; compose it with
/// kvcompact::layouts::layer_condensed to share layers.
struct ragged_layers {
  static constexpr int max_layers = 256;  ///< most storage layers
  index_t sequences = 0;                  ///< number of sequences
  index_t layers = 0;                     ///< number of storage layers
  index_t kv_heads = 0;                   ///< KV heads per layer
  index_t dims = 0;                       ///< head dimension
  index_t largest = 0;                    ///< capacity of the largest layer
  std::int32_t first_slot[max_layers + 1] = {};  ///< prefix sums of the layer capacities (slots per head)

  /// @brief Builds the layout.
  /// @param sequences batch size @param capacities slots per head of every storage layer
  /// @param kv_heads KV heads @param head_dim head dimension
  /// @return the layout
  /// @throws kvcompact::error naming the bad argument (a capacity below 1, more than 256 layers, a total
  /// above 2^31 - 1 slots per head, non-positive extents)
  static ragged_layers make(index_t sequences, std::span<const index_t> capacities, index_t kv_heads, index_t head_dim) {
    const char* where = "ragged_layers::make";
    detail::require(sequences > 0, where, "sequences", "must be positive");
    detail::require(kv_heads > 0, where, "kv_heads", "must be positive");
    detail::require(head_dim > 0, where, "head_dim", "must be positive");
    detail::require(!capacities.empty() && capacities.size() <= static_cast<std::size_t>(max_layers), where, "capacities",
                    [&] { return "has " + std::to_string(capacities.size()) + " layers, must be in [1, 256]"; });
    ragged_layers out;
    out.sequences = sequences;
    out.layers = static_cast<index_t>(capacities.size());
    out.kv_heads = kv_heads;
    out.dims = head_dim;
    index_t total = 0;
    for (std::size_t l = 0; l < capacities.size(); ++l) {
      detail::require(capacities[l] >= 1, where, "capacities",
                      [&] { return "layer " + std::to_string(l) + " has capacity " + std::to_string(capacities[l]) + ", must be at least 1"; });
      total += capacities[l];
      detail::require(total <= std::numeric_limits<std::int32_t>::max(), where, "capacities", "more than 2^31 - 1 slots per head in all");
      out.first_slot[l + 1] = static_cast<std::int32_t>(total);
      out.largest = capacities[l] > out.largest ? capacities[l] : out.largest;
    }
    return out;
  }

  /// @brief Number of sequences. @return sequences
  KVCOMPACT_HOST_DEVICE index_t num_sequences() const { return sequences; }
  /// @brief Number of storage layers. @return layers
  KVCOMPACT_HOST_DEVICE index_t num_layers() const { return layers; }
  /// @brief Number of KV heads. @return kv_heads
  KVCOMPACT_HOST_DEVICE index_t num_kv_heads() const { return kv_heads; }
  /// @brief Slots of the largest layer. @return largest
  KVCOMPACT_HOST_DEVICE index_t capacity() const { return largest; }
  /// @brief Head dimension. @return dims
  KVCOMPACT_HOST_DEVICE index_t head_dim() const { return dims; }
  /// @brief Stride of the head dimension. @return 1
  KVCOMPACT_HOST_DEVICE index_t dim_stride() const { return 1; }
  /// @brief Slots per head of one storage layer. @param layer storage layer @return its capacity
  KVCOMPACT_HOST_DEVICE index_t layer_capacity(index_t layer) const { return index_t{first_slot[layer + 1]} - first_slot[layer]; }
  /// @brief Element offset of dimension 0 of one slot.
  /// @param sequence sequence @param layer storage layer @param kv_head KV head @param slot slot (below layer_capacity(layer))
  /// @return the offset in elements
  KVCOMPACT_HOST_DEVICE index_t offset(index_t sequence, index_t layer, index_t kv_head, index_t slot) const {
    return (index_t{first_slot[layer]} * sequences * kv_heads + (sequence * kv_heads + kv_head) * layer_capacity(layer) + slot) * dims;
  }
  /// @brief Elements of K (and of V) the layout addresses: the size of the engine's key (value) buffer.
  /// @return sequences * kv_heads * head_dim * (sum of the layer capacities)
  [[nodiscard]] index_t elements() const { return index_t{first_slot[layers]} * sequences * kv_heads * dims; }
  /// @brief Checks the extents and the capacity table (a default-constructed or hand-edited layout).
  /// @param where name of the calling entry point
  /// @throws kvcompact::error naming `layout`
  void validate(const char* where) const {
    detail::require(sequences > 0 && layers > 0 && layers <= max_layers && kv_heads > 0 && dims > 0, where, "layout",
                    "every extent of a ragged_layers layout must be positive (build it with ragged_layers::make)");
    for (index_t l = 0; l < layers; ++l)
      detail::require(layer_capacity(l) >= 1 && layer_capacity(l) <= largest, where, "layout",
                      [&] { return "layer " + std::to_string(l) + " of a ragged_layers layout has capacity " + std::to_string(layer_capacity(l)); });
  }
};

}  // namespace layouts

KVCOMPACT_NAMESPACE_END
