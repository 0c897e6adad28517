// SPDX-License-Identifier: Apache-2.0
// Engine-facing options (issue 13.4): named preset options (kvpress's SnapKV spelled by names, checked
// against a double-precision reference), budgets as shares of the prompt for every preset, the
// window_need trait, and compress_prefill_layer() on the CPU backend (keep-sets, K/V bits and decode
// state identical to compress_prefill(), with later layers not yet filled; call-order checks).
#include <boost/test/unit_test.hpp>

#include <kvcompact/kvcompact.hpp>

#include "support/custom_layout.hpp"
#include "support/expect_error.hpp"
#include "support/layer_window.hpp"
#include "support/reference.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <set>
#include <string>
#include <vector>

namespace kc = kvcompact;
namespace pol = kvcompact::policies;
using kc::index_t;

namespace {

using pooling = kc::selectors::pooling;

// ---- named options ------------------------------------------------------------------------------

template <class Selector>
void expect_same_rule(const Selector& a, const Selector& b) {
  BOOST_TEST(a.rule.sinks == b.rule.sinks);
  BOOST_TEST(a.rule.recent == b.rule.recent);
  BOOST_TEST((a.rule.pool == b.rule.pool));
  BOOST_TEST(a.rule.kernel == b.rule.kernel);
}

}  // namespace

BOOST_AUTO_TEST_SUITE(named_options)

BOOST_AUTO_TEST_CASE(positional_factories_equal_their_named_forms) {
  const auto a = pol::snapkv(256, 16, 5);
  const auto b = pol::snapkv({.budget = 256, .window = 16, .scoring = {.pool = pooling::max, .kernel = 5, .rows = kc::reduction::sum}});
  static_assert(std::is_same_v<decltype(a), decltype(b)>);
  BOOST_TEST(a.selector.schedule.slots == b.selector.schedule.slots);
  expect_same_rule(a.selector, b.selector);
  BOOST_TEST((a.scorer.rows == b.scorer.rows));
  BOOST_TEST(a.selector.decode_eviction == b.selector.decode_eviction);

  const auto p = pol::pyramidkv(128, 8, 3);
  const auto q = pol::pyramidkv({.budget = 128, .window = 8, .scoring = {.kernel = 3}});
  BOOST_TEST(p.selector.schedule.average == q.selector.schedule.average);
  BOOST_TEST(p.selector.schedule.window == q.selector.schedule.window);
  expect_same_rule(p.selector, q.selector);

  const auto x = pol::adakv(64, 8, 0.3);
  const auto y = pol::adakv({.budget = 64, .window = 8, .floor_fraction = 0.3});
  BOOST_TEST(x.selector.schedule.slots == y.selector.schedule.slots);
  BOOST_TEST(x.selector.floor_fraction == y.selector.floor_fraction);
  BOOST_TEST((x.scorer.rows == kc::reduction::mean && y.scorer.rows == kc::reduction::mean));
  expect_same_rule(x.selector, y.selector);

  const auto h = pol::h2o(64, 8);
  const auto i = pol::h2o({.budget = 64, .recent = 8});
  expect_same_rule(h.selector, i.selector);
  const auto s = pol::streaming_llm(64, 2);
  const auto t = pol::streaming_llm({.budget = 64, .sinks = 2});
  expect_same_rule(s.selector, t.selector);
  const auto c = pol::cam(64, 2, 5);
  const auto d = pol::cam({.budget = 64, .start = 2, .merge_count = 5});
  expect_same_rule(c.selector, d.selector);
  BOOST_TEST(c.merger.merge_count == d.merger.merge_count);
}

BOOST_AUTO_TEST_CASE(named_knobs_reach_the_components) {
  const auto kvpress = pol::snapkv({.budget = 64, .window = 8, .scoring = {.pool = pooling::average, .kernel = 5, .rows = kc::reduction::mean}});
  BOOST_TEST((kvpress.selector.rule.pool == pooling::average));
  BOOST_TEST(kvpress.selector.rule.kernel == 5);
  BOOST_TEST((kvpress.scorer.rows == kc::reduction::mean));
  BOOST_TEST(kvpress.selector.rule.recent == 8);
  const auto ada = pol::adakv({.budget = 64, .window = 8, .scoring = {.pool = pooling::none, .kernel = 1, .rows = kc::reduction::sum}, .strict = true});
  BOOST_TEST((ada.selector.rule.pool == pooling::none));
  BOOST_TEST((ada.scorer.rows == kc::reduction::sum));
  BOOST_TEST(ada.selector.strict);
  const auto h = pol::h2o({.budget = 64, .recent = 8, .sinks = 3});
  BOOST_TEST(h.selector.rule.sinks == 3);
}

