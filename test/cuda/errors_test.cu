// SPDX-License-Identifier: Apache-2.0
// GPU test: bad input to kvcompact::cuda::session gets a kvcompact::error naming the argument, on
// the host before any launch (null or misaligned pointers, head_dim mismatch, GQA shape, state and
// workspace sizes, window rows) or from check() for what only kernels can see (NaN scores, page-table
// entries outside the pool, lengths outside [0, capacity] (a ragged layer's own, also when written after the
// session was made), a full head that evicts nothing, also at a
// ragged layer's own capacity) -- and
// the cache is left unchanged where a kernel found a fault.
#define BOOST_TEST_NO_MAIN
#define BOOST_TEST_ALTERNATIVE_INIT_API
#include <boost/test/unit_test.hpp>

#include <kvcompact/cuda.cuh>

#include "support/backend_comparison.hpp"

#include <cmath>
#include <limits>
#include <string>
#include <vector>

namespace kc = kvcompact;
using kc::index_t;

namespace {

constexpr index_t S = 1, L = 2, H = 2, G = 2, CAP = 32, D = 16, ROWS = 4;
using T = kc::bfloat16_t;

/// True when @p e names @p argument (the message starts with "<where>: <argument>:").
bool names(const kc::error& e, const std::string& argument) {
  BOOST_TEST_MESSAGE(e.what());
  return e.argument() == argument;
}

kvtest::layout_cache<T, kc::layouts::strided> small_cache(index_t length) {
  kvtest::fill_options fill;
  fill.min_length = fill.max_length = length;
  const auto c = kvtest::make_random_cache<T>({S, L, H, CAP, D}, fill, 5);
  return kvtest::copy_into(c, c.layout);
}

/// A cache copied to the device with a session's storage, for one policy.
template <class Policy, class Layout = kc::layouts::strided>
struct device_setup {
  using session_type = kc::cuda::session<Policy, T, Layout>;
  Policy policy;
  kc::attention_shape shape{H * G};
  kvtest::device_cache<T, Layout> device;
  kvtest::device_session_storage<session_type> storage;
  device_setup(const Policy& p, const kvtest::layout_cache<T, Layout>& host) : policy(p), device(host), storage(device.layout.layout, shape, ROWS) {}
  /// A session over the device cache.
  session_type session() const {
    return session_type(policy, device.view(), shape, storage.state.bytes(), storage.workspace.bytes(), nullptr, ROWS);
  }
};

}  // namespace

BOOST_AUTO_TEST_CASE(constructor_rejects_bad_arguments) {
  const device_setup setup(kc::policies::snapkv(16, 4), small_cache(24));
  using session_type = decltype(setup)::session_type;
  const auto& device = setup.device;
  const auto& storage = setup.storage;
  const kc::attention_shape shape = setup.shape;
  auto make = [&](kc::kv_cache<T, kc::layouts::strided> cache, kc::attention_shape s, std::span<std::byte> state, std::span<std::byte> work) {
    session_type session(setup.policy, cache, s, state, work, nullptr, ROWS);
  };
  auto cache = device.view();
  cache.keys = nullptr;
  BOOST_CHECK_EXCEPTION(make(cache, shape, storage.state.bytes(), storage.workspace.bytes()), kc::error,
                        [](const kc::error& e) { return names(e, "cache.keys"); });
  cache = device.view();
  cache.values = reinterpret_cast<T*>(reinterpret_cast<char*>(cache.values) + 1);
  BOOST_CHECK_EXCEPTION(make(cache, shape, storage.state.bytes(), storage.workspace.bytes()), kc::error,
                        [](const kc::error& e) { return names(e, "cache.values"); });
  BOOST_CHECK_EXCEPTION(make(device.view(), kc::attention_shape{H * G, 0.0f, D + 1}, storage.state.bytes(), storage.workspace.bytes()),
                        kc::error, [](const kc::error& e) { return names(e, "shape.head_dim"); });
  BOOST_CHECK_EXCEPTION(make(device.view(), kc::attention_shape{3}, storage.state.bytes(), storage.workspace.bytes()), kc::error,
                        [](const kc::error& e) { return names(e, "shape.query_heads"); });
  BOOST_CHECK_EXCEPTION(make(device.view(), shape, storage.state.bytes().first(8), storage.workspace.bytes()), kc::error,
                        [](const kc::error& e) { return names(e, "state"); });
  BOOST_CHECK_EXCEPTION(make(device.view(), shape, storage.state.bytes(), storage.workspace.bytes().first(8)), kc::error,
                        [](const kc::error& e) { return names(e, "workspace"); });
  BOOST_CHECK_EXCEPTION(make(device.view(), shape, storage.state.bytes(), storage.workspace.bytes().subspan(16)), kc::error,
                        [](const kc::error& e) { return names(e, "workspace"); });
}

