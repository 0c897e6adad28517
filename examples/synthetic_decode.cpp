// Synthetic decode loop: prefill a cache, compress it with every preset, decode, and compare the
// attention output of the compressed cache with the full cache. Prints KV memory and error per policy.
// The token stream is synthetic (synthetic_model.hpp).
#include <kvcompact/kvcompact.hpp>

#include "synthetic_model.hpp"

#include <cmath>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

namespace kc = kvcompact;

namespace {

constexpr int layers = 4, kv_heads = 2, query_heads = 8, head_dim = 64;
constexpr int prompt = 1024, window = 32, decode_steps = 64, capacity = prompt + decode_steps;
using example::relative_error;
using example::synthetic_model;

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

}  // namespace

int main() {
  const synthetic_model model(layers, kv_heads, query_heads, head_dim, prompt + decode_steps, 2026);
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
