// SPDX-License-Identifier: Apache-2.0
// Argument checking: every bad input to the host API throws kvcompact::error whose argument() is the
// offending argument and whose message names it (a budget above the capacity included); inputs that
// are merely unusual (a budget above a head's current length: a short prompt) are not errors.
#include "support/custom_layout.hpp"
#include "support/expect_error.hpp"
#include "support/reference.hpp"

#include <kvcompact/kvcompact.hpp>

#include <boost/test/unit_test.hpp>

#include <cmath>
#include <limits>
#include <string>
#include <vector>

namespace kc = kvcompact;
using kc::index_t;

namespace {

using kvtest::expect_error;

const kvtest::cache_shape small_shape{2, 3, 2, 16, 8};  // sequences, layers, kv heads, capacity, head dim

kvtest::random_cache<float> small_cache(std::uint32_t seed = 1) {
  kvtest::fill_options fill;
  fill.min_length = fill.max_length = 12;
  return kvtest::make_random_cache<float>(small_shape, fill, seed);
}

// Builds a session of `policy` over `cache` with enough state and workspace (sized from the cache's layout).
template <class Policy, class T, class Layout>
struct fixture {
  kvtest::session_storage<Policy, T, Layout> storage;
  kc::cpu::session<Policy, T, Layout> session;
  fixture(const Policy& p, const kc::kv_cache<T, Layout>& c, const kc::attention_shape& shape)
      : storage(c.layout, shape), session(p, c, shape, storage.state_span(), storage.workspace_span()) {}
};

// Constructs a session with generous raw buffers (no call to state_bytes, which needs a valid layout).
template <class Policy, class T, class Layout>
void construct(const Policy& p, const kc::kv_cache<T, Layout>& c, const kc::attention_shape& shape) {
  std::vector<std::uint64_t> state(1 << 16), workspace(1 << 16);
  kc::cpu::session<Policy, T, Layout> s(p, c, shape, std::as_writable_bytes(std::span(state)), std::as_writable_bytes(std::span(workspace)));
}

}  // namespace

BOOST_AUTO_TEST_CASE(budget_above_capacity_throws) {
  auto cache = small_cache();
  expect_error([&] { construct(kc::policies::knorm(small_shape.capacity + 1), cache.view(), kc::attention_shape{4}); }, "policy");
  expect_error([&] { construct(kc::policies::snapkv(1000, 4, 3), cache.view(), kc::attention_shape{4}); }, "policy");
  BOOST_CHECK_NO_THROW(construct(kc::policies::knorm(small_shape.capacity), cache.view(), kc::attention_shape{4}));
}

BOOST_AUTO_TEST_CASE(budget_above_length_keeps_everything_but_set_budget_above_capacity_throws) {
  auto cache = small_cache();
  const auto before = kvtest::take_snapshot(cache.view());
  const auto policy = kc::policies::knorm(small_shape.capacity);  // above the 12 valid slots: a short prompt, nothing to compress
  fixture f(policy, cache.view(), kc::attention_shape{4});
  BOOST_CHECK_NO_THROW(f.session.compress_prefill());
  BOOST_TEST((kvtest::take_snapshot(cache.view()) == before));  // nothing evicted, nothing moved
  expect_error([&] { f.session.set_budget(0, small_shape.capacity + 1); }, "slots");
  expect_error([&] { f.session.set_budget(0, 0); }, "slots");
  expect_error([&] { f.session.set_budget(2, 4); }, "sequence");
  expect_error([&] { f.session.set_budget(-1, 4); }, "sequence");
  BOOST_CHECK_NO_THROW(f.session.set_budget(1, small_shape.capacity));
}