BOOST_AUTO_TEST_CASE(bad_options_name_the_option) {
  kvtest::expect_error([] { pol::snapkv({.budget = 64, .scoring = {.pool = pooling::average, .kernel = 4}}); }, "scoring.kernel");
  kvtest::expect_error([] { pol::adakv({.budget = 64, .scoring = {.kernel = 0}}); }, "scoring.kernel");
  kvtest::expect_error([] { pol::adakv({.budget = 64, .floor_fraction = std::nan("")}); }, "floor_fraction");
  kvtest::expect_error([] { pol::h2o({.budget = 64, .recent = 8, .sinks = -1}); }, "sinks");
  kvtest::expect_error([] { pol::h2o({.budget = 8, .recent = 6, .sinks = 3}); }, "recent", "above the budget");
  kvtest::expect_error([] { pol::snapkv({.budget = 0}); }, "budget");
}

// kvpress's SnapKV (average pooling over 5 keys, mean over the window rows, mean over the GQA group)
// by names, against a double-precision reference of that rule.
BOOST_AUTO_TEST_CASE(kvpress_snapkv_by_names_matches_a_double_reference) {
  constexpr index_t S = 1, L = 2, H = 2, G = 2, CAP = 48, D = 16, W = 8, B = 20, K = 5;
  kvtest::fill_options fill;
  fill.min_length = fill.max_length = CAP;
  fill.shuffle_slots = true;
  for (std::uint32_t seed : {3u, 17u, 29u}) {
    auto c = kvtest::make_random_cache<float>({S, L, H, CAP, D}, fill, seed);
    const auto w = kvtest::make_random_window(S, L, H * G, W, D, {CAP - 1}, 1.5, seed + 100);
    const kvtest::random_cache<float> original = c;
    const auto policy = pol::snapkv({.budget = B, .window = W, .scoring = {.pool = pooling::average, .kernel = K, .rows = kc::reduction::mean}});
    const kc::attention_shape shape{H * G};
    kvtest::run_prefill(policy, c.view(), shape, w.view());
    kvtest::attention_score_spec spec;
    spec.rows = kvtest::reduce::mean;
    spec.group = kvtest::reduce::mean;
    for (index_t l = 0; l < L; ++l) {
      const auto scores = kvtest::prefill_attention_scores(original, w, 0, l, H * G, kvtest::default_scale(D), spec);
      for (index_t h = 0; h < H; ++h) {
        // candidates (not in the last W positions) in position order, pooled with zero padding
        std::vector<std::pair<index_t, double>> candidates;
        std::set<index_t> expected;
        for (index_t j = 0; j < CAP; ++j) {
          const index_t position = original.position(0, l, h, j);
          if (position >= CAP - W) expected.insert(position);
          else candidates.emplace_back(position, scores[static_cast<std::size_t>(h)][static_cast<std::size_t>(j)]);
        }
        std::sort(candidates.begin(), candidates.end());
        const auto count = static_cast<index_t>(candidates.size());
        std::vector<std::pair<double, index_t>> pooled;  // (-pooled score, position): best first
        for (index_t i = 0; i < count; ++i) {
          double sum = 0.0;
          for (index_t o = i - K / 2; o <= i + K / 2; ++o)
            if (o >= 0 && o < count) sum += candidates[static_cast<std::size_t>(o)].second;
          pooled.emplace_back(-sum / K, candidates[static_cast<std::size_t>(i)].first);
        }
        std::sort(pooled.begin(), pooled.end());
        const double gap = pooled[B - W].first - pooled[B - W - 1].first;
        BOOST_REQUIRE_MESSAGE(gap > 1e-6, "seed " << seed << ": reference scores too close to decide in fp32");
        for (index_t i = 0; i < B - W; ++i) expected.insert(pooled[static_cast<std::size_t>(i)].second);
        std::set<index_t> kept;
        for (index_t j = 0; j < c.length(0, l, h); ++j) kept.insert(c.position(0, l, h, j));
        BOOST_TEST(c.length(0, l, h) == B);
        BOOST_TEST((kept == expected), "seed " << seed << " layer " << l << " head " << h);
      }
    }
  }
}

