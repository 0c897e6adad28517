// SPDX-License-Identifier: Apache-2.0
/// @file engine.hpp
/// @brief LLaMA forward pass (batched prefill and single-token decode) over a
///        pluggable KV backend, plus greedy sampling.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <span>
#include <stdexcept>
#include <vector>

#include "kv_backend.hpp"
#include "model.hpp"
#include "ops.hpp"
#include "tokenizer.hpp"

namespace smollm2 {

/// Runs the model for one sequence; K/V storage and attention are delegated
/// to a kv_backend. RoPE positions continue from the number of tokens seen,
/// independent of how many slots the backend keeps.
class engine {
public:
    /// @param backend receives every token's K/V and answers attention queries.
    /// @param tokens_seen tokens already in @p backend (e.g. after kv_backend::restore).
    engine(const model_config& config, const model_weights& weights, kv_backend& backend, std::int32_t tokens_seen = 0)
        : c_(config), w_(weights), kv_(backend), rope_(static_cast<std::size_t>(config.head_dim), config.rope_theta),
          n_past_(tokens_seen) {}

    /// @return the queries recorded by the last forward() call.
    const query_window& last_window() const { return window_; }

    /// @return number of tokens processed so far (next token's position).
    std::int32_t tokens_seen() const { return n_past_; }

    /// Processes @p tokens at positions tokens_seen().. and returns the logits
    /// after the last one. The queries (post-RoPE) of the last @p window_rows
    /// tokens of this call are kept in last_window(), for prefill compression.
    std::vector<float> forward(std::span<const token_id> tokens, int window_rows = 0) {
        return logits(hidden(tokens, window_rows), tokens.size(), 1);
    }

    /// Processes @p tokens like forward() and returns the logits after every one of
    /// them ([token][vocab]): a teacher-forced continuation in one pass. The matmuls
    /// run once for all tokens (same result per row as one at a time); a backend
    /// without batched_prefill() still appends and attends the tokens one by one in
    /// every layer, so a compressing cache evicts exactly as in token-by-token decode.
    std::vector<float> forward_all(std::span<const token_id> tokens) { return logits(hidden(tokens, 0), tokens.size(), tokens.size()); }

