// SPDX-License-Identifier: Apache-2.0
/// @file kvcompact_backend.hpp
/// @brief kv_backend driven by a kvcompact policy: full attention while the
///        prompt is prefilled, kvcompact::cpu::session::compress_prefill on the
///        prompt's last queries, then decode through session::append/attend
///        (eviction by the policy, attention with the scorer's state update).
#pragma once

#include <cstddef>
#include <memory>
#include <optional>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include <kvcompact/kvcompact.hpp>

#include "in_place_backend.hpp"
#include "kv_backend.hpp"
#include "kv_cache.hpp"

namespace smollm2 {

/// Adapts kvcompact::cpu::session to the engine's kv_backend seam; the session
/// works in place on this backend's kv_cache_storage arrays.
/// @tparam Policy a kvcompact::compression_policy
template <class Policy>
class kvcompact_backend final : public in_place_backend {
    using session_type = kvcompact::cpu::session<Policy, float, layout_type>;
    /// Whether the policy's selector decides per layer, as compress_prefill_layer() requires.
    static constexpr bool compresses_layer_by_layer = kvcompact::layer_by_layer_prefill_v<Policy>;

public:
    /// @param n_heads query heads; @param capacity slots per (layer, kv_head), at
    /// least prompt length + generated tokens.
    kvcompact_backend(const Policy& policy, int n_layers, int n_heads, int n_kv_heads, int head_dim, int capacity)
        : in_place_backend(n_layers, n_heads, n_kv_heads, head_dim, capacity), policy_(policy),
          state_(session_type::state_bytes(view_.layout)),
          workspace_(session_type::workspace_bytes(view_.layout, shape_)) {}

    void append(int layer, const float* k, const float* v, std::int32_t position) override {
        if (decoding_) session_->append(0, layer, k, v, position);
        else append_new_slot(cache_, layer, k, v, position);
    }

    void attend(int layer, const float* q, std::int32_t position, float* out) override {
        if (decoding_) session_->attend(0, layer, q, position, out);
        else attend_all_slots(cache_, layer, n_heads_, q, scale_, scores_.data(), out);
    }

    bool batched_prefill() const override { return !decoding_; }

    int window_rows(int prompt_length, int window) const override {
        return static_cast<int>(kvcompact::window_rows_for<Policy>(prompt_length, window));
    }

    void finish_prefill(const query_window& window) override {
        start_session();
        session_->compress_prefill(library_window(window));
        decoding_ = true;
    }

    /// @return false for selectors that share one decision across layers (WindowKV), which
    /// kvcompact's compress_prefill_layer() rejects; true otherwise.
    bool compresses_per_layer() const override { return compresses_layer_by_layer; }

    /// Compresses @p layer with kvcompact::cpu::session::compress_prefill_layer() (the session starts at
    /// layer 0); decoding starts after the last layer.
    void finish_prefill_layer(int layer, const query_window& layer_window) override {
        if constexpr (compresses_layer_by_layer) {
            if (!session_) start_session();
            session_->compress_prefill_layer(layer, library_window(layer_window));
            decoding_ = layer + 1 == cache_.layers;
        } else {
            kv_backend::finish_prefill_layer(layer, layer_window);
        }
    }

    void restore(const kv_cache_storage& prefilled) override {
        if (session_) throw std::logic_error("kvcompact_backend::restore: already compressed");
        cache_.copy_from(prefilled);
    }

private:
    /// Binds the policy to the (prefilled) cache.
    void start_session() { session_.emplace(policy_, view_, shape_, std::span<std::byte>(state_), std::span<std::byte>(workspace_)); }

    /// @return kvcompact's view of the engine's recorded @p window (same layout).
    static kvcompact::query_window library_window(const query_window& window) {
        return kvcompact::query_window{window.q.data(), window.positions.data(), window.rows};
    }

    Policy policy_;
    std::vector<std::byte> state_;
    std::vector<std::byte> workspace_;
    std::optional<session_type> session_;
    bool decoding_ = false;  ///< every layer compressed: tokens go through the session
};

/// Builds the kvcompact backend that runs @p policy over a cache of the given shape.
template <class Policy>
std::unique_ptr<kv_backend> make_policy_backend(const Policy& policy, int n_layers, int n_heads, int n_kv_heads,
                                                int head_dim, int capacity) {
    return std::make_unique<kvcompact_backend<Policy>>(policy, n_layers, n_heads, n_kv_heads, head_dim, capacity);
}

/// Builds the kvcompact backend for preset @p name (kvcompact::policies::preset_names, or
/// calibrated_preset_names with options.layer_budgets set).
/// @param options budget (slots kept per head after prefill compression), prompt length, window rows
/// @throws kvcompact::error for an unknown name or an infeasible budget
inline std::unique_ptr<kv_backend> make_kvcompact_backend(std::string_view name,
                                                          const kvcompact::policies::preset_options& options,
                                                          int n_layers, int n_heads, int n_kv_heads, int head_dim,
                                                          int capacity) {
    return kvcompact::policies::with_preset(name, options, [&](const auto& policy) {
        return make_policy_backend(policy, n_layers, n_heads, n_kv_heads, head_dim, capacity);
    });
}

}  // namespace smollm2
