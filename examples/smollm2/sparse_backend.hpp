// SPDX-License-Identifier: Apache-2.0
/// @file sparse_backend.hpp
/// @brief kv_backend of CSR (docs/methods.md 13, preset `csr`): the prompt is prefilled with full
///        attention, then every entry of the prompt is replaced by sparse codes over per-(layer, KV head)
///        dictionaries fitted offline (kvcompact::codecs::sparse_cache::encode; the full-precision keys
///        and values are released); decode codes each new token and attends on the codes.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include <kvcompact/codecs/sparse_cache.hpp>
#include <kvcompact/kvcompact.hpp>

#include "in_place_backend.hpp"
#include "kv_backend.hpp"
#include "kv_cache.hpp"

namespace smollm2 {

/// A cache of sparse codes: full attention while the prompt is prefilled, the prompt's entries coded by
/// finish_prefill() (or restore()), new entries coded as they are appended.
class sparse_backend final : public in_place_backend {
public:
    /// @param dictionaries the fitted dictionaries (kvcompact::codecs::dictionary_set::load)
    /// @param terms s, (index, weight) pairs per code @param model the engine's model ("name fingerprint"; the
    /// dictionaries must have been fitted on it) @param n_heads query heads
    /// @param capacity slots per (layer, kv_head), at least prompt length + generated tokens
    /// @throws kvcompact::error naming `dictionary` when it does not fit the model
    sparse_backend(const kvcompact::codecs::dictionary_set& dictionaries, int terms, const std::string& model, int n_layers, int n_heads,
                   int n_kv_heads, int head_dim, int capacity)
        : in_place_backend(n_layers, n_heads, n_kv_heads, head_dim, capacity),
          codes_(dictionaries, n_layers, n_kv_heads, head_dim, capacity, terms, model) {}

    void append(int layer, const float* k, const float* v, std::int32_t position) override {
        if (encoded_) codes_.append(layer, k, v, position);
        else append_new_slot(cache_, layer, k, v, position);
    }

    void attend(int layer, const float* q, std::int32_t, float* out) override {
        if (encoded_) codes_.attend(layer, q, n_heads_, scale_, out);
        else attend_all_slots(cache_, layer, n_heads_, q, scale_, scores_.data(), out);
    }

    bool batched_prefill() const override { return !encoded_; }

    /// Codes every prompt entry (no query window needed) and releases the full-precision keys and values.
    void finish_prefill(const query_window&) override { encode_prompt(); }

    /// Takes @p prefilled as the prompt and codes it at once.
    void restore(const kv_cache_storage& prefilled) override {
        if (encoded_) throw std::logic_error("sparse_backend::restore: already coded");
        cache_.copy_from(prefilled);
        encode_prompt();
    }

    /// Bytes of the codes of the occupied slots (16-bit index and fp16 weight per pair, key and value);
    /// the dictionaries, fixed per model like the weights, are not counted.
    std::size_t occupied_bytes() const override {
        if (!encoded_) return cache_.occupied_bytes();
        std::size_t entries = 0;
        for (int l = 0; l < cache_.layers; ++l)
            for (int h = 0; h < cache_.kv_heads; ++h) entries += static_cast<std::size_t>(codes_.length(l, h));
        return entries * 2 * static_cast<std::size_t>(codes_.codes().terms) * (sizeof(std::uint16_t) + sizeof(kvcompact::half_t));
    }

    /// @return the codes (bits per element, lengths).
    const kvcompact::codecs::sparse_cache& codes() const { return codes_; }

private:
    void encode_prompt() {
        codes_.encode(view_, 0);
        encoded_ = true;
        std::vector<float>().swap(cache_.k);  // attention reads the codes only
        std::vector<float>().swap(cache_.v);
        view_.keys = view_.values = nullptr;
    }

    kvcompact::codecs::sparse_cache codes_;
    bool encoded_ = false;
};

}  // namespace smollm2
