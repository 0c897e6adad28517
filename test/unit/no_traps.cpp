// SPDX-License-Identifier: Apache-2.0
// Issue 14 ("no traps"), the host API: every case the issue lists gets a kvcompact::error naming the
// argument, or is a documented valid use with a test of what it does. Preset factories and the
// session (for hand-composed policies) apply the same parameter rules; data is checked where it
// enters; the call order compress_prefill -> append is enforced; layouts that alias are rejected.
// The CUDA session's host-side checks have their own test (test/cuda/host_checks_test.cu).
#include "support/custom_layout.hpp"
#include "support/expect_error.hpp"
#include "support/reference.hpp"

#include <kvcompact/kvcompact.hpp>

#include <boost/test/unit_test.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

namespace kc = kvcompact;
using kc::index_t;
using kvtest::expect_error;

namespace {

constexpr float nan_value = std::numeric_limits<float>::quiet_NaN();
constexpr float inf_value = std::numeric_limits<float>::infinity();
constexpr auto localization = kc::selectors::task_type::localization;
const kvtest::cache_shape shape{2, 2, 2, 16, 8};  // sequences, layers, kv heads, capacity, head dim
constexpr index_t query_heads = 4;

// A cache whose heads all hold positions 0..length-1.
kvtest::random_cache<float> filled(index_t length, std::uint32_t seed = 3) {
  kvtest::fill_options fill;
  fill.min_length = fill.max_length = length;
  return kvtest::make_random_cache<float>(shape, fill, seed);
}

// Observation window: the last `rows` positions before `length`.
kvtest::random_window window_for(index_t length, index_t rows = 4) {
  return kvtest::make_random_window(shape.sequences, shape.layers, query_heads, rows, shape.head_dim, {length - 1, length - 1}, 1.0, 17);
}

// A cpu::session with its own memory.
template <class Policy, class Layout = kc::layouts::strided>
struct bound_session {
  using session_type = kc::cpu::session<Policy, float, Layout>;
  kvtest::session_memory memory;
  session_type session;
  bound_session(const Policy& p, const kc::kv_cache<float, Layout>& c, kc::attention_shape s = {query_heads})
      : memory(kvtest::session_memory::for_session<session_type>(c.layout, s)), session(p, c, s, memory.state(), memory.workspace()) {}
};

// Constructs a session of `policy` over `cache` (to check what the constructor rejects).
template <class Policy>
auto construct(const Policy& policy, kvtest::random_cache<float>& cache, kc::attention_shape s = {query_heads}) {
  return [&policy, &cache, s] { bound_session<Policy> b(policy, cache.view(), s); };
}

std::vector<float> constant(index_t count, float x) { return std::vector<float>(static_cast<std::size_t>(count), x); }

}  // namespace

BOOST_AUTO_TEST_SUITE(parameters)

// windowkv(avg, 0) and windowkv(..., window 0, ...) divided by zero (SIGFPE).
BOOST_AUTO_TEST_CASE(windowkv_group_and_window_must_be_positive) {
  expect_error([] { (void)kc::policies::windowkv(8, 0); }, "group");
  expect_error([] { (void)kc::policies::windowkv(8, -2); }, "group");
  expect_error([] { (void)kc::policies::windowkv(8, 2, localization, 0); }, "window");
  expect_error([] { (void)kc::policies::windowkv(8, 2, localization, -4); }, "window");
  expect_error([] { (void)kc::policies::windowkv(8, 2, localization, 4, -1); }, "suffix");
  BOOST_CHECK_NO_THROW((void)kc::policies::windowkv(8, 2, localization, 4, 0));
  // hand-composed: the session checks the fields it would divide by
  auto cache = filled(12);
  const auto good = kc::policies::windowkv(4, 2, localization, 2, 2);
  auto p = good;
  p.selector.group = 0;
  expect_error(construct(p, cache), "policy.selector.group");
  p = good;
  p.selector.window = 0;
  expect_error(construct(p, cache), "policy.selector.window");
  p = good;
  p.selector.schedule.group = 0;
  expect_error(construct(p, cache), "policy.selector.schedule.group");
  p = good;
  p.selector.schedule.beta = 0;
  expect_error(construct(p, cache), "policy.selector.schedule.beta");
  BOOST_CHECK_NO_THROW(construct(good, cache)());
}

