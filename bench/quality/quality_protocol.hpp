// SPDX-License-Identifier: Apache-2.0
/// @file quality_protocol.hpp
/// @brief The measurements of the quality sweep, one definition for every bench/quality tool
///        (kv_quality, csr_quality): the continuation's negative log-likelihood, the attention-output
///        error probe and the cued pass-key prompt.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "engine.hpp"
#include "kv_backend.hpp"
#include "model.hpp"
#include "tokenizer.hpp"

namespace smollm2 {

/// @return -log softmax(logits)[target].
inline double nll(const std::vector<float>& logits, token_id target) {
    const float mx = *std::max_element(logits.begin(), logits.end());
    double sum = 0;
    for (float l : logits) sum += std::exp(static_cast<double>(l - mx));
    return std::log(sum) + mx - logits[static_cast<std::size_t>(target)];
}

/// Forwards to an inner backend and, for every attend(), also computes the
/// full-cache attention of the same query on a shadow cache holding every
/// token, accumulating ||out - full|| / ||full|| per layer.
class error_probe final : public kv_backend {
public:
    /// @param inner the backend measured @param c the model
    /// @param prefilled the uncompressed cache @p inner started from (copied into the shadow).
    error_probe(kv_backend& inner, const model_config& c, const kv_cache_storage& prefilled)
        : inner_(inner), shadow_(c.n_layers, c.n_heads, c.n_kv_heads, c.head_dim, prefilled.capacity),
          full_out_(static_cast<std::size_t>(c.hidden)), error_sum_(static_cast<std::size_t>(c.n_layers), 0.0),
          count_(static_cast<std::size_t>(c.n_layers), 0) {
        shadow_.restore(prefilled);
    }

    void append(int layer, const float* k, const float* v, std::int32_t position) override {
        inner_.append(layer, k, v, position);
        shadow_.append(layer, k, v, position);
    }
    void attend(int layer, const float* q, std::int32_t position, float* out) override {
        inner_.attend(layer, q, position, out);
        shadow_.attend(layer, q, position, full_out_.data());
        double num = 0, den = 0;
        for (std::size_t i = 0; i < full_out_.size(); ++i) {
            num += (out[i] - full_out_[i]) * static_cast<double>(out[i] - full_out_[i]);
            den += full_out_[i] * static_cast<double>(full_out_[i]);
        }
        error_sum_[layer] += std::sqrt(num / std::max(den, 1e-30));
        ++count_[layer];
    }
    void finish_prefill(const query_window& window) override { inner_.finish_prefill(window); }
    void restore(const kv_cache_storage& prefilled) override {
        inner_.restore(prefilled);
        shadow_.restore(prefilled);
    }
    const kv_cache_storage& cache() const override { return inner_.cache(); }
    std::size_t occupied_bytes() const override { return inner_.occupied_bytes(); }

    /// @return mean relative error of each layer over all attend() calls.
    std::vector<double> mean_errors() const {
        std::vector<double> out(error_sum_.size());
        for (std::size_t l = 0; l < out.size(); ++l) out[l] = count_[l] ? error_sum_[l] / static_cast<double>(count_[l]) : 0.0;
        return out;
    }

private:
    kv_backend& inner_;
    full_kv_backend shadow_;
    std::vector<float> full_out_;
    std::vector<double> error_sum_;
    std::vector<long> count_;
};

/// Builds a pass-key prompt of about @p context tokens with the key at @p depth
/// (raw text, no chat template). The prompt ends with the key's first digit as
/// retrieval cue: SmolLM2-135M does not answer the uncued question even with the
/// full cache, but copies the remaining digits when they are still retrievable.
/// @param tok the model's tokenizer @param hay the essay tokens the filler is taken from (from token 0 on)
inline std::vector<token_id> needle_prompt(const tokenizer& tok, const std::vector<token_id>& hay, int context, double depth,
                                           const std::string& key) {
    const auto head = tok.encode("There is an important info hidden inside a lot of irrelevant text. Find it and "
                                 "memorize it. I will quiz you about the important information there.\n\n", false);
    const auto needle = tok.encode(" The pass key is " + key + ". Remember it. " + key + " is the pass key.", false);
    const auto tail = tok.encode("\n\nWhat is the pass key? The pass key is " + key.substr(0, 1), false);
    const auto n_hay = static_cast<std::size_t>(context) - head.size() - needle.size() - tail.size();
    auto at = static_cast<std::size_t>(depth * static_cast<double>(n_hay));
    while (at > 0 && at < n_hay && tok.decode(hay[at - 1]).find('.') == std::string::npos) ++at;  // after a sentence
    std::vector<token_id> p = head;
    p.insert(p.end(), hay.begin(), hay.begin() + static_cast<std::ptrdiff_t>(at));
    p.insert(p.end(), needle.begin(), needle.end());
    p.insert(p.end(), hay.begin() + static_cast<std::ptrdiff_t>(at), hay.begin() + static_cast<std::ptrdiff_t>(n_hay));
    p.insert(p.end(), tail.begin(), tail.end());
    return p;
}

/// @return a 5-digit pass key that depends only on @p context and @p depth, so runs split by context
/// or depth use the same keys as one combined run.
inline std::string pass_key(int context, double depth) {
    auto seed = 12345u + static_cast<unsigned>(context) * 7919u + static_cast<unsigned>(std::lround(depth * 1000.0));
    for (int i = 0; i < 3; ++i) seed = seed * 1103515245u + 12345u;
    return std::to_string(10000 + (seed >> 8) % 90000);
}

/// Tokens generated after a pass-key prompt: the answer is a hit when it starts with the key's
/// digits after the cue.
inline constexpr int pass_key_answer_tokens = 6;

/// @return the greedy answer that @p eng generates from @p logits (the prompt's last logits): at most
/// pass_key_answer_tokens tokens, up to the end-of-text token.
inline std::string pass_key_answer(engine& eng, const tokenizer& tok, std::vector<float> logits) {
    std::string answer;
    for (int i = 0; i < pass_key_answer_tokens; ++i) {
        const token_id t = argmax(logits);
        if (t == tok.eos()) break;
        answer += tok.decode(t);
        const token_id one[1] = {t};
        logits = eng.forward(one);
    }
    return answer;
}

/// @return whether @p answer (the greedy continuation of needle_prompt) starts with @p key's digits after the cue.
inline bool pass_key_hit(const std::string& answer, const std::string& key) { return answer.rfind(key.substr(1), 0) == 0; }

}  // namespace smollm2
