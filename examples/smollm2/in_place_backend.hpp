// SPDX-License-Identifier: Apache-2.0
/// @file in_place_backend.hpp
/// @brief The part every kv_backend that compresses its own kv_cache_storage in place through
///        kvcompact shares: the storage, the kvcompact view of it, and the full attention of the prefill.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <vector>

#include <kvcompact/kvcompact.hpp>

#include "kv_backend.hpp"
#include "kv_cache.hpp"

namespace smollm2 {

/// Base of the backends whose kvcompact calls work in place on this backend's kv_cache_storage arrays
/// (kvcompact_backend, think_backend): until they compress, the prompt is prefilled with full causal attention.
class in_place_backend : public kv_backend {
public:
    void attend_prefill(int layer, const float* q, std::size_t tokens, std::int32_t first, float* out) override {
        attend_causal(cache_, layer, n_heads_, q, tokens, first, scale_, out);
    }

    const kv_cache_storage& cache() const override { return cache_; }

protected:
    /// The kvcompact layout of the view: kv_cache_storage is strided bhsd.
    using layout_type = kvcompact::layouts::strided;

    /// @param n_heads query heads; @param capacity slots per (layer, kv_head), at least prompt length + generated tokens.
    in_place_backend(int n_layers, int n_heads, int n_kv_heads, int head_dim, int capacity)
        : cache_(n_layers, n_kv_heads, capacity, head_dim), n_heads_(n_heads),
          scale_(1.0f / std::sqrt(static_cast<float>(head_dim))), scores_(static_cast<std::size_t>(n_heads) * capacity),
          // memory order [layer][sequence][head][slot][dim] == kv_cache_storage's [layer][head][slot][dim]
          view_{kvcompact::layouts::bhsd(1, n_layers, n_kv_heads, capacity, head_dim), cache_.k.data(), cache_.v.data(), cache_.lengths.data(),
                cache_.positions.data()},
          shape_{n_heads, scale_} {}

    kv_cache_storage cache_;                         ///< the cache arrays
    int n_heads_;                                    ///< query heads
    float scale_;                                    ///< attention logit scale, 1 / sqrt(head_dim)
    std::vector<float> scores_;                      ///< attend_all_slots scratch, n_heads * capacity floats
    kvcompact::kv_cache<float, layout_type> view_;   ///< kvcompact's view of cache_
    kvcompact::attention_shape shape_;               ///< query heads and scale, for kvcompact
};

}  // namespace smollm2
