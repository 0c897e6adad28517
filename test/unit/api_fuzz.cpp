// SPDX-License-Identifier: Apache-2.0
// Property-based test of the public host API (issue 14.2). Each run, from its own seed, draws a
// policy (every preset factory and three hand-composed policies, with random and sometimes invalid
// arguments, and sometimes a field set out of range after construction), a layout (strided: BHSD,
// BSHD, a random axis order with padding; paged: NHD or HND with a shuffled table; sometimes made to
// alias: zero or overlapping strides, a page named twice, rows that overlap, or a negative extent),
// cache content (random lengths and positions, aligned heads or not, sometimes an unset or repeated
// position, a length outside the capacity, a NaN or Inf key or value), an attention shape (sometimes
// a bad query-head count or scale), state and workspace (sometimes one byte short) and a random
// sequence of compress_prefill, append, attend, observe and set_budget calls with valid and invalid
// arguments (positions that go back, NaN queries, windows with negative positions, ...).
//
// Every call must either succeed with a correct result or throw kvcompact::error; any other
// exception fails the test, and a crash, an ASan or UBSan report ends it. After a successful call:
//  - lengths lie in [0, capacity], valid positions are set and distinct per head (also after errors);
//  - compress_prefill keeps a subset of each head's positions, bit-identical K/V when the policy does
//    not merge, at most the budget (top-k, budgeted KVMerger, Ada-KV over the layer, WindowKV up to a
//    window more), and every protected token (top-k: sinks and recent);
//  - append stores the token, keeps a subset of the other positions (bit-identical without merging),
//    holds a top-k head that evicts at exactly min(old length + 1, its budget) with every token
//    protected at that step kept, and grows the others by one (CORM: at most one);
//  - attend writes finite outputs; set_budget sets the budgets; merged caches stay finite.
//
// Runs: KVCOMPACT_FUZZ_RUNS (default 20000) runs from seed KVCOMPACT_FUZZ_SEED (default 20261130);
// a failure names the run's seed: rerun it alone with KVCOMPACT_FUZZ_SEED=<seed> KVCOMPACT_FUZZ_RUNS=1.
// Cost (2026-11-30, 2-core CI machine): 40000 runs took 20 s of CPU under ASan+UBSan (-O1), 3000
// runs 0.3 s in a release build; the default stays within a minute under the sanitizers even on a
// shared machine, and a longer campaign only needs a larger KVCOMPACT_FUZZ_RUNS.
#include "support/custom_layout.hpp"
#include "support/reference.hpp"

#include <kvcompact/kvcompact.hpp>

#include <boost/test/unit_test.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <limits>
#include <map>
#include <optional>
#include <random>
#include <span>
#include <string>
#include <type_traits>
#include <typeinfo>
#include <vector>

namespace kc = kvcompact;
using kc::index_t;

