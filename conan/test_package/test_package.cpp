// SPDX-License-Identifier: Apache-2.0
// Consumer of the Conan package: the umbrella header must come from the package and work.
#include <kvcompact/kvcompact.hpp>

#include <cstdint>
#include <cstdio>
#include <vector>

int main() {
  namespace kc = kvcompact;
  constexpr int heads = 2, capacity = 8, dims = 4, prompt = 8, budget = 3;
  const auto layout = kc::layouts::bhsd(1, 1, heads, capacity, dims);
  std::vector<float> keys(static_cast<std::size_t>(heads * capacity * dims)), values(keys.size());
  for (std::size_t i = 0; i < keys.size(); ++i) keys[i] = static_cast<float>(i % 7) - 3.0f;
  std::vector<std::int32_t> lengths(heads, prompt), positions(static_cast<std::size_t>(heads * capacity));
  for (std::size_t i = 0; i < positions.size(); ++i) positions[i] = static_cast<std::int32_t>(i % capacity);
  const auto policy = kc::policies::knorm(budget);
  using session_t = kc::cpu::session<decltype(policy), float, kc::layouts::strided>;
  const kc::attention_shape shape{heads};
  std::vector<std::byte> state(session_t::state_bytes(layout)), workspace(session_t::workspace_bytes(layout, shape));
  session_t session(policy, {layout, keys.data(), values.data(), lengths.data(), positions.data()}, shape, state, workspace);
  session.compress_prefill();
  if (lengths[0] != budget || lengths[1] != budget) return 1;
  std::printf("kvcompact %d.%d.%d: knorm kept %d of %d slots per head\n", KVCOMPACT_VERSION_MAJOR, KVCOMPACT_VERSION_MINOR,
              KVCOMPACT_VERSION_PATCH, budget, prompt);
  return 0;
}
