// SPDX-License-Identifier: Apache-2.0
// What the CPU backend's input checks cost (issue 14.1). For a few presets on a SmolLM2-shaped cache
// (8 layers of 3 KV heads, 9 query heads, head_dim 64, 2048 tokens, 32 window rows), it times
//  - compress_prefill() as shipped, which checks the window queries (finite, positions set), the
//    positions of every valid slot (set, distinct) and, for merging policies only, every key and value;
//  - each check alone: positions, window queries, and the full key/value scan that non-merging
//    policies skip (detail::require_finite_slots);
//  - one decode step (append + attend of every layer) and the checks of its inputs (new K/V, queries).
// Usage: input_checks [tokens] [repeats]   (defaults 2048, 5; best of the repeats is printed)
#include <kvcompact/kvcompact.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

namespace kc = kvcompact;
using kc::index_t;

namespace {

constexpr index_t layers = 8, kv_heads = 3, query_heads = 9, dim = 64, rows = 32;

double seconds_of(const auto& f, int repeats) {
  double best = 1e30;
  for (int r = 0; r < repeats; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    f();
    best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  return best;
}

struct cache_data {
  kc::layouts::strided layout;
  std::vector<float> keys, values;
  std::vector<std::int32_t> lengths, positions;
  cache_data(index_t capacity, index_t tokens, std::mt19937& rng)
      : layout(kc::layouts::bhsd(1, layers, kv_heads, capacity, dim)),
        keys(static_cast<std::size_t>(layers * kv_heads * capacity * dim)),
        values(keys.size()),
        lengths(static_cast<std::size_t>(layers * kv_heads), static_cast<std::int32_t>(tokens)),
        positions(static_cast<std::size_t>(layers * kv_heads * capacity)) {
    std::uniform_real_distribution<float> u(-1.0f, 1.0f);
    for (auto& x : keys) x = u(rng);
    for (auto& x : values) x = u(rng);
    for (std::size_t i = 0; i < positions.size(); ++i) positions[i] = static_cast<std::int32_t>(i % static_cast<std::size_t>(capacity));
  }
  kc::kv_cache<float, kc::layouts::strided> view() { return {layout, keys.data(), values.data(), lengths.data(), positions.data()}; }
};

template <class Policy>
void measure(const char* name, const Policy& policy, index_t tokens, int repeats) {
  using session_type = kc::cpu::session<Policy, float, kc::layouts::strided>;
  const index_t capacity = tokens + 1;
  std::mt19937 rng(1);
  cache_data pristine(capacity, tokens, rng);
  std::vector<float> queries(static_cast<std::size_t>(layers * query_heads * rows * dim));
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  for (auto& q : queries) q = u(rng);
  std::vector<std::int32_t> window_positions(static_cast<std::size_t>(rows));
  for (index_t r = 0; r < rows; ++r) window_positions[static_cast<std::size_t>(r)] = static_cast<std::int32_t>(tokens - rows + r);
  const kc::query_window window{queries.data(), window_positions.data(), rows};
  const kc::attention_shape shape{query_heads};
  std::vector<std::byte> state(session_type::state_bytes(pristine.layout)), workspace(session_type::workspace_bytes(pristine.layout, shape));

  const double compress = seconds_of([&] {
    cache_data c = pristine;  // a fresh cache every repeat; the copy's time is subtracted below
    session_type s(policy, c.view(), shape, state, workspace);
    s.compress_prefill(window);
  }, repeats);
  const double copy = seconds_of([&] { cache_data c = pristine; (void)c; }, repeats);
  std::vector<std::int32_t> scratch(static_cast<std::size_t>(capacity));
  const double positions = seconds_of([&] { kc::detail::require_valid_positions(pristine.view(), scratch.data(), "bench"); }, repeats);
  const double window_check = seconds_of([&] { kc::detail::require_finite(queries.data(), static_cast<index_t>(queries.size()), "bench", "window"); }, repeats);
  const double slots = seconds_of([&] { kc::detail::require_finite_slots(pristine.view(), "bench"); }, repeats);

  cache_data c = pristine;
  session_type s(policy, c.view(), shape, state, workspace);
  s.compress_prefill(window);
  std::vector<float> kv(static_cast<std::size_t>(kv_heads * dim), 0.5f), q(static_cast<std::size_t>(query_heads * dim), 0.1f), out(q.size());
  index_t position = tokens;
  const double step = seconds_of([&] {
    for (index_t l = 0; l < layers; ++l) {
      s.append(0, l, kv.data(), kv.data(), position);
      s.attend(0, l, q.data(), position, out.data());
    }
    ++position;
  }, repeats);
  const double step_checks = seconds_of([&] {
    for (index_t l = 0; l < layers; ++l) {
      kc::detail::require_finite(kv.data(), kv_heads * dim, "bench", "keys");
      kc::detail::require_finite(kv.data(), kv_heads * dim, "bench", "values");
      kc::detail::require_finite(q.data(), query_heads * dim, "bench", "queries");
      kc::detail::require_finite(out.data(), query_heads * dim, "bench", "output");
    }
  }, repeats);
  const double shipped = compress - copy;
  std::printf("%-14s %10.2f %10.3f %10.3f %12.3f %8.1f%%   %9.3f %9.4f\n", name, shipped * 1e3, positions * 1e3, window_check * 1e3, slots * 1e3,
              100.0 * slots / shipped, step * 1e3, step_checks * 1e3);
}

}  // namespace

int main(int argc, char** argv) {
  const index_t tokens = argc > 1 ? std::atol(argv[1]) : 2048;
  const int repeats = argc > 2 ? std::atoi(argv[2]) : 5;
  if (tokens < rows + 1 || repeats < 1) {
    std::fprintf(stderr, "usage: input_checks [tokens > %lld] [repeats >= 1]\n", static_cast<long long>(rows));
    return 2;
  }
  std::printf("input checks, %lld tokens, %lld layers x %lld KV heads, %lld query heads, head_dim %lld, %lld window rows; ms, best of %d\n",
              static_cast<long long>(tokens), static_cast<long long>(layers), static_cast<long long>(kv_heads), static_cast<long long>(query_heads),
              static_cast<long long>(dim), static_cast<long long>(rows), repeats);
  std::printf("%-14s %10s %10s %10s %12s %9s   %9s %9s\n", "preset", "compress", "positions", "window", "K/V scan", "scan/comp", "decode", "its checks");
  const index_t budget = tokens / 5;
  measure("streaming_llm", kc::policies::streaming_llm(budget), tokens, repeats);
  measure("knorm", kc::policies::knorm(budget), tokens, repeats);
  measure("snapkv", kc::policies::snapkv(budget, rows), tokens, repeats);
  measure("h2o", kc::policies::h2o(budget, rows), tokens, repeats);
  measure("kvmerger", kc::policies::kvmerger(0.2), tokens, repeats);
  measure("cam", kc::policies::cam(budget, 4), tokens, repeats);
  return 0;
}
