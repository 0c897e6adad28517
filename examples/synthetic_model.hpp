// SPDX-License-Identifier: Apache-2.0
// The synthetic token stream of the examples: keys are Gaussian with a slowly drifting topic
// direction, and each query is built from a handful of earlier keys (so attention is peaked, as in
// real models) plus noise. Shared by synthetic_decode.cpp (CPU) and gpu_decode.cu (CUDA).
#pragma once

#include <cmath>
#include <cstddef>
#include <random>
#include <vector>

namespace example {

/// Deterministic synthetic token stream: K, V per (layer, kv head) and Q per (layer, query head).
struct synthetic_model {
  int layers, kv_heads, query_heads, head_dim, tokens;
  std::vector<float> keys, values, queries;  // [token][layer][head][dim]

  synthetic_model(int layers_, int kv_heads_, int query_heads_, int head_dim_, int tokens_, unsigned seed)
      : layers(layers_), kv_heads(kv_heads_), query_heads(query_heads_), head_dim(head_dim_), tokens(tokens_) {
    std::mt19937 gen(seed);
    std::normal_distribution<float> normal(0.0f, 1.0f);
    keys.resize(static_cast<std::size_t>(tokens) * layers * kv_heads * head_dim);
    values.resize(keys.size());
    queries.resize(static_cast<std::size_t>(tokens) * layers * query_heads * head_dim);
    std::vector<float> topic(static_cast<std::size_t>(head_dim));
    for (int t = 0; t < tokens; ++t) {
      if (t % 64 == 0)
        for (float& x : topic) x = normal(gen);
      for (int i = 0; i < layers * kv_heads; ++i)
        for (int d = 0; d < head_dim; ++d) {
          keys[(static_cast<std::size_t>(t) * layers * kv_heads + i) * head_dim + d] = normal(gen) + 0.5f * topic[static_cast<std::size_t>(d)];
          values[(static_cast<std::size_t>(t) * layers * kv_heads + i) * head_dim + d] = normal(gen);
        }
      for (int l = 0; l < layers; ++l)
        for (int g = 0; g < query_heads; ++g) {
          float* q = &queries[((static_cast<std::size_t>(t) * layers + l) * query_heads + g) * head_dim];
          const int h = g / (query_heads / kv_heads);
          for (int d = 0; d < head_dim; ++d) q[d] = 0.3f * normal(gen);
          for (int pick = 0; pick < 4 && t > 0; ++pick) {  // echo a few earlier keys (heavy hitters favour early tokens)
            const int source = static_cast<int>(std::pow(std::uniform_real_distribution<float>(0, 1)(gen), 2.0f) * t);
            const float* k = key(source, l, h);
            for (int d = 0; d < head_dim; ++d) q[d] += 0.6f * k[d];
          }
        }
    }
  }
  const float* key(int t, int l, int h) const { return &keys[((static_cast<std::size_t>(t) * layers + l) * kv_heads + h) * head_dim]; }
  const float* value(int t, int l, int h) const { return &values[((static_cast<std::size_t>(t) * layers + l) * kv_heads + h) * head_dim]; }
  const float* query(int t, int l) const { return &queries[(static_cast<std::size_t>(t) * layers + l) * query_heads * head_dim]; }
};

/// sqrt(sum (a - b)^2 / sum b^2).
inline double relative_error(const std::vector<float>& a, const std::vector<float>& b) {
  double diff = 0.0, norm = 0.0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    diff += (static_cast<double>(a[i]) - b[i]) * (static_cast<double>(a[i]) - b[i]);
    norm += static_cast<double>(b[i]) * b[i];
  }
  return std::sqrt(diff / norm);
}

}  // namespace example