// WindowKV's group pyramid gives its lower layers about twice the average: with average 8 and one
// layer per group the review budgets are 16, 8, 0 (plus a 2-token suffix: 18 > capacity 16 in layer 0).
// That layer keeps everything (R <= b), the others compress; nothing is rejected.
BOOST_AUTO_TEST_CASE(pyramid_layer_share_above_capacity_keeps_that_layer_whole) {
  auto cache = small_cache();
  const auto before = kvtest::take_snapshot(cache.view());
  const auto policy = kc::policies::windowkv(8, 1, kc::selectors::task_type::localization, 2, 2);
  BOOST_TEST(policy.selector.schedule.budget(0, small_shape.layers, small_shape.capacity) + 2 > small_shape.capacity);
  fixture f(policy, cache.view(), kc::attention_shape{4});
  const auto w = kvtest::make_random_window(2, 3, 4, 2, small_shape.head_dim, {11, 11}, 1.0, 7);
  BOOST_REQUIRE_NO_THROW(f.session.compress_prefill(w.view()));
  const auto view = cache.view();
  const auto after = kvtest::take_snapshot(view);
  for (index_t s = 0; s < small_shape.sequences; ++s)
    for (index_t h = 0; h < small_shape.kv_heads; ++h) {
      const auto head = static_cast<std::size_t>(view.head_index(s, 0, h));
      BOOST_TEST(after.lengths[head] == 12);  // review 10 <= 16: kept whole, bit for bit
      BOOST_TEST((after.positions[head] == before.positions[head] && after.key_bits[head] == before.key_bits[head] &&
                  after.value_bits[head] == before.value_bits[head]));
      BOOST_TEST(view.lengths[view.head_index(s, 1, h)] == 10);  // review 10 > 8: one 2-token window dropped
      BOOST_TEST(view.lengths[view.head_index(s, 2, h)] == 2);   // review budget 0: the suffix only
    }
}

BOOST_AUTO_TEST_CASE(head_dim_mismatch_between_queries_and_cache) {
  auto cache = small_cache();
  const auto policy = kc::policies::snapkv(8, 4, 3);
  kc::attention_shape bad{4};
  bad.head_dim = small_shape.head_dim * 2;
  expect_error([&] { construct(policy, cache.view(), bad); }, "shape.head_dim");
  kc::attention_shape good{4};
  good.head_dim = small_shape.head_dim;
  fixture f(policy, cache.view(), good);
  const auto w = kvtest::make_random_window(2, 3, 4, 4, small_shape.head_dim * 2, {11, 11}, 1.0, 5);
  kc::query_window view = w.view();
  view.head_dim = w.head_dim;  // queries of dimension 16 for a cache of dimension 8
  expect_error([&] { f.session.compress_prefill(view); }, "window.head_dim");
}

BOOST_AUTO_TEST_CASE(null_pointers_are_rejected) {
  auto cache = small_cache();
  const auto policy = kc::policies::knorm(8);
  const kc::attention_shape shape{4};
  {
    auto v = cache.view();
    v.keys = nullptr;
    expect_error([&] { construct(policy, v, shape); }, "cache.keys");
  }
  {
    auto v = cache.view();
    v.values = nullptr;
    expect_error([&] { construct(policy, v, shape); }, "cache.values");
  }
  {
    auto v = cache.view();
    v.lengths = nullptr;
    expect_error([&] { construct(policy, v, shape); }, "cache.lengths");
  }
  {
    auto v = cache.view();
    v.positions = nullptr;
    expect_error([&] { construct(policy, v, shape); }, "cache.positions");
  }
  fixture f(policy, cache.view(), shape);
  std::vector<float> k(static_cast<std::size_t>(small_shape.kv_heads * small_shape.head_dim), 0.5f), q(64, 0.1f), out(64);
  expect_error([&] { f.session.append(0, 0, nullptr, k.data(), 12); }, "keys");
  expect_error([&] { f.session.append(0, 0, k.data(), nullptr, 12); }, "values");
  expect_error([&] { f.session.attend(0, 0, nullptr, 12, out.data()); }, "queries");
  expect_error([&] { f.session.attend(0, 0, q.data(), 12, nullptr); }, "output");
  expect_error([&] { f.session.observe(0, 0, nullptr, 12); }, "queries");

  // attention scorers need the window
  const auto snap = kc::policies::snapkv(8, 4, 3);
  fixture g(snap, cache.view(), shape);
  const auto w = kvtest::make_random_window(2, 3, 4, 4, small_shape.head_dim, {11, 11}, 1.0, 5);
  kc::query_window view = w.view();
  view.queries = nullptr;
  expect_error([&] { g.session.compress_prefill(view); }, "window.queries");
  view = w.view();
  view.positions = nullptr;
  expect_error([&] { g.session.compress_prefill(view); }, "window.positions");
  view = w.view();
  view.rows = 0;
  expect_error([&] { g.session.compress_prefill(view); }, "window.rows");
  expect_error([&] { g.session.compress_prefill(); }, "window.queries");
}

