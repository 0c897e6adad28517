// SPDX-License-Identifier: Apache-2.0
// Cache layouts of the architectures that need training (docs/methods.md 9, 10): layouts::ragged_layers
// (per-layer capacities: every slot a distinct, in-bounds element run), MixAttention's ring-buffer window
// layers with sinks and cross-layer sharing (token-by-token decode through a layer_condensed<ragged_layers>
// cache against a whole-sequence double-precision reference of the visibility rule, heads never beyond
// their layer's capacity), the bounded slot memory's nearest-key write rule against a plain reference at
// prefill and at every decode step, and the errors: window 0, negative sinks, budgets above a layer's
// capacity, a full ring layer under a policy that does not evict.
#include "support/custom_layout.hpp"
#include "support/expect_error.hpp"
#include "support/reference.hpp"

#include <kvcompact/kvcompact.hpp>
#include <kvcompact/layouts/ragged_layers.hpp>

#include <boost/test/unit_test.hpp>

#include <algorithm>
#include <cmath>
#include <map>
#include <random>
#include <set>
#include <string>
#include <vector>

namespace kc = kvcompact;
namespace lay = kc::layouts;
using kc::index_t;
using kvtest::expect_error;

BOOST_AUTO_TEST_CASE(ragged_layers_address_every_slot_once_within_its_layer) {
  static_assert(kc::kv_layout<lay::ragged_layers> && std::is_trivially_copyable_v<lay::ragged_layers>);
  static_assert(kc::kv_layout<lay::layer_condensed<lay::ragged_layers>>);
  const std::vector<index_t> caps{5, 1, 12, 3};
  const auto layout = lay::ragged_layers::make(2, caps, 3, 4);
  BOOST_TEST(layout.capacity() == 12);
  BOOST_TEST(layout.elements() == 2 * 3 * 4 * (5 + 1 + 12 + 3));
  std::vector<int> hits(static_cast<std::size_t>(layout.elements()), 0);
  for (index_t s = 0; s < 2; ++s)
    for (index_t l = 0; l < 4; ++l) {
      BOOST_TEST(layout.layer_capacity(l) == caps[static_cast<std::size_t>(l)]);
      BOOST_TEST(kc::detail::layer_capacity(layout, l) == caps[static_cast<std::size_t>(l)]);
      for (index_t h = 0; h < 3; ++h)
        for (index_t j = 0; j < caps[static_cast<std::size_t>(l)]; ++j)
          for (index_t d = 0; d < 4; ++d) {
            const index_t e = layout.offset(s, l, h, j) + d * layout.dim_stride();
            BOOST_TEST_REQUIRE((e >= 0 && e < layout.elements()));
            ++hits[static_cast<std::size_t>(e)];
          }
    }
  BOOST_TEST(std::all_of(hits.begin(), hits.end(), [](int n) { return n == 1; }));
  BOOST_TEST(kc::detail::layer_capacity(lay::bhsd(1, 2, 1, 9, 4), 1) == 9);  // uniform layouts: capacity()
  const lay::layer_condensed<lay::ragged_layers> condensed{layout, lay::layer_map::parse("0_1_1_2_3")};
  BOOST_TEST(condensed.layer_capacity(2) == 12);
  expect_error([] { (void)lay::ragged_layers::make(1, std::vector<index_t>{4, 0}, 1, 8); }, "capacities", "layer 1");
  expect_error([] { (void)lay::ragged_layers::make(1, std::vector<index_t>{}, 1, 8); }, "capacities");
  expect_error([] { (void)lay::ragged_layers::make(1, std::vector<index_t>(257, 4), 1, 8); }, "capacities");
  expect_error([] { (void)lay::ragged_layers::make(1, std::vector<index_t>{index_t{1} << 30, index_t{1} << 30}, 1, 8); }, "capacities", "2^31");
  expect_error([] { (void)lay::ragged_layers::make(0, std::vector<index_t>{4}, 1, 8); }, "sequences");
  expect_error([] { lay::ragged_layers{}.validate("test"); }, "layout");
}