    /// Processes a whole prompt @p tokens like forward() followed by kv_backend::finish_prefill(), but
    /// hands each layer's last @p window_rows queries to kv_backend::finish_prefill_layer() as soon as that
    /// layer's attention is done: the backend compresses the layer before the next one runs, and only one
    /// layer's window queries are held (last_window() keeps the last layer's). The same keep-sets as
    /// forward() + finish_prefill(), since no layer reads another layer's cache.
    /// @throws std::logic_error when the backend does not kv_backend::compresses_per_layer()
    std::vector<float> forward_compressing_each_layer(std::span<const token_id> tokens, int window_rows) {
        if (!kv_.compresses_per_layer())
            throw std::logic_error("engine::forward_compressing_each_layer: the backend compresses all layers at once");
        return logits(hidden(tokens, window_rows, true), tokens.size(), 1);
    }

private:
    /// Runs every layer over @p tokens; @return the final hidden states [T][hidden]. With
    /// @p compress_each_layer the window holds one layer, handed to kv_backend::finish_prefill_layer()
    /// after each layer's attention; else it holds every layer's queries.
    std::vector<float> hidden(std::span<const token_id> tokens, int window_rows, bool compress_each_layer = false) {
        const std::size_t T = tokens.size(), H = c_.hidden, F = c_.ffn;
        const std::size_t D = c_.head_dim, NQ = c_.n_heads, KV = static_cast<std::size_t>(c_.n_kv_heads) * D;
        std::vector<float> x(T * H), xn(T * H), q(T * H), k(T * KV), v(T * KV), att(T * H), o(T * H);
        std::vector<float> gate(T * F), up(T * F);
        for (std::size_t t = 0; t < T; ++t) {
            const float* e = w_.token_embedding.data() + static_cast<std::size_t>(tokens[t]) * H;
            std::copy(e, e + H, x.data() + t * H);
        }
        query_window& window = window_;
        window = {};
        window.rows = static_cast<int>(std::min<std::size_t>(T, static_cast<std::size_t>(std::max(window_rows, 0))));
        const std::size_t window_layers = compress_each_layer ? 1 : static_cast<std::size_t>(c_.n_layers);
        window.q.resize(window_layers * NQ * window.rows * D);
        for (int r = 0; r < window.rows; ++r) window.positions.push_back(n_past_ + static_cast<std::int32_t>(T) - window.rows + r);

        for (int l = 0; l < c_.n_layers; ++l) {
            const auto& L = w_.layers[l];
            for (std::size_t t = 0; t < T; ++t) ops::rms_norm(&x[t * H], L.attn_norm.data(), H, c_.rms_eps, &xn[t * H]);
            ops::matmul(L.wq.data(), H, H, xn.data(), T, q.data());
            ops::matmul(L.wk.data(), KV, H, xn.data(), T, k.data());
            ops::matmul(L.wv.data(), KV, H, xn.data(), T, v.data());
            const bool batched = T > 1 && kv_.batched_prefill();  // append the chunk, then one blocked causal pass
            for (std::size_t t = 0; t < T; ++t) {
                const std::int32_t pos = n_past_ + static_cast<std::int32_t>(t);
                rope_.apply(&q[t * H], NQ, pos);
                rope_.apply(&k[t * KV], static_cast<std::size_t>(c_.n_kv_heads), pos);
                kv_.append(l, &k[t * KV], &v[t * KV], pos);
                if (!batched) kv_.attend(l, &q[t * H], pos, &att[t * H]);
            }
            if (batched) kv_.attend_prefill(l, q.data(), T, n_past_, att.data());
            record_window(window, compress_each_layer ? 0 : l, q, T);
            if (compress_each_layer) kv_.finish_prefill_layer(l, window);
            ops::matmul(L.wo.data(), H, H, att.data(), T, o.data());
            for (std::size_t i = 0; i < T * H; ++i) x[i] += o[i];

            for (std::size_t t = 0; t < T; ++t) ops::rms_norm(&x[t * H], L.ffn_norm.data(), H, c_.rms_eps, &xn[t * H]);
            ops::matmul(L.w_gate.data(), F, H, xn.data(), T, gate.data());
            ops::matmul(L.w_up.data(), F, H, xn.data(), T, up.data());
            ops::swiglu(gate.data(), up.data(), T * F);
            ops::matmul(L.w_down.data(), H, F, gate.data(), T, o.data());
            for (std::size_t i = 0; i < T * H; ++i) x[i] += o[i];
        }
        n_past_ += static_cast<std::int32_t>(T);
        return x;
    }

    /// @return the logits of the last @p count of the @p T hidden rows in @p x ([count][vocab]).
    std::vector<float> logits(const std::vector<float>& x, std::size_t T, std::size_t count) const {
        const std::size_t H = c_.hidden, V = static_cast<std::size_t>(c_.vocab);
        std::vector<float> normed(count * H), out(count * V);
        for (std::size_t t = 0; t < count; ++t)
            ops::rms_norm(&x[(T - count + t) * H], w_.output_norm.data(), H, c_.rms_eps, &normed[t * H]);
        ops::matmul(w_.lm_head().data(), V, H, normed.data(), count, out.data());
        return out;
    }

    /// Copies the queries of the last window.rows tokens into layer @p l of @p window.
    void record_window(query_window& window, int l, const std::vector<float>& q, std::size_t T) const {
        const std::size_t D = c_.head_dim, NQ = c_.n_heads, H = c_.hidden, R = static_cast<std::size_t>(window.rows);
        for (std::size_t r = 0; r < R; ++r) {
            const float* src = &q[(T - R + r) * H];
            for (std::size_t h = 0; h < NQ; ++h)
                std::copy(src + h * D, src + (h + 1) * D, &window.q[((static_cast<std::size_t>(l) * NQ + h) * R + r) * D]);
        }
    }

    const model_config& c_;
    const model_weights& w_;
    kv_backend& kv_;
    ops::rope_table rope_;
    std::int32_t n_past_;
    query_window window_;
};

/// @return index of the largest logit (first one on ties).
inline token_id argmax(const std::vector<float>& logits) {
    return static_cast<token_id>(std::max_element(logits.begin(), logits.end()) - logits.begin());
}

}  // namespace smollm2
