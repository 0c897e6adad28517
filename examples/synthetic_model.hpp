// SPDX-License-Identifier: Apache-2.0
// The synthetic token stream of the demos: a "document" whose attention has structure and which
// holds one fact that an answer needs. Shared by synthetic_decode.cpp (CPU) and gpu_decode.cu (CUDA).
//  - keys are Gaussian plus a topic direction that changes every 64 tokens; values are Gaussian;
//  - ordinary queries echo one recent key and one of eight heavy hitters of their (layer, KV head)
//    (the first token, an attention sink, among them), so attention is peaked on recent tokens and a
//    few heavy hitters, as in real models;
//  - the needle: at one position every (layer, KV head) holds a key along a direction of its own
//    and a value that is the "answer";
//  - question queries point along that direction: they attend almost only to the needle. The last
//    `question` prompt tokens ask (they are the observation window compression looks at), and so
//    does every other generated token.
// An answer is right when a question query's attention output is the full cache's; it is lost when
// compression dropped the needle.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <random>
#include <vector>

namespace example {

/// Deterministic synthetic document: K, V per (layer, KV head) and Q per (layer, query head), for
/// `prompt` prompt tokens and `generated` decode tokens.
struct synthetic_document {
  int layers, kv_heads, query_heads, head_dim, prompt, generated, question, needle;
  std::vector<float> keys, values, queries;  // [token][layer][head][dim]

  synthetic_document(int layers_, int kv_heads_, int query_heads_, int head_dim_, int prompt_, int generated_, int question_, unsigned seed)
      : layers(layers_), kv_heads(kv_heads_), query_heads(query_heads_), head_dim(head_dim_), prompt(prompt_), generated(generated_),
        question(question_), needle(prompt_ * 3 / 8) {
    const int tokens = prompt + generated;
    std::mt19937 gen(seed);
    std::normal_distribution<float> normal(0.0f, 1.0f);
    keys.resize(static_cast<std::size_t>(tokens) * layers * kv_heads * head_dim);
    values.resize(keys.size());
    queries.resize(static_cast<std::size_t>(tokens) * layers * query_heads * head_dim);
    std::vector<float> topic(static_cast<std::size_t>(head_dim)), direction(static_cast<std::size_t>(layers * kv_heads * head_dim));
    for (float& x : direction) x = normal(gen);  // the needle's key direction per (layer, KV head), norm about sqrt(head_dim)
    std::vector<int> heavy(static_cast<std::size_t>(layers * kv_heads * 8), 0);  // [layer][KV head][8]: token 0 and 7 others
    for (std::size_t i = 0; i < heavy.size(); ++i)
      if (i % 8 != 0)
        do heavy[i] = std::uniform_int_distribution<int>(1, prompt - question - 1)(gen);
        while (heavy[i] == needle);
    for (int t = 0; t < tokens; ++t) {
      if (t % 64 == 0)
        for (float& x : topic) x = normal(gen);
      for (int i = 0; i < layers * kv_heads; ++i)
        for (int d = 0; d < head_dim; ++d) {
          const std::size_t e = (static_cast<std::size_t>(t) * layers * kv_heads + i) * head_dim + d;
          keys[e] = t == needle ? direction[static_cast<std::size_t>(i * head_dim + d)] : normal(gen) + 0.5f * topic[static_cast<std::size_t>(d)];
          values[e] = normal(gen);
        }
      for (int l = 0; l < layers; ++l)
        for (int g = 0; g < query_heads; ++g) {
          float* q = &queries[((static_cast<std::size_t>(t) * layers + l) * query_heads + g) * head_dim];
          const int h = g / (query_heads / kv_heads);
          if (asks(t)) {  // scaled logits: about 2 sqrt(head_dim) for the needle, N(0, 2.2^2) for the other keys
            const float* u = &direction[static_cast<std::size_t>((l * kv_heads + h) * head_dim)];
            for (int d = 0; d < head_dim; ++d) q[d] = 2.0f * u[d] + 0.1f * normal(gen);
            continue;
          }
          for (int d = 0; d < head_dim; ++d) q[d] = 0.3f * normal(gen);
          if (t == 0) continue;
          const int recent = std::max(0, t - 1 - std::uniform_int_distribution<int>(0, 7)(gen));
          int hitter = 0;
          do hitter = heavy[static_cast<std::size_t>((l * kv_heads + h) * 8 + std::uniform_int_distribution<int>(0, 7)(gen))];
          while (hitter >= t);
          for (const int source : {recent, hitter})
            for (int d = 0; d < head_dim; ++d) q[d] += 1.5f * key(source, l, h)[d];
        }
    }
  }
  /// Whether token t asks the question: the last `question` prompt tokens and every other generated one.
  bool asks(int t) const { return t < prompt ? t >= prompt - question : (t - prompt) % 2 == 0; }
  const float* key(int t, int l, int h) const { return &keys[((static_cast<std::size_t>(t) * layers + l) * kv_heads + h) * head_dim]; }
  const float* value(int t, int l, int h) const { return &values[((static_cast<std::size_t>(t) * layers + l) * kv_heads + h) * head_dim]; }
  const float* query(int t, int l) const { return &queries[(static_cast<std::size_t>(t) * layers + l) * query_heads * head_dim]; }
};

/// Attention-output error of a run against the full cache, split by kind of generated token:
/// sqrt(sum (a - b)^2 / sum b^2) over the question tokens (the answer) and over the others.
struct output_errors {
  double answer = 0.0;  ///< over the tokens that ask for the needle
  double other = 0.0;   ///< over the ordinary tokens
};

/// @param outputs, reference: [step][...] with `per_step` floats per generated token; step s is token prompt + s
inline output_errors errors_against(const std::vector<float>& outputs, const std::vector<float>& reference, const synthetic_document& doc,
                                    std::size_t per_step) {
  double diff[2] = {0, 0}, norm[2] = {0, 0};
  for (std::size_t i = 0; i < outputs.size(); ++i) {
    const int kind = doc.asks(doc.prompt + static_cast<int>(i / per_step)) ? 0 : 1;
    diff[kind] += (static_cast<double>(outputs[i]) - reference[i]) * (static_cast<double>(outputs[i]) - reference[i]);
    norm[kind] += static_cast<double>(reference[i]) * reference[i];
  }
  return {std::sqrt(diff[0] / norm[0]), std::sqrt(diff[1] / norm[1])};
}

}  // namespace example
