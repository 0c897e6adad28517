// SPDX-License-Identifier: Apache-2.0
/// @file model.hpp
/// @brief LLaMA-architecture hyper-parameters and fp32 weights loaded from GGUF.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "dequant.hpp"
#include "gguf.hpp"

namespace smollm2 {

/// Hyper-parameters of a LLaMA-style decoder.
struct model_config {
    int n_layers = 0;        ///< transformer blocks
    int n_heads = 0;         ///< query heads
    int n_kv_heads = 0;      ///< key/value heads (GQA groups)
    int head_dim = 0;        ///< per-head dimension
    int hidden = 0;          ///< embedding width
    int ffn = 0;             ///< SwiGLU inner width
    int vocab = 0;           ///< vocabulary size
    int context_length = 0;  ///< trained context length
    double rope_theta = 10000.0;  ///< RoPE frequency base
    float rms_eps = 1e-5f;   ///< RMSNorm epsilon

    /// Reads the "llama.*" metadata of @p f and checks it: every count positive and within the
    /// engine's limits, query heads a multiple of the KV heads, an even head dimension that divides
    /// the embedding, full RoPE, a finite positive RoPE base and RMS epsilon.
    /// @throws std::runtime_error naming the metadata key
    static model_config from_gguf(const gguf::file& f) {
        const auto& arch = f.get_string("general.architecture");
        if (arch != "llama") throw std::runtime_error("model: unsupported architecture '" + arch + "'");
        auto count = [&](const std::string& key, std::uint64_t most) {
            const std::uint64_t v = f.get_uint("llama." + key);
            if (v == 0 || v > most)
                throw std::runtime_error("model: llama." + key + " is " + std::to_string(v) + ", outside [1, " + std::to_string(most) + "]");
            return static_cast<int>(v);
        };
        model_config c;
        c.n_layers = count("block_count", 1024);
        c.n_heads = count("attention.head_count", 1024);
        c.n_kv_heads = f.has("llama.attention.head_count_kv") ? count("attention.head_count_kv", 1024) : c.n_heads;
        c.hidden = count("embedding_length", 1 << 16);
        c.ffn = count("feed_forward_length", 1 << 18);
        c.context_length = count("context_length", 1 << 24);
        if (c.n_heads % c.n_kv_heads)
            throw std::runtime_error("model: llama.attention.head_count " + std::to_string(c.n_heads) + " is not a multiple of head_count_kv " +
                                     std::to_string(c.n_kv_heads));
        if (c.hidden % c.n_heads || (c.hidden / c.n_heads) % 2)
            throw std::runtime_error("model: llama.embedding_length " + std::to_string(c.hidden) + " is not an even head dimension times the " +
                                     std::to_string(c.n_heads) + " heads");
        c.head_dim = c.hidden / c.n_heads;
        if (f.has("llama.rope.dimension_count") && f.get_uint("llama.rope.dimension_count") != static_cast<std::uint64_t>(c.head_dim))
            throw std::runtime_error("model: partial RoPE is not supported (llama.rope.dimension_count differs from the head dimension)");
        if (f.has("llama.rope.freq_base")) c.rope_theta = f.get_double("llama.rope.freq_base");
        if (!std::isfinite(c.rope_theta) || c.rope_theta <= 1.0)
            throw std::runtime_error("model: llama.rope.freq_base " + std::to_string(c.rope_theta) + " is not a finite number above 1");
        const double eps = f.get_double("llama.attention.layer_norm_rms_epsilon");
        if (!std::isfinite(eps) || eps <= 0.0 || eps > 1.0)
            throw std::runtime_error("model: llama.attention.layer_norm_rms_epsilon " + std::to_string(eps) + " is not in (0, 1]");
        c.rms_eps = static_cast<float>(eps);
        const std::size_t vocab = f.get_strings("tokenizer.ggml.tokens").elements.size();
        if (vocab == 0 || vocab > (1u << 22))
            throw std::runtime_error("model: tokenizer.ggml.tokens holds " + std::to_string(vocab) + " tokens, outside [1, 4194304]");
        c.vocab = static_cast<int>(vocab);
        return c;
    }
};

/// Weights of one transformer block; matrices are row-major [out][in].
struct layer_weights {
    std::vector<float> attn_norm, wq, wk, wv, wo;      ///< attention
    std::vector<float> ffn_norm, w_gate, w_up, w_down;  ///< SwiGLU MLP
};

/// All weights, dequantised to fp32 once at load time.
struct model_weights {
    std::vector<float> token_embedding;  ///< [vocab][hidden]
    std::vector<float> output_norm;      ///< [hidden]
    std::vector<float> output;           ///< [vocab][hidden]; empty when tied to the embedding
    std::vector<layer_weights> layers;

    /// @return the LM-head matrix (the embedding when tied).
    const std::vector<float>& lm_head() const { return output.empty() ? token_embedding : output; }

    /// Loads and dequantises every tensor of @p f, checking shapes against @p c (exactly
    /// [cols, rows], trailing dimensions of 1 allowed) and that every weight is finite.
    /// @throws std::runtime_error naming the tensor
    static model_weights from_gguf(const gguf::file& f, const model_config& c) {
        auto load = [&](const std::string& name, std::size_t rows, std::size_t cols) {
            const auto& t = f.tensor(name);
            const std::uint64_t want[2] = {cols, rows};
            bool matches = true;
            for (std::size_t d = 0; d < t.dims.size(); ++d) matches = matches && t.dims[d] == (d < 2 ? want[d] : 1);
            if (t.dims.size() < 2) matches = matches && rows == 1;
            if (!matches) {
                std::string shape;
                for (auto d : t.dims) shape += (shape.empty() ? "" : ", ") + std::to_string(d);
                throw std::runtime_error("model: tensor " + name + " has shape [" + shape + "], expected [" + std::to_string(cols) + ", " +
                                         std::to_string(rows) + "]");
            }
            auto values = dequantize(t);
            for (std::size_t i = 0; i < values.size(); ++i)
                if (!std::isfinite(values[i]))
                    throw std::runtime_error("model: tensor " + name + " holds a NaN or infinite weight at element " + std::to_string(i) + " (corrupt data?)");
            return values;
        };
        const std::size_t h = c.hidden, kv = static_cast<std::size_t>(c.n_kv_heads) * c.head_dim;
        model_weights w;
        w.token_embedding = load("token_embd.weight", c.vocab, h);
        w.output_norm = load("output_norm.weight", 1, h);
        if (f.find_tensor("output.weight")) w.output = load("output.weight", c.vocab, h);
        w.layers.resize(c.n_layers);
        for (int l = 0; l < c.n_layers; ++l) {
            const std::string p = "blk." + std::to_string(l) + ".";
            auto& L = w.layers[l];
            L.attn_norm = load(p + "attn_norm.weight", 1, h);
            L.wq = load(p + "attn_q.weight", h, h);
            L.wk = load(p + "attn_k.weight", kv, h);
            L.wv = load(p + "attn_v.weight", kv, h);
            L.wo = load(p + "attn_output.weight", h, h);
            L.ffn_norm = load(p + "ffn_norm.weight", 1, h);
            L.w_gate = load(p + "ffn_gate.weight", c.ffn, h);
            L.w_up = load(p + "ffn_up.weight", c.ffn, h);
            L.w_down = load(p + "ffn_down.weight", h, c.ffn);
        }
        return w;
    }
};

}  // namespace smollm2