// adakv(8, 4, NaN) was undefined behaviour and kept 4 slots instead of 8; floors outside [0, 1] passed.
BOOST_AUTO_TEST_CASE(adakv_floor_must_be_a_share) {
  for (double floor : {static_cast<double>(nan_value), -0.1, 1.5, static_cast<double>(inf_value)})
    expect_error([&] { (void)kc::policies::adakv(8, 4, floor); }, "floor_fraction");
  BOOST_CHECK_NO_THROW((void)kc::policies::adakv(8, 4, 0.0));
  BOOST_CHECK_NO_THROW((void)kc::policies::adakv(8, 4, 1.0));
  auto cache = filled(12);
  auto p = kc::policies::adakv(8, 4);
  p.selector.floor_fraction = std::numeric_limits<double>::quiet_NaN();
  expect_error(construct(p, cache), "policy.selector.floor_fraction");
}

// Preset factories accepted budgets <= 0 (only with_preset checked).
BOOST_AUTO_TEST_CASE(preset_budgets_must_be_positive) {
  for (index_t b : {index_t{0}, index_t{-1}, std::numeric_limits<index_t>::min()}) {
    BOOST_TEST_CONTEXT("budget " << b) {
      expect_error([&] { (void)kc::policies::streaming_llm(b, 0); }, "budget");
      expect_error([&] { (void)kc::policies::h2o(b, 0); }, "budget");
      expect_error([&] { (void)kc::policies::tova(b); }, "budget");
      expect_error([&] { (void)kc::policies::snapkv(b, 0); }, "budget");
      expect_error([&] { (void)kc::policies::pyramidkv(b, 0); }, "average");
      expect_error([&] { (void)kc::policies::adakv(b, 0); }, "budget");
      expect_error([&] { (void)kc::policies::knorm(b); }, "budget");
      expect_error([&] { (void)kc::policies::corm_budgeted(b, 0); }, "budget");
      expect_error([&] { (void)kc::policies::windowkv(b, 1); }, "average");
      expect_error([&] { (void)kc::policies::cam(b, 0); }, "budget");
    }
  }
  auto cache = filled(12);
  auto p = kc::policies::knorm(8);
  p.selector.schedule.slots = 0;
  expect_error(construct(p, cache), "policy.selector.schedule.slots");
  auto m = kc::policies::kvmerger(0.5);
  m.selector.schedule.ratio = -0.5;
  expect_error(construct(m, cache), "policy.selector.schedule.ratio");
}

BOOST_AUTO_TEST_CASE(pooling_kernels_must_be_odd_and_positive) {
  for (index_t k : {0, 2, 4, -3}) {
    expect_error([&] { (void)kc::policies::snapkv(16, 4, k); }, "scoring.kernel");
    expect_error([&] { (void)kc::policies::pyramidkv(32, 4, k); }, "scoring.kernel");
  }
  BOOST_CHECK_NO_THROW((void)kc::policies::snapkv(16, 4, 1));
  BOOST_CHECK_NO_THROW((void)kc::policies::snapkv(16, 4, 9));
  auto cache = filled(12);
  auto p = kc::policies::snapkv(8, 4, 3);
  p.selector.rule.kernel = 6;
  expect_error(construct(p, cache), "policy.selector.rule.kernel");
}

BOOST_AUTO_TEST_CASE(corm_needs_a_window_covered_by_its_recent_tokens) {
  expect_error([] { (void)kc::policies::corm(0, 0, 0); }, "window");
  expect_error([] { (void)kc::policies::corm(-2, 4); }, "window");
  expect_error([] { (void)kc::policies::corm(4, 2); }, "recent");
  expect_error([] { (void)kc::policies::corm(4, 4, -1); }, "sinks");
  expect_error([] { (void)kc::policies::corm_budgeted(8, 4, nan_value); }, "alpha");
  expect_error([] { (void)kc::policies::corm_budgeted(8, 4, -1.0f); }, "alpha");
  BOOST_CHECK_NO_THROW((void)kc::policies::corm(1, 1));
  auto cache = filled(12);
  auto p = kc::policies::corm(4, 4);
  p.selector.window = 0;
  expect_error(construct(p, cache), "policy.selector.window");
  p = kc::policies::corm(4, 4);
  p.scorer.alpha = inf_value;
  expect_error(construct(p, cache), "policy.scorer.alpha");
}

