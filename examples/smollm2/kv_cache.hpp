// SPDX-License-Identifier: Apache-2.0
/// @file kv_cache.hpp
/// @brief Slot-based KV-cache storage shared by the engine and kvcompact.
///
/// Layout (one sequence): K and V are float arrays [layer][kv_head][slot][head_dim]
/// with a fixed capacity per (layer, kv_head). `lengths[layer][kv_head]` counts
/// the valid slots of each head (heads may differ after compression) and
/// `positions[layer][kv_head][slot]` holds the logical token position of each
/// slot: after eviction slots are not in position order.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <vector>

namespace smollm2 {

/// Owning KV-cache arrays for one sequence.
struct kv_cache_storage {
    int layers = 0;    ///< transformer blocks
    int kv_heads = 0;  ///< key/value heads per layer
    int capacity = 0;  ///< slots per (layer, kv_head)
    int head_dim = 0;  ///< elements per key/value vector

    std::vector<float> k;               ///< keys after RoPE, [layer][kv_head][slot][head_dim]
    std::vector<float> v;               ///< values, same layout as k
    std::vector<std::int32_t> lengths;  ///< valid slots, [layer][kv_head]
    std::vector<std::int32_t> positions;  ///< token position per slot, [layer][kv_head][slot]

    /// Allocates an empty cache of the given geometry.
    kv_cache_storage(int n_layers, int n_kv_heads, int slots, int dim)
        : layers(n_layers), kv_heads(n_kv_heads), capacity(slots), head_dim(dim),
          k(static_cast<std::size_t>(n_layers) * n_kv_heads * slots * dim),
          v(k.size()),
          lengths(static_cast<std::size_t>(n_layers) * n_kv_heads, 0),
          positions(static_cast<std::size_t>(n_layers) * n_kv_heads * slots, -1) {}

    /// @return flat index of (layer, head) in `lengths`.
    std::size_t head_index(int layer, int head) const {
        return static_cast<std::size_t>(layer) * kv_heads + head;
    }
    /// @return flat index of (layer, head, slot) in `positions`.
    std::size_t slot_index(int layer, int head, int slot) const {
        return head_index(layer, head) * capacity + slot;
    }
    /// @return pointer to the key vector of (layer, head, slot).
    float* key(int layer, int head, int slot) { return k.data() + slot_index(layer, head, slot) * head_dim; }
    /// @return pointer to the value vector of (layer, head, slot).
    float* value(int layer, int head, int slot) { return v.data() + slot_index(layer, head, slot) * head_dim; }
    /// @return const pointer to the key vector of (layer, head, slot).
    const float* key(int layer, int head, int slot) const {
        return k.data() + slot_index(layer, head, slot) * head_dim;
    }
    /// @return const pointer to the value vector of (layer, head, slot).
    const float* value(int layer, int head, int slot) const {
        return v.data() + slot_index(layer, head, slot) * head_dim;
    }

    /// Copies every array of @p other (same geometry) into this cache's existing
    /// buffers, so pointers handed out earlier (e.g. to kvcompact) stay valid.
    void copy_from(const kv_cache_storage& other) {
        if (other.layers != layers || other.kv_heads != kv_heads || other.capacity != capacity || other.head_dim != head_dim)
            throw std::invalid_argument("kv_cache_storage::copy_from: geometry differs");
        std::copy(other.k.begin(), other.k.end(), k.begin());
        std::copy(other.v.begin(), other.v.end(), v.begin());
        std::copy(other.lengths.begin(), other.lengths.end(), lengths.begin());
        std::copy(other.positions.begin(), other.positions.end(), positions.begin());
    }

    /// @return bytes of K and V actually occupied (sum of lengths).
    std::size_t occupied_bytes() const {
        std::size_t slots = 0;
        for (auto n : lengths) slots += static_cast<std::size_t>(n);
        return slots * static_cast<std::size_t>(head_dim) * 2 * sizeof(float);
    }
    /// @return bytes an uncompressed cache needs for @p tokens tokens.
    std::size_t full_bytes(std::size_t tokens) const {
        return tokens * static_cast<std::size_t>(layers) * kv_heads * head_dim * 2 * sizeof(float);
    }
};

}  // namespace smollm2
