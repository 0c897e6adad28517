// SPDX-License-Identifier: Apache-2.0
// The CPU backend's results do not depend on its thread count: the same prefill compression and
// decode steps run with 1 thread and with 3 threads (OpenMP; this test links kvcompact::openmp where
// the compiler has OpenMP) leave bit-identical lengths, positions, K/V and slot states, and
// attend() writes bit-identical outputs. Shapes cross the backend's block (256 slots) and strip
// (32 window rows) edges. Without OpenMP both runs are serial, and the test says so.
#include <boost/test/unit_test.hpp>

#include <kvcompact/kvcompact.hpp>

#include "support/expect_error.hpp"
#include "support/reference.hpp"

#include <cstring>
#include <random>
#include <string>
#include <vector>

namespace {

using kvcompact::index_t;
constexpr index_t layers = 2, kv_heads = 2, group = 4, query_heads = kv_heads * group, dims = 64, prompt = 600, steps = 6;
constexpr index_t capacity = prompt + steps;

/// Everything a run leaves behind.
struct outcome {
  std::vector<float> keys, values, outputs, states;
  std::vector<std::int32_t> lengths, positions;
};

template <class Policy>
outcome run(const Policy& policy, index_t window_rows, int threads) {
  kvtest::fill_options fill;
  fill.min_length = fill.max_length = prompt;
  auto cache = kvtest::make_random_cache({1, layers, kv_heads, capacity, dims}, fill, 31);
  const auto window = kvtest::make_random_window(1, layers, query_heads, window_rows, dims, {prompt - 1}, 2.0, 32);
  using session_t = kvcompact::cpu::session<Policy, float, kvcompact::layouts::strided>;
  const kvcompact::attention_shape shape{query_heads};
  auto memory = kvtest::session_memory::for_session<session_t>(cache.layout, shape);
  session_t session(policy, cache.view(), shape, memory.state(), memory.workspace());
  session.set_threads(threads);
  session.compress_prefill(Policy::needs_attention ? window.view() : kvcompact::query_window{});
  outcome out;
  std::mt19937 rng(33);
  for (index_t step = 0; step < steps; ++step)
    for (index_t l = 0; l < layers; ++l) {
      const auto k = kvtest::random_vector(kv_heads * dims, 1.0, rng), v = kvtest::random_vector(kv_heads * dims, 1.0, rng);
      const auto q = kvtest::random_vector(query_heads * dims, 2.0, rng);
      session.append(0, l, k.data(), v.data(), prompt + step);
      std::vector<float> o(static_cast<std::size_t>(query_heads * dims));
      session.attend(0, l, q.data(), prompt + step, o.data());
      out.outputs.insert(out.outputs.end(), o.begin(), o.end());
    }
  out.keys = cache.keys;
  out.values = cache.values;
  out.lengths = cache.lengths;
  out.positions = cache.positions;
  for (index_t l = 0; l < layers; ++l)
    for (index_t h = 0; h < kv_heads; ++h)
      for (index_t j = 0; j < cache.length(0, l, h); ++j) out.states.push_back(static_cast<float>(session.slot_state(0, l, h, j)));
  return out;
}

bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

template <class Policy>
void check_thread_independence(const Policy& policy, index_t window_rows) {
  const outcome one = run(policy, window_rows, 1), three = run(policy, window_rows, 3);
  BOOST_TEST(one.lengths == three.lengths);
  BOOST_TEST(one.positions == three.positions);
  BOOST_TEST(same_bits(one.keys, three.keys));
  BOOST_TEST(same_bits(one.values, three.values));
  BOOST_TEST(same_bits(one.states, three.states));
  BOOST_TEST(same_bits(one.outputs, three.outputs));
}

}  // namespace

BOOST_AUTO_TEST_CASE(results_do_not_depend_on_the_thread_count) {
#if defined(_OPENMP)
  BOOST_TEST_MESSAGE("OpenMP build: 1 thread against 3 threads");
#else
  BOOST_TEST_MESSAGE("no OpenMP in this build: both runs are serial");
#endif
  BOOST_TEST_CONTEXT("snapkv") { check_thread_independence(kvcompact::policies::snapkv(300, 40), 40); }
  BOOST_TEST_CONTEXT("h2o, every prompt query as window") { check_thread_independence(kvcompact::policies::h2o(300, 16), prompt); }
  BOOST_TEST_CONTEXT("tova") { check_thread_independence(kvcompact::policies::tova(300), 1); }
  BOOST_TEST_CONTEXT("knorm") { check_thread_independence(kvcompact::policies::knorm(300), 1); }
}

