// SPDX-License-Identifier: Apache-2.0
// A new policy from built-in components, as the user guide shows it: CORM's normalised importance
// (scorers::recent_query) decides which whole windows WindowKV keeps (selectors::windows, budgets
// from a group pyramid), and KVMerger's Gaussian merge (mergers::gaussian_pivot) folds the dropped
// tokens into similar kept neighbours. Runs it on a random prompt and prints what each layer kept.
// test/unit/composition.cpp checks this combination against the formulas.
#include <kvcompact/kvcompact.hpp>

#include <cstdio>
#include <random>
#include <vector>

int main() {
  constexpr int layers = 8, kv_heads = 2, query_heads = 8, head_dim = 32, prompt = 1500, rows = 32;
  //! [compose]
  using namespace kvcompact;
  policy<scorers::recent_query, selectors::windows<budgets::group_pyramid>, mergers::gaussian_pivot> p{
      {}, {budgets::group_pyramid{/*average review tokens*/ 512, /*layers per group*/ 4}}, {}};
  p.scorer.score_mode = scorers::recent_query::mode::importance;  // CORM's normalised importance u
  p.selector.group = 4;                                           // layers sharing windows, as the pyramid's groups
  //! [compose]

  const auto layout = layouts::bhsd(1, layers, kv_heads, prompt, head_dim);
  std::mt19937 rng(1);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> keys(static_cast<std::size_t>(layers * kv_heads * prompt * head_dim)), values(keys.size());
  for (float& x : keys) x = normal(rng);
  for (float& x : values) x = normal(rng);
  std::vector<std::int32_t> lengths(layers * kv_heads, prompt), positions(static_cast<std::size_t>(layers * kv_heads * prompt));
  for (std::size_t i = 0; i < positions.size(); ++i) positions[i] = static_cast<std::int32_t>(i % prompt);
  std::vector<float> window(static_cast<std::size_t>(layers * query_heads * rows * head_dim));  // the last 32 prompt queries
  for (float& x : window) x = normal(rng);
  std::vector<std::int32_t> window_positions(rows);
  for (int r = 0; r < rows; ++r) window_positions[static_cast<std::size_t>(r)] = prompt - rows + r;

  using session_type = cpu::session<decltype(p), float, layouts::strided>;
  const attention_shape shape{query_heads};
  std::vector<std::byte> state(session_type::state_bytes(layout)), workspace(session_type::workspace_bytes(layout, shape));
  session_type session(p, {layout, keys.data(), values.data(), lengths.data(), positions.data()}, shape, state, workspace);
  session.compress_prefill({window.data(), window_positions.data(), rows});
  std::printf("kept slots per layer (review tokens from the group pyramid, plus the 32-token suffix):");
  for (int l = 0; l < layers; ++l) std::printf(" %d", lengths[static_cast<std::size_t>(l * kv_heads)]);
  std::printf("\n");
  return 0;
}
