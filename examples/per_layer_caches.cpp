// SPDX-License-Identifier: Apache-2.0
/// @file per_layer_caches.cpp
/// @brief Per-layer budgets and per-layer capacities, as an engine uses them:
///  1. a calibrated PrefixKV table loaded from a budget file (checked against the running model) and
///     run through cpu::session layer by layer (compress_prefill_layer(), as each layer's prefill
///     finishes, with only that layer's queries in memory); a file for another model is refused;
///  2. MixAttention's cache (Character.AI's layer pattern): window-only layers are ring buffers that
///     really take `window + sinks` slots, decoded token by token; the memory against a dense cache.
/// The model is random (shapes only): this shows the API, not quality (bench/quality does that).

#include <kvcompact/kvcompact.hpp>
#include <kvcompact/layouts/ragged_layers.hpp>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <random>
#include <vector>

namespace kc = kvcompact;

namespace {

constexpr kc::index_t layers = 6, kv_heads = 2, query_heads = 4, head_dim = 16, prompt = 64;

std::vector<float> random_values(std::size_t n, std::mt19937& rng) {
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  std::vector<float> v(n);
  for (auto& x : v) x = u(rng);
  return v;
}

// A budget file as bench/quality/calibrate_budgets writes it, for a made-up 6-layer model.
std::string write_budget_file(const kc::budgets::model_signature& model) {
  kc::budgets::layer_budget_file file{"prefixkv", model, {"example tables, not calibrated"}, {}};
  file.tables.push_back({0.25, {0.6, 0.1, 0.15, 0.2, 0.3, 0.15}, {}});
  const auto path = (std::filesystem::temp_directory_path() / "kvcompact_example_budgets.txt").string();
  std::ofstream out(path);
  kc::budgets::write_layer_budgets(out, file);
  return path;
}

int prefixkv_from_a_file(std::mt19937& rng) {
  const kc::budgets::model_signature model{"example-6L", layers, kv_heads, head_dim, "fnv1a64:0123456789abcdef"};
  const std::string path = write_budget_file(model);
  //! [per-layer table]
  // The engine knows its model: layer count, KV heads, head_dim and a fingerprint of the weights.
  const kc::budgets::layer_table table = kc::budgets::load_layer_budgets(path, model, /*average kept fraction*/ 0.25);
  const auto policy = kc::policies::prefixkv(table);  // layer 0 keeps 60 % of the prompt, layer 1 10 %, ...
  //! [per-layer table]
  auto other = model;
  other.fingerprint = "fnv1a64:ffffffffffffffff";
  try {
    (void)kc::budgets::load_layer_budgets(path, other, 0.25);
    return 1;  // a file for another model must be refused
  } catch (const kc::error& e) {
    std::printf("another model's file is refused: %s\n", e.what());
  }
  std::filesystem::remove(path);

  const auto layout = kc::layouts::bhsd(1, layers, kv_heads, prompt, head_dim);
  std::vector<float> keys = random_values(static_cast<std::size_t>(layers * kv_heads * prompt * head_dim), rng), values = keys;
  std::vector<std::int32_t> lengths(layers * kv_heads, prompt), positions(static_cast<std::size_t>(layers * kv_heads * prompt));
  for (std::size_t i = 0; i < positions.size(); ++i) positions[i] = static_cast<std::int32_t>(i % prompt);
  using session_t = kc::cpu::session<decltype(policy), float, kc::layouts::strided>;
  const kc::attention_shape shape{query_heads};
  std::vector<std::byte> state(session_t::state_bytes(layout)), workspace(session_t::workspace_bytes(layout, shape));
  session_t session(policy, {layout, keys.data(), values.data(), lengths.data(), positions.data()}, shape, state, workspace);
  //! [layer by layer]
  // PrefixKV sums attention over every prompt query (kvcompact::window_need::all_prompt): the engine
  // asks the policy how many rows to keep instead of guessing from its name...
  const kc::index_t window_rows = kc::window_rows_for(policy, prompt, /*the engine's usual window*/ 16);
  std::vector<std::int32_t> rows(static_cast<std::size_t>(window_rows));
  for (kc::index_t r = 0; r < window_rows; ++r) rows[static_cast<std::size_t>(r)] = static_cast<std::int32_t>(prompt - window_rows + r);
  // ...and compresses each layer as soon as its prefill is done, holding only that layer's queries
  // ([query head][row][dim]) instead of every layer's.
  for (kc::index_t l = 0; l < layers; ++l) {
    const std::vector<float> layer_queries = random_values(static_cast<std::size_t>(query_heads * window_rows * head_dim), rng);
    session.compress_prefill_layer(l, {layer_queries.data(), rows.data(), window_rows});
  }
  //! [layer by layer]
  std::printf("prefixkv: slots kept per layer:");
  for (kc::index_t l = 0; l < layers; ++l) std::printf(" %d", lengths[static_cast<std::size_t>(l * kv_heads)]);
  std::printf(" (of %lld)\n", static_cast<long long>(prompt));
  return lengths[0] == 38 && lengths[kv_heads] == 6 ? 0 : 1;  // round(0.6 * 64), round(0.1 * 64)
}

int mixattention_rings(std::mt19937& rng) {
  constexpr kc::index_t full_slots = 256, tokens = 200;
  //! [ring cache]
  // Character.AI's pattern: sliding layers (window 16, 2 sinks) read their own or a neighbour's KV,
  // full layers read layer 0's. Window-only storage layers get window + sinks slots.
  const auto map = kc::layouts::layer_map::character_ai(layers, /*window*/ 16, /*sinks*/ 2);
  const auto capacities = kc::policies::mixattention_capacities(map, full_slots);
  using layout_t = kc::layouts::layer_condensed<kc::layouts::ragged_layers>;
  const layout_t layout{kc::layouts::ragged_layers::make(1, capacities, kv_heads, head_dim), map};
  std::vector<float> keys(static_cast<std::size_t>(layout.inner.elements())), values(keys.size());  // the engine's buffers
  std::vector<std::int32_t> lengths(static_cast<std::size_t>(map.cache_layers * kv_heads), 0);
  std::vector<std::int32_t> positions(lengths.size() * static_cast<std::size_t>(layout.capacity()), -1);
  const auto policy = kc::policies::mixattention(map, full_slots);  // rings evict their oldest non-sink token
  //! [ring cache]
  using session_t = kc::cpu::session<decltype(policy), float, layout_t>;
  const kc::attention_shape shape{query_heads};
  std::vector<std::byte> state(session_t::state_bytes(layout)), workspace(session_t::workspace_bytes(layout, shape));
  session_t session(policy, {layout, keys.data(), values.data(), lengths.data(), positions.data()}, shape, state, workspace);
  std::vector<float> out(static_cast<std::size_t>(query_heads * head_dim));
  for (kc::index_t t = 0; t < tokens; ++t)
    for (int l = 0; l < map.model_layers; ++l) {
      if (map.computes_kv(l)) {  // a layer that stores KV appends it to its storage layer, then attends
        const auto k = random_values(static_cast<std::size_t>(kv_heads * head_dim), rng), v = random_values(k.size(), rng);
        session.append(0, map.storage[l], k.data(), v.data(), t);
      }
      const auto q = random_values(out.size(), rng);
      session.attend(0, l, q.data(), t, out.data());
    }
  const double dense = static_cast<double>(layers * kv_heads * full_slots * head_dim);
  std::printf("mixattention: %d storage layers for %d model layers; ring lengths %d (capacity %lld); K/V memory %.1f %% of a dense cache\n",
              map.cache_layers, map.model_layers, lengths[kv_heads], static_cast<long long>(layout.layer_capacity(1)),
              100.0 * static_cast<double>(layout.inner.elements()) / dense);
  return lengths[kv_heads] == 18 && lengths[0] == tokens ? 0 : 1;
}

}  // namespace

int main() try {
  std::mt19937 rng(7);
  return prefixkv_from_a_file(rng) | mixattention_rings(rng);
} catch (const std::exception& e) {
  std::fprintf(stderr, "per_layer_caches: %s\n", e.what());
  return 1;
}