namespace {

using rng_t = std::mt19937_64;

// A failed property: reported with the run's seed (BOOST_TEST_CONTEXT), without Boost.Test's per-check
// cost on the passing path (millions of checks).
#define FUZZ_CHECK(condition, message) \
  do {                                 \
    if (!(condition)) BOOST_ERROR(message); \
  } while (false)

index_t pick(rng_t& rng, index_t lo, index_t hi) { return lo + static_cast<index_t>(rng() % static_cast<std::uint64_t>(hi - lo + 1)); }
bool chance(rng_t& rng, int percent) { return static_cast<int>(rng() % 100) < percent; }
float uniform(rng_t& rng, float lo, float hi) { return lo + (hi - lo) * static_cast<float>(rng() >> 40) / 16777216.0f; }

// A count argument: usually in [lo, hi], sometimes 0, negative or far too large.
index_t count_arg(rng_t& rng, index_t lo, index_t hi) {
  if (!chance(rng, 6)) return pick(rng, lo, hi);
  const index_t wild[] = {0, -1, -7, hi + 1, 2 * hi + 3, std::numeric_limits<std::int32_t>::max(), std::numeric_limits<index_t>::min()};
  return wild[rng() % std::size(wild)];
}
// A share argument: usually in [lo, hi], sometimes NaN, infinite or outside [0, 1].
double share_arg(rng_t& rng, double lo, double hi) {
  if (!chance(rng, 6)) return lo + (hi - lo) * static_cast<double>(rng() >> 11) / 9007199254740992.0;
  const double wild[] = {std::numeric_limits<double>::quiet_NaN(), -0.5, 1.5, std::numeric_limits<double>::infinity(), 0.0, 1.0};
  return wild[rng() % std::size(wild)];
}
// A pooling kernel: usually odd, sometimes even, zero or negative.
index_t kernel_arg(rng_t& rng) {
  const index_t kernels[] = {1, 3, 5, 7, 1, 3, 5, 7, 3, 5, 7, 0, 2, 4, -1, -3};
  return kernels[rng() % std::size(kernels)];
}
float weird_float(rng_t& rng) {
  const float values[] = {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity(), -std::numeric_limits<float>::infinity()};
  return values[rng() % std::size(values)];
}

template <class S>
struct is_top_k : std::false_type {};
template <class B>
struct is_top_k<kc::selectors::top_k<B>> : std::true_type {};
template <class S>
struct is_adaptive : std::false_type {};
template <class B>
struct is_adaptive<kc::selectors::adaptive_heads<B>> : std::true_type {};
template <class S>
struct is_windows : std::false_type {};
template <class B>
struct is_windows<kc::selectors::windows<B>> : std::true_type {};
template <class S>
struct is_merging_sets : std::false_type {};
template <class B>
struct is_merging_sets<kc::selectors::merging_sets<B>> : std::true_type {};

// What the runs did, for the final message (and to make sure both outcomes are exercised).
struct tally {
  long runs = 0, policies_rejected = 0, sessions = 0, sessions_rejected = 0, calls = 0, calls_rejected = 0;
};

// ---- cache storage for a layout ----------------------------------------------------------------

// Storage of a cache. Lengths and positions are indexed by `shape`, the true extents, since the
// layout handed to the library may have been made invalid after the cache was filled.
template <class Layout>
struct fuzz_cache {
  kvtest::cache_shape shape;
  Layout layout{};
  std::vector<std::int32_t> table;  // paged layouts point into it
  std::vector<float> keys, values;
  std::vector<std::int32_t> lengths, positions;
  bool non_finite = false;      // a NaN or Inf was planted in K/V
  bool bad_positions = false;   // an unset or repeated position was planted (the session must never accept it)
  bool invalid_layout = false;  // the layout was made to alias or given a bad extent: sessions must refuse it
  kc::kv_cache<float, Layout> view() { return {layout, keys.data(), values.data(), lengths.data(), positions.data()}; }
  index_t head(index_t s, index_t l, index_t h) const { return (s * shape.layers + l) * shape.kv_heads + h; }
  std::int32_t& length(index_t s, index_t l, index_t h) { return lengths[static_cast<std::size_t>(head(s, l, h))]; }
  std::int32_t& position(index_t s, index_t l, index_t h, index_t j) { return positions[static_cast<std::size_t>(head(s, l, h) * shape.capacity + j)]; }
  index_t element(index_t s, index_t l, index_t h, index_t j, index_t d) const { return layout.offset(s, l, h, j) + d * layout.dim_stride(); }
};

// A strided layout: BHSD, BSHD or a random axis order with padding.
void make_layout(rng_t& rng, fuzz_cache<kc::layouts::strided>& c) {
  const kvtest::cache_shape& shape = c.shape;
  const index_t extents[5] = {shape.sequences, shape.layers, shape.kv_heads, shape.capacity, shape.head_dim};
  const int kind = static_cast<int>(rng() % 3);
  if (kind == 0) c.layout = kc::layouts::bhsd(shape.sequences, shape.layers, shape.kv_heads, shape.capacity, shape.head_dim);
  if (kind == 1) c.layout = kc::layouts::bshd(shape.sequences, shape.layers, shape.kv_heads, shape.capacity, shape.head_dim);
  if (kind == 2) {
    int order[5] = {0, 1, 2, 3, 4};
    std::shuffle(order, order + 5, rng);
    index_t strides[5] = {}, span = 1;
    for (int axis : order) {
      strides[axis] = span;
      span = span * extents[axis] + pick(rng, 0, 2);
    }
    c.layout = kc::layouts::strided{extents[0], extents[1], extents[2], extents[3], extents[4], strides[0], strides[1], strides[2], strides[3], strides[4]};
  }
  const auto elements = static_cast<std::size_t>(kvtest::storage_elements(c.layout));
  c.keys.assign(elements, 0.0f);
  c.values.assign(elements, 0.0f);
}

// Makes a filled strided layout alias (two axes of extent > 1 on one stride, or a zero stride) or
// gives it a negative extent. Every mutation is invalid: a session must refuse the layout.
void invalidate_layout(rng_t& rng, fuzz_cache<kc::layouts::strided>& c) {
  index_t* strides[5] = {&c.layout.sequence_stride, &c.layout.layer_stride, &c.layout.head_stride, &c.layout.slot_stride, &c.layout.element_stride};
  const index_t extents[5] = {c.shape.sequences, c.shape.layers, c.shape.kv_heads, c.shape.capacity, c.shape.head_dim};
  std::vector<int> wide;  // axes of extent > 1
  for (int a = 0; a < 5; ++a)
    if (extents[a] > 1) wide.push_back(a);
  const int kind = static_cast<int>(rng() % 4);
  if (kind == 0 && !wide.empty()) *strides[wide[rng() % wide.size()]] = 0;
  else if (kind == 1 && wide.size() >= 2) *strides[wide[0]] = *strides[wide[1]];
  else if (kind == 2) for (auto* stride : strides) *stride = 0;
  else c.layout.kv_heads = -c.layout.kv_heads;
  c.invalid_layout = true;
}

// A paged layout: random page size, format, spare pages, table padding and layer padding. The capacity
// becomes a whole number of pages.
void make_layout(rng_t& rng, fuzz_cache<kc::layouts::paged>& c) {
  kvtest::cache_shape& shape = c.shape;
  const index_t page_size = index_t{1} << pick(rng, 0, 3);
  const index_t pages = (shape.capacity + page_size - 1) / page_size;
  shape.capacity = pages * page_size;
  const index_t num_pages = shape.sequences * pages + pick(rng, 0, 3);
  const index_t table_stride = pages + pick(rng, 0, 2);
  std::vector<std::int32_t> pool(static_cast<std::size_t>(num_pages));
  for (std::size_t i = 0; i < pool.size(); ++i) pool[i] = static_cast<std::int32_t>(i);
  std::shuffle(pool.begin(), pool.end(), rng);
  c.table.assign(static_cast<std::size_t>(shape.sequences * table_stride), -1);
  for (index_t s = 0; s < shape.sequences; ++s)
    for (index_t p = 0; p < pages; ++p) c.table[static_cast<std::size_t>(s * table_stride + p)] = pool[static_cast<std::size_t>(s * pages + p)];
  const index_t page_elements = page_size * shape.kv_heads * shape.head_dim;
  const auto format = chance(rng, 50) ? kc::layouts::page_format::nhd : kc::layouts::page_format::hnd;
  c.layout = kc::layouts::paged{c.table.data(), table_stride, pages, shape.sequences, shape.layers, shape.kv_heads, shape.head_dim,
                                page_size, num_pages, num_pages * page_elements + pick(rng, 0, 5), format};
  const auto elements = static_cast<std::size_t>(c.layout.layer_stride * (shape.layers - 1) + num_pages * page_elements);
  c.keys.assign(elements, 0.0f);
  c.values.assign(elements, 0.0f);
}

// Shares a page, points outside the pool, overlaps table rows or layer pools, or zeroes the page
// size of a filled paged layout. Every mutation is invalid: a session must refuse the layout.
void invalidate_layout(rng_t& rng, fuzz_cache<kc::layouts::paged>& c) {
  const index_t pages = c.layout.pages_per_sequence, stride = c.layout.table_stride, sequences = c.shape.sequences;
  const auto entry = [&](index_t s, index_t p) -> std::int32_t& { return c.table[static_cast<std::size_t>(s * stride + p)]; };
  const int kind = static_cast<int>(rng() % 5);
  if (kind == 0 && sequences * pages >= 2) entry(sequences - 1, pages - 1) = entry(0, 0);  // a page named twice
  else if (kind == 1) entry(0, pages - 1) = chance(rng, 50) ? -1 : static_cast<std::int32_t>(c.layout.num_pages);
  else if (kind == 2) c.layout.table_stride = pages - 1;
  else if (kind == 3 && c.shape.layers > 1 && c.layout.num_pages > 1) c.layout.layer_stride = c.layout.page_elements();
  else c.layout.page_size = 0;
  c.invalid_layout = true;
}

// Random lengths, positions (sorted subsets with gaps, sometimes shuffled over the slots), K and V.
template <class Layout>
void fill(rng_t& rng, fuzz_cache<Layout>& c, bool aligned_heads) {
  const kvtest::cache_shape& shape = c.shape;
  const index_t cap = shape.capacity;
  c.lengths.assign(static_cast<std::size_t>(shape.sequences * shape.layers * shape.kv_heads), 0);
  c.positions.assign(static_cast<std::size_t>(shape.sequences * shape.layers * shape.kv_heads * cap), -1);
  for (auto* v : {&c.keys, &c.values})
    for (auto& x : *v) x = uniform(rng, -1.5f, 1.5f);
  const bool shuffle = chance(rng, 30);
  for (index_t s = 0; s < shape.sequences; ++s)
    for (index_t l = 0; l < shape.layers; ++l)
      for (index_t h = 0; h < shape.kv_heads; ++h) {
        if (aligned_heads && h > 0) {
          c.length(s, l, h) = c.length(s, l, 0);
          for (index_t j = 0; j < cap; ++j) c.position(s, l, h, j) = c.position(s, l, 0, j);
          continue;
        }
        const index_t n = pick(rng, 0, cap);
        const index_t tokens = n + pick(rng, 0, 6);
        std::vector<std::int32_t> all(static_cast<std::size_t>(tokens));
        for (index_t p = 0; p < tokens; ++p) all[static_cast<std::size_t>(p)] = static_cast<std::int32_t>(p);
        std::shuffle(all.begin(), all.end(), rng);
        all.resize(static_cast<std::size_t>(n));
        std::sort(all.begin(), all.end());
        if (shuffle) std::shuffle(all.begin(), all.end(), rng);
        c.length(s, l, h) = static_cast<std::int32_t>(n);
        for (index_t j = 0; j < n; ++j) c.position(s, l, h, j) = all[static_cast<std::size_t>(j)];
      }
  const index_t s = pick(rng, 0, shape.sequences - 1), l = pick(rng, 0, shape.layers - 1), h = pick(rng, 0, shape.kv_heads - 1);
  const index_t n = c.length(s, l, h);
  if (chance(rng, 4)) c.length(s, l, h) = chance(rng, 50) ? -1 : static_cast<std::int32_t>(cap + 1);
  else if (n > 0 && chance(rng, 4)) c.position(s, l, h, pick(rng, 0, n - 1)) = -1, c.bad_positions = true;
  else if (n > 1 && chance(rng, 4)) c.position(s, l, h, 0) = c.position(s, l, h, n - 1), c.bad_positions = true;
  else if (n > 0 && chance(rng, 6)) {
    (chance(rng, 50) ? c.keys : c.values)[static_cast<std::size_t>(c.element(s, l, h, pick(rng, 0, n - 1), pick(rng, 0, shape.head_dim - 1)))] =
        weird_float(rng);
    c.non_finite = true;
  }
}

// ---- what a head holds ---------------------------------------------------------------------------

// position -> raw bits of its K and V
using head_content = std::map<std::int32_t, std::vector<std::uint32_t>>;

template <class Layout>
head_content content(fuzz_cache<Layout>& c, index_t s, index_t l, index_t h) {
  head_content out;
  const index_t n = c.length(s, l, h);
  for (index_t j = 0; j < n; ++j) {
    std::vector<std::uint32_t> bits;
    for (index_t d = 0; d < c.layout.head_dim(); ++d) {
      bits.push_back(kvtest::element_bits(c.keys[static_cast<std::size_t>(c.element(s, l, h, j, d))]));
      bits.push_back(kvtest::element_bits(c.values[static_cast<std::size_t>(c.element(s, l, h, j, d))]));
    }
    out[c.position(s, l, h, j)] = std::move(bits);
  }
  return out;
}

// Lengths within the capacity, positions set and distinct in every head (unless planted, in which case
// no call may have succeeded that reads them: see run_calls).
template <class Layout>
void check_basic(fuzz_cache<Layout>& c) {
  const index_t cap = c.layout.capacity();
  for (index_t s = 0; s < c.layout.num_sequences(); ++s)
    for (index_t l = 0; l < c.layout.num_layers(); ++l)
      for (index_t h = 0; h < c.layout.num_kv_heads(); ++h) {
        const index_t n = c.length(s, l, h);
        BOOST_TEST_REQUIRE((n >= 0 && n <= cap), "length " << n << " outside [0, " << cap << "]");
        std::vector<std::int32_t> held;
        for (index_t j = 0; j < n; ++j) held.push_back(c.position(s, l, h, j));
        std::sort(held.begin(), held.end());
        if (c.bad_positions) continue;
        FUZZ_CHECK((held.empty() || held.front() >= 0), "a negative position is held");
        FUZZ_CHECK((std::adjacent_find(held.begin(), held.end()) == held.end()), "a position is held twice");
      }
}

template <class Layout>
void check_finite(fuzz_cache<Layout>& c) {
  for (index_t s = 0; s < c.layout.num_sequences(); ++s)
    for (index_t l = 0; l < c.layout.num_layers(); ++l)
      for (index_t h = 0; h < c.layout.num_kv_heads(); ++h)
        for (index_t j = 0; j < c.length(s, l, h); ++j)
          for (index_t d = 0; d < c.layout.head_dim(); ++d) {
            const auto e = static_cast<std::size_t>(c.element(s, l, h, j, d));
            FUZZ_CHECK((std::isfinite(c.keys[e]) && std::isfinite(c.values[e])), "a merged cache holds a non-finite value");
          }
}

// The slots a compressed head may keep: the selector's budget (Ada-KV: checked over the layer; CORM
// and faithful KVMerger have none).
template <class Selector>
index_t compression_bound(const Selector& selector, index_t layer, index_t layers, index_t length) {
  if constexpr (is_top_k<Selector>::value) return std::min(length, selector.budget(layer, layers, length));
  else if constexpr (is_windows<Selector>::value) return std::min(length, selector.budget(layer, layers, length) + selector.window - 1);
  else if constexpr (is_merging_sets<Selector>::value) return selector.budgeted ? std::min(length, selector.budget(layer, layers, length)) : length;
  else return length;
}

// ---- one run -------------------------------------------------------------------------------------

template <class Policy, class Layout>
void run_calls(rng_t& rng, const Policy& policy, fuzz_cache<Layout>& c, tally& t) {
  const kvtest::cache_shape& shape = c.shape;
  using session_type = kc::cpu::session<Policy, float, Layout>;
  const index_t kv_heads = shape.kv_heads, dim = shape.head_dim;
  index_t query_heads = kv_heads * pick(rng, 1, 3);
  if (chance(rng, 3)) query_heads += chance(rng, 50) ? 1 : -query_heads;
  kc::attention_shape attention{query_heads};
  if (chance(rng, 20)) attention.scale = uniform(rng, 0.05f, 1.0f);
  if (chance(rng, 3)) attention.scale = chance(rng, 50) ? -0.5f : weird_float(rng);

  std::vector<std::uint64_t> state, workspace;
  std::size_t state_size = 0, workspace_size = 0;
  ++t.sessions;
  try {
    state_size = session_type::state_bytes(c.layout);
    workspace_size = session_type::workspace_bytes(c.layout, attention);
  } catch (const kc::error&) {
    ++t.sessions_rejected;
    return;
  }
  state.assign(state_size / 8 + 1, 0);
  workspace.assign(workspace_size / 8 + 1, 0);
  if (chance(rng, 2)) --state_size;
  if (chance(rng, 2)) --workspace_size;
  const std::span<std::byte> state_span(reinterpret_cast<std::byte*>(state.data()), state_size);
  const std::span<std::byte> workspace_span(reinterpret_cast<std::byte*>(workspace.data()), workspace_size);
  std::optional<session_type> session;
  try {
    session.emplace(policy, c.view(), attention, state_span, workspace_span);
  } catch (const kc::error&) {
    ++t.sessions_rejected;
    return;
  }
  FUZZ_CHECK(!c.invalid_layout, "a session accepted an aliasing or invalid layout");
  if (c.invalid_layout) return;

  const index_t S = shape.sequences, L = shape.layers, cap = c.layout.capacity();
  std::vector<index_t> next(static_cast<std::size_t>(S * L), 0);  // next position per (sequence, layer)
  for (index_t s = 0; s < S; ++s)
    for (index_t l = 0; l < L; ++l)
      for (index_t h = 0; h < kv_heads; ++h)
        for (index_t j = 0; j < c.length(s, l, h); ++j)
          next[static_cast<std::size_t>(s * L + l)] = std::max<index_t>(next[static_cast<std::size_t>(s * L + l)], c.position(s, l, h, j) + 1);
  const bool merges = Policy::merges;
  const index_t calls = pick(rng, 0, 24);
  for (index_t call = 0; call < calls; ++call) {
    const int kind = static_cast<int>(rng() % 100);
    const index_t s = pick(rng, 0, S - 1), l = pick(rng, 0, L - 1);
    index_t& next_position = next[static_cast<std::size_t>(s * L + l)];
    ++t.calls;
    try {
      if (kind < 15) {  // compress_prefill
        const index_t rows = chance(rng, 3) ? 0 : pick(rng, 1, 6);
        std::vector<float> queries(static_cast<std::size_t>(S * L * query_heads * std::max<index_t>(rows, 1) * dim));
        for (auto& q : queries) q = uniform(rng, -1.0f, 1.0f);
        if (chance(rng, 3)) queries[rng() % queries.size()] = weird_float(rng);
        std::vector<std::int32_t> window_positions;
        for (index_t seq = 0; seq < S; ++seq) {
          index_t newest = 0;
          for (index_t layer = 0; layer < L; ++layer) newest = std::max(newest, next[static_cast<std::size_t>(seq * L + layer)] - 1);
          for (index_t r = 0; r < std::max<index_t>(rows, 1); ++r) window_positions.push_back(static_cast<std::int32_t>(std::max<index_t>(newest - rows + 1 + r, 0)));
        }
        if (chance(rng, 3)) window_positions[0] = -1;
        std::vector<head_content> before;
        for (index_t seq = 0; seq < S; ++seq)
          for (index_t layer = 0; layer < L; ++layer)
            for (index_t h = 0; h < kv_heads; ++h) before.push_back(content(c, seq, layer, h));
        session->compress_prefill({queries.data(), window_positions.data(), rows});
        FUZZ_CHECK(!c.bad_positions, "compress_prefill accepted an unset or repeated position");
        for (index_t seq = 0; seq < S; ++seq)
          for (index_t layer = 0; layer < L; ++layer) {
            index_t step = 0, layer_total = 0, layer_budget = 0;
            for (index_t h = 0; h < kv_heads; ++h)
              for (const auto& [p, bits] : before[static_cast<std::size_t>((seq * L + layer) * kv_heads + h)]) step = std::max<index_t>(step, p);
            for (index_t h = 0; h < kv_heads; ++h) {
              const head_content& old = before[static_cast<std::size_t>((seq * L + layer) * kv_heads + h)];
              const head_content now = content(c, seq, layer, h);
              const auto n = static_cast<index_t>(old.size());
              for (const auto& [p, bits] : now) {
                FUZZ_CHECK(old.count(p) == 1u, "compress_prefill made up position " << p);
                if (!merges && old.count(p)) FUZZ_CHECK((old.at(p) == bits), "compress_prefill changed the K/V of position " << p);
              }
              FUZZ_CHECK(static_cast<index_t>(now.size()) <= compression_bound(policy.selector, layer, L, n),
                         "budget overshoot after compress_prefill: layer " << layer << " head " << h << " keeps " << now.size() << " of " << n
                                                                           << ", bound " << compression_bound(policy.selector, layer, L, n) << ", policy "
                                                                           << typeid(Policy).name());
              if constexpr (is_top_k<typename Policy::selector_type>::value)
                if (n <= policy.selector.budget(layer, L, n)) FUZZ_CHECK(static_cast<index_t>(now.size()) == n, "a head within its budget lost slots");
              if constexpr (is_top_k<typename Policy::selector_type>::value)
                for (const auto& [p, bits] : old)
                  if (n > policy.selector.budget(layer, L, n) && kc::detail::is_protected(p, step, policy.selector.rule.sinks, policy.selector.rule.recent))
                    FUZZ_CHECK(now.count(p) == 1u, "protected position " << p << " evicted by compress_prefill");
              if constexpr (is_adaptive<typename Policy::selector_type>::value) {
                layer_total += static_cast<index_t>(now.size());
                layer_budget += std::min(n, policy.selector.budget(layer, L, n)) + 1;  // one slot of rounding per head
              }
            }
            if constexpr (is_adaptive<typename Policy::selector_type>::value)
              FUZZ_CHECK(layer_total <= layer_budget, "Ada-KV layer overshoot: layer " << layer << " keeps " << layer_total << ", bound " << layer_budget
                                                                                         << ", floor " << policy.selector.floor_fraction << ", window "
                                                                                         << policy.selector.rule.recent << ", budget "
                                                                                         << policy.selector.budget(layer, L, 0));
          }
      } else if (kind < 55) {  // append
        index_t position = next_position;
        if (chance(rng, 8)) position -= pick(rng, 1, 3);
        else if (chance(rng, 10)) position += pick(rng, 1, 3);
        std::vector<float> k(static_cast<std::size_t>(kv_heads * dim)), v(k.size());
        for (auto& x : k) x = uniform(rng, -1.5f, 1.5f);
        for (auto& x : v) x = uniform(rng, -1.5f, 1.5f);
        if (chance(rng, 3)) (chance(rng, 50) ? k : v)[rng() % k.size()] = weird_float(rng);
        std::vector<head_content> before;
        for (index_t h = 0; h < kv_heads; ++h) before.push_back(content(c, s, l, h));
        session->append(s, l, k.data(), v.data(), position);
        FUZZ_CHECK(!c.bad_positions, "append accepted a cache with an unset or repeated position");
        next_position = position + 1;
        for (index_t h = 0; h < kv_heads; ++h) {
          const head_content& old = before[static_cast<std::size_t>(h)];
          const head_content now = content(c, s, l, h);
          const auto n = static_cast<index_t>(old.size());
          FUZZ_CHECK(now.count(static_cast<std::int32_t>(position)) == 1u, "append did not store the token");
          for (const auto& [p, bits] : now) {
            if (p == position) continue;
            FUZZ_CHECK(old.count(p) == 1u, "append made up position " << p);
            if (!merges && old.count(p)) FUZZ_CHECK((old.at(p) == bits), "append changed the K/V of position " << p);
          }
          const index_t budget = session->budget(s, l, h);
          using selector_type = typename Policy::selector_type;
          if constexpr (is_top_k<selector_type>::value) {
            if (policy.selector.decode_eviction) {
              FUZZ_CHECK(static_cast<index_t>(now.size()) == std::min(n + 1, std::max(budget, index_t{1})), "decode length " << now.size() << " for budget " << budget);
              for (const auto& [p, bits] : old)
                if (kc::detail::is_protected(p, position, policy.selector.rule.sinks, policy.selector.rule.recent))
                  FUZZ_CHECK(now.count(p) == 1u, "protected position " << p << " evicted by append");
            } else {
              FUZZ_CHECK(static_cast<index_t>(now.size()) == n + 1, "a top-k head without decode eviction did not grow by one");
            }
          } else if constexpr (std::is_same_v<selector_type, kc::selectors::hit_window>) {
            FUZZ_CHECK(static_cast<index_t>(now.size()) <= n + 1, "a CORM head grew by more than one");
          } else {
            FUZZ_CHECK(static_cast<index_t>(now.size()) == n + 1, "a head of a prefill-only selector did not grow by one");
          }
        }
      } else if (kind < 90) {  // attend (or observe)
        std::vector<float> q(static_cast<std::size_t>(query_heads * dim)), out(q.size(), 0.0f);
        for (auto& x : q) x = uniform(rng, -1.0f, 1.0f);
        if (chance(rng, 3)) q[rng() % q.size()] = weird_float(rng);
        index_t position = std::max<index_t>(next_position - 1, 0);
        if (chance(rng, 8)) position = pick(rng, -2, next_position + 2);
        if (kind < 80) {
          session->attend(s, l, q.data(), position, out.data());
          for (float x : out) FUZZ_CHECK(std::isfinite(x), "attend wrote a non-finite output");
        } else {
          session->observe(s, l, q.data(), position);
        }
      } else {  // set_budget
        const index_t slots = pick(rng, -1, cap + 1);
        session->set_budget(s, slots);
        for (index_t layer = 0; layer < L; ++layer)
          for (index_t h = 0; h < kv_heads; ++h) FUZZ_CHECK(session->budget(s, layer, h) == slots, "set_budget did not set the budget");
      }
    } catch (const kc::error&) {
      ++t.calls_rejected;
    }
    check_basic(c);
    if (merges && !c.non_finite) check_finite(c);
  }
}

// Policies whose scores are shared across KV heads, and WindowKV, read every head of a layer in the
// same slot order: the fuzzer fills their caches with aligned heads most of the time.
template <class Policy>
constexpr bool wants_aligned_heads() {
  return Policy::shares_scores_across_kv_heads || is_windows<typename Policy::selector_type>::value;
}

template <class Policy>
void run_policy(rng_t& rng, Policy policy, const kvtest::cache_shape& shape, tally& t) {
  // a field set out of range after construction (the sessions check hand-composed policies)
  if (chance(rng, 5)) {
    if constexpr (requires { policy.selector.rule; }) policy.selector.rule.kernel = count_arg(rng, 1, 9);
    if constexpr (requires { policy.selector.window; }) policy.selector.window = count_arg(rng, 1, 8);
    if constexpr (requires { policy.selector.group; }) policy.selector.group = count_arg(rng, 1, 4);
    if constexpr (requires { policy.merger.merge_count; }) policy.merger.merge_count = count_arg(rng, 1, 8);
    if constexpr (requires { policy.selector.floor_fraction; }) policy.selector.floor_fraction = share_arg(rng, 0.0, 1.0);
  }
  auto run_on = [&](auto& c) {
    c.shape = shape;
    make_layout(rng, c);
    fill(rng, c, wants_aligned_heads<Policy>() ? !chance(rng, 10) : chance(rng, 30));
    if (chance(rng, 8)) invalidate_layout(rng, c);
    run_calls(rng, policy, c, t);
  };
  if (chance(rng, 50)) {
    fuzz_cache<kc::layouts::strided> c;
    run_on(c);
  } else {
    fuzz_cache<kc::layouts::paged> c;
    run_on(c);
  }
}

// Draws a cache shape and one policy, with random (sometimes invalid) arguments, and runs it.
void run_once(rng_t& rng, tally& t) {
  using namespace kc::policies;
  const kvtest::cache_shape shape{pick(rng, 1, 2), pick(rng, 1, 3), pick(rng, 1, 3), pick(rng, 1, 40), index_t{1} << pick(rng, 0, 4)};
  const auto b = [&] { return count_arg(rng, 1, shape.capacity); };
  const auto w = [&] { return count_arg(rng, 0, std::min<index_t>(12, shape.capacity)); };
  try {
    switch (rng() % 15) {
      case 0: return run_policy(rng, streaming_llm(b(), w()), shape, t);
      case 1: return run_policy(rng, h2o(b(), w()), shape, t);
      case 2: return run_policy(rng, tova(b()), shape, t);
      case 3: return run_policy(rng, snapkv(b(), w(), kernel_arg(rng)), shape, t);
      case 4: return run_policy(rng, pyramidkv(b(), w(), kernel_arg(rng)), shape, t);
      case 5: return run_policy(rng, adakv(b(), w(), share_arg(rng, 0.0, 1.0)), shape, t);
      case 6: return run_policy(rng, knorm(b()), shape, t);
      case 7: return run_policy(rng, corm(count_arg(rng, 1, 6), count_arg(rng, 1, 10), w()), shape, t);
      case 8: return run_policy(rng, corm_budgeted(b(), w(), static_cast<float>(share_arg(rng, 0.0, 2.0))), shape, t);
      case 9: {
        const auto task = chance(rng, 50) ? kc::selectors::task_type::localization : kc::selectors::task_type::aggregation;
        return run_policy(rng, windowkv(count_arg(rng, 1, 20), count_arg(rng, 1, 4), task, count_arg(rng, 1, 6), w()), shape, t);
      }
      case 10: return run_policy(rng, kvmerger(share_arg(rng, 0.05, 1.0)), shape, t);
      case 11: return run_policy(rng, cam(b(), w(), count_arg(rng, 1, 8)), shape, t);
      case 12: {  // hand-composed: key norms, top-k with protected tokens, average merge
        kc::policy<kc::scorers::key_norm, kc::selectors::top_k<kc::budgets::fixed>, kc::mergers::average> p{};
        p.selector.schedule.slots = b();
        p.selector.rule.sinks = w();
        p.selector.rule.recent = w();
        return run_policy(rng, p, shape, t);
      }
      case 13: {  // hand-composed: recency over windows, Gaussian merge
        kc::policy<kc::scorers::recency, kc::selectors::windows<kc::budgets::group_pyramid>, kc::mergers::gaussian_pivot> p{};
        p.selector.schedule = {count_arg(rng, 1, 16), count_arg(rng, 1, 3)};
        p.selector.window = count_arg(rng, 1, 4);
        p.selector.suffix = w();
        p.selector.group = p.selector.schedule.group;
        return run_policy(rng, p, shape, t);
      }
      default: {  // hand-composed: SnapKV scores, faithful merging sets, average merge
        kc::policy<kc::scorers::observation_window, kc::selectors::merging_sets<kc::budgets::fixed>, kc::mergers::average> p{};
        p.selector.schedule.slots = b();
        p.selector.eps = static_cast<float>(share_arg(rng, 0.0, 1.0));
        p.selector.skip_first = pick(rng, 0, 1);
        p.selector.skip_last = pick(rng, 0, 1);
        return run_policy(rng, p, shape, t);
      }
    }
  } catch (const kc::error&) {
    ++t.policies_rejected;
  }
}

std::uint64_t env_or(const char* name, std::uint64_t fallback) {
  const char* value = std::getenv(name);
  return value != nullptr && *value != '\0' ? std::strtoull(value, nullptr, 10) : fallback;
}

}  // namespace