BOOST_AUTO_TEST_CASE(misaligned_pointers_are_rejected) {
  const kc::attention_shape shape{4};
  const auto policy = kc::policies::knorm(8);
  const auto source = small_cache();
  kvtest::random_cache<kc::half_t> cache(small_shape);
  cache.lengths = source.lengths;
  cache.positions = source.positions;
  // a half_t* at an odd address
  std::vector<std::uint16_t> raw(cache.keys.size() + 2);
  auto* odd = reinterpret_cast<kc::half_t*>(reinterpret_cast<char*>(raw.data()) + 1);
  auto v = cache.view();
  v.keys = odd;
  expect_error([&] { construct(policy, v, shape); }, "cache.keys");
  v = cache.view();
  v.values = odd;
  expect_error([&] { construct(policy, v, shape); }, "cache.values");
  // int32 arrays at addresses that are not multiples of 4
  std::vector<std::int32_t> lengths(cache.lengths.size() + 1), positions(cache.positions.size() + 1);
  v = cache.view();
  v.lengths = reinterpret_cast<std::int32_t*>(reinterpret_cast<char*>(lengths.data()) + 2);
  expect_error([&] { construct(policy, v, shape); }, "cache.lengths");
  v = cache.view();
  v.positions = reinterpret_cast<std::int32_t*>(reinterpret_cast<char*>(positions.data()) + 1);
  expect_error([&] { construct(policy, v, shape); }, "cache.positions");
  // state span at an odd address
  using session_t = kc::cpu::session<decltype(policy), kc::half_t, kc::layouts::strided>;
  std::vector<std::uint64_t> state(session_t::state_bytes(cache.layout) / 8 + 2), work(session_t::workspace_bytes(cache.layout, shape) / 8 + 2);
  auto state_bytes = std::as_writable_bytes(std::span(state)).subspan(1);
  expect_error([&] { session_t s(policy, cache.view(), shape, state_bytes, std::as_writable_bytes(std::span(work))); }, "state");
  auto work_bytes = std::as_writable_bytes(std::span(work)).subspan(2);
  expect_error([&] { session_t s(policy, cache.view(), shape, std::as_writable_bytes(std::span(state)), work_bytes); }, "workspace");
}

BOOST_AUTO_TEST_CASE(lengths_outside_capacity_are_rejected) {
  const auto policy = kc::policies::knorm(8);
  for (std::int32_t bad : {static_cast<std::int32_t>(small_shape.capacity + 1), -1}) {
    auto cache = small_cache();
    cache.lengths[5] = bad;
    expect_error([&] { construct(policy, cache.view(), kc::attention_shape{4}); }, "cache.lengths");
  }
  // also when the lengths go bad after the session was built
  auto cache = small_cache();
  fixture f(policy, cache.view(), kc::attention_shape{4});
  cache.lengths[0] = static_cast<std::int32_t>(small_shape.capacity + 3);
  expect_error([&] { f.session.compress_prefill(); }, "cache.lengths");
}

BOOST_AUTO_TEST_CASE(paged_layout_errors) {
  const auto source = small_cache();
  const auto policy = kc::policies::knorm(8);
  for (std::int32_t bad_page : {-1, 1000}) {
    kvtest::random_paging paging;
    kvtest::make_random_paging(paging, small_shape, 4, kc::layouts::page_format::nhd, 1, 3);
    auto cache = kvtest::copy_into(source, paging.layout);
    paging.table[2] = bad_page;  // entry 2 of sequence 0
    expect_error([&] { construct(policy, cache.view(), kc::attention_shape{4}); }, "layout.block_table");
  }
  kvtest::random_paging paging;
  kvtest::make_random_paging(paging, small_shape, 4, kc::layouts::page_format::hnd, 0, 3);
  auto cache = kvtest::copy_into(source, paging.layout);
  {
    auto v = cache.view();
    v.layout.page_size = 0;
    expect_error([&] { construct(policy, v, kc::attention_shape{4}); }, "layout");
  }
  {
    auto v = cache.view();
    v.layout.pages_per_sequence = v.layout.table_stride + 1;
    expect_error([&] { construct(policy, v, kc::attention_shape{4}); }, "layout.pages_per_sequence");
  }
  {
    auto v = cache.view();
    v.layout.layer_stride = 8;  // pools of the layers would overlap
    expect_error([&] { construct(policy, v, kc::attention_shape{4}); }, "layout.layer_stride");
  }
  {
    auto v = cache.view();
    v.layout.block_table = nullptr;
    expect_error([&] { construct(policy, v, kc::attention_shape{4}); }, "layout.block_table");
  }
}