BOOST_AUTO_TEST_CASE(a_budget_above_the_capacity_is_rejected) {
  const device_setup setup(kc::policies::knorm(CAP + 1), small_cache(24));
  BOOST_CHECK_EXCEPTION(setup.session(), kc::error, [](const kc::error& e) { return names(e, "policy"); });
}

BOOST_AUTO_TEST_CASE(calls_reject_bad_arguments) {
  const device_setup setup(kc::policies::snapkv(16, 4), small_cache(24));
  auto session = setup.session();
  const auto window = kvtest::make_random_window(S, L, H * G, ROWS + 1, D, {23}, 1.0, 6);
  const kvtest::device_window rows(window);
  BOOST_CHECK_EXCEPTION(session.compress_prefill({}), kc::error, [](const kc::error& e) { return names(e, "window.queries"); });
  BOOST_CHECK_EXCEPTION(session.compress_prefill(rows.view()), kc::error, [](const kc::error& e) { return names(e, "window.rows"); });
  kvtest::device_array<T> one(static_cast<std::size_t>(S * H * G * D));
  kvtest::device_array<std::int32_t> position(std::vector<std::int32_t>{24});
  BOOST_CHECK_EXCEPTION(session.append(0, nullptr, one.data(), position.data()), kc::error, [](const kc::error& e) { return names(e, "keys"); });
  BOOST_CHECK_EXCEPTION(session.append(L, one.data(), one.data(), position.data()), kc::error,
                        [](const kc::error& e) { return names(e, "layer"); });
  BOOST_CHECK_EXCEPTION(session.attend(0, one.data(), position.data(), nullptr), kc::error,
                        [](const kc::error& e) { return names(e, "output"); });
  BOOST_CHECK_EXCEPTION(session.set_budget(0, CAP + 1), kc::error, [](const kc::error& e) { return names(e, "slots"); });
}

BOOST_AUTO_TEST_CASE(nan_scores_are_reported_and_leave_the_layer_unchanged) {
  auto host = small_cache(24);
  host.keys[static_cast<std::size_t>(host.element(0, 1, 1, 5, 3))] = kc::from_float<T>(std::numeric_limits<float>::quiet_NaN());
  const device_setup setup(kc::policies::knorm(16), host);
  auto session = setup.session();
  session.compress_prefill();
  BOOST_CHECK_EXCEPTION(session.check("compress_prefill"), kc::error, [](const kc::error& e) { return names(e, "scores"); });
  const auto after = setup.device.download(host);
  BOOST_TEST(after.lengths[static_cast<std::size_t>(host.head_index(0, 1, 0))] == 24);  // the faulty layer is untouched
  BOOST_TEST(after.lengths[static_cast<std::size_t>(host.head_index(0, 1, 1))] == 24);
  BOOST_TEST(after.lengths[static_cast<std::size_t>(host.head_index(0, 0, 0))] == 16);  // the other layer is compressed
  BOOST_CHECK_NO_THROW(session.check());  // the fault was reported once
}

BOOST_AUTO_TEST_CASE(a_page_table_entry_outside_the_pool_is_reported) {
  kvtest::random_paging paging;
  kvtest::make_random_paging(paging, {S, L, H, CAP, D}, 8, kc::layouts::page_format::nhd, 0, 7);
  const auto host = kvtest::copy_into(kvtest::make_random_cache<T>({S, L, H, CAP, D}, kvtest::fill_options{24, 24}, 8), paging.layout);
  device_setup setup(kc::policies::streaming_llm(16), host);
  std::vector<std::int32_t> table = paging.table;
  table[2] = static_cast<std::int32_t>(paging.layout.num_pages);  // slots 16..23 now map outside the pool
  setup.device.layout.table.upload(table);
  BOOST_CHECK_EXCEPTION(setup.session(), kc::error, [](const kc::error& e) { return names(e, "cache.layout.block_table"); });
}

BOOST_AUTO_TEST_CASE(a_length_outside_the_capacity_is_reported) {
  auto host = small_cache(24);
  host.lengths[1] = CAP + 1;
  const device_setup setup(kc::policies::streaming_llm(16), host);
  BOOST_CHECK_EXCEPTION(setup.session(), kc::error, [](const kc::error& e) { return names(e, "cache.lengths"); });
}

