// SPDX-License-Identifier: Apache-2.0
// GPU test: kvcompact::cuda::session::compress_prefill_layer() runs the prefill kernels over one storage
// layer at a time and gives the same cache contents (keep-sets, K/V bits, lengths), decode budgets and
// slot states as compress_prefill() over all layers, for every stage (observation-window scoring,
// slot scoring, parallel top-k, CORM's per-slot rule, the serial selectors and the mergers), with the
// later layers not yet filled when a layer is compressed; the call order is checked on the host.
#define BOOST_TEST_NO_MAIN
#define BOOST_TEST_ALTERNATIVE_INIT_API
#include <boost/test/unit_test.hpp>

#include <kvcompact/cuda.cuh>

#include "support/backend_comparison.hpp"
#include "support/expect_error.hpp"
#include "support/layer_window.hpp"

#include <cstring>
#include <string>
#include <vector>

namespace kc = kvcompact;
namespace pol = kvcompact::policies;
using kc::index_t;

namespace {

constexpr index_t S = 2, L = 3, H = 2, G = 2, CAP = 40, D = 16, ROWS = 6;
using T = kc::bfloat16_t;
using layout_type = kc::layouts::strided;

/// The host cache with only the storage layers below @p filled holding tokens (later layers empty,
/// positions unset): the engine's cache while its prefill is at layer @p filled.
kvtest::layout_cache<T, layout_type> filled_below(const kvtest::layout_cache<T, layout_type>& full, index_t filled) {
  auto out = full;
  for (index_t s = 0; s < S; ++s)
    for (index_t l = filled; l < L; ++l)
      for (index_t h = 0; h < H; ++h) {
        const auto head = static_cast<std::size_t>((s * L + l) * H + h);
        out.lengths[head] = 0;
        for (index_t j = 0; j < CAP; ++j) out.positions[head * CAP + static_cast<std::size_t>(j)] = -1;
      }
  return out;
}

template <class Policy>
void check_layer_by_layer(const std::string& name, const Policy& policy, std::uint32_t seed, bool evicts = true) {
  using session_type = kc::cuda::session<Policy, T, layout_type>;
  kvtest::fill_options fill;
  fill.min_length = 24;
  fill.aligned_heads = true;
  const auto random = kvtest::make_random_cache<T>({S, L, H, CAP, D}, fill, seed);
  const auto host = kvtest::copy_into(random, random.layout);
  auto w = kvtest::make_random_window(S, L, H * G, ROWS, D, {CAP - 1, CAP - 1}, 1.5, seed + 3);
  kvtest::round_to_exact_values(w);
  const kc::attention_shape shape{H * G};

  kvtest::device_cache<T, layout_type> whole(host);
  kvtest::device_session_storage<session_type> whole_storage(whole.layout.layout, shape, ROWS);
  session_type all(policy, whole.view(), shape, whole_storage.state.bytes(), whole_storage.workspace.bytes(), nullptr, ROWS);
  const kvtest::device_window whole_window(w);
  all.compress_prefill(whole_window.view());
  all.check("compress_prefill");

  kvtest::device_cache<T, layout_type> staged(filled_below(host, 0));
  kvtest::device_session_storage<session_type> staged_storage(staged.layout.layout, shape, ROWS);
  session_type by_layer(policy, staged.view(), shape, staged_storage.state.bytes(), staged_storage.workspace.bytes(), nullptr, ROWS);
  for (index_t l = 0; l < L; ++l) {
    // layer l's prefill is done: the engine writes its tokens (the compressed layers below stay as they are)
    auto current = staged.download(host);
    const auto next = filled_below(host, l + 1);
    for (index_t s = 0; s < S; ++s)
      for (index_t h = 0; h < H; ++h) {
        const auto head = static_cast<std::size_t>((s * L + l) * H + h);
        current.lengths[head] = next.lengths[head];
        for (index_t j = 0; j < CAP; ++j) {
          const std::size_t slot = head * CAP + static_cast<std::size_t>(j);
          current.positions[slot] = next.positions[slot];
          for (index_t d = 0; d < D; ++d) {
            const auto e = static_cast<std::size_t>(host.layout.offset(s, l, h, j) + d);
            current.keys[e] = host.keys[e];
            current.values[e] = host.values[e];
          }
        }
      }
    staged.keys.upload(current.keys);
    staged.values.upload(current.values);
    staged.lengths.upload(current.lengths);
    staged.positions.upload(current.positions);
    const kvtest::device_window slice(kvtest::layer_window(w, l));
    by_layer.compress_prefill_layer(l, slice.view());
    by_layer.check("compress_prefill_layer");
  }
  auto a = whole.download(host), b = staged.download(host);
  BOOST_TEST((kvtest::take_snapshot(a.view()) == kvtest::take_snapshot(b.view())), name << " seed " << seed);
  BOOST_TEST((a.lengths != host.lengths || !evicts), name << ": the policy compressed nothing, so the comparison proves little");
  const std::size_t state_bytes = static_cast<std::size_t>(S * L * H * CAP) * sizeof(typename session_type::state_type);
  std::vector<std::byte> states_a(state_bytes), states_b(state_bytes);
  std::vector<std::int32_t> budgets_a(static_cast<std::size_t>(S * L * H)), budgets_b(budgets_a.size());
  KVCOMPACT_CUDA_CHECK(cudaMemcpy(states_a.data(), all.slot_states(), state_bytes, cudaMemcpyDeviceToHost));
  KVCOMPACT_CUDA_CHECK(cudaMemcpy(states_b.data(), by_layer.slot_states(), state_bytes, cudaMemcpyDeviceToHost));
  KVCOMPACT_CUDA_CHECK(cudaMemcpy(budgets_a.data(), all.budgets(), budgets_a.size() * 4, cudaMemcpyDeviceToHost));
  KVCOMPACT_CUDA_CHECK(cudaMemcpy(budgets_b.data(), by_layer.budgets(), budgets_b.size() * 4, cudaMemcpyDeviceToHost));
  BOOST_TEST((budgets_a == budgets_b), name);
  for (std::size_t head = 0; head < a.lengths.size(); ++head)  // valid slots only (the rest is scratch)
    BOOST_TEST(std::memcmp(states_a.data() + head * CAP * sizeof(typename session_type::state_type),
                           states_b.data() + head * CAP * sizeof(typename session_type::state_type),
                           static_cast<std::size_t>(a.lengths[head]) * sizeof(typename session_type::state_type)) == 0,
               name << " head " << head);
}

}  // namespace

