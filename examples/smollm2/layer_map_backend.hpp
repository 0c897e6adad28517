// SPDX-License-Identifier: Apache-2.0
/// @file layer_map_backend.hpp
/// @brief kv_backend over a MixAttention-style cache: a kvcompact::layouts::layer_map (sliding layers,
///        layers reading another layer's KV) over kvcompact::layouts::ragged_layers storage, whose
///        window-only layers really hold only `window + sinks` slots per head.
///
/// SmolLM2 was not trained for such a cache, so what runs here is an inference-time approximation
/// (docs/methods.md 9.4): the prompt is prefilled with the model's own full attention, then
/// finish_prefill() keeps, per storage layer, what the policy selects from the full prefill (a ring
/// layer: the sinks and the newest window) and decoding runs through the layout from the first
/// generated token on, every layer reading its storage layer with the map's visibility.
#pragma once

#include <cstddef>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include <kvcompact/kvcompact.hpp>
#include <kvcompact/layouts/ragged_layers.hpp>

#include "kv_backend.hpp"
#include "kv_cache.hpp"

namespace smollm2 {

/// Runs @p Policy over a layer_condensed<ragged_layers> cache (see the file comment).
/// @tparam Policy a kvcompact::compression_policy whose budgets fit the storage layers' capacities
template <class Policy>
class layer_map_backend final : public kv_backend {
    using layout_type = kvcompact::layouts::layer_condensed<kvcompact::layouts::ragged_layers>;
    using prefill_layout = kvcompact::layouts::layer_condensed<kvcompact::layouts::strided>;

public:
    /// @param map which layer reads which KV, window and sinks; @param capacities slots of every storage layer
    /// @param n_heads query heads; @param capacity slots per head of the prefill cache (prompt + generated tokens)
    layer_map_backend(const Policy& policy, const kvcompact::layouts::layer_map& map, std::span<const kvcompact::index_t> capacities, int n_heads,
                      int n_kv_heads, int head_dim, int capacity)
        : policy_(policy), full_(map.model_layers, n_heads, n_kv_heads, head_dim, capacity),
          layout_{kvcompact::layouts::ragged_layers::make(1, capacities, n_kv_heads, head_dim), map},
          keys_(static_cast<std::size_t>(layout_.inner.elements())), values_(keys_.size()),
          lengths_(static_cast<std::size_t>(map.cache_layers) * n_kv_heads, 0),
          positions_(lengths_.size() * static_cast<std::size_t>(layout_.capacity()), -1), shape_{n_heads} {}

    void append(int layer, const float* k, const float* v, std::int32_t position) override {
        if (!session_) return full_.append(layer, k, v, position);
        if (layout_.map.computes_kv(layer)) session_->append(0, own_storage(layer), k, v, position);
    }

    void attend(int layer, const float* q, std::int32_t position, float* out) override {
        if (session_) session_->attend(0, layer, q, position, out);
        else full_.attend(layer, q, position, out);
    }

    /// @return true during the prefill (the full cache attends a chunk at once), false once decoding
    /// runs through the layout
    bool batched_prefill() const override { return !session_; }

    void attend_prefill(int layer, const float* q, std::size_t tokens, std::int32_t first, float* out) override {
        full_.attend_prefill(layer, q, tokens, first, out);
    }

    /// Selects from the full prefill with the policy (each storage layer from the KV of the model
    /// layer that computes it), moves the kept slots into the ragged storage and starts decoding there.
    int window_rows(int prompt_length, int window) const override {
        return static_cast<int>(kvcompact::window_rows_for<Policy>(prompt_length, window));
    }

    void finish_prefill(const query_window& window) override {
        const auto& map = layout_.map;
        const kv_cache_storage& full = full_.cache();
        const int H = full.kv_heads, D = full.head_dim, cap = full.capacity;
        kv_cache_storage stored(map.cache_layers, H, cap, D);  // the storage layers' full prefill, bhsd
        for (int l = 0; l < map.model_layers; ++l) {
            if (!map.computes_kv(l)) continue;
            const int s = own_storage(l);
            for (int h = 0; h < H; ++h) {
                const int n = full.lengths[full.head_index(l, h)];
                std::copy_n(full.key(l, h, 0), static_cast<std::size_t>(n) * D, stored.key(s, h, 0));
                std::copy_n(full.value(l, h, 0), static_cast<std::size_t>(n) * D, stored.value(s, h, 0));
                std::copy_n(&full.positions[full.slot_index(l, h, 0)], n, &stored.positions[stored.slot_index(s, h, 0)]);
                stored.lengths[stored.head_index(s, h)] = n;
            }
        }
        const prefill_layout selection_layout{kvcompact::layouts::bhsd(1, map.cache_layers, H, cap, D), map};
        std::vector<float> window_queries = storage_rows(window);
        {
            using selection_session = kvcompact::cpu::session<Policy, float, prefill_layout>;
            const kvcompact::kv_cache<float, prefill_layout> view{selection_layout, stored.k.data(), stored.v.data(), stored.lengths.data(),
                                                                  stored.positions.data()};
            std::vector<std::byte> state(selection_session::state_bytes(selection_layout)),
                workspace(selection_session::workspace_bytes(selection_layout, shape_));
            selection_session selection(policy_, view, shape_, state, workspace);
            selection.compress_prefill(kvcompact::query_window{window_queries.data(), window.positions.data(), window.rows});
        }
        for (int s = 0; s < map.cache_layers; ++s)
            for (int h = 0; h < H; ++h) {
                const int n = stored.lengths[stored.head_index(s, h)];
                for (int j = 0; j < n; ++j) {
                    const auto at = static_cast<std::size_t>(layout_.offset(0, s, h, j));
                    std::copy_n(stored.key(s, h, j), D, &keys_[at]);
                    std::copy_n(stored.value(s, h, j), D, &values_[at]);
                    positions_[(static_cast<std::size_t>(s) * H + h) * layout_.capacity() + j] = stored.positions[stored.slot_index(s, h, j)];
                }
                lengths_[static_cast<std::size_t>(s) * H + h] = n;
            }
        const kvcompact::kv_cache<float, layout_type> view{layout_, keys_.data(), values_.data(), lengths_.data(), positions_.data()};
        state_.resize(session_type::state_bytes(layout_));
        workspace_.resize(session_type::workspace_bytes(layout_, shape_));
        session_.emplace(policy_, view, shape_, std::span<std::byte>(state_), std::span<std::byte>(workspace_));
    }