BOOST_AUTO_TEST_CASE(a_full_head_that_evicts_nothing_is_reported) {
  const device_setup setup(kc::policies::snapkv(CAP, 4), small_cache(CAP));  // prefill-only: appends, never evicts
  auto session = setup.session();
  kvtest::device_array<T> kv(std::vector<T>(static_cast<std::size_t>(S * H * D), kc::from_float<T>(0.5f)));
  kvtest::device_array<std::int32_t> position(std::vector<std::int32_t>{CAP});
  session.append(0, kv.data(), kv.data(), position.data());
  BOOST_CHECK_EXCEPTION(session.check("append"), kc::error, [](const kc::error& e) { return names(e, "cache"); });
  BOOST_TEST(setup.device.lengths.download()[0] == CAP);
}

BOOST_AUTO_TEST_CASE(a_ring_layer_is_full_at_its_own_capacity) {
  // ragged layers: layer 0 holds 8 slots, layer 1 CAP. A policy that never evicts fills layer 0 after 8
  // tokens; the 9th is refused there (no write beyond the layer's block), layer 1 still takes it.
  using ragged = kc::layouts::ragged_layers;
  const std::vector<index_t> capacities{8, CAP};
  const auto host = kvtest::copy_into(kvtest::make_random_cache<T>({S, L, H, CAP, D}, {}, 6), ragged::make(S, capacities, H, D));
  auto empty = host;
  for (auto& n : empty.lengths) n = 0;
  const device_setup<decltype(kc::policies::snapkv(8, 4)), ragged> setup(kc::policies::snapkv(8, 4), empty);
  auto session = setup.session();
  kvtest::device_array<T> kv(std::vector<T>(static_cast<std::size_t>(S * H * D), kc::from_float<T>(0.5f)));
  for (std::int32_t t = 0; t < 9; ++t) {
    kvtest::device_array<std::int32_t> position(std::vector<std::int32_t>{t});
    session.append(1, kv.data(), kv.data(), position.data());
    session.append(0, kv.data(), kv.data(), position.data());
    if (t < 8) session.check("append");
  }
  BOOST_CHECK_EXCEPTION(session.check("append"), kc::error, [](const kc::error& e) { return names(e, "cache"); });
  const auto lengths = setup.device.lengths.download();
  BOOST_TEST(lengths[0] == 8);
  BOOST_TEST(lengths[2] == 9);
  auto too_long = empty;
  too_long.lengths[0] = 9;  // above layer 0's capacity, below capacity()
  const device_setup<decltype(kc::policies::snapkv(8, 4)), ragged> bad(kc::policies::snapkv(8, 4), too_long);
  BOOST_CHECK_EXCEPTION(bad.session(), kc::error, [](const kc::error& e) { return names(e, "cache.lengths"); });
}

BOOST_AUTO_TEST_CASE(a_length_above_its_layers_capacity_at_compression_leaves_that_layer_unchanged) {
  // ragged layers of 8 and CAP slots; after the session is made, an engine writes length 9 into a head
  // of layer 0 (below capacity(), above its layer's): compress_prefill reports it and leaves layer 0
  // as it was (slot 8 of that head would be another head's slot 0), layer 1 is compressed.
  using ragged = kc::layouts::ragged_layers;
  const std::vector<index_t> capacities{8, CAP};
  kvtest::fill_options fill;
  fill.min_length = fill.max_length = 24;
  auto source = kvtest::make_random_cache<T>({S, L, H, CAP, D}, fill, 7);
  for (index_t h = 0; h < H; ++h) source.lengths[static_cast<std::size_t>(source.head_index(0, 0, h))] = 8;
  const auto host = kvtest::copy_into(source, ragged::make(S, capacities, H, D));
  device_setup<decltype(kc::policies::knorm(6)), ragged> setup(kc::policies::knorm(6), host);
  auto session = setup.session();
  session.check("session");
  auto lengths = host.lengths;
  lengths[static_cast<std::size_t>(source.head_index(0, 0, 0))] = 9;
  setup.device.lengths.upload(lengths);
  session.compress_prefill();
  BOOST_CHECK_EXCEPTION(session.check("compress_prefill"), kc::error, [](const kc::error& e) { return names(e, "cache.lengths"); });
  const auto after = setup.device.lengths.download();
  BOOST_TEST(after[static_cast<std::size_t>(source.head_index(0, 0, 0))] == 9);  // the faulty layer is untouched
  BOOST_TEST(after[static_cast<std::size_t>(source.head_index(0, 0, 1))] == 8);
  BOOST_TEST(after[static_cast<std::size_t>(source.head_index(0, 1, 0))] == 6);  // the other layer is compressed
  BOOST_TEST(after[static_cast<std::size_t>(source.head_index(0, 1, 1))] == 6);
}

#include "support/gpu_main.hpp"