BOOST_AUTO_TEST_CASE(non_positive_extents_are_rejected) {
  auto cache = small_cache();
  const auto policy = kc::policies::knorm(8);
  auto set_and_expect = [&](auto mutate) {
    auto v = cache.view();
    mutate(v.layout);
    expect_error([&] { construct(policy, v, kc::attention_shape{4}); }, "layout");
  };
  set_and_expect([](kc::layouts::strided& l) { l.sequences = 0; });
  set_and_expect([](kc::layouts::strided& l) { l.layers = -2; });
  set_and_expect([](kc::layouts::strided& l) { l.kv_heads = 0; });
  set_and_expect([](kc::layouts::strided& l) { l.slots = 0; });
  set_and_expect([](kc::layouts::strided& l) { l.dims = -8; });
  set_and_expect([](kc::layouts::strided& l) { l.element_stride = 0; });
  set_and_expect([](kc::layouts::strided& l) { l.head_stride = -1; });
  // a user layout's own validate() is called too
  auto custom = kvtest::copy_into(cache, slot_major_interleaved{2, 3, 2, 16, 8});
  auto v = custom.view();
  v.layout.dims = 0;
  expect_error([&] { construct(policy, v, kc::attention_shape{4}); }, "layout");
}

BOOST_AUTO_TEST_CASE(query_heads_must_be_a_positive_multiple_of_kv_heads) {
  auto cache = small_cache();
  const auto policy = kc::policies::knorm(8);
  for (index_t q : {0, -2, 3, 5}) expect_error([&] { construct(policy, cache.view(), kc::attention_shape{q}); }, "shape.query_heads");
  BOOST_CHECK_NO_THROW(construct(policy, cache.view(), kc::attention_shape{6}));
}

BOOST_AUTO_TEST_CASE(too_small_state_or_workspace_is_rejected) {
  auto cache = small_cache();
  const auto policy = kc::policies::h2o(8, 2);
  const kc::attention_shape shape{4};
  using session_t = kc::cpu::session<decltype(policy), float, kc::layouts::strided>;
  const std::size_t sb = session_t::state_bytes(cache.layout), wb = session_t::workspace_bytes(cache.layout, shape);
  std::vector<std::uint64_t> state(sb / 8 + 1), work(wb / 8 + 1);
  auto state_span = std::as_writable_bytes(std::span(state)), work_span = std::as_writable_bytes(std::span(work));
  expect_error([&] { session_t s(policy, cache.view(), shape, state_span.first(sb - 1), work_span); }, "state");
  expect_error([&] { session_t s(policy, cache.view(), shape, state_span.first(0), work_span); }, "state");
  expect_error([&] { session_t s(policy, cache.view(), shape, state_span, work_span.first(wb - 1)); }, "workspace");
  BOOST_CHECK_NO_THROW(session_t(policy, cache.view(), shape, state_span.first(sb), work_span.first(wb)));
  // more query heads need more workspace: the size for 4 query heads is too small for 8
  expect_error([&] { session_t s(policy, cache.view(), kc::attention_shape{8}, state_span, work_span.first(wb)); }, "workspace");
}

