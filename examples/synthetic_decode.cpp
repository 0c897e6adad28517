// Synthetic decode loop: prefill a cache, compress it with every preset, decode, and compare the
// attention output of the compressed cache with the full cache. Prints KV memory and error per policy.
//
// The "model" is synthetic: keys are Gaussian with a slowly drifting topic direction, and each query
// is built from a handful of earlier keys (so attention is peaked, as in real models) plus noise.
#include <kvcompact/kvcompact.hpp>

#include <cmath>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

namespace kc = kvcompact;

namespace {

constexpr int layers = 4, kv_heads = 2, query_heads = 8, head_dim = 64;
constexpr int prompt = 1024, window = 32, decode_steps = 64, capacity = prompt + decode_steps;

// Deterministic synthetic token stream: K, V per (layer, kv head) and Q per (layer, query head).
struct synthetic_model {
  std::vector<float> keys, values, queries;  // [token][layer][head][dim]

  explicit synthetic_model(unsigned seed) {
    const int tokens = prompt + decode_steps;
    std::mt19937 gen(seed);
    std::normal_distribution<float> normal(0.0f, 1.0f);
    keys.resize(static_cast<std::size_t>(tokens) * layers * kv_heads * head_dim);
    values.resize(keys.size());
    queries.resize(static_cast<std::size_t>(tokens) * layers * query_heads * head_dim);
    std::vector<float> topic(head_dim);
    for (int t = 0; t < tokens; ++t) {
      if (t % 64 == 0)
        for (float& x : topic) x = normal(gen);
      for (int i = 0; i < layers * kv_heads; ++i)
        for (int d = 0; d < head_dim; ++d) {
          keys[(static_cast<std::size_t>(t) * layers * kv_heads + i) * head_dim + d] = normal(gen) + 0.5f * topic[d];
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

// An engine-owned cache: [layer][head][slot][dim] floats plus lengths and positions.
struct engine_cache {
  std::vector<float> keys, values;
  std::vector<std::int32_t> lengths, positions;
  kc::layouts::strided layout = kc::layouts::bhsd(1, layers, kv_heads, capacity, head_dim);

  explicit engine_cache(const synthetic_model& model)
      : keys(static_cast<std::size_t>(layers) * kv_heads * capacity * head_dim), values(keys.size()),
        lengths(layers * kv_heads, prompt), positions(static_cast<std::size_t>(layers) * kv_heads * capacity) {
    for (int l = 0; l < layers; ++l)
      for (int h = 0; h < kv_heads; ++h)
        for (int t = 0; t < prompt; ++t) {
          const std::size_t slot = (static_cast<std::size_t>(l) * kv_heads + h) * capacity + t;
          positions[slot] = t;
          for (int d = 0; d < head_dim; ++d) {
            keys[slot * head_dim + d] = model.key(t, l, h)[d];
            values[slot * head_dim + d] = model.value(t, l, h)[d];
          }
        }
  }
  kc::kv_cache<float, kc::layouts::strided> view() { return {layout, keys.data(), values.data(), lengths.data(), positions.data()}; }
  std::size_t bytes() const {
    std::size_t slots = 0;
    for (std::int32_t n : lengths) slots += static_cast<std::size_t>(n);
    return slots * head_dim * 2 * sizeof(float);
  }
};

// Runs prefill (+ compression) and the decode loop; returns attention outputs [step][layer][qhead][dim].
template <class Policy>
std::vector<float> run(const Policy& policy, const synthetic_model& model, engine_cache& cache, bool compress) {
  using session_type = kc::cpu::session<Policy, float, kc::layouts::strided>;
  const kc::attention_shape shape{query_heads};
  std::vector<std::byte> state(session_type::state_bytes(cache.layout)), workspace(session_type::workspace_bytes(cache.layout, shape));
  session_type session(policy, cache.view(), shape, state, workspace);
  if (compress) {  // the last `window` prompt queries of every layer: [layer][qhead][row][dim]
    std::vector<float> window_queries(static_cast<std::size_t>(layers) * query_heads * window * head_dim);
    std::vector<std::int32_t> window_positions(window);
    for (int r = 0; r < window; ++r) window_positions[r] = prompt - window + r;
    for (int l = 0; l < layers; ++l)
      for (int g = 0; g < query_heads; ++g)
        for (int r = 0; r < window; ++r)
          for (int d = 0; d < head_dim; ++d)
            window_queries[((static_cast<std::size_t>(l) * query_heads + g) * window + r) * head_dim + d] =
                model.query(prompt - window + r, l)[g * head_dim + d];
    session.compress_prefill({window_queries.data(), window_positions.data(), window});
  }
  std::vector<float> outputs(static_cast<std::size_t>(decode_steps) * layers * query_heads * head_dim);
  std::vector<float> k(kv_heads * head_dim), v(kv_heads * head_dim);
  for (int step = 0; step < decode_steps; ++step) {
    const int t = prompt + step;
    for (int l = 0; l < layers; ++l) {
      for (int h = 0; h < kv_heads; ++h)
        for (int d = 0; d < head_dim; ++d) {
          k[h * head_dim + d] = model.key(t, l, h)[d];
          v[h * head_dim + d] = model.value(t, l, h)[d];
        }
      session.append(0, l, k.data(), v.data(), t);
      session.attend(0, l, model.query(t, l), t, &outputs[(static_cast<std::size_t>(step) * layers + l) * query_heads * head_dim]);
    }
  }
  return outputs;
}

double relative_error(const std::vector<float>& a, const std::vector<float>& b) {
  double diff = 0.0, norm = 0.0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    diff += (static_cast<double>(a[i]) - b[i]) * (static_cast<double>(a[i]) - b[i]);
    norm += static_cast<double>(b[i]) * b[i];
  }
  return std::sqrt(diff / norm);
}

}  // namespace

int main() {
  const synthetic_model model(2026);
  engine_cache full_cache(model);
  const std::vector<float> reference = run(kc::policies::streaming_llm(capacity), model, full_cache, false);
  std::printf("synthetic decode: %d layers, %d query heads, %d KV heads, head_dim %d, prompt %d, %d decode steps\n", layers, query_heads,
              kv_heads, head_dim, prompt, decode_steps);
  std::printf("%-14s %8s %12s %10s %22s\n", "policy", "budget", "KV bytes", "of full", "attention rel. error");
  std::printf("%-14s %8s %12zu %9.1f%% %22.4f\n", "full", "-", full_cache.bytes(), 100.0, 0.0);
  for (const double fraction : {0.2, 0.5}) {
    const kc::index_t budget = static_cast<kc::index_t>(fraction * prompt);
    for (std::string_view name : kc::policies::preset_names) {
      engine_cache cache(model);
      const kc::policies::preset_options options{budget, prompt, window, 4, 2};
      const std::vector<float> outputs =
          kc::policies::with_preset(name, options, [&](const auto& policy) { return run(policy, model, cache, true); });
      std::printf("%-14s %7.0f%% %12zu %9.1f%% %22.4f\n", std::string(name).c_str(), fraction * 100, cache.bytes(),
                  100.0 * static_cast<double>(cache.bytes()) / static_cast<double>(full_cache.bytes()), relative_error(outputs, reference));
    }
  }
}
