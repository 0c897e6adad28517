// SPDX-License-Identifier: Apache-2.0
// Host-only consumer of the installed kvcompact package: includes the umbrella header from the install
// tree (no fallback: a header missing from the install fails the build) and runs one compression.
#include <kvcompact/kvcompact.hpp>
#include <kvcompact/version.hpp>

#include <cstdint>
#include <cstdio>
#include <vector>

static_assert(KVCOMPACT_VERSION_MAJOR == EXPECTED_MAJOR, "installed major version differs from the project");
static_assert(KVCOMPACT_VERSION_MINOR == EXPECTED_MINOR, "installed minor version differs from the project");

int main() {
  namespace kc = kvcompact;
  constexpr int layers = 2, heads = 2, capacity = 16, dims = 4, prompt = 12, budget = 6;
  const auto layout = kc::layouts::bhsd(1, layers, heads, capacity, dims);
  std::vector<float> keys(static_cast<std::size_t>(layers * heads * capacity * dims)), values(keys.size());
  std::vector<std::int32_t> lengths(layers * heads, prompt), positions(static_cast<std::size_t>(layers * heads * capacity));
  for (std::size_t i = 0; i < keys.size(); ++i) {
    keys[i] = static_cast<float>((i * 7) % 11) / 11.0f;
    values[i] = static_cast<float>(i % 5);
  }
  for (std::size_t i = 0; i < positions.size(); ++i) positions[i] = static_cast<std::int32_t>(i % capacity);
  const kc::kv_cache<float, kc::layouts::strided> cache{layout, keys.data(), values.data(), lengths.data(), positions.data()};
  const auto policy = kc::policies::streaming_llm(budget, 2);
  using session_t = kc::cpu::session<decltype(policy), float, kc::layouts::strided>;
  const kc::attention_shape shape{4};
  std::vector<std::byte> state(session_t::state_bytes(layout)), workspace(session_t::workspace_bytes(layout, shape));
  session_t session(policy, cache, shape, state, workspace);
  session.compress_prefill();
  for (std::int32_t n : lengths)
    if (n != budget) {
      std::printf("unexpected length %d after compression (budget %d)\n", n, budget);
      return 1;
    }
  try {
    kc::kv_cache<float, kc::layouts::strided> broken = cache;
    broken.keys = nullptr;
    session_t bad(policy, broken, shape, state, workspace);
    std::printf("a null key pointer was accepted\n");
    return 1;
  } catch (const kc::error& e) {
    if (e.argument() != "cache.keys") return 1;
  }
  std::printf("kvcompact %d.%d.%d found (host consumer): streaming_llm kept %d of %d slots per head\n", KVCOMPACT_VERSION_MAJOR,
              KVCOMPACT_VERSION_MINOR, KVCOMPACT_VERSION_PATCH, budget, prompt);
  return 0;
}
