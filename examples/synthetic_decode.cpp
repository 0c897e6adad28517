// SPDX-License-Identifier: Apache-2.0
// What KV-cache compression keeps, and what it costs. A synthetic document (synthetic_model.hpp) with
// attention structure holds one fact, the needle, that later question tokens need. Every preset
// compresses the prompt's cache to 10 % and 25 % of its slots, then decodes; the table shows the KV
// memory kept, in how many (layer, KV head) caches the needle survived, and the attention-output
// error against the full cache on the question tokens (the answer) and on the other tokens.
//
//   synthetic_decode [--small]
// ctest: --small
#include <kvcompact/kvcompact.hpp>

#include "synthetic_model.hpp"

#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

namespace kc = kvcompact;

namespace {

struct config {
  int layers = 4, kv_heads = 2, query_heads = 8, head_dim = 64, prompt = 1024, question = 32, generated = 64;
  int capacity() const { return prompt + generated; }
};

// An engine-owned cache: [layer][head][slot][dim] floats plus lengths and positions.
struct engine_cache {
  std::vector<float> keys, values;
  std::vector<std::int32_t> lengths, positions;
  kc::layouts::strided layout;

  engine_cache(const config& c, const example::synthetic_document& doc)
      : keys(static_cast<std::size_t>(c.layers) * c.kv_heads * c.capacity() * c.head_dim), values(keys.size()),
        lengths(static_cast<std::size_t>(c.layers * c.kv_heads), c.prompt), positions(static_cast<std::size_t>(c.layers) * c.kv_heads * c.capacity()),
        layout(kc::layouts::bhsd(1, c.layers, c.kv_heads, c.capacity(), c.head_dim)) {
    for (int l = 0; l < c.layers; ++l)
      for (int h = 0; h < c.kv_heads; ++h)
        for (int t = 0; t < c.prompt; ++t) {
          const std::size_t slot = (static_cast<std::size_t>(l) * c.kv_heads + h) * c.capacity() + t;
          positions[slot] = t;
          for (int d = 0; d < c.head_dim; ++d) {
            keys[slot * c.head_dim + d] = doc.key(t, l, h)[d];
            values[slot * c.head_dim + d] = doc.value(t, l, h)[d];
          }
        }
  }
  kc::kv_cache<float, kc::layouts::strided> view() { return {layout, keys.data(), values.data(), lengths.data(), positions.data()}; }
  std::size_t bytes(const config& c) const {
    std::size_t slots = 0;
    for (std::int32_t n : lengths) slots += static_cast<std::size_t>(n);
    return slots * static_cast<std::size_t>(c.head_dim) * 2 * sizeof(float);
  }
  // Share of (layer, KV head) caches that still hold the needle's position.
  double needle_kept(const config& c, int needle) const {
    int kept = 0;
    for (int head = 0; head < c.layers * c.kv_heads; ++head)
      for (int j = 0; j < lengths[static_cast<std::size_t>(head)]; ++j)
        kept += positions[static_cast<std::size_t>(head) * c.capacity() + j] == needle;
    return static_cast<double>(kept) / (c.layers * c.kv_heads);
  }
};

/// Rows of the observation window @p policy wants (kvcompact::window_need): every prompt query, the question, or none.
template <class Policy>
int window_rows(const Policy& policy, const config& c) { return static_cast<int>(kc::window_rows_for(policy, c.prompt, c.question)); }

// Compresses the prompt's cache with the last `rows` prompt queries (negative: no compression), then
// generates; returns the attention outputs [generated token][layer][query head][dim].
template <class Policy>
std::vector<float> run(const Policy& policy, const config& c, const example::synthetic_document& doc, engine_cache& cache, int rows) {
  using session_type = kc::cpu::session<Policy, float, kc::layouts::strided>;
  const kc::attention_shape shape{c.query_heads};
  std::vector<std::byte> state(session_type::state_bytes(cache.layout)), workspace(session_type::workspace_bytes(cache.layout, shape));
  session_type session(policy, cache.view(), shape, state, workspace);
  if (rows >= 0) {  // the last `rows` prompt queries of every layer, [layer][query head][row][dim]
    std::vector<float> window(static_cast<std::size_t>(c.layers) * c.query_heads * rows * c.head_dim);
    std::vector<std::int32_t> window_positions(static_cast<std::size_t>(rows));
    for (int r = 0; r < rows; ++r) window_positions[static_cast<std::size_t>(r)] = c.prompt - rows + r;
    for (int l = 0; l < c.layers; ++l)
      for (int g = 0; g < c.query_heads; ++g)
        for (int r = 0; r < rows; ++r)
          for (int d = 0; d < c.head_dim; ++d)
            window[((static_cast<std::size_t>(l) * c.query_heads + g) * rows + r) * c.head_dim + d] = doc.query(c.prompt - rows + r, l)[g * c.head_dim + d];
    session.compress_prefill({window.data(), window_positions.data(), rows});
  }
  std::vector<float> outputs(static_cast<std::size_t>(c.generated) * c.layers * c.query_heads * c.head_dim);
  std::vector<float> k(static_cast<std::size_t>(c.kv_heads * c.head_dim)), v(k.size());
  for (int step = 0; step < c.generated; ++step) {
    const int t = c.prompt + step;
    for (int l = 0; l < c.layers; ++l) {
      for (int h = 0; h < c.kv_heads; ++h)
        for (int d = 0; d < c.head_dim; ++d) {
          k[static_cast<std::size_t>(h * c.head_dim + d)] = doc.key(t, l, h)[d];
          v[static_cast<std::size_t>(h * c.head_dim + d)] = doc.value(t, l, h)[d];
        }
      session.append(0, l, k.data(), v.data(), t);
      session.attend(0, l, doc.query(t, l), t, &outputs[(static_cast<std::size_t>(step) * c.layers + l) * c.query_heads * c.head_dim]);
    }
  }
  return outputs;
}

}  // namespace