BOOST_AUTO_TEST_SUITE_END()

// ---- budgets as shares of the prompt -----------------------------------------------------------------

BOOST_AUTO_TEST_SUITE(budget_shares)

BOOST_AUTO_TEST_CASE(a_share_resolves_to_the_rounded_slots_of_the_prompt) {
  std::mt19937 rng(41);
  for (int i = 0; i < 300; ++i) {
    const index_t prompt = kvtest::uniform_int(rng, 1000, 5000);
    const double share = 0.1 + 0.9 * (static_cast<double>(rng()) / 4294967296.0);
    const auto expected = static_cast<index_t>(std::floor(share * static_cast<double>(prompt) + 0.5));
    const auto b = pol::budget_size::share(share, prompt);
    BOOST_TEST(b.is_share());
    BOOST_TEST(b.slots("test", "budget") == expected);
    // every preset that takes a budget takes the share
    BOOST_TEST(pol::streaming_llm(b).selector.schedule.slots == expected);
    BOOST_TEST(pol::h2o(b, 8).selector.schedule.slots == expected);
    BOOST_TEST(pol::tova(b).selector.schedule.slots == expected);
    BOOST_TEST(pol::snapkv(b, 8).selector.schedule.slots == expected);
    BOOST_TEST(pol::pyramidkv(b, 8).selector.schedule.average == expected);
    BOOST_TEST(pol::adakv(b, 8).selector.schedule.slots == expected);
    BOOST_TEST(pol::knorm(b).selector.schedule.slots == expected);
    BOOST_TEST(pol::corm_budgeted(b, 8).selector.schedule.slots == expected);
    BOOST_TEST(pol::windowkv(b, 4).selector.schedule.average == expected);
    BOOST_TEST(pol::bounded_memory(b, 8).selector.schedule.slots == expected);
    BOOST_TEST(pol::cam(b, 4).selector.schedule.slots == expected);
    BOOST_TEST(pol::snapkv({.budget = b}).selector.schedule.slots == expected);
  }
  BOOST_TEST(pol::budget_size::share(0.0001, 100).slots("test", "budget") == 1);  // at least one slot
  BOOST_TEST(pol::budget_size::share(1.0, 7).slots("test", "budget") == 7);
  BOOST_TEST(pol::budget_size::share(0.5, 5).slots("test", "budget") == 3);  // halves round up
  BOOST_TEST(!pol::budget_size(12).is_share());
}

BOOST_AUTO_TEST_CASE(shares_outside_the_unit_interval_are_rejected_by_name) {
  const double nan = std::numeric_limits<double>::quiet_NaN();
  for (const double bad : {0.0, -0.25, 1.0001, nan})
    kvtest::expect_error([bad] { pol::snapkv(pol::budget_size::share(bad, 100)); }, "budget", "(0, 1]");
  kvtest::expect_error([] { pol::snapkv(pol::budget_size::share(0.5, 0)); }, "budget", "prompt length");
  kvtest::expect_error([] { pol::pyramidkv(pol::budget_size::share(2.0, 100)); }, "average");
  kvtest::expect_error([nan] { pol::windowkv(pol::budget_size::share(nan, 100), 4); }, "average");
  kvtest::expect_error([] { pol::bounded_memory(pol::budget_size::share(0.0, 100)); }, "slots");
}

