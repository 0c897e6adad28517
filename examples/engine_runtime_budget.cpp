// SPDX-License-Identifier: Apache-2.0
// Budgets changed at run time. Two requests decode with TOVA (evicts the token the current query
// attends least); at step 60 the engine comes under memory pressure and lowers request 1's budget
// with session.set_budget(): its next append evicts down to the new budget, the policy choosing what
// goes. At step 120 the pressure is over: the budget goes up again and request 1 grows back as it
// generates. Request 0 keeps its budget throughout.
#include <kvcompact/kvcompact.hpp>

#include <cstdio>
#include <random>
#include <vector>

namespace kc = kvcompact;

int main() {
  constexpr int requests = 2, layers = 2, kv_heads = 2, query_heads = 4, head_dim = 16, capacity = 128, steps = 180;
  const auto policy = kc::policies::tova(96);
  using session_type = kc::cpu::session<decltype(policy), float, kc::layouts::strided>;

  const auto layout = kc::layouts::bhsd(requests, layers, kv_heads, capacity, head_dim);
  std::vector<float> keys(static_cast<std::size_t>(requests * layers * kv_heads * capacity * head_dim)), values(keys.size());
  std::vector<std::int32_t> lengths(requests * layers * kv_heads, 0), positions(static_cast<std::size_t>(requests * layers * kv_heads * capacity));
  const kc::attention_shape shape{query_heads};
  std::vector<std::byte> state(session_type::state_bytes(layout)), workspace(session_type::workspace_bytes(layout, shape));
  session_type session(policy, {layout, keys.data(), values.data(), lengths.data(), positions.data()}, shape, state, workspace);

  std::mt19937 model(3);  // a stand-in model: random K, V, Q per token
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> k(kv_heads * head_dim), v(k.size()), q(query_heads * head_dim), out(q.size());
  int violations = 0;
  std::printf("step  budget of request 1  slots per head: request 0  request 1\n");
  for (int step = 0; step < steps; ++step) {
    if (step == 60) session.set_budget(1, 32);   // memory pressure: request 1 must shrink
    if (step == 120) session.set_budget(1, 96);  // pressure over: let it grow again
    for (int r = 0; r < requests; ++r)
      for (int l = 0; l < layers; ++l) {
        for (float& x : k) x = normal(model);
        for (float& x : v) x = normal(model);
        for (float& x : q) x = normal(model);
        session.append(r, l, k.data(), v.data(), step);
        session.attend(r, l, q.data(), step, out.data());
        for (int h = 0; h < kv_heads; ++h) violations += lengths[static_cast<std::size_t>((r * layers + l) * kv_heads + h)] > session.budget(r, l, h);
      }
    if (step % 20 == 19 || step == 60 || step == 120)
      std::printf("%4d  %19lld  %24d  %9d\n", step, static_cast<long long>(session.budget(1, 0, 0)), lengths[0],
                  lengths[static_cast<std::size_t>(layers * kv_heads)]);
  }
  std::printf("heads over their budget after an append: %d\n", violations);
  return violations == 0 ? 0 : 1;
}