int main(int argc, char** argv) {
  config c;
  if (argc > 1 && !std::strcmp(argv[1], "--small")) {
    c.layers = 2;
    c.head_dim = 32;
    c.prompt = 256;
    c.question = 16;
    c.generated = 16;
  }
  const example::synthetic_document doc(c.layers, c.kv_heads, c.query_heads, c.head_dim, c.prompt, c.generated, c.question, 2026);
  engine_cache full_cache(c, doc);
  const std::vector<float> reference = run(kc::policies::streaming_llm(c.capacity()), c, doc, full_cache, -1);
  const std::size_t per_token = static_cast<std::size_t>(c.layers * c.query_heads * c.head_dim);
  std::printf("synthetic document: %d layers, %d query heads, %d KV heads, head_dim %d; prompt %d tokens with a needle at %d,\n"
              "the last %d prompt tokens and every other one of %d generated tokens ask for it\n",
              c.layers, c.query_heads, c.kv_heads, c.head_dim, c.prompt, doc.needle, c.question, c.generated);
  std::printf("%-14s %7s %9s %12s %13s %12s\n", "policy", "budget", "KV kept", "needle kept", "answer error", "other error");
  std::printf("%-14s %7s %8.1f%% %11.0f%% %13.3f %12.3f\n", "full", "-", 100.0, 100.0 * full_cache.needle_kept(c, doc.needle), 0.0, 0.0);
  for (const double fraction : {0.1, 0.25}) {
    const kc::index_t budget = static_cast<kc::index_t>(fraction * c.prompt);
    for (std::string_view name : kc::policies::preset_names) {
      engine_cache cache(c, doc);
      kc::policies::preset_options options{budget, c.prompt};
      options.window = c.question;
      options.layer_group = 2;
      const std::vector<float> outputs = kc::policies::with_preset(name, options, [&](const auto& policy) { return run(policy, c, doc, cache, window_rows(policy, c)); });
      const example::output_errors error = example::errors_against(outputs, reference, doc, per_token);
      std::printf("%-14s %6.0f%% %8.1f%% %11.0f%% %13.3f %12.3f\n", std::string(name).c_str(), fraction * 100,
                  100.0 * static_cast<double>(cache.bytes(c)) / static_cast<double>(full_cache.bytes(c)), 100.0 * cache.needle_kept(c, doc.needle),
                  error.answer, error.other);
    }
  }
  std::printf("answer error: attention-output error on the question tokens (about 1 when the needle is gone);\n"
              "other error: on the other generated tokens. CORM keeps what recent queries needed, whatever the budget.\n");
  return 0;
}