BOOST_AUTO_TEST_CASE(random_policies_layouts_and_call_orders_end_in_a_result_or_a_kvcompact_error) {
  const std::uint64_t first_seed = env_or("KVCOMPACT_FUZZ_SEED", 20261130), runs = env_or("KVCOMPACT_FUZZ_RUNS", 20000);
  tally t;
  for (std::uint64_t run = 0; run < runs; ++run) {
    const std::uint64_t seed = first_seed + run;
    BOOST_TEST_CONTEXT("run seed " << seed << " (rerun alone: KVCOMPACT_FUZZ_SEED=" << seed << " KVCOMPACT_FUZZ_RUNS=1)") {
      rng_t rng(seed);
      try {
        run_once(rng, t);
      } catch (const std::exception& e) {
        BOOST_ERROR("an exception other than kvcompact::error escaped: " << e.what());
      }
    }
    ++t.runs;
  }
  BOOST_TEST_MESSAGE("runs " << t.runs << ", policies rejected " << t.policies_rejected << ", sessions " << t.sessions << " (rejected "
                             << t.sessions_rejected << "), calls " << t.calls << " (rejected " << t.calls_rejected << ")");
  if (runs >= 1000) {  // both outcomes must be exercised, or the generator is broken
    BOOST_TEST(t.policies_rejected > 0);
    BOOST_TEST(t.sessions_rejected > 0);
    BOOST_TEST(t.calls_rejected > 0);
    BOOST_TEST(t.calls - t.calls_rejected > t.calls / 4);
  }
}
