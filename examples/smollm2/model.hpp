// SPDX-License-Identifier: Apache-2.0
/// @file model.hpp
/// @brief LLaMA-architecture hyper-parameters and fp32 weights loaded from GGUF.
#pragma once

#include <cmath>
#include <cstddef>
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

    /// Reads the "llama.*" metadata of @p f.
    static model_config from_gguf(const gguf::file& f) {
        const auto& arch = f.get("general.architecture").as_string();
        if (arch != "llama") throw std::runtime_error("model: unsupported architecture '" + arch + "'");
        auto u = [&](const char* k) { return static_cast<int>(f.get(std::string("llama.") + k).as_uint()); };
        model_config c;
        c.n_layers = u("block_count");
        c.n_heads = u("attention.head_count");
        c.n_kv_heads = f.has("llama.attention.head_count_kv") ? u("attention.head_count_kv") : c.n_heads;
        c.hidden = u("embedding_length");
        c.ffn = u("feed_forward_length");
        c.context_length = u("context_length");
        c.head_dim = c.hidden / c.n_heads;
        if (f.has("llama.rope.dimension_count") && u("rope.dimension_count") != c.head_dim)
            throw std::runtime_error("model: partial RoPE is not supported");
        if (f.has("llama.rope.freq_base")) c.rope_theta = f.get("llama.rope.freq_base").as_double();
        c.rms_eps = static_cast<float>(f.get("llama.attention.layer_norm_rms_epsilon").as_double());
        c.vocab = static_cast<int>(f.get("tokenizer.ggml.tokens").as_array().elements.size());
        if (c.n_heads % c.n_kv_heads) throw std::runtime_error("model: query heads not a multiple of KV heads");
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

    /// Loads and dequantises every tensor of @p f, checking shapes against @p c.
    static model_weights from_gguf(const gguf::file& f, const model_config& c) {
        auto load = [&](const std::string& name, std::size_t rows, std::size_t cols) {
            const auto& t = f.tensor(name);
            const std::size_t ne1 = t.dims.size() > 1 ? t.dims[1] : 1;
            if (t.dims.at(0) != cols || ne1 != rows)
                throw std::runtime_error("model: tensor " + name + " has unexpected shape");
            return dequantize(t);
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