BOOST_AUTO_TEST_CASE(layer_map_window_patterns_and_errors) {
  // Character.AI-style pattern of 13 layers (LLM Foundry's test): storage {0, 1, 3, 7, 9}
  const auto ca = lay::layer_map::character_ai(13, 8);
  const auto want = lay::layer_map::parse("0_1s_1s_3s_3s_3s_0_7s_7s_9s_9s_9s_0", 8);
  for (int l = 0; l < 13; ++l) {
    BOOST_TEST(ca.source[l] == want.source[l], "layer " << l);
    BOOST_TEST(ca.sliding[l] == want.sliding[l], "layer " << l);
  }
  BOOST_TEST(ca.cache_layers == 5);
  BOOST_TEST(!ca.window_only(0));
  for (int s = 1; s < 5; ++s) BOOST_TEST(ca.window_only(s));
  // 30 layers: the spec string of the SmolLM2-shaped map, tail `25s_25s_27s_27s_0`
  const auto ca30 = lay::layer_map::character_ai(30, 16, 2);
  const auto want30 = lay::layer_map::parse("0_1s_1s_3s_3s_3s_0_7s_7s_9s_9s_9s_0_13s_13s_15s_15s_15s_0_19s_19s_21s_21s_21s_0_25s_25s_27s_27s_0", 16, 2);
  for (int l = 0; l < 30; ++l) BOOST_TEST((ca30.source[l] == want30.source[l] && ca30.sliding[l] == want30.sliding[l]), "layer " << l);
  BOOST_TEST(ca30.cache_layers == 11);
  const auto caps = kc::policies::mixattention_capacities(ca30, 100);
  BOOST_TEST(caps.size() == 11u);
  BOOST_TEST(caps[0] == 100);
  for (std::size_t s = 1; s < caps.size(); ++s) BOOST_TEST(caps[s] == 18);
  const auto sl = lay::layer_map::interleaved(7, 4, 3, 1);
  for (int l = 0; l < 7; ++l) {
    BOOST_TEST(sl.source[l] == l);
    BOOST_TEST(sl.sliding[l] == (l % 3 != 2));
    BOOST_TEST(sl.window_only(l) == sl.sliding[l]);
  }
  // sinks: a sliding layer sees the first `sinks` positions and the last `window`
  BOOST_TEST(sl.visible(0, 0, 50));
  BOOST_TEST(!sl.visible(0, 1, 50));
  BOOST_TEST(!sl.visible(0, 46, 50));
  BOOST_TEST(sl.visible(0, 47, 50));
  BOOST_TEST(sl.visible(2, 1, 50));  // full layer
  expect_error([] { (void)lay::layer_map::parse("0_1s", 0); }, "sliding_window", "at least 1");
  expect_error([] { (void)lay::layer_map::parse("0_1s", 4, -1); }, "sliding_sinks");
  expect_error([] { (void)lay::layer_map::character_ai(13, 0); }, "sliding_window");
  expect_error([] { (void)lay::layer_map::interleaved(4, 0, 2); }, "sliding_window");
  expect_error([] { (void)lay::layer_map::interleaved(4, 8, 0); }, "full_every");
  expect_error([] { (void)lay::layer_map::character_ai(0, 8); }, "layers");
  BOOST_CHECK_NO_THROW((void)lay::layer_map::parse("0_1", 0));  // no sliding layer: the window is unused
  expect_error([&] { (void)kc::policies::mixattention(ca30, 17); }, "full_slots", "18");
}

// ---- MixAttention decode: ring buffers and sharing against the whole-sequence reference ------------

