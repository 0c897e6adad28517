// SPDX-License-Identifier: Apache-2.0
// GPU test, issue 14 ("no traps") on kvcompact::cuda::session's host side: what the host can check
// before any launch gets the same kvcompact::error as on the CPU backend (test/unit/no_traps.cpp):
// size queries validate the layout, the scale and the window rows; the constructor rejects aliasing
// layouts, keys and values on the same memory, a NaN scale and out-of-range policy fields (protected
// tokens above the budget included); set_budget() keeps the protected tokens within the budget;
// compress_prefill() runs once and before append(); decoding without it is valid.
#define BOOST_TEST_NO_MAIN
#define BOOST_TEST_ALTERNATIVE_INIT_API
#include <boost/test/unit_test.hpp>

#include <kvcompact/cuda.cuh>

#include "support/backend_comparison.hpp"
#include "support/expect_error.hpp"

#include <algorithm>
#include <limits>
#include <vector>

namespace kc = kvcompact;
using kc::index_t;
using kvtest::expect_error;

namespace {

constexpr index_t S = 2, L = 2, H = 2, G = 2, CAP = 32, D = 16, ROWS = 4;
using T = kc::bfloat16_t;

kvtest::layout_cache<T, kc::layouts::strided> host_cache(index_t length) {
  kvtest::fill_options fill;
  fill.min_length = fill.max_length = length;
  const auto c = kvtest::make_random_cache<T>({S, L, H, CAP, D}, fill, 21);
  return kvtest::copy_into(c, c.layout);
}

/// A device copy of a cache, with storage for sessions of Policy.
template <class Policy>
struct setup {
  using session_type = kc::cuda::session<Policy, T, kc::layouts::strided>;
  kc::attention_shape shape{H * G};
  kvtest::device_cache<T, kc::layouts::strided> device;
  kvtest::device_session_storage<session_type> storage;
  explicit setup(const kvtest::layout_cache<T, kc::layouts::strided>& host) : device(host), storage(device.layout.layout, shape, ROWS) {}
  /// A session of @p policy over @p cache (default: the device copy) with @p s (default: the shape).
  session_type make(const Policy& policy) const { return make(policy, device.view(), shape); }
  session_type make(const Policy& policy, const kc::kv_cache<T, kc::layouts::strided>& cache, kc::attention_shape s) const {
    return session_type(policy, cache, s, storage.state.bytes(), storage.workspace.bytes(), nullptr, ROWS);
  }
};

}  // namespace

BOOST_AUTO_TEST_CASE(size_queries_validate_the_layout_shape_and_rows) {
  using session_type = kc::cuda::session<decltype(kc::policies::knorm(8)), T, kc::layouts::strided>;
  const auto layout = kc::layouts::bhsd(S, L, H, CAP, D);
  auto bad = layout;
  bad.kv_heads = -2;
  expect_error([&] { (void)session_type::state_bytes(bad); }, "layout");
  expect_error([&] { (void)session_type::workspace_bytes(bad, {H * G}); }, "layout");
  expect_error([&] { (void)session_type::workspace_bytes(layout, {H * G, std::numeric_limits<float>::quiet_NaN()}); }, "shape.scale");
  expect_error([&] { (void)session_type::workspace_bytes(layout, {3}); }, "shape.query_heads");
  expect_error([&] { (void)session_type::workspace_bytes(layout, {H * G}, 0); }, "window_rows");
  expect_error([&] { (void)session_type::workspace_bytes(layout, {H * G}, index_t{1} << 62); }, "window_rows");
  BOOST_TEST(session_type::workspace_bytes(layout, {H * G}, ROWS) > 0u);
}

BOOST_AUTO_TEST_CASE(constructor_rejects_scale_aliasing_and_policy_fields) {
  const setup<decltype(kc::policies::snapkv(16, 4, 3))> s(host_cache(24));
  const auto snap = kc::policies::snapkv(16, 4, 3);
  for (float scale : {std::numeric_limits<float>::quiet_NaN(), -0.5f, std::numeric_limits<float>::infinity()})
    expect_error([&] { (void)s.make(snap, s.device.view(), {H * G, scale}); }, "shape.scale");
  auto cache = s.device.view();
  cache.layout.head_stride = CAP * D / 2;  // heads overlap
  expect_error([&] { (void)s.make(snap, cache, s.shape); }, "layout");
  cache = s.device.view();
  cache.values = cache.keys;
  expect_error([&] { (void)s.make(snap, cache, s.shape); }, "cache.values");
  auto even = snap;
  even.selector.rule.kernel = 4;
  expect_error([&] { (void)s.make(even); }, "policy.selector.rule.kernel");
  auto crowded = snap;
  crowded.selector.rule.recent = 20;  // 20 protected tokens, budget 16
  expect_error([&] { (void)s.make(crowded); }, "policy.selector.rule");
  BOOST_CHECK_NO_THROW((void)s.make(snap));
}