    void restore(const kv_cache_storage& prefilled) override { full_.restore(prefilled); }

    /// @return the full cache of the prefill (the layout's storage holds the tokens after finish_prefill)
    const kv_cache_storage& cache() const override { return full_.cache(); }

    /// @return bytes of K and V occupied: the prefill cache's before finish_prefill, the layout's after
    std::size_t occupied_bytes() const override {
        if (!session_) return full_.cache().occupied_bytes();
        std::size_t slots = 0;
        for (auto n : lengths_) slots += static_cast<std::size_t>(n);
        return slots * static_cast<std::size_t>(layout_.head_dim()) * 2 * sizeof(float);
    }

    /// @return bytes of K and V the ragged storage allocates (all storage layers at their capacities)
    std::size_t allocated_bytes() const { return keys_.size() * 2 * sizeof(float); }

private:
    using session_type = kvcompact::cpu::session<Policy, float, layout_type>;

    /// The storage layer holding model layer @p layer's own KV.
    int own_storage(int layer) const {
        const auto& map = layout_.map;
        for (int r = 0; r < map.model_layers; ++r)
            if (map.source[r] == layer) return map.storage[r];
        return -1;
    }

    /// The engine's window ([model layer][q_head][row][dim]) restricted to the model layers that compute
    /// KV, in storage-layer order, as compress_prefill over the storage layers expects.
    std::vector<float> storage_rows(const query_window& window) const {
        const auto& map = layout_.map;
        const std::size_t per_layer = static_cast<std::size_t>(shape_.query_heads) * window.rows * layout_.head_dim();
        std::vector<float> out(static_cast<std::size_t>(map.cache_layers) * per_layer);
        for (int l = 0; l < map.model_layers; ++l)
            if (map.computes_kv(l) && !window.q.empty())
                std::copy_n(&window.q[static_cast<std::size_t>(l) * per_layer], per_layer, &out[static_cast<std::size_t>(own_storage(l)) * per_layer]);
        return out;
    }

    Policy policy_;
    full_kv_backend full_;
    layout_type layout_;
    std::vector<float> keys_, values_;
    std::vector<std::int32_t> lengths_, positions_;
    kvcompact::attention_shape shape_;
    std::vector<std::byte> state_, workspace_;
    std::optional<session_type> session_;
};

/// Names of the MixAttention-style configurations of the SmolLM2 example and bench (layer_map_backend):
/// `mixattention`, Character.AI's pattern with cross-layer sharing (layer_map::character_ai); and
/// `sliding_window`, the training-free approximation without sharing (layer_map::interleaved, one full
/// layer in six: layers 5, 11, 17, 23, 29 of SmolLM2's 30). Both keep 4 sinks in the sliding layers.
inline constexpr std::string_view layer_map_presets[] = {"mixattention", "sliding_window"};

/// @return true when @p name is one of layer_map_presets.
inline bool is_layer_map_preset(std::string_view name) {
    for (auto p : layer_map_presets)
        if (p == name) return true;
    return false;
}

/// Builds the layer_map_backend of preset @p name: ring layers of @p ring_slots slots (window =
/// ring_slots - 4 sinks), full layers of @p capacity slots.
/// @throws kvcompact::error for a ring of fewer than 5 slots (window 0)
inline std::unique_ptr<kv_backend> make_layer_map_backend(std::string_view name, int ring_slots, int n_layers, int n_heads, int n_kv_heads,
                                                          int head_dim, int capacity) {
    constexpr int sinks = 4;
    const int window = ring_slots - sinks;
    const auto map = name == "mixattention" ? kvcompact::layouts::layer_map::character_ai(n_layers, window, sinks)
                                            : kvcompact::layouts::layer_map::interleaved(n_layers, window, 6, sinks);
    const auto policy = kvcompact::policies::mixattention(map, capacity);
    const auto capacities = kvcompact::policies::mixattention_capacities(map, capacity);
    return std::make_unique<layer_map_backend<decltype(policy)>>(policy, map, capacities, n_heads, n_kv_heads, head_dim, capacity);
}

}  // namespace smollm2