BOOST_AUTO_TEST_CASE(with_preset_takes_a_share_and_the_window_scoring) {
  pol::preset_options options{.budget = 0, .prompt_length = 400, .window = 8};
  options.budget_share = 0.25;
  options.scoring = pol::window_scoring{pooling::average, 5, kc::reduction::mean};
  const index_t slots = pol::with_preset("snapkv", options, [](const auto& p) {
    if constexpr (std::is_same_v<std::remove_cvref_t<decltype(p)>, decltype(pol::snapkv(1))>) {
      BOOST_TEST((p.selector.rule.pool == pooling::average));
      BOOST_TEST(p.selector.rule.kernel == 5);
      BOOST_TEST((p.scorer.rows == kc::reduction::mean));
      return p.selector.schedule.slots;
    } else {
      return index_t{-1};
    }
  });
  BOOST_TEST(slots == 100);
  const index_t ada = pol::with_preset("adakv", options, [](const auto& p) {
    if constexpr (std::is_same_v<std::remove_cvref_t<decltype(p)>, decltype(pol::adakv(1, 0))>) return p.selector.rule.kernel;
    else return index_t{-1};
  });
  BOOST_TEST(ada == 5);
  options.budget_share = 1.5;
  kvtest::expect_error([&] { pol::with_preset("knorm", options, [](const auto&) { return 0; }); }, "options.budget_share");
  options.budget_share = 0.0;
  kvtest::expect_error([&] { pol::with_preset("knorm", options, [](const auto&) { return 0; }); }, "options.budget");
}

BOOST_AUTO_TEST_SUITE_END()

// ---- the window a policy needs -------------------------------------------------------------------

BOOST_AUTO_TEST_SUITE(window_need)

BOOST_AUTO_TEST_CASE(each_preset_states_its_window) {
  using kc::window_need;
  static_assert(kc::window_need_v<decltype(pol::h2o(8, 2))> == window_need::all_prompt);
  static_assert(kc::window_need_v<decltype(pol::kvmerger(0.5))> == window_need::all_prompt);
  static_assert(kc::window_need_v<decltype(pol::cam(8, 2))> == window_need::all_prompt);
  static_assert(kc::window_need_v<decltype(pol::bounded_memory(8, 2))> == window_need::all_prompt);
  static_assert(kc::window_need_v<decltype(pol::prefixkv(kc::budgets::layer_table{}))> == window_need::all_prompt);
  static_assert(kc::window_need_v<decltype(pol::snapkv(8, 2))> == window_need::recent_rows);
  static_assert(kc::window_need_v<decltype(pol::pyramidkv(8, 2))> == window_need::recent_rows);
  static_assert(kc::window_need_v<decltype(pol::adakv(8, 2))> == window_need::recent_rows);
  static_assert(kc::window_need_v<decltype(pol::tova(8))> == window_need::recent_rows);
  static_assert(kc::window_need_v<decltype(pol::corm(4, 4))> == window_need::recent_rows);
  static_assert(kc::window_need_v<decltype(pol::windowkv(8, 2))> == window_need::recent_rows);
  static_assert(kc::window_need_v<decltype(pol::streaming_llm(8, 2))> == window_need::none);
  static_assert(kc::window_need_v<decltype(pol::knorm(8))> == window_need::none);
  static_assert(kc::window_need_v<const decltype(pol::knorm(8))&> == window_need::none);
  BOOST_TEST(kc::window_rows_for(pol::h2o(8, 2), 300, 32) == 300);
  BOOST_TEST(kc::window_rows_for(pol::snapkv(64, 8), 300, 32) == 32);
  BOOST_TEST(kc::window_rows_for(pol::snapkv(64, 8), 20, 32) == 20);
  BOOST_TEST(kc::window_rows_for(pol::knorm(8), 300, 32) == 0);
  // the runtime dispatcher agrees for every preset name
  const pol::preset_options options{.budget = 64, .prompt_length = 256, .window = 8};
  for (const auto name : pol::preset_names) {
    const index_t rows = pol::with_preset(name, options, [](const auto& p) { return kc::window_rows_for(p, 256, 8); });
    const bool all = name == "h2o" || name == "kvmerger" || name == "cam" || name == "bounded_memory" || name == "elastic_cache";
    const bool none = name == "streaming_llm" || name == "knorm";
    BOOST_TEST(rows == (all ? 256 : none ? 0 : 8), name);
  }
}

BOOST_AUTO_TEST_CASE(every_preset_but_windowkv_compresses_layer_by_layer) {
  static_assert(kc::layer_by_layer_prefill_v<decltype(pol::h2o(8, 2))>);
  static_assert(kc::layer_by_layer_prefill_v<const decltype(pol::snapkv(8, 2))&>);
  static_assert(!kc::layer_by_layer_prefill_v<decltype(pol::windowkv(8, 2))>);
  // the runtime dispatcher: every preset name but WindowKV's
  const pol::preset_options options{.budget = 64, .prompt_length = 256, .window = 8};
  for (const auto name : pol::preset_names) {
    const bool per_layer = pol::with_preset(name, options, [](const auto& p) { return kc::layer_by_layer_prefill_v<decltype(p)>; });
    BOOST_TEST(per_layer == (name != "windowkv"), name);
  }
}

