// SPDX-License-Identifier: Apache-2.0
// The README's example, compiled and run by ctest (example_quickstart): an engine's contiguous cache,
// compressed after the prompt by a preset, then one decode step through the session.
//! [quickstart]
#include <kvcompact/kvcompact.hpp>
#include <vector>
namespace kc = kvcompact;

int main() {  // the engine's cache: 2 layers x 4 KV heads x 1024 slots of head_dim 64, filled by its prefill
  const auto layout = kc::layouts::bhsd(/*sequences*/ 1, /*layers*/ 2, /*kv heads*/ 4, /*capacity*/ 1024, /*head_dim*/ 64);
  std::vector<float> keys(2 * 4 * 1024 * 64, 0.5f), values(keys.size(), 0.25f);
  std::vector<std::int32_t> lengths(2 * 4, 1000), positions(2 * 4 * 1024);  // 1000 prompt tokens per head
  for (std::size_t i = 0; i < positions.size(); ++i) positions[i] = static_cast<std::int32_t>(i % 1024);
  const auto policy = kc::policies::knorm(/*budget*/ 256);  // keep the 256 keys of lowest norm per head
  using session_t = kc::cpu::session<decltype(policy), float, kc::layouts::strided>;
  const kc::attention_shape shape{/*query heads*/ 16};
  std::vector<std::byte> state(session_t::state_bytes(layout)), workspace(session_t::workspace_bytes(layout, shape));
  session_t session(policy, {layout, keys.data(), values.data(), lengths.data(), positions.data()}, shape, state, workspace);
  session.compress_prefill();  // every head now holds 256 slots
  std::vector<float> k(4 * 64, 0.5f), v(4 * 64, 0.25f), q(16 * 64, 0.1f), out(16 * 64);
  session.append(/*sequence*/ 0, /*layer*/ 0, k.data(), v.data(), /*position*/ 1000);  // evicts one slot first
  session.attend(0, 0, q.data(), 1000, out.data());
  return lengths[0] == 256 ? 0 : 1;
}
//! [quickstart]
