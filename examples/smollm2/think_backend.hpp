// SPDX-License-Identifier: Apache-2.0
/// @file think_backend.hpp
/// @brief kv_backend for the channel-pruning presets (kvcompact::policies::channel_preset_names, ThinK
///        + SnapKV): full attention while the prompt is prefilled, then the token policy's
///        compress_prefill, kvcompact::cpu::prune_key_channels into a pruned key store (the full-width
///        key buffer is released), and decode through cpu::append_pruned / cpu::attend_pruned.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <stdexcept>
#include <string_view>
#include <vector>

#include <kvcompact/kvcompact.hpp>

#include "in_place_backend.hpp"
#include "kv_backend.hpp"
#include "kv_cache.hpp"

namespace smollm2 {

/// Runs a kvcompact::channels::pruned_policy over this backend's kv_cache_storage.
/// @tparam Pruned a kvcompact::channels::pruned_policy
template <class Pruned>
class think_backend final : public in_place_backend {
    using session_type = kvcompact::cpu::session<typename Pruned::token_policy_type, float, layout_type>;

public:
    /// @param n_heads query heads; @param capacity slots per (layer, kv_head), at least prompt length + generated tokens.
    think_backend(const Pruned& policy, int n_layers, int n_heads, int n_kv_heads, int head_dim, int capacity)
        : in_place_backend(n_layers, n_heads, n_kv_heads, head_dim, capacity), policy_(policy) {}

    void append(int layer, const float* k, const float* v, std::int32_t position) override {
        if (pruned_) kvcompact::cpu::append_pruned(view_, pruned_->view, 0, layer, k, v, position);
        else append_new_slot(cache_, layer, k, v, position);
    }

    void attend(int layer, const float* q, std::int32_t position, float* out) override {
        if (pruned_) kvcompact::cpu::attend_pruned(view_, pruned_->view, shape_, 0, layer, q, position, out);
        else attend_all_slots(cache_, layer, n_heads_, q, scale_, scores_.data(), out);
    }

    bool batched_prefill() const override { return !pruned_; }

    int window_rows(int prompt_length, int window) const override {  // the token policy's kvcompact::window_need
        return static_cast<int>(kvcompact::window_rows_for<typename Pruned::token_policy_type>(prompt_length, window));
    }

    /// Compresses tokens, prunes key channels, releases the full-width keys.
    void finish_prefill(const query_window& window) override {
        const kvcompact::query_window view{window.q.data(), window.positions.data(), window.rows};
        {
            std::vector<std::byte> state(session_type::state_bytes(view_.layout)), workspace(session_type::workspace_bytes(view_.layout, shape_));
            session_type session(policy_.tokens, view_, shape_, state, workspace);
            session.compress_prefill(view);
        }
        const int longest = *std::max_element(cache_.lengths.begin(), cache_.lengths.end());
        const auto tail = static_cast<int>(policy_.channels.unpruned_tail());
        pruned_.emplace(cache_, policy_.channels.kept_channels(cache_.head_dim), std::max(0, longest - tail),
                        std::min(longest, tail) + cache_.capacity - longest);
        kvcompact::cpu::prune_key_channels(policy_.channels, view_, shape_, view, pruned_->view);
        std::vector<float>().swap(cache_.k);  // decode reads keys from the pruned store only
        view_.keys = nullptr;
    }

    void restore(const kv_cache_storage& prefilled) override {
        if (pruned_) throw std::logic_error("think_backend::restore: already compressed");
        cache_.copy_from(prefilled);
    }

    /// Values of the occupied slots plus the pruned keys (thin rows, tail rows, channel lists) they use.
    std::size_t occupied_bytes() const override {
        if (!pruned_) return cache_.occupied_bytes();
        const auto& p = pruned_->view;
        std::size_t elements = 0;
        for (std::size_t head = 0; head < cache_.lengths.size(); ++head) {
            const auto thin = static_cast<std::size_t>(p.thin_lengths[head]), length = static_cast<std::size_t>(cache_.lengths[head]);
            elements += length * static_cast<std::size_t>(cache_.head_dim)                                                  // values
                        + thin * static_cast<std::size_t>(p.kept) + (length - thin) * static_cast<std::size_t>(cache_.head_dim);  // keys
        }
        return elements * sizeof(float) + cache_.lengths.size() * static_cast<std::size_t>(p.kept) * sizeof(std::uint16_t);
    }

private:
    /// The pruned key store and its arrays.
    struct store {
        std::vector<float> thin, tail;
        std::vector<std::uint16_t> channels;
        std::vector<std::int32_t> thin_lengths;
        kvcompact::pruned_keys<float> view;
        store(const kv_cache_storage& c, kvcompact::index_t kept, int thin_capacity, int tail_capacity)
            : view{1, c.layers, c.kv_heads, c.head_dim, kept, thin_capacity, tail_capacity, nullptr, nullptr, nullptr, nullptr} {
            thin.resize(static_cast<std::size_t>(view.thin_elements()));
            tail.resize(static_cast<std::size_t>(view.tail_elements()));
            channels.resize(static_cast<std::size_t>(view.head_count() * kept));
            thin_lengths.resize(static_cast<std::size_t>(view.head_count()));
            view.thin = thin.data(), view.tail = tail.data(), view.channels = channels.data(), view.thin_lengths = thin_lengths.data();
        }
    };

    Pruned policy_;
    std::optional<store> pruned_;
};

/// @return true when @p name is a channel-pruning preset (kvcompact::policies::channel_preset_names).
inline bool is_channel_preset(std::string_view name) {
    const auto& names = kvcompact::policies::channel_preset_names;
    return std::find(names.begin(), names.end(), name) != names.end();
}

/// Builds the backend of channel-pruning preset @p name.
/// @param options budget (slots per head kept by the token policy) and window
/// @throws kvcompact::error for an unknown name or an infeasible budget
inline std::unique_ptr<kv_backend> make_think_backend(std::string_view name, const kvcompact::policies::preset_options& options, int n_layers,
                                                      int n_heads, int n_kv_heads, int head_dim, int capacity) {
    return kvcompact::policies::with_channel_preset(name, options, [&](const auto& policy) -> std::unique_ptr<kv_backend> {
        return std::make_unique<think_backend<std::decay_t<decltype(policy)>>>(policy, n_layers, n_heads, n_kv_heads, head_dim, capacity);
    });
}

}  // namespace smollm2