namespace {

constexpr index_t MS = 2, MH = 2, MG = 2, MD = 8, MT = 40;

struct token_stream {
  std::vector<float> k, v, q;  // k, v: [s][model layer][t][h][d]; q: [s][model layer][t][g][d]
  int layers;
  token_stream(int model_layers, std::uint32_t seed) : layers(model_layers) {
    std::mt19937 rng(seed);
    k = kvtest::random_vector(MS * layers * MT * MH * MD, 1.0, rng);
    v = kvtest::random_vector(MS * layers * MT * MH * MD, 1.0, rng);
    q = kvtest::random_vector(MS * layers * MT * MH * MG * MD, 2.0, rng);
  }
  const float* key(index_t s, int l, index_t t) const { return k.data() + ((s * layers + l) * MT + t) * MH * MD; }
  const float* value(index_t s, int l, index_t t) const { return v.data() + ((s * layers + l) * MT + t) * MH * MD; }
  const float* query(index_t s, int l, index_t t) const { return q.data() + ((s * layers + l) * MT + t) * MH * MG * MD; }
};

// Attention of query (s, l, t, g) over the KV the model layer c(l) produced for every position the
// rule lets it see (written from docs/methods.md 9.3: causal; sliding layers only the last `window`
// positions and the first `sinks`), in double.
std::vector<double> whole_sequence_output(const token_stream& data, const lay::layer_map& m, index_t s, int l, index_t t, index_t g) {
  const int src = m.source[l];
  const index_t h = g / MG;
  const float* q = data.query(s, l, t) + g * MD;
  std::vector<double> logits, out(MD, 0.0);
  std::vector<index_t> seen;
  for (index_t p = 0; p <= t; ++p) {
    if (m.sliding[l] && p <= t - m.window && p >= m.sinks) continue;
    double dot = 0;
    for (index_t d = 0; d < MD; ++d) dot += static_cast<double>(q[d]) * data.key(s, src, p)[h * MD + d];
    logits.push_back(dot / std::sqrt(static_cast<double>(MD)));
    seen.push_back(p);
  }
  const double top = *std::max_element(logits.begin(), logits.end());
  double sum = 0;
  for (double& x : logits) sum += (x = std::exp(x - top));
  for (std::size_t i = 0; i < seen.size(); ++i)
    for (index_t d = 0; d < MD; ++d) out[static_cast<std::size_t>(d)] += logits[i] / sum * data.value(s, src, seen[i])[h * MD + d];
  return out;
}

// Feeds every token through a layer_condensed<ragged_layers> cache with the mixattention policy (per
// token: each layer that computes KV appends it, then attends) and compares every output.
void check_mixattention_decode(const lay::layer_map& m, index_t full_slots, std::uint32_t seed) {
  const token_stream data(m.model_layers, seed);
  const auto caps = kc::policies::mixattention_capacities(m, full_slots);
  using layout_t = lay::layer_condensed<lay::ragged_layers>;
  const layout_t layout{lay::ragged_layers::make(MS, caps, MH, MD), m};
  kvtest::layout_cache<float, layout_t> c{layout,
                                          std::vector<float>(static_cast<std::size_t>(layout.inner.elements()), 0.0f),
                                          {},
                                          std::vector<std::int32_t>(static_cast<std::size_t>(MS * m.cache_layers * MH), 0),
                                          std::vector<std::int32_t>(static_cast<std::size_t>(MS * m.cache_layers * MH * layout.capacity()), -1)};
  c.values = c.keys;
  const auto policy = kc::policies::mixattention(m, full_slots);
  const kc::attention_shape shape{MH * MG};
  kvtest::session_storage<decltype(policy), float, layout_t> storage(layout, shape);
  kc::cpu::session<decltype(policy), float, layout_t> session(policy, c.view(), shape, storage.state_span(), storage.workspace_span());
  std::vector<float> out(MH * MG * MD);
  int bad = 0, compared = 0, full_rings = 0;
  for (index_t t = 0; t < MT; ++t)
    for (index_t s = 0; s < MS; ++s)
      for (int l = 0; l < m.model_layers; ++l) {
        if (m.computes_kv(l)) {
          int own = -1;
          for (int r = 0; r < m.model_layers; ++r)
            if (m.source[r] == l) own = m.storage[r];
          session.append(s, own, data.key(s, l, t), data.value(s, l, t), t);
          for (index_t h = 0; h < MH; ++h) {
            const index_t length = c.lengths[static_cast<std::size_t>(c.head_index(s, own, h))];
            BOOST_TEST_REQUIRE(length <= layout.layer_capacity(own));
            full_rings += m.window_only(own) && length == layout.layer_capacity(own);
          }
        }
        session.attend(s, l, data.query(s, l, t), t, out.data());
        for (index_t g = 0; g < MH * MG; ++g) {
          const auto want = whole_sequence_output(data, m, s, l, t, g);
          for (index_t d = 0; d < MD; ++d, ++compared) bad += !kvtest::close(out[static_cast<std::size_t>(g * MD + d)], want[static_cast<std::size_t>(d)], 1e-4, 1e-5);
        }
      }
  BOOST_TEST(bad == 0, "mismatching elements out of " << compared);
  BOOST_TEST(full_rings > 0);  // the rings really wrapped
}

}  // namespace