BOOST_AUTO_TEST_CASE(cam_merge_count_and_start_must_be_in_range) {
  expect_error([] { (void)kc::policies::cam(8, 2, -1); }, "merge_count");
  expect_error([] { (void)kc::policies::cam(8, 2, 0); }, "merge_count");
  expect_error([] { (void)kc::policies::cam(8, -1); }, "start");
  BOOST_CHECK_NO_THROW((void)kc::policies::cam(8, 2, 1));
  auto cache = filled(12);
  auto p = kc::policies::cam(8, 2);
  p.merger.merge_count = -5;
  expect_error(construct(p, cache), "policy.merger.merge_count");
  auto g = kc::policies::kvmerger(0.5);
  g.merger.sigma = nan_value;
  expect_error(construct(g, cache), "policy.merger.sigma");
}

// snapkv(16, 32) kept 32, h2o(4, 16) 16, streaming_llm(4, 16) 16 then 17, cam(4, 8) 8 then 9:
// protected tokens above the budget are rejected (documented in policies.hpp), never capped.
BOOST_AUTO_TEST_CASE(protected_tokens_above_the_budget_are_rejected) {
  expect_error([] { (void)kc::policies::snapkv(16, 32); }, "window");
  expect_error([] { (void)kc::policies::h2o(4, 16); }, "recent");
  expect_error([] { (void)kc::policies::streaming_llm(4, 16); }, "sinks");
  expect_error([] { (void)kc::policies::streaming_llm(4, 4); }, "sinks");  // four sinks leave nothing to evict at decode
  expect_error([] { (void)kc::policies::cam(4, 8); }, "start");
  expect_error([] { (void)kc::policies::cam(4, 4); }, "start");
  expect_error([] { (void)kc::policies::adakv(8, 16); }, "window");
  expect_error([] { (void)kc::policies::corm_budgeted(4, 8); }, "recent");
  expect_error([] { (void)kc::policies::pyramidkv(16, 32); }, "average");
  // a hand-composed top-k with 16 sinks under a budget of 4
  auto cache = filled(12);
  const kc::policy<kc::scorers::recency, kc::selectors::top_k<kc::budgets::fixed>> sinks_only{{}, {kc::budgets::fixed{4}, {16, 0}}, {}};
  expect_error(construct(sinks_only, cache), "policy.selector.rule");
  // set_budget cannot go below what the protected tokens need either
  bound_session b(kc::policies::streaming_llm(8, 3), cache.view());
  expect_error([&] { b.session.set_budget(0, 3); }, "slots");
  BOOST_CHECK_NO_THROW(b.session.set_budget(0, 4));
}

// At the boundary (protected tokens exactly fill the budget) every head keeps exactly its budget
// through compression and decode, and every protected token.
template <class Policy>
void check_boundary(const Policy& policy, index_t budget, index_t sinks, index_t recent, bool evicts) {
  auto cache = filled(12);
  const auto window = window_for(12);
  bound_session b(policy, cache.view());
  b.session.compress_prefill(window.view());
  const auto k = constant(shape.kv_heads * shape.head_dim, 0.5f);
  for (index_t t = 12; t < 20; ++t) {
    for (index_t s = 0; s < shape.sequences; ++s)
      for (index_t l = 0; l < shape.layers; ++l)
        for (index_t h = 0; h < shape.kv_heads; ++h) {
          BOOST_TEST(cache.length(s, l, h) == (evicts || t == 12 ? budget : budget + t - 12));
          for (index_t p = 0; p < t; ++p) {
            if (!kc::detail::is_protected(p, t - 1, sinks, recent)) continue;
            bool held = false;
            for (index_t j = 0; j < cache.length(s, l, h); ++j) held = held || cache.position(s, l, h, j) == p;
            BOOST_TEST(held, "protected position " << p << " lost at step " << t);
          }
        }
    for (index_t s = 0; s < shape.sequences; ++s)
      for (index_t l = 0; l < shape.layers; ++l) b.session.append(s, l, k.data(), k.data(), t);
  }
}

