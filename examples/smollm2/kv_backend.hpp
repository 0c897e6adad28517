// SPDX-License-Identifier: Apache-2.0
/// @file kv_backend.hpp
/// @brief The seam between the forward pass and the KV cache: how a token's
///        K/V are stored and how attention over the cache is computed.
///        `full_kv_backend` keeps every token; a kvcompact session can be
///        plugged in by implementing the same three calls.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <vector>

#include "kv_cache.hpp"
#include "ops.hpp"

namespace smollm2 {

/// The last queries (after RoPE) of a prefill, as observation window for
/// prefill-time compression. Layout [layer][q_head][row][head_dim].
struct query_window {
    int rows = 0;                         ///< number of recorded queries (<= requested window)
    std::vector<float> q;                 ///< query vectors
    std::vector<std::int32_t> positions;  ///< token position of each row
};

/// Storage/attention strategy used by the engine for every layer and token.
class kv_backend {
public:
    virtual ~kv_backend() = default;
    /// Stores K (post-RoPE, [kv_head][head_dim]) and V of one token of @p layer.
    virtual void append(int layer, const float* k, const float* v, std::int32_t position) = 0;
    /// Computes attention of one token's queries @p q ([q_head][head_dim], post-RoPE)
    /// over the cached slots of @p layer; writes [q_head][head_dim] to @p out.
    virtual void attend(int layer, const float* q, std::int32_t position, float* out) = 0;
    /// @return true when a chunk of tokens may be appended first and then attended at once by
    /// attend_prefill() (no eviction between the tokens of a chunk).
    virtual bool batched_prefill() const { return false; }
    /// Causal attention of @p tokens consecutive queries (positions @p first.., each
    /// [q_head][head_dim], rows of q_heads * head_dim floats) over the slots of @p layer, all of them
    /// already appended; writes the same shape to @p out. Only called when batched_prefill().
    virtual void attend_prefill(int layer, const float* q, std::size_t tokens, std::int32_t first, float* out) {
        (void)layer, (void)q, (void)tokens, (void)first, (void)out;
        throw std::logic_error("kv_backend::attend_prefill: this backend attends token by token");
    }
    /// Called once after the prompt was processed, with its last queries
    /// (engine::last_window()); compressing backends compress here.
    virtual void finish_prefill(const query_window& window) = 0;
    /// @return true when the backend can compress each layer as soon as that layer's prefill is done
    /// (finish_prefill_layer()), so that the engine holds one layer's window queries instead of every layer's.
    virtual bool compresses_per_layer() const { return false; }
    /// Called by engine::forward_compressing_each_layer() right after the prompt's attention of @p layer
    /// (layers 0, 1, ... in order, each once, instead of one finish_prefill()), with that layer's last
    /// queries: a one-layer query_window, [1][q_head][row][head_dim]. Only called when compresses_per_layer().
    virtual void finish_prefill_layer(int layer, const query_window& layer_window) {
        (void)layer, (void)layer_window;
        throw std::logic_error("kv_backend::finish_prefill_layer: this backend compresses all layers in finish_prefill()");
    }
    /// Replaces the cache content by @p prefilled (an uncompressed cache of the
    /// same geometry), e.g. to evaluate several policies on one prefill.
    virtual void restore(const kv_cache_storage& prefilled) = 0;
    /// @return the underlying cache arrays.
    virtual const kv_cache_storage& cache() const = 0;
    /// @return rows of the prompt's last queries finish_prefill() wants for a prompt of @p prompt_length
    /// tokens when the engine's window is @p window: a compressing backend answers from its policy's
    /// kvcompact::window_need (every prompt query, the last @p window, or none); others want none.
    virtual int window_rows(int prompt_length, int window) const {
        (void)prompt_length, (void)window;
        return 0;
    }
    /// @return bytes of K and V the backend holds now (a backend whose storage is not cache() overrides it).
    virtual std::size_t occupied_bytes() const { return cache().occupied_bytes(); }
};

/// Softmax attention of one query head over the first @p length slots of one
/// (layer, kv_head) of @p cache. Slots may be in any position order.
/// @param scores scratch of at least @p length floats.
inline void attend_head(const kv_cache_storage& cache, int layer, int kv_head, int length, const float* q,
                        float scale, float* scores, float* out) {
    const auto d = static_cast<std::size_t>(cache.head_dim);
    for (int s = 0; s < length; ++s) scores[s] = ops::dot(q, cache.key(layer, kv_head, s), d) * scale;
    ops::softmax(scores, static_cast<std::size_t>(length));
    for (std::size_t i = 0; i < d; ++i) out[i] = 0.0f;
    for (int s = 0; s < length; ++s) {
        const float* v = cache.value(layer, kv_head, s);
        const float p = scores[s];
        for (std::size_t i = 0; i < d; ++i) out[i] += p * v[i];
    }
}

/// Writes one token's K/V ([kv_head][head_dim]) of @p layer into a new slot of every head.
inline void append_new_slot(kv_cache_storage& cache, int layer, const float* k, const float* v, std::int32_t position) {
    const auto d = static_cast<std::size_t>(cache.head_dim);
    for (int h = 0; h < cache.kv_heads; ++h) {
        auto& len = cache.lengths[cache.head_index(layer, h)];
        if (len >= cache.capacity) throw std::runtime_error("kv cache: capacity exceeded");
        std::copy(k + h * d, k + (h + 1) * d, cache.key(layer, h, len));
        std::copy(v + h * d, v + (h + 1) * d, cache.value(layer, h, len));
        cache.positions[cache.slot_index(layer, h, len)] = position;
        ++len;
    }
}

/// Attention of all @p n_heads query heads of one token over every valid slot
/// of @p layer (GQA: query head h reads KV head h / (n_heads / kv_heads)).
/// @param scores scratch of n_heads * capacity floats
inline void attend_all_slots(const kv_cache_storage& cache, int layer, int n_heads, const float* q, float scale,
                             float* scores, float* out) {
    const int group = n_heads / cache.kv_heads;
    const auto d = static_cast<std::size_t>(cache.head_dim);
#pragma omp parallel for schedule(static)
    for (int h = 0; h < n_heads; ++h) {
        const int kvh = h / group;
        attend_head(cache, layer, kvh, cache.lengths[cache.head_index(layer, kvh)], q + h * d, scale,
                    scores + static_cast<std::size_t>(h) * cache.capacity, out + h * d);
    }
}

/// acc[i] += weights[s] * value(s0 + s)[i] for the @p count slots from @p s0 of (@p layer, @p kv_head), the
/// slots in order, skipping weights of -infinity (masked). Blocks of value_block_lanes dimensions whose
/// sums stay in registers across the slots (one load and store of each sum per tile, not per slot); each
/// element sums over the slots in the same order as a loop over slots outside the dimensions.
inline void add_weighted_values(const kv_cache_storage& cache, int layer, int kv_head, int s0, int count, const float* weights,
                                float* acc) {
    constexpr std::size_t vectors = 4, value_block_lanes = vectors * ops::lanes;
    const auto d = static_cast<std::size_t>(cache.head_dim);
    std::size_t i0 = 0;
    for (; i0 + value_block_lanes <= d; i0 += value_block_lanes) {
        ops::lane_vector sums[vectors];
        for (std::size_t j = 0; j < vectors; ++j) sums[j] = ops::lanes_at(acc + i0 + j * ops::lanes);
        for (int s = 0; s < count; ++s) {
            const float p = weights[s];
            if (p == -INFINITY) continue;
            const float* v = cache.value(layer, kv_head, s0 + s) + i0;
            for (std::size_t j = 0; j < vectors; ++j) sums[j] += p * ops::lanes_at(v + j * ops::lanes);
        }
        std::memcpy(acc + i0, sums, sizeof sums);
    }
    for (int s = 0; s < count; ++s) {  // the dimensions past the last whole block
        const float p = weights[s];
        if (p == -INFINITY) continue;
        const float* v = cache.value(layer, kv_head, s0 + s);
        for (std::size_t i = i0; i < d; ++i) acc[i] += p * v[i];
    }
}

/// Causal attention of @p tokens consecutive queries (positions @p first + t, rows of n_heads *
/// head_dim floats in @p q) over the valid slots of @p layer whose position is not after the
/// query's: tiles of query_tile tokens x the GQA group's query heads against key_tile slots with an
/// online softmax, so each key and value tile is read once per query tile (not once per token); the
/// tile's logits are one ops::dot_tile() (register blocks of query rows x keys), and each query row
/// adds the tile's weighted values with its sums in registers (add_weighted_values(); the value tile
/// stays in L1 across the rows). Parallel over (KV head, query tile); each output row is
/// written by one thread in a fixed order, so the result does not depend on the thread count.
inline void attend_causal(const kv_cache_storage& cache, int layer, int n_heads, const float* q, std::size_t tokens,
                          std::int32_t first, float scale, float* out) {
    constexpr std::size_t query_tile = 16, key_tile = 64;
    const std::size_t group = static_cast<std::size_t>(n_heads / cache.kv_heads), d = static_cast<std::size_t>(cache.head_dim);
    const std::size_t row_width = static_cast<std::size_t>(n_heads) * d, tiles = (tokens + query_tile - 1) / query_tile;
    const auto items = static_cast<std::ptrdiff_t>(tiles * static_cast<std::size_t>(cache.kv_heads));
#pragma omp parallel for schedule(dynamic)
    for (std::ptrdiff_t item = 0; item < items; ++item) {
        const int h = static_cast<int>(static_cast<std::size_t>(item) / tiles);
        const std::size_t t0 = static_cast<std::size_t>(item) % tiles * query_tile, count = std::min(query_tile, tokens - t0);
        const std::size_t rows = count * group;  // row ti * group + gi: token t0 + ti, query head h * group + gi
        std::vector<float> maxima(rows, -INFINITY), sums(rows, 0.0f), acc(rows * d, 0.0f), logits(rows * key_tile);
        std::vector<const float*> query_rows(rows);
        std::vector<std::uint8_t> updated(rows);
        for (std::size_t r = 0; r < rows; ++r)
            query_rows[r] = q + (t0 + r / group) * row_width + (static_cast<std::size_t>(h) * group + r % group) * d;
        const float* keys[key_tile];
        const int length = cache.lengths[cache.head_index(layer, h)];
        const std::int32_t* positions = &cache.positions[cache.slot_index(layer, h, 0)];
        const std::int32_t last_position = first + static_cast<std::int32_t>(t0 + count - 1);
        for (int s0 = 0; s0 < length; s0 += static_cast<int>(key_tile)) {
            const int n = std::min(static_cast<int>(key_tile), length - s0);
            const std::int32_t oldest = *std::min_element(positions + s0, positions + s0 + n);
            if (oldest > last_position) continue;  // the whole tile is in every query's future
            for (int s = 0; s < n; ++s) keys[s] = cache.key(layer, h, s0 + s);
            ops::dot_tile(query_rows.data(), rows, keys, static_cast<std::size_t>(n), d, logits.data(), key_tile, 1);
            for (std::size_t r = 0; r < rows; ++r) {
                const std::int32_t position = first + static_cast<std::int32_t>(t0 + r / group);
                updated[r] = oldest <= position;
                if (!updated[r]) continue;  // the whole tile is in this query's future
                float* row = &logits[r * key_tile];
                float tile_max = -INFINITY;
                for (int s = 0; s < n; ++s) {
                    row[s] = positions[s0 + s] <= position ? row[s] * scale : -INFINITY;
                    tile_max = std::max(tile_max, row[s]);
                }
                const float maximum = std::max(maxima[r], tile_max), rescale = std::exp(maxima[r] - maximum);
                float* a = &acc[r * d];
                for (std::size_t i = 0; i < d; ++i) a[i] *= rescale;
                maxima[r] = maximum;
                float sum = sums[r] * rescale;  // in a register: summing into sums[r] stored and reloaded it per slot
                for (int s = 0; s < n; ++s) {  // row[s] becomes the weight of value s (-infinity: masked)
                    if (row[s] == -INFINITY) continue;
                    row[s] = std::exp(row[s] - maximum);
                    sum += row[s];
                }
                sums[r] = sum;
            }
            for (std::size_t r = 0; r < rows; ++r)  // the tile's weighted values, the slots in order
                if (updated[r]) add_weighted_values(cache, layer, h, s0, n, &logits[r * key_tile], &acc[r * d]);
        }
        for (std::size_t r = 0; r < rows; ++r) {
            float* o = out + (t0 + r / group) * row_width + (static_cast<std::size_t>(h) * group + r % group) * d;
            const float inverse = sums[r] > 0.0f ? 1.0f / sums[r] : 0.0f;
            for (std::size_t i = 0; i < d; ++i) o[i] = acc[r * d + i] * inverse;
        }
    }
}

/// Uncompressed cache: every token gets a new slot, attention sees all of them.
class full_kv_backend final : public kv_backend {
public:
    /// @param n_heads query heads (a multiple of @p n_kv_heads); @param capacity slots per head.
    full_kv_backend(int n_layers, int n_heads, int n_kv_heads, int head_dim, int capacity)
        : cache_(n_layers, n_kv_heads, capacity, head_dim), n_heads_(n_heads),
          scale_(1.0f / std::sqrt(static_cast<float>(head_dim))),
          scores_(static_cast<std::size_t>(n_heads) * capacity) {}

    void append(int layer, const float* k, const float* v, std::int32_t position) override {
        append_new_slot(cache_, layer, k, v, position);
    }

    void attend(int layer, const float* q, std::int32_t, float* out) override {
        attend_all_slots(cache_, layer, n_heads_, q, scale_, scores_.data(), out);
    }

    bool batched_prefill() const override { return true; }

    void attend_prefill(int layer, const float* q, std::size_t tokens, std::int32_t first, float* out) override {
        attend_causal(cache_, layer, n_heads_, q, tokens, first, scale_, out);
    }

    void finish_prefill(const query_window&) override {}

    void restore(const kv_cache_storage& prefilled) override { cache_.copy_from(prefilled); }

    const kv_cache_storage& cache() const override { return cache_; }

private:
    kv_cache_storage cache_;
    int n_heads_;
    float scale_;
    std::vector<float> scores_;
};

}  // namespace smollm2