BOOST_AUTO_TEST_CASE(windowkv_group_zero_and_cam_merge_count_are_rejected) {
  auto windowkv = kc::policies::windowkv(8, 2, kc::selectors::task_type::localization, 2, 2);
  windowkv.selector.group = 0;
  const setup<decltype(windowkv)> w(host_cache(24));
  expect_error([&] { (void)w.make(windowkv); }, "policy.selector.group");
  auto cam = kc::policies::cam(16, 2);
  cam.merger.merge_count = 0;
  const setup<decltype(cam)> c(host_cache(24));
  expect_error([&] { (void)c.make(cam); }, "policy.merger.merge_count");
}

BOOST_AUTO_TEST_CASE(set_budget_keeps_the_protected_tokens) {
  const auto policy = kc::policies::streaming_llm(16, 4);
  const setup<decltype(policy)> s(host_cache(24));
  auto session = s.make(policy);
  expect_error([&] { session.set_budget(0, 4); }, "slots");  // four sinks need a fifth, evictable slot
  BOOST_CHECK_NO_THROW(session.set_budget(0, 5));
}

BOOST_AUTO_TEST_CASE(compress_prefill_runs_once_and_before_append) {
  const auto policy = kc::policies::knorm(16);
  const auto host = host_cache(24);
  kvtest::device_array<T> kv(std::vector<T>(static_cast<std::size_t>(S * H * D), kc::from_float<T>(0.5f)));
  kvtest::device_array<std::int32_t> positions(std::vector<std::int32_t>{24, 24});
  {
    const setup<decltype(policy)> s(host);
    auto session = s.make(policy);
    session.compress_prefill();
    expect_error([&] { session.compress_prefill(); }, "session");
    session.append(0, kv.data(), kv.data(), positions.data());
    session.check("append");
    expect_error([&] { session.compress_prefill(); }, "session");
  }
  {
    const setup<decltype(policy)> s(host);
    auto session = s.make(policy);
    session.append(1, kv.data(), kv.data(), positions.data());
    expect_error([&] { session.compress_prefill(); }, "session");
  }
}

// Decode before prefill is a valid use (as on the CPU backend): StreamingLLM evicts down to its
// budget on the first appends and keeps its sinks and the newest tokens.
BOOST_AUTO_TEST_CASE(decoding_without_compress_prefill_is_valid) {
  constexpr index_t budget = 10, sinks = 2, length = 12, steps = 6;
  const auto policy = kc::policies::streaming_llm(budget, sinks);
  const auto host = host_cache(length);
  const setup<decltype(policy)> s(host);
  auto session = s.make(policy);
  kvtest::device_array<T> kv(std::vector<T>(static_cast<std::size_t>(S * H * D), kc::from_float<T>(0.25f)));
  for (index_t t = length; t < length + steps; ++t) {
    kvtest::device_array<std::int32_t> positions(std::vector<std::int32_t>(S, static_cast<std::int32_t>(t)));
    for (index_t l = 0; l < L; ++l) session.append(l, kv.data(), kv.data(), positions.data());
  }
  session.check("append");
  const auto after = s.device.download(host);
  const index_t last = length + steps - 1;
  for (index_t head = 0; head < S * L * H; ++head) {
    BOOST_TEST(after.lengths[static_cast<std::size_t>(head)] == budget);
    std::vector<index_t> held;
    for (index_t j = 0; j < budget; ++j) held.push_back(after.positions[static_cast<std::size_t>(head * CAP + j)]);
    std::sort(held.begin(), held.end());
    std::vector<index_t> expected;
    for (index_t p = 0; p <= last; ++p)
      if (p < sinks || p > last - (budget - sinks)) expected.push_back(p);
    BOOST_TEST(held == expected, boost::test_tools::per_element());
  }
}

#include "support/gpu_main.hpp"