BOOST_AUTO_TEST_CASE(nan_in_keys_gives_a_nan_score_error) {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  {  // slot scorer (key norm)
    auto cache = small_cache();
    cache.keys[static_cast<std::size_t>(cache.element(1, 2, 1, 3, 4))] = nan;
    const auto policy = kc::policies::knorm(8);
    fixture f(policy, cache.view(), kc::attention_shape{4});
    expect_error([&] { f.session.compress_prefill(); }, "scores");
  }
  {  // attention scorer: the NaN reaches the probabilities of its head
    auto cache = small_cache();
    cache.keys[static_cast<std::size_t>(cache.element(0, 1, 0, 2, 0))] = nan;
    const auto policy = kc::policies::snapkv(8, 4, 3);
    fixture f(policy, cache.view(), kc::attention_shape{4});
    const auto w = kvtest::make_random_window(2, 3, 4, 4, small_shape.head_dim, {11, 11}, 1.0, 5);
    expect_error([&] { f.session.compress_prefill(w.view()); }, "scores");
  }
  {  // decode: a NaN key is rejected where it enters, before anything is evicted
    auto cache = small_cache();
    const auto before = kvtest::take_snapshot(cache.view());
    const auto policy = kc::policies::knorm(12);
    fixture f(policy, cache.view(), kc::attention_shape{4});
    std::vector<float> k(static_cast<std::size_t>(small_shape.kv_heads * small_shape.head_dim), 0.25f), v = k;
    k[3] = nan;
    expect_error([&] { f.session.append(0, 0, k.data(), v.data(), 12); }, "keys");
    BOOST_TEST((kvtest::take_snapshot(cache.view()) == before));
  }
}

BOOST_AUTO_TEST_CASE(unknown_preset_and_bad_preset_budget) {
  auto ignore = [](auto) { return 0; };
  expect_error([&] { kc::policies::with_preset("snapkv2", {16, 64}, ignore); }, "name");
  expect_error([&] { kc::policies::with_preset("", {16, 64}, ignore); }, "name");
  expect_error([&] { kc::policies::with_preset("StreamingLLM", {16, 64}, ignore); }, "name");
  expect_error([&] { kc::policies::with_preset("h2o", {0, 64}, ignore); }, "options.budget");
  for (auto name : kc::policies::preset_names) BOOST_CHECK_NO_THROW(kc::policies::with_preset(name, {16, 64}, ignore));
}

BOOST_AUTO_TEST_CASE(kvmerger_preset_arguments) {
  for (double f : {0.0, -0.2, 1.5, std::numeric_limits<double>::quiet_NaN()}) {
    expect_error([&] { (void)kc::policies::kvmerger(f); }, "fraction");
    expect_error([&] { (void)kc::policies::kvmerger_protection(f); }, "fraction");
    expect_error([&] { (void)kc::policies::kvmerger(f, 0.1, 0.1); }, "fraction");
  }
  expect_error([&] { (void)kc::policies::kvmerger(0.5, -0.1, 0.1); }, "recent_fraction");
  expect_error([&] { (void)kc::policies::kvmerger(0.5, 1.1, 0.1); }, "recent_fraction");
  expect_error([&] { (void)kc::policies::kvmerger(0.5, 0.1, 2.0); }, "top_fraction");
  BOOST_CHECK_NO_THROW((void)kc::policies::kvmerger(1.0, 0.0, 1.0));
}