BOOST_AUTO_TEST_SUITE_END()

// ---- compress_prefill_layer on the CPU -------------------------------------------------------------

namespace {

constexpr index_t PS = 2, PL = 3, PH = 2, PG = 2, PCAP = 40, PD = 16, PROWS = 6;

/// Copies storage layer @p l (keys, values, lengths, positions) from @p from into @p to.
void copy_layer(const kvtest::random_cache<float>& from, kvtest::random_cache<float>& to, index_t l) {
  for (index_t s = 0; s < PS; ++s)
    for (index_t h = 0; h < PH; ++h) {
      const auto head = static_cast<std::size_t>(from.head_index(s, l, h));
      to.lengths[head] = from.lengths[head];
      for (index_t j = 0; j < PCAP; ++j) {
        const auto slot = static_cast<std::size_t>(from.slot_index(s, l, h, j));
        to.positions[slot] = from.positions[slot];
        for (index_t d = 0; d < PD; ++d) {
          const auto e = static_cast<std::size_t>(from.element(s, l, h, j, d));
          to.keys[e] = from.keys[e];
          to.values[e] = from.values[e];
        }
      }
    }
}

/// Runs @p policy over the same random cache twice: compress_prefill() with the whole window, and
/// compress_prefill_layer() layer by layer into a cache whose later layers are not filled yet, each
/// layer getting only its own window slice. Contents, decode states and budgets must be identical.
template <class Policy>
void check_layer_by_layer(const std::string& name, const Policy& policy, std::uint32_t seed, bool evicts = true) {
  using session_type = kc::cpu::session<Policy, float, kc::layouts::strided>;
  kvtest::fill_options fill;
  fill.min_length = 24;
  fill.aligned_heads = true;
  const auto source = kvtest::make_random_cache<float>({PS, PL, PH, PCAP, PD}, fill, seed);
  const auto w = kvtest::make_random_window(PS, PL, PH * PG, PROWS, PD, {PCAP - 1, PCAP - 1}, 1.5, seed + 7);
  const kc::attention_shape shape{PH * PG};

  auto whole = source;
  kvtest::session_storage<Policy, float, kc::layouts::strided> whole_storage(whole.layout, shape);
  session_type all(policy, whole.view(), shape, whole_storage.state_span(), whole_storage.workspace_span());
  all.compress_prefill(w.view());

  kvtest::random_cache<float> staged({PS, PL, PH, PCAP, PD});  // the engine's cache before its prefill
  kvtest::session_storage<Policy, float, kc::layouts::strided> staged_storage(staged.layout, shape);
  session_type by_layer(policy, staged.view(), shape, staged_storage.state_span(), staged_storage.workspace_span());
  for (index_t l = 0; l < PL; ++l) {
    copy_layer(source, staged, l);  // layer l's prefill is done; the later layers are still empty
    const auto slice = kvtest::layer_window(w, l);
    by_layer.compress_prefill_layer(l, slice.view());
  }
  BOOST_TEST((kvtest::take_snapshot(whole.view()) == kvtest::take_snapshot(staged.view())), name << " seed " << seed);
  bool compressed = false;
  for (index_t s = 0; s < PS; ++s)
    for (index_t l = 0; l < PL; ++l)
      for (index_t h = 0; h < PH; ++h) {
        compressed = compressed || whole.length(s, l, h) < source.length(s, l, h);
        BOOST_TEST(all.budget(s, l, h) == by_layer.budget(s, l, h));
        for (index_t j = 0; j < whole.length(s, l, h); ++j) {
          const auto a = all.slot_state(s, l, h, j), b = by_layer.slot_state(s, l, h, j);
          BOOST_TEST((std::memcmp(&a, &b, sizeof a) == 0));
        }
      }
  BOOST_TEST((compressed || !evicts), name << ": the policy compressed nothing, so the comparison proves little");
}

}  // namespace