/// The head of layer 0 that fails in check_failure_in_a_round().
constexpr int failing_head = 3;

/// A cooperative selector of head scope that keeps each head's first `slots` slots and refuses head
/// `refused` (throws kvcompact::error about "head"): a selection that fails inside a parallel round.
struct refusing_selector {
  using component_kind = kvcompact::cooperative_selector_tag;
  static constexpr kvcompact::selection_scope scope = kvcompact::selection_scope::head;
  index_t slots = 0;
  int refused = 0;

  index_t budget(index_t, index_t, index_t length) const { return slots < length ? slots : length; }
  template <class Group, class Ctx>
  void select(Group&, Ctx& ctx, int h) const {
    if (h == refused) throw kvcompact::error("refusing_selector", "head", "refused head " + std::to_string(h));
    for (index_t j = 0; j < ctx.length(h) && j < slots; ++j) ctx.keep(h, j, true);
  }
  template <class Group, class Ctx>
  void select_decode(Group&, Ctx&, int) const {}
};

// A slot-scoring policy whose selector decides each head compresses a layer in rounds of as many heads
// as threads (scored and selected in parallel, merged in order, compacted in parallel). When head
// failing_head (3) of layer 0 fails (`poison` prepares the cache for it), compress_prefill() throws
// the error about `argument` with heads 0-2 compacted to `kept` slots and heads 3-4 and layer 1
// untouched, whatever the thread count (rounds of 1, 2 and 3 heads end inside, at and across head 3),
// with the same K/V bits, positions and lengths.
template <class Policy, class Poison>
void check_failure_in_a_round(const Policy& policy, index_t kept, const Poison& poison, const std::string& argument, const std::string& mentions) {
  constexpr index_t heads = 5;
  std::vector<kvtest::random_cache<float>> results;
  for (const int threads : {1, 2, 3}) {
    kvtest::fill_options fill;
    fill.min_length = fill.max_length = prompt;
    auto cache = kvtest::make_random_cache({1, layers, heads, capacity, dims}, fill, 41);
    poison(cache);
    using session_t = kvcompact::cpu::session<Policy, float, kvcompact::layouts::strided>;
    const kvcompact::attention_shape shape{heads * group};
    auto memory = kvtest::session_memory::for_session<session_t>(cache.layout, shape);
    session_t session(policy, cache.view(), shape, memory.state(), memory.workspace());
    session.set_threads(threads);
    kvtest::expect_error([&] { session.compress_prefill(); }, argument, mentions);
    BOOST_TEST_CONTEXT(threads << " threads") {
      for (index_t h = 0; h < heads; ++h) BOOST_TEST(cache.length(0, 0, h) == (h < failing_head ? kept : prompt));
      for (index_t h = 0; h < heads; ++h) BOOST_TEST(cache.length(0, 1, h) == prompt);
      if (!results.empty()) {
        BOOST_TEST(cache.lengths == results.front().lengths);
        BOOST_TEST(cache.positions == results.front().positions);
        BOOST_TEST(same_bits(cache.keys, results.front().keys));  // the NaN included
        BOOST_TEST(same_bits(cache.values, results.front().values));
      }
    }
    results.push_back(std::move(cache));
  }
}

BOOST_AUTO_TEST_CASE(a_nan_score_leaves_the_heads_before_it_compacted_whatever_the_thread_count) {
  constexpr index_t budget = 200;
  check_failure_in_a_round(
      kvcompact::policies::knorm(budget), budget,
      [](kvtest::random_cache<float>& cache) { cache.keys[static_cast<std::size_t>(cache.element(0, 0, failing_head, 17, 5))] = NAN; }, "scores",
      "NaN");
}

BOOST_AUTO_TEST_CASE(a_refused_selection_leaves_the_heads_before_it_compacted_whatever_the_thread_count) {
  constexpr index_t kept = 150;
  using policy_t = kvcompact::policy<kvcompact::scorers::key_norm, refusing_selector>;
  static_assert(kvcompact::cooperative_selector<refusing_selector> && kvcompact::compression_policy<policy_t>);
  check_failure_in_a_round(policy_t{{}, refusing_selector{kept, failing_head}, {}}, kept, [](kvtest::random_cache<float>&) {}, "head", "refused head 3");
}