BOOST_AUTO_TEST_CASE(gives_the_keep_sets_of_the_all_layers_call) {
  const std::uint32_t seed = 21;
  check_layer_by_layer("snapkv kvpress",
                       pol::snapkv({.budget = 16, .window = 4, .scoring = {.pool = kc::selectors::pooling::average, .kernel = 5, .rows = kc::reduction::mean}}),
                       seed);
  check_layer_by_layer("pyramidkv", pol::pyramidkv(16, 4), seed);
  check_layer_by_layer("adakv", pol::adakv(16, 4), seed);
  check_layer_by_layer("h2o", pol::h2o(16, 4), seed);
  check_layer_by_layer("tova", pol::tova(16), seed);
  check_layer_by_layer("knorm", pol::knorm(16), seed);
  check_layer_by_layer("corm", pol::corm(4, 4), seed, false);  // budget-free: may keep everything
  check_layer_by_layer("kvmerger", pol::kvmerger(0.4), seed);
  check_layer_by_layer("cam", pol::cam(16, 2, 4), seed);
}

BOOST_AUTO_TEST_CASE(call_order_is_checked) {
  using policy_type = decltype(pol::knorm(16));
  using session_type = kc::cuda::session<policy_type, T, layout_type>;
  kvtest::fill_options fill;
  fill.min_length = 24;
  const auto random = kvtest::make_random_cache<T>({S, L, H, CAP, D}, fill, 4);
  const auto host = kvtest::copy_into(random, random.layout);
  const kc::attention_shape shape{H * G};
  kvtest::device_cache<T, layout_type> device(host);
  kvtest::device_session_storage<session_type> storage(device.layout.layout, shape, ROWS);
  session_type s(pol::knorm(16), device.view(), shape, storage.state.bytes(), storage.workspace.bytes(), nullptr, ROWS);
  kvtest::device_array<T> token(static_cast<std::size_t>(S * H * D));
  kvtest::device_array<std::int32_t> positions(std::vector<std::int32_t>{100, 100});
  kvtest::expect_error([&] { s.compress_prefill_layer(1); }, "layer", "expected 0");
  s.compress_prefill_layer(0);
  kvtest::expect_error([&] { s.compress_prefill_layer(0); }, "layer", "expected 1");
  kvtest::expect_error([&] { s.append(0, token.data(), token.data(), positions.data()); }, "session", "1 of 3 layers");
  kvtest::expect_error([&] { s.compress_prefill(); }, "session", "one by one");
  s.compress_prefill_layer(1);
  s.compress_prefill_layer(2);
  kvtest::expect_error([&] { s.compress_prefill_layer(3); }, "session", "compressed already");
  s.check("compress_prefill_layer");
}

#include "support/gpu_main.hpp"