BOOST_AUTO_TEST_CASE(protected_tokens_that_fill_the_budget_keep_it_exactly) {
  check_boundary(kc::policies::snapkv(8, 8, 3), 8, 0, 8, false);
  check_boundary(kc::policies::h2o(4, 4), 4, 0, 4, true);
  check_boundary(kc::policies::streaming_llm(4, 3), 4, 3, 0, true);
  check_boundary(kc::policies::cam(4, 3), 4, 3, 1, true);
  check_boundary(kc::policies::corm_budgeted(4, 4), 4, 0, 4, true);
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(data)

// kvmerger and CaM merged an evicted NaN into kept slots: a merging policy checks every valid slot
// before its first merge, so nothing is merged and the cache is unchanged.
template <class Policy>
void check_no_nan_merge(const Policy& policy, bool in_key) {
  auto cache = filled(12);
  const auto window = window_for(12);
  auto& storage = in_key ? cache.keys : cache.values;
  storage[static_cast<std::size_t>(cache.element(0, 1, 1, 5, 2))] = nan_value;
  const auto before = kvtest::take_snapshot(cache.view());
  {
    bound_session b(policy, cache.view());
    expect_error([&] { b.session.compress_prefill(window.view()); }, in_key ? "cache.keys" : "cache.values");
  }
  {  // decode without compress_prefill: the first append checks before it may evict and merge
    bound_session b(policy, cache.view());
    const auto k = constant(shape.kv_heads * shape.head_dim, 0.5f);
    expect_error([&] { b.session.append(0, 1, k.data(), k.data(), 12); }, in_key ? "cache.keys" : "cache.values");
  }
  BOOST_TEST((kvtest::take_snapshot(cache.view()) == before));
}

BOOST_AUTO_TEST_CASE(nan_is_never_merged) {
  for (bool in_key : {false, true}) {
    BOOST_TEST_CONTEXT((in_key ? "NaN key" : "NaN value")) {
      check_no_nan_merge(kc::policies::kvmerger(0.5), in_key);
      check_no_nan_merge(kc::policies::cam(8, 2), in_key);
      auto average = kc::policy<kc::scorers::key_norm, kc::selectors::top_k<kc::budgets::fixed>, kc::mergers::average>{};
      average.selector.schedule.slots = 6;
      check_no_nan_merge(average, in_key);
    }
  }
}

// A policy that does not merge does not read values at prefill: a NaN value is reported when
// attention reads it (documented: non-finite data no query reads is not reported).
BOOST_AUTO_TEST_CASE(a_nan_value_that_attention_reads_is_reported) {
  auto cache = filled(12);
  cache.values[static_cast<std::size_t>(cache.element(0, 0, 1, 0, 3))] = nan_value;  // position 0: a sink, always kept
  bound_session b(kc::policies::streaming_llm(8, 2), cache.view());
  BOOST_REQUIRE_NO_THROW(b.session.compress_prefill());
  const auto q = constant(query_heads * shape.head_dim, 0.1f);
  auto out = constant(query_heads * shape.head_dim, 0.0f);
  BOOST_CHECK_NO_THROW(b.session.attend(1, 0, q.data(), 12, out.data()));  // another sequence: finite
  expect_error([&] { b.session.attend(0, 0, q.data(), 12, out.data()); }, "cache");
}

// NaN/Inf decode queries or keys gave NaN outputs without an error.
BOOST_AUTO_TEST_CASE(non_finite_queries_keys_and_values_are_rejected_where_they_enter) {
  auto cache = filled(12);
  const auto window = window_for(12);
  bound_session b(kc::policies::h2o(8, 2), cache.view());
  b.session.compress_prefill(window.view());
  const auto before = kvtest::take_snapshot(cache.view());
  auto out = constant(query_heads * shape.head_dim, 0.0f);
  for (float bad : {nan_value, inf_value, -inf_value}) {
    auto q = constant(query_heads * shape.head_dim, 0.1f);
    q[5] = bad;
    expect_error([&] { b.session.attend(0, 1, q.data(), 12, out.data()); }, "queries");
    expect_error([&] { b.session.observe(0, 1, q.data(), 12); }, "queries");
    auto k = constant(shape.kv_heads * shape.head_dim, 0.5f), v = k;
    k[9] = bad;
    expect_error([&] { b.session.append(0, 1, k.data(), v.data(), 12); }, "keys");
    k[9] = 0.5f;
    v[0] = bad;
    expect_error([&] { b.session.append(0, 1, k.data(), v.data(), 12); }, "values");
  }
  BOOST_TEST((kvtest::take_snapshot(cache.view()) == before));
  // prefill window queries
  auto bad_window = window_for(12);
  bad_window.queries[7] = inf_value;
  bound_session fresh(kc::policies::h2o(8, 2), cache.view());
  expect_error([&] { fresh.session.compress_prefill(bad_window.view()); }, "window.queries");
}

BOOST_AUTO_TEST_CASE(attention_scale_must_be_finite_and_not_negative) {
  auto cache = filled(12);
  const auto policy = kc::policies::knorm(8);
  using session_type = kc::cpu::session<decltype(policy), float, kc::layouts::strided>;
  for (float scale : {nan_value, -1.0f, inf_value, -inf_value}) {
    expect_error(construct(policy, cache, {query_heads, scale}), "shape.scale");
    expect_error([&] { (void)session_type::workspace_bytes(cache.layout, {query_heads, scale}); }, "shape.scale");
  }
  BOOST_CHECK_NO_THROW(construct(policy, cache, {query_heads, 0.0f})());
  BOOST_CHECK_NO_THROW(construct(policy, cache, {query_heads, 0.3f})());
}

// Positions of -1 (unset) kept 24 slots for a budget of 8; repeated positions defeat the budget too.
BOOST_AUTO_TEST_CASE(unset_or_repeated_positions_are_rejected) {
  const auto policy = kc::policies::snapkv(8, 4, 3);
  const auto window = window_for(12);
  {
    auto cache = filled(12);
    for (index_t j = 0; j < 12; ++j) cache.positions[static_cast<std::size_t>(cache.slot_index(1, 0, 1, j))] = -1;
    bound_session b(policy, cache.view());
    expect_error([&] { b.session.compress_prefill(window.view()); }, "cache.positions");
    bound_session d(kc::policies::streaming_llm(8, 2), cache.view());  // decode without compression checks too
    const auto k = constant(shape.kv_heads * shape.head_dim, 0.5f);
    expect_error([&] { d.session.append(0, 0, k.data(), k.data(), 12); }, "cache.positions");
  }
  {
    auto cache = filled(12);
    cache.positions[static_cast<std::size_t>(cache.slot_index(0, 1, 0, 3))] = 4;  // slots 3 and 4 both at position 4
    bound_session b(policy, cache.view());
    expect_error([&] { b.session.compress_prefill(window.view()); }, "cache.positions");
  }
  {
    auto cache = filled(12);
    auto bad = window_for(12);
    bad.positions[1] = -1;
    bound_session b(policy, cache.view());
    expect_error([&] { b.session.compress_prefill(bad.view()); }, "window.positions");
  }
  {  // decode positions outside [0, 2^31)
    auto cache = filled(12);
    bound_session b(kc::policies::h2o(8, 2), cache.view());
    const auto k = constant(shape.kv_heads * shape.head_dim, 0.5f), q = constant(query_heads * shape.head_dim, 0.1f);
    auto out = constant(query_heads * shape.head_dim, 0.0f);
    expect_error([&] { b.session.append(0, 0, k.data(), k.data(), -1); }, "position");
    expect_error([&] { b.session.append(0, 0, k.data(), k.data(), index_t{1} << 31); }, "position");
    expect_error([&] { b.session.attend(0, 0, q.data(), -1, out.data()); }, "position");
    expect_error([&] { b.session.observe(0, 0, q.data(), index_t{1} << 40); }, "position");
  }
}

// Scores shared across KV heads (TOVA) are summed slot by slot, and WindowKV's group leader decides
// for every head of its group's layers: heads that hold other positions would get another head's
// decision and overshoot (found by test/unit/api_fuzz.cpp), so such caches are rejected.
BOOST_AUTO_TEST_CASE(heads_a_policy_compares_must_hold_the_same_positions) {
  const auto window = window_for(12);
  {
    auto cache = filled(12);
    std::swap(cache.positions[static_cast<std::size_t>(cache.slot_index(0, 1, 1, 2))], cache.positions[static_cast<std::size_t>(cache.slot_index(0, 1, 1, 3))]);
    bound_session b(kc::policies::tova(8), cache.view());
    expect_error([&] { b.session.compress_prefill(window.view()); }, "cache.positions");
    bound_session k(kc::policies::knorm(8), cache.view());  // scores per KV head: fine
    BOOST_CHECK_NO_THROW(k.session.compress_prefill());
  }
  {
    auto cache = filled(12);
    for (index_t h = 0; h < shape.kv_heads; ++h) cache.lengths[static_cast<std::size_t>(cache.head_index(1, 1, h))] = 10;  // layer 1 follows layer 0
    bound_session b(kc::policies::windowkv(4, 2, localization, 2, 2), cache.view());
    expect_error([&] { b.session.compress_prefill(window.view()); }, "cache.positions");
    bound_session one(kc::policies::windowkv(4, 1, localization, 2, 2), cache.view());  // groups of one layer: fine
    BOOST_CHECK_NO_THROW(one.session.compress_prefill(window.view()));
  }
}

// Ada-KV's layer keeps at most H x B (plus rounding) when its heads protect different counts: each
// head's floor share comes from its own budget less its protected tokens (found by api_fuzz.cpp).
BOOST_AUTO_TEST_CASE(adakv_keeps_the_layer_budget_when_heads_protect_different_counts) {
  auto cache = filled(16);
  for (index_t s = 0; s < shape.sequences; ++s)
    for (index_t l = 0; l < shape.layers; ++l) cache.lengths[static_cast<std::size_t>(cache.head_index(s, l, 1))] = 12;  // no recent token
  constexpr index_t budget = 6;
  bound_session b(kc::policies::adakv(budget, 4, 0.9), cache.view());
  b.session.compress_prefill(window_for(16).view());
  for (index_t s = 0; s < shape.sequences; ++s)
    for (index_t l = 0; l < shape.layers; ++l) {
      index_t total = 0;
      for (index_t h = 0; h < shape.kv_heads; ++h) total += cache.length(s, l, h);
      BOOST_TEST(total <= shape.kv_heads * budget + 1, "layer keeps " << total);  // one slot of rounding
      for (index_t p = 12; p < 16; ++p) {  // head 0's protected window
        bool held = false;
        for (index_t j = 0; j < cache.length(s, l, 0); ++j) held = held || cache.position(s, l, 0, j) == p;
        BOOST_TEST(held);
      }
    }
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(call_order)

// Decode before prefill is a valid use: the session manages the cache as given. StreamingLLM from an
// empty cache keeps its sinks and the newest tokens, exactly its budget, and attends them.
BOOST_AUTO_TEST_CASE(decoding_without_compress_prefill_is_valid) {
  auto cache = filled(1);
  std::fill(cache.lengths.begin(), cache.lengths.end(), 0);
  constexpr index_t budget = 6, sinks = 2;
  bound_session b(kc::policies::streaming_llm(budget, sinks), cache.view());
  std::mt19937 rng(5);
  for (index_t t = 0; t < 20; ++t) {
    for (index_t s = 0; s < shape.sequences; ++s)
      for (index_t l = 0; l < shape.layers; ++l) {
        const auto k = kvtest::random_vector(shape.kv_heads * shape.head_dim, 1.0, rng), v = kvtest::random_vector(shape.kv_heads * shape.head_dim, 1.0, rng);
        const auto q = kvtest::random_vector(query_heads * shape.head_dim, 1.0, rng);
        auto out = constant(query_heads * shape.head_dim, 0.0f);
        b.session.append(s, l, k.data(), v.data(), t);
        b.session.attend(s, l, q.data(), t, out.data());
        for (index_t h = 0; h < shape.kv_heads; ++h) {
          BOOST_TEST(cache.length(s, l, h) == std::min(t + 1, budget));
          std::vector<index_t> held;
          for (index_t j = 0; j < cache.length(s, l, h); ++j) held.push_back(cache.position(s, l, h, j));
          std::sort(held.begin(), held.end());
          std::vector<index_t> expected;
          for (index_t p = 0; p <= t; ++p)
            if (p < sinks || p > t - (budget - sinks)) expected.push_back(p);
          BOOST_TEST(held == expected, boost::test_tools::per_element());
          for (index_t g = h * 2; g < h * 2 + 2; ++g) {
            const auto want = kvtest::attention_output(cache, s, l, h, q.data() + g * shape.head_dim, t, kvtest::default_scale(shape.head_dim));
            for (index_t d = 0; d < shape.head_dim; ++d)
              BOOST_TEST(kvtest::close(out[static_cast<std::size_t>(g * shape.head_dim + d)], want[static_cast<std::size_t>(d)], 1e-5, 1e-6));
          }
        }
      }
  }
}

BOOST_AUTO_TEST_CASE(compressing_twice_or_after_append_is_rejected) {
  auto cache = filled(12);
  const auto k = constant(shape.kv_heads * shape.head_dim, 0.5f);
  {
    bound_session b(kc::policies::knorm(8), cache.view());
    b.session.compress_prefill();
    const auto after_first = kvtest::take_snapshot(cache.view());
    expect_error([&] { b.session.compress_prefill(); }, "session");
    BOOST_TEST((kvtest::take_snapshot(cache.view()) == after_first));
    b.session.append(0, 0, k.data(), k.data(), 12);
    expect_error([&] { b.session.compress_prefill(); }, "session");
  }
  {
    auto fresh = filled(12);
    bound_session b(kc::policies::knorm(8), fresh.view());
    b.session.append(1, 1, k.data(), k.data(), 12);
    expect_error([&] { b.session.compress_prefill(); }, "session");
  }
  {  // a call rejected for its arguments leaves compression possible
    auto fresh = filled(12);
    bound_session b(kc::policies::h2o(8, 2), fresh.view());
    expect_error([&] { b.session.compress_prefill(); }, "window.queries");
    BOOST_CHECK_NO_THROW(b.session.compress_prefill(window_for(12).view()));
  }
}

BOOST_AUTO_TEST_CASE(appended_positions_must_grow) {
  auto cache = filled(12);
  bound_session b(kc::policies::h2o(8, 2), cache.view());
  b.session.compress_prefill(window_for(12).view());
  const auto k = constant(shape.kv_heads * shape.head_dim, 0.5f);
  b.session.append(0, 0, k.data(), k.data(), 12);
  const auto before = kvtest::take_snapshot(cache.view());
  for (index_t p : {12, 11, 5, 0}) expect_error([&] { b.session.append(0, 0, k.data(), k.data(), p); }, "position");
  BOOST_TEST((kvtest::take_snapshot(cache.view()) == before));
  BOOST_CHECK_NO_THROW(b.session.append(0, 0, k.data(), k.data(), 20));  // gaps are fine
  BOOST_CHECK_NO_THROW(b.session.append(0, 1, k.data(), k.data(), 12));  // per layer
}

// A query at a position below the newest key is valid (a prompt appended first, then attended token
// by token): the keys after it are masked.
BOOST_AUTO_TEST_CASE(attending_below_the_newest_key_masks_later_keys) {
  auto cache = filled(12);
  bound_session b(kc::policies::h2o(16, 2), cache.view());
  const auto q = constant(query_heads * shape.head_dim, 0.3f);
  auto out = constant(query_heads * shape.head_dim, 0.0f);
  BOOST_REQUIRE_NO_THROW(b.session.attend(1, 1, q.data(), 5, out.data()));
  for (index_t g = 0; g < query_heads; ++g) {
    const auto want = kvtest::attention_output(cache, 1, 1, g / 2, q.data() + g * shape.head_dim, 5, kvtest::default_scale(shape.head_dim));
    for (index_t d = 0; d < shape.head_dim; ++d)
      BOOST_TEST(kvtest::close(out[static_cast<std::size_t>(g * shape.head_dim + d)], want[static_cast<std::size_t>(d)], 1e-5, 1e-6));
  }
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(layouts)

// state_bytes() and workspace_bytes() did not validate the layout: a negative extent wrapped to a
// huge size_t.
BOOST_AUTO_TEST_CASE(size_queries_validate_the_layout) {
  using session_type = kc::cpu::session<decltype(kc::policies::knorm(8)), float, kc::layouts::strided>;
  auto layout = kc::layouts::bhsd(2, 2, 2, 16, 8);
  for (auto mutate : {+[](kc::layouts::strided& l) { l.sequences = -1; }, +[](kc::layouts::strided& l) { l.slots = 0; },
                      +[](kc::layouts::strided& l) { l.dims = -64; }}) {
    auto bad = layout;
    mutate(bad);
    expect_error([&] { (void)session_type::state_bytes(bad); }, "layout");
    expect_error([&] { (void)session_type::workspace_bytes(bad, {query_heads}); }, "layout");
  }
  const index_t big = index_t{1} << 30;  // 2^30 sequences x 2^30 slots: the sizes overflow
  auto huge = kc::layouts::strided{big, 1, 1, big, 1, big, 1, 1, 1, 1};
  huge.sequence_stride = big;  // nested: slot stride 1 spans 2^30 - 1
  expect_error([&] { (void)session_type::state_bytes(huge); }, "layout");
  expect_error([&] { (void)session_type::workspace_bytes(layout, {0}); }, "shape.query_heads");
  expect_error([&] { (void)session_type::workspace_bytes(layout, {3}); }, "shape.query_heads");
  expect_error([&] { (void)session_type::workspace_bytes(layout, {index_t{1} << 62}); }, "shape.query_heads");
  // paged: the capacity pages x page_size must fit the int32 lengths
  kvtest::random_paging paging;
  kvtest::make_random_paging(paging, {2, 2, 2, 16, 8}, 4, kc::layouts::page_format::nhd, 0, 1);
  auto paged = paging.layout;
  paged.page_size = index_t{1} << 40;
  using paged_session = kc::cpu::session<decltype(kc::policies::knorm(8)), float, kc::layouts::paged>;
  expect_error([&] { (void)paged_session::state_bytes(paged); }, "layout.pages_per_sequence");
}

// Layouts whose strides alias (all zero, overlapping heads, pages shared across sequences) passed.
BOOST_AUTO_TEST_CASE(aliasing_layouts_are_rejected) {
  const auto policy = kc::policies::knorm(8);
  auto cache = filled(12);
  auto check = [&](kc::layouts::strided layout, bool aliases) {
    auto v = cache.view();
    v.layout = layout;
    auto make = [&] { bound_session b(policy, v); };
    if (aliases) expect_error(make, "layout");
    else BOOST_CHECK_NO_THROW(make());
  };
  const auto bhsd = kc::layouts::bhsd(2, 2, 2, 16, 8);
  check(bhsd, false);
  check(kc::layouts::bshd(2, 2, 2, 16, 8), false);
  check(kc::layouts::strided{2, 2, 2, 16, 8, 0, 0, 0, 0, 1}, true);  // all strides zero (dim stride 1)
  auto overlapping_heads = bhsd;
  overlapping_heads.head_stride = 8 * 8;  // head 1 starts at slot 8 of head 0
  check(overlapping_heads, true);
  auto shared_sequences = bhsd;
  shared_sequences.sequence_stride = 0;
  check(shared_sequences, true);
  auto overlapping_slots = bhsd;
  overlapping_slots.slot_stride = 4;  // slots 4 elements apart, 8 dims each
  check(overlapping_slots, true);
  auto padded = bhsd;  // padding between heads and layers is fine
  padded.head_stride += 3;
  padded.sequence_stride = 2 * padded.head_stride + 5;
  padded.layer_stride = 2 * padded.sequence_stride;
  std::vector<float> big(static_cast<std::size_t>(kvtest::storage_elements(padded)), 0.0f);
  auto v = cache.view();
  v.layout = padded;
  v.keys = big.data();
  std::vector<float> big_values = big;
  v.values = big_values.data();
  BOOST_CHECK_NO_THROW(bound_session(policy, v));
  // keys and values on the same memory
  v = cache.view();
  v.values = v.keys;
  expect_error([&] { bound_session b(policy, v); }, "cache.values");

  // paged: a page shared by two sequences, a page named twice by one sequence, table rows that overlap
  for (int mutation = 0; mutation < 3; ++mutation) {
    kvtest::random_paging paging;
    kvtest::make_random_paging(paging, shape, 4, kc::layouts::page_format::nhd, 2, 9);
    auto paged = kvtest::copy_into(cache, paging.layout);
    const index_t row = paging.layout.table_stride;
    if (mutation == 0) paging.table[static_cast<std::size_t>(row + 1)] = paging.table[0];
    if (mutation == 1) paging.table[3] = paging.table[1];
    if (mutation == 2) paged.layout.table_stride = 0;
    auto view = paged.view();
    expect_error([&] { bound_session<decltype(policy), kc::layouts::paged> b(policy, view); },
                 mutation == 2 ? "layout.pages_per_sequence" : "layout.block_table");
  }
}

BOOST_AUTO_TEST_SUITE_END()