BOOST_AUTO_TEST_CASE(mixattention_rings_and_sharing_match_the_whole_sequence_reference) {
  check_mixattention_decode(lay::layer_map::character_ai(8, 6, 0), MT, 61);   // trained form: no sinks
  check_mixattention_decode(lay::layer_map::character_ai(8, 5, 2), MT, 62);   // with sinks
  check_mixattention_decode(lay::layer_map::interleaved(5, 7, 2, 3), MT, 63);     // the approximation: no sharing
  check_mixattention_decode(lay::layer_map::parse("0_1s_1_1s_4s", 4, 1), MT, 64);  // layer 1's cache read by sliding and full layers: not a ring
}

BOOST_AUTO_TEST_CASE(ring_layers_refuse_budgets_above_their_capacity_and_non_evicting_policies) {
  const auto m = lay::layer_map::interleaved(2, 4, 2, 1);  // layer 0 slides (ring of 5), layer 1 is full
  using layout_t = lay::layer_condensed<lay::ragged_layers>;
  const layout_t layout{lay::ragged_layers::make(1, kc::policies::mixattention_capacities(m, 12), 1, 4), m};
  kvtest::layout_cache<float, layout_t> c{layout, std::vector<float>(static_cast<std::size_t>(layout.inner.elements()), 0.0f), {},
                                          std::vector<std::int32_t>(2, 0), std::vector<std::int32_t>(24, -1)};
  c.values = c.keys;
  const kc::attention_shape shape{1};
  auto run = [&](const auto& policy, index_t tokens) {
    using policy_t = std::decay_t<decltype(policy)>;
    kvtest::session_storage<policy_t, float, layout_t> storage(layout, shape);
    kc::cpu::session<policy_t, float, layout_t> session(policy, c.view(), shape, storage.state_span(), storage.workspace_span());
    const std::vector<float> kv(4, 0.5f);
    for (index_t t = 0; t < tokens; ++t) session.append(0, 0, kv.data(), kv.data(), t);
  };
  expect_error([&] { run(kc::policies::streaming_llm(6, 1), 0); }, "policy", "layer 0 is 6 slots");
  expect_error([&] { run(kc::policies::snapkv(5, 2), 6); }, "cache", "capacity 5");  // appends without evicting: full after 5
  c.lengths[0] = 6;
  expect_error([&] { run(kc::policies::mixattention(m, 12), 0); }, "cache.lengths", "capacity 5");
}

// ---- the bounded slot memory's write rule ---------------------------------------------------------

namespace {

struct entry {
  std::int32_t position;
  std::vector<double> k, v;
};

double cosine(const std::vector<double>& a, const std::vector<double>& b) {
  double dot = 0, a2 = 0, b2 = 0;
  for (std::size_t d = 0; d < a.size(); ++d) dot += a[d] * b[d], a2 += a[d] * a[d], b2 += b[d] * b[d];
  return dot / (std::sqrt(a2) * std::sqrt(b2));
}

// docs/methods.md 10.3 with plain loops: every evicted entry joins its most similar kept entry (cosine of
// the keys as they were), each kept entry becomes the mean of itself and what joined it.
std::vector<entry> reference_write(const std::vector<entry>& kept, const std::vector<entry>& evicted) {
  std::vector<entry> out = kept;
  std::vector<int> members(kept.size(), 1);
  std::vector<std::vector<double>> sum_k, sum_v;
  for (const auto& e : kept) sum_k.push_back(e.k), sum_v.push_back(e.v);
  for (const auto& e : evicted) {
    std::size_t best = 0;
    for (std::size_t i = 1; i < kept.size(); ++i)
      if (cosine(e.k, kept[i].k) > cosine(e.k, kept[best].k)) best = i;
    ++members[best];
    for (std::size_t d = 0; d < e.k.size(); ++d) sum_k[best][d] += e.k[d], sum_v[best][d] += e.v[d];
  }
  for (std::size_t i = 0; i < out.size(); ++i)
    for (std::size_t d = 0; d < out[i].k.size(); ++d) out[i].k[d] = sum_k[i][d] / members[i], out[i].v[d] = sum_v[i][d] / members[i];
  return out;
}

std::map<std::int32_t, entry> head_entries(const kvtest::random_cache<float>& c, index_t s, index_t l, index_t h) {
  std::map<std::int32_t, entry> out;
  for (index_t j = 0; j < c.length(s, l, h); ++j) {
    entry e{static_cast<std::int32_t>(c.position(s, l, h, j)), {}, {}};
    for (index_t d = 0; d < c.shape.head_dim; ++d) e.k.push_back(c.key(s, l, h, j, d)), e.v.push_back(c.value(s, l, h, j, d));
    out[e.position] = e;
  }
  return out;
}

int mismatches(const std::map<std::int32_t, entry>& got, const std::vector<entry>& want) {
  int bad = 0;
  for (const auto& e : want) {
    const auto it = got.find(e.position);
    if (it == got.end()) return 1000;
    for (std::size_t d = 0; d < e.k.size(); ++d)
      bad += !kvtest::close(it->second.k[d], e.k[d], 1e-5, 1e-6) + !kvtest::close(it->second.v[d], e.v[d], 1e-5, 1e-6);
  }
  return bad + static_cast<int>(got.size() != want.size()) * 1000;
}

}  // namespace