BOOST_AUTO_TEST_CASE(sequence_and_layer_out_of_range_in_decode_calls) {
  auto cache = small_cache();
  const auto policy = kc::policies::h2o(14, 2);
  fixture f(policy, cache.view(), kc::attention_shape{4});
  std::vector<float> k(static_cast<std::size_t>(small_shape.kv_heads * small_shape.head_dim), 0.25f), q(4 * 8, 0.1f), out(4 * 8);
  expect_error([&] { f.session.append(2, 0, k.data(), k.data(), 12); }, "sequence");
  expect_error([&] { f.session.append(-1, 0, k.data(), k.data(), 12); }, "sequence");
  expect_error([&] { f.session.append(0, 3, k.data(), k.data(), 12); }, "layer");
  expect_error([&] { f.session.append(0, -1, k.data(), k.data(), 12); }, "layer");
  expect_error([&] { f.session.attend(2, 0, q.data(), 12, out.data()); }, "sequence");
  expect_error([&] { f.session.attend(0, 3, q.data(), 12, out.data()); }, "layer");
  expect_error([&] { f.session.observe(0, -1, q.data(), 12); }, "layer");
  expect_error([&] { f.session.observe(5, 0, q.data(), 12); }, "sequence");

  // layer-mapped layout: attend takes model layers, append storage layers
  const auto map = kc::layouts::layer_map::parse("0_2_2_3");  // 4 model layers, 3 cache layers
  kvtest::cache_shape shape = small_shape;
  shape.layers = 3;
  kvtest::fill_options fill;
  fill.min_length = fill.max_length = 12;
  auto base = kvtest::make_random_cache<float>(shape, fill, 9);
  using condensed = kc::layouts::layer_condensed<kc::layouts::strided>;
  kc::kv_cache<float, condensed> lc{condensed{base.layout, map}, base.keys.data(), base.values.data(), base.lengths.data(), base.positions.data()};
  fixture g(policy, lc, kc::attention_shape{4});
  BOOST_CHECK_NO_THROW(g.session.attend(0, 3, q.data(), 12, out.data()));  // model layer 3 -> cache layer 2
  expect_error([&] { g.session.attend(0, 4, q.data(), 12, out.data()); }, "layer");
  expect_error([&] { g.session.attend(0, -1, q.data(), 12, out.data()); }, "layer");
  expect_error([&] { g.session.append(0, 3, k.data(), k.data(), 12); }, "layer");  // storage layers: 0..2

  // a map whose cache-layer count does not match the inner layout
  kc::kv_cache<float, condensed> wrong{condensed{base.layout, kc::layouts::layer_map::parse("0_1_2_3")}, base.keys.data(), base.values.data(),
                                       base.lengths.data(), base.positions.data()};
  expect_error([&] { construct(policy, wrong, kc::attention_shape{4}); }, "layout.map");
}

BOOST_AUTO_TEST_CASE(full_head_with_nothing_to_evict) {
  auto cache = small_cache();
  for (auto& n : cache.lengths) n = static_cast<std::int32_t>(small_shape.capacity);
  for (index_t i = 0; i < static_cast<index_t>(cache.positions.size()); ++i) cache.positions[static_cast<std::size_t>(i)] = static_cast<std::int32_t>(i % small_shape.capacity);
  const auto policy = kc::policies::snapkv(8, 4, 3);  // prefill-only: no decode eviction
  fixture f(policy, cache.view(), kc::attention_shape{4});
  std::vector<float> k(static_cast<std::size_t>(small_shape.kv_heads * small_shape.head_dim), 0.25f);
  expect_error([&] { f.session.append(0, 1, k.data(), k.data(), 16); }, "cache");
}

BOOST_AUTO_TEST_CASE(layer_map_errors) {
  using kc::layouts::layer_map;
  for (const char* spec : {"", "0__1", "_0", "0_", "0_x", "0_1a", "s", "0_-1", "0 _1", "0_1ss", "0_s"})
    expect_error([&] { (void)layer_map::parse(spec); }, "spec");
  expect_error([&] { (void)layer_map::parse("0_5_2"); }, "spec");  // source outside the 3-layer model
  expect_error([&] { (void)layer_map::parse("0_65536"); }, "spec");  // would wrap to 0 in int16
  expect_error([&] { (void)layer_map::parse("0_99999999999"); }, "spec");  // int overflow
  std::string long_spec = "0";
  for (int l = 1; l < 257; ++l) {
    long_spec += '_';
    long_spec += std::to_string(l);
  }
  expect_error([&] { (void)layer_map::parse(long_spec); }, "spec");
  expect_error([&] { (void)layer_map::lckv(0, 0, 0); }, "layers");
  expect_error([&] { (void)layer_map::lckv(300, 1, 1); }, "layers");
  expect_error([&] { (void)layer_map::lckv(4, 2, 2); }, "warmup");
  expect_error([&] { (void)layer_map::lckv(4, -1, 0); }, "warmup");
  expect_error([&] { (void)layer_map::cross_layer(0, 2); }, "layers");
  expect_error([&] { (void)layer_map::cross_layer(8, 0); }, "group");
  BOOST_CHECK_NO_THROW((void)layer_map::parse("0s_1s_2_2"));
}