BOOST_AUTO_TEST_SUITE(prefill_layer_by_layer)

BOOST_AUTO_TEST_CASE(gives_the_keep_sets_of_the_all_layers_call) {
  for (std::uint32_t seed : {5u, 6u}) {
    check_layer_by_layer("snapkv kvpress", pol::snapkv({.budget = 16, .window = 4, .scoring = {.pool = pooling::average, .kernel = 5, .rows = kc::reduction::mean}}), seed);
    check_layer_by_layer("snapkv", pol::snapkv(16, 4), seed);
    check_layer_by_layer("pyramidkv", pol::pyramidkv(16, 4), seed);
    check_layer_by_layer("adakv", pol::adakv(16, 4), seed);
    check_layer_by_layer("h2o", pol::h2o(16, 4), seed);
    check_layer_by_layer("tova", pol::tova(16), seed);
    check_layer_by_layer("knorm", pol::knorm(16), seed);
    check_layer_by_layer("streaming_llm", pol::streaming_llm(16, 2), seed);
    check_layer_by_layer("corm", pol::corm(4, 4), seed, false);  // budget-free: may keep everything
    check_layer_by_layer("corm_budgeted", pol::corm_budgeted(16, 4), seed);
    check_layer_by_layer("kvmerger", pol::kvmerger(0.4), seed);
    check_layer_by_layer("cam", pol::cam(16, 2, 4), seed);
    check_layer_by_layer("bounded_memory", pol::bounded_memory(16, 4), seed);
  }
}

BOOST_AUTO_TEST_CASE(call_order_is_checked) {
  using policy_type = decltype(pol::snapkv(16, 4));
  using session_type = kc::cpu::session<policy_type, float, kc::layouts::strided>;
  kvtest::fill_options fill;
  fill.min_length = 24;
  auto c = kvtest::make_random_cache<float>({PS, PL, PH, PCAP, PD}, fill, 9);
  const auto w = kvtest::make_random_window(PS, PL, PH * PG, PROWS, PD, {PCAP - 1, PCAP - 1}, 1.0, 10);
  const kc::attention_shape shape{PH * PG};
  const std::vector<float> token(static_cast<std::size_t>(PH * PD), 0.5f);
  auto fresh = [&](kvtest::session_storage<policy_type, float, kc::layouts::strided>& storage) {
    return session_type(pol::snapkv(16, 4), c.view(), shape, storage.state_span(), storage.workspace_span());
  };
  {
    kvtest::session_storage<policy_type, float, kc::layouts::strided> storage(c.layout, shape);
    auto s = fresh(storage);
    const auto slice0 = kvtest::layer_window(w, 0);
    kvtest::expect_error([&] { s.compress_prefill_layer(1, kvtest::layer_window(w, 1).view()); }, "layer", "expected 0");
    s.compress_prefill_layer(0, slice0.view());
    kvtest::expect_error([&] { s.compress_prefill_layer(0, slice0.view()); }, "layer", "expected 1");
    kvtest::expect_error([&] { s.append(0, 0, token.data(), token.data(), 100); }, "session", "1 of 3 layers");
    kvtest::expect_error([&] { s.compress_prefill(w.view()); }, "session", "one by one");
    auto bad = kvtest::layer_window(w, 1);
    bad.queries[3] = std::numeric_limits<float>::quiet_NaN();
    kvtest::expect_error([&] { s.compress_prefill_layer(1, bad.view()); }, "window.queries");
    kvtest::expect_error([&] { s.compress_prefill_layer(1, {}); }, "window.queries");
    for (index_t l = 1; l < PL; ++l) s.compress_prefill_layer(l, kvtest::layer_window(w, l).view());
    kvtest::expect_error([&] { s.compress_prefill_layer(PL, slice0.view()); }, "session", "compressed already");
    s.append(0, 0, token.data(), token.data(), 100);  // decoding starts after the last layer
  }
  {
    kvtest::session_storage<policy_type, float, kc::layouts::strided> storage(c.layout, shape);
    auto s = fresh(storage);
    s.compress_prefill(w.view());
    kvtest::expect_error([&] { s.compress_prefill_layer(0, kvtest::layer_window(w, 0).view()); }, "session", "compressed already");
  }
}

BOOST_AUTO_TEST_SUITE_END()