BOOST_AUTO_TEST_CASE(bounded_memory_prefill_writes_evicted_entries_into_their_nearest_slot) {
  kvtest::fill_options fill;
  fill.min_length = 20;
  fill.max_length = 30;
  const auto source = kvtest::make_random_cache<float>({2, 2, 2, 32, 8}, fill, 71);
  const auto window = kvtest::make_random_window(2, 2, 4, 30, 8, {29, 29}, 2.0, 72);
  auto cache = source;
  constexpr index_t slots = 12, recent = 3;
  kvtest::run_prefill(kc::policies::bounded_memory(slots, recent), cache.view(), kc::attention_shape{4}, window.view());
  for (index_t s = 0; s < 2; ++s)
    for (index_t l = 0; l < 2; ++l)
      for (index_t h = 0; h < 2; ++h) {
        const auto before = head_entries(source, s, l, h);
        const auto after = head_entries(cache, s, l, h);
        BOOST_TEST(after.size() == static_cast<std::size_t>(std::min<index_t>(slots, source.length(s, l, h))));
        std::vector<entry> kept, evicted;
        for (const auto& [p, e] : before) (after.count(p) ? kept : evicted).push_back(e);
        BOOST_TEST(mismatches(after, reference_write(kept, evicted)) == 0, "s " << s << " l " << l << " h " << h);
        index_t step = 0;  // the layer's newest position: the recent window is the layer's
        for (index_t g = 0; g < 2; ++g) step = std::max(step, source.length(s, l, g) - 1);
        for (const auto& [p, e] : before)
          if (p > step - recent) BOOST_TEST(after.count(p) == 1u, "recent position " << p << " kept");
      }
}

BOOST_AUTO_TEST_CASE(slot_memory_decode_writes_each_victim_into_its_nearest_slot) {
  // A head of M = 6 slots, victims chosen by recency (oldest non-sink, 1 sink): after every append the
  // memory equals the reference memory updated by the same rule in double precision.
  constexpr index_t M = 6, D = 8, steps = 25;
  kvtest::random_cache<float> c({1, 1, 1, M, D});
  const kc::policy<kc::scorers::recency, kc::selectors::top_k<kc::budgets::fixed>, kc::mergers::nearest_key> policy{{}, {kc::budgets::fixed{M}, {1, 0}}, {}};
  kvtest::session_storage<decltype(policy), float, kc::layouts::strided> storage(c.layout, kc::attention_shape{1});
  kc::cpu::session<decltype(policy), float, kc::layouts::strided> session(policy, c.view(), kc::attention_shape{1}, storage.state_span(), storage.workspace_span());
  std::mt19937 rng(73);
  std::vector<entry> memory;
  for (index_t t = 0; t < steps; ++t) {
    const auto k = kvtest::random_vector(D, 1.0, rng), v = kvtest::random_vector(D, 1.0, rng);
    if (static_cast<index_t>(memory.size()) == M) {
      auto victim = std::min_element(memory.begin() + 1, memory.end(), [](const entry& a, const entry& b) { return a.position < b.position; });
      const entry e = *victim;
      memory.erase(victim);
      memory = reference_write(memory, {e});
    }
    memory.push_back({static_cast<std::int32_t>(t), std::vector<double>(k.begin(), k.end()), std::vector<double>(v.begin(), v.end())});
    session.append(0, 0, k.data(), v.data(), t);
    BOOST_TEST(c.length(0, 0, 0) == std::min<index_t>(t + 1, M));
    BOOST_TEST(mismatches(head_entries(c, 0, 0, 0), memory) == 0, "step " << t);
  }
}
