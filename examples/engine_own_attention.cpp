// SPDX-License-Identifier: Apache-2.0
// An engine that keeps its own attention kernel. kvcompact manages the cache (eviction by H2O's
// accumulated attention); the engine computes attention itself, over its own memory, and hands the
// same queries to session.observe(), which updates the policy's per-slot scores without computing an
// output. Its kernel must follow two rules of a kvcompact-managed cache: each KV head has its own
// length, and slots are not in position order (an evicted slot is reused by a newer token).
//
// To show that observe() feeds the policy what attend() does, a twin cache is driven with
// session.attend(): the outputs must agree and the two caches must keep the same tokens.
#include <kvcompact/kvcompact.hpp>

#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

namespace kc = kvcompact;

namespace {

constexpr int layers = 2, kv_heads = 2, query_heads = 8, head_dim = 32, capacity = 128;
constexpr int group = query_heads / kv_heads;

// The engine's cache: [layer][KV head][slot][dim] keys and values, lengths [layer][KV head] and the
// positions kvcompact keeps per slot.
struct engine_cache {
  std::vector<float> keys = std::vector<float>(static_cast<std::size_t>(layers * kv_heads * capacity * head_dim));
  std::vector<float> values = keys;
  std::vector<std::int32_t> lengths = std::vector<std::int32_t>(layers * kv_heads, 0);
  std::vector<std::int32_t> positions = std::vector<std::int32_t>(static_cast<std::size_t>(layers * kv_heads * capacity), 0);
  kc::kv_cache<float, kc::layouts::strided> view() {
    return {kc::layouts::bhsd(1, layers, kv_heads, capacity, head_dim), keys.data(), values.data(), lengths.data(), positions.data()};
  }
};

// The engine's attention kernel for one token of one layer: softmax(q k^T / sqrt(d)) v over the valid
// slots [0, length) of each KV head, in slot order (whatever positions they hold).
void engine_attention(const engine_cache& c, int layer, const float* queries, float* output) {
  const float scale = 1.0f / std::sqrt(static_cast<float>(head_dim));
  std::vector<float> p(capacity);
  for (int g = 0; g < query_heads; ++g) {
    const int head = layer * kv_heads + g / group, length = c.lengths[static_cast<std::size_t>(head)];
    const float* q = queries + g * head_dim;
    float max_logit = -INFINITY, sum = 0.0f;
    for (int j = 0; j < length; ++j) {
      const float* k = &c.keys[(static_cast<std::size_t>(head) * capacity + j) * head_dim];
      float dot = 0.0f;
      for (int d = 0; d < head_dim; ++d) dot += q[d] * k[d];
      p[static_cast<std::size_t>(j)] = dot * scale;
      max_logit = std::max(max_logit, p[static_cast<std::size_t>(j)]);
    }
    for (int j = 0; j < length; ++j) sum += p[static_cast<std::size_t>(j)] = std::exp(p[static_cast<std::size_t>(j)] - max_logit);
    float* out = output + g * head_dim;
    for (int d = 0; d < head_dim; ++d) out[d] = 0.0f;
    for (int j = 0; j < length; ++j) {
      const float* v = &c.values[(static_cast<std::size_t>(head) * capacity + j) * head_dim];
      for (int d = 0; d < head_dim; ++d) out[d] += p[static_cast<std::size_t>(j)] / sum * v[d];
    }
  }
}

}  // namespace

int main() {
  constexpr int budget = 48, tokens = 200;
  const auto policy = kc::policies::h2o(budget, 8);  // evicts during decode: keeps heavy hitters + the 8 newest
  using session_type = kc::cpu::session<decltype(policy), float, kc::layouts::strided>;
  const kc::attention_shape shape{query_heads};
  engine_cache own, twin;
  std::vector<std::byte> own_state(session_type::state_bytes(own.view().layout)), twin_state(own_state.size());
  std::vector<std::byte> own_workspace(session_type::workspace_bytes(own.view().layout, shape)), twin_workspace(own_workspace.size());
  session_type own_session(policy, own.view(), shape, own_state, own_workspace);
  session_type twin_session(policy, twin.view(), shape, twin_state, twin_workspace);

  std::mt19937 model(11);  // a stand-in model: random K, V, Q per token
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> k(kv_heads * head_dim), v(k.size()), q(query_heads * head_dim), out(q.size()), twin_out(q.size());
  double max_difference = 0.0;
  for (int t = 0; t < tokens; ++t)  // generation from an empty cache: every token is a decode step
    for (int l = 0; l < layers; ++l) {
      for (float& x : k) x = normal(model);
      for (float& x : v) x = normal(model);
      for (float& x : q) x = 2.0f * normal(model);
      own_session.append(0, l, k.data(), v.data(), t);  // evicts by H2O's scores once a head holds `budget` slots
      engine_attention(own, l, q.data(), out.data());   // the engine's kernel computes the output...
      own_session.observe(0, l, q.data(), t);            // ...and kvcompact updates the scores from the same queries
      twin_session.append(0, l, k.data(), v.data(), t);
      twin_session.attend(0, l, q.data(), t, twin_out.data());
      for (std::size_t i = 0; i < out.size(); ++i) max_difference = std::max(max_difference, static_cast<double>(std::fabs(out[i] - twin_out[i])));
    }
  const bool same_tokens = own.positions == twin.positions && own.lengths == twin.lengths;
  std::printf("%d tokens, H2O budget %d: every head holds %d slots; engine kernel vs session.attend: max |output difference| %.2g; "
              "same tokens kept: %s\n",
              tokens, budget, own.lengths[0], max_difference, same_tokens ? "yes" : "NO");
  return same_tokens && max_difference < 1e-5 ? 0 : 1;
}
