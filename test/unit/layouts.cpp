// SPDX-License-Identifier: Apache-2.0
// Layouts: strided (BHSD, BSHD, padded strides) and paged (NHD, HND) offsets against hand-written index
// formulas; the same data compressed by every preset through contiguous, padded, paged (random permuted
// page table), a user-defined layout and a layer-condensed paged layout gives identical keep-sets and
// bit-identical compacted K/V, and never writes outside the addressed slots; layer_map parsing and the
// LCKV / CLA / YOCO helpers; decode attention with the layer-map visibility rules (reads-ahead layers
// exclude the current token, sliding windows) against a double-precision causal reference over the whole
// sequence, token by token, through strided, paged and user inner layouts.
#include "support/custom_layout.hpp"
#include "support/reference.hpp"

#include <kvcompact/kvcompact.hpp>

#include <boost/test/unit_test.hpp>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

namespace kc = kvcompact;
namespace lay = kc::layouts;
using kc::index_t;

BOOST_AUTO_TEST_CASE(strided_offsets_match_index_formulas) {
  const index_t S = 3, L = 2, H = 4, C = 5, D = 6;
  const auto bhsd = lay::bhsd(S, L, H, C, D), bshd = lay::bshd(S, L, H, C, D);
  // padded: each head row of C slots is padded to C * D + 7 elements, each layer to S * H * (C * D + 7) + 3
  const index_t head_pitch = C * D + 7, layer_pitch = S * H * head_pitch + 3;
  const lay::strided padded{S, L, H, C, D, H * head_pitch, layer_pitch, head_pitch, D, 1};
  const slot_major_interleaved custom{S, L, H, C, D};
  int bad = 0;
  for (index_t s = 0; s < S; ++s)
    for (index_t l = 0; l < L; ++l)
      for (index_t h = 0; h < H; ++h)
        for (index_t j = 0; j < C; ++j)
          for (index_t d = 0; d < D; ++d) {
            bad += bhsd.offset(s, l, h, j) + d * bhsd.dim_stride() != ((((l * S + s) * H + h) * C + j) * D + d);
            bad += bshd.offset(s, l, h, j) + d * bshd.dim_stride() != ((((l * S + s) * C + j) * H + h) * D + d);
            bad += padded.offset(s, l, h, j) + d * padded.dim_stride() != l * layer_pitch + (s * H + h) * head_pitch + j * D + d;
            bad += custom.offset(s, l, h, j) + d * custom.dim_stride() != ((((j * L + l) * S + s) * D + d) * H + h);
          }
  BOOST_TEST(bad == 0);
  BOOST_TEST(kvtest::storage_elements(bhsd) == S * L * H * C * D);  // dense: every element used once
  BOOST_TEST(kvtest::storage_elements(bshd) == S * L * H * C * D);
  BOOST_TEST(kvtest::storage_elements(custom) == custom.elements());
  BOOST_TEST(bhsd.capacity() == C);
  BOOST_TEST(bshd.head_dim() == D);
}

BOOST_AUTO_TEST_CASE(paged_offsets_match_page_table_formula) {
  const kvtest::cache_shape shape{3, 2, 4, 24, 8};
  for (auto format : {lay::page_format::nhd, lay::page_format::hnd}) {
    kvtest::random_paging paging;
    kvtest::make_random_paging(paging, shape, 4, format, 5, 11);
    const auto& p = paging.layout;
    BOOST_TEST(p.capacity() == 24);
    BOOST_TEST(p.dim_stride() == 1);
    const index_t page_elements = 4 * 4 * 8, pool = p.num_pages * page_elements;
    std::vector<int> hits(static_cast<std::size_t>(shape.layers * pool), 0);
    int bad = 0;
    for (index_t s = 0; s < 3; ++s)
      for (index_t l = 0; l < 2; ++l)
        for (index_t h = 0; h < 4; ++h)
          for (index_t j = 0; j < 24; ++j)
            for (index_t d = 0; d < 8; ++d) {
              const index_t page = paging.table[static_cast<std::size_t>(s * p.table_stride + j / 4)], in = j % 4;
              const index_t inner = format == lay::page_format::nhd ? (in * 4 + h) * 8 + d : (h * 4 + in) * 8 + d;
              const index_t want = l * pool + page * page_elements + inner;
              const index_t got = p.offset(s, l, h, j) + d;
              bad += got != want;
              if (got >= 0 && got < static_cast<index_t>(hits.size())) ++hits[static_cast<std::size_t>(got)];
            }
    BOOST_TEST(bad == 0);
    BOOST_TEST(*std::max_element(hits.begin(), hits.end()) == 1);  // distinct pages: no element addressed twice
    BOOST_CHECK_NO_THROW(p.validate("test"));
  }
}

namespace {

constexpr index_t S = 2, L = 4, H = 2, G = 4, CAP = 64, D = 8;

kvtest::random_cache<float> preset_data(std::uint32_t seed) {
  kvtest::fill_options fill;
  fill.min_length = fill.max_length = 60;
  return kvtest::make_random_cache<float>({S, L, H, CAP, D}, fill, seed);
}

// Number of storage elements whose bits still hold copy_into's filler (storage no slot addresses).
template <class T, class Layout>
std::size_t filler_count(const kvtest::layout_cache<T, Layout>& c) {
  std::size_t n = 0;
  for (std::size_t i = 0; i < c.keys.size(); ++i) n += (kvtest::element_bits(c.keys[i]) == 0x77777777u) + (kvtest::element_bits(c.values[i]) == 0x77777777u);
  return n;
}

// Compresses a copy of `source` in `layout` with `policy`; checks padding is untouched; returns the snapshot.
template <class Policy, class Layout>
kvtest::snapshot compress_in(const Policy& policy, const kvtest::random_cache<float>& source, const Layout& layout, const kvtest::random_window& w) {
  auto c = kvtest::copy_into(source, layout);
  const std::size_t before = filler_count(c);
  kvtest::run_prefill(policy, c.view(), kc::attention_shape{G}, w.view());
  BOOST_TEST(filler_count(c) == before, "a preset wrote storage that no slot addresses");
  return kvtest::take_snapshot(c.view());
}

}  // namespace

BOOST_AUTO_TEST_CASE(every_preset_gives_identical_results_in_every_layout) {
  const auto source = preset_data(5);
  const auto w = kvtest::make_random_window(S, L, G, 8, D, {59, 59}, 3.0, 6);
  const kvtest::cache_shape shape{S, L, H, CAP, D};
  kvtest::random_paging nhd, hnd;
  kvtest::make_random_paging(nhd, shape, 8, lay::page_format::nhd, 3, 7);
  kvtest::make_random_paging(hnd, shape, 16, lay::page_format::hnd, 0, 8);
  const index_t head_pitch = CAP * D + 5;
  const lay::strided padded{S, L, H, CAP, D, H * head_pitch, S * H * head_pitch + 11, head_pitch, D, 1};
  const lay::strided dim_strided{S, L, H, CAP, D, L * H * CAP * D * 2, H * CAP * D * 2, CAP * D * 2, D * 2, 2};  // every other element
  // layer-condensed over a paged inner layout: a CLA map with 2 model layers per cache layer
  const lay::layer_condensed<lay::paged> condensed{nhd.layout, lay::layer_map::cross_layer(2 * L, 2)};
  kc::policies::preset_options options{20, 60};
  options.window = 8;
  options.layer_group = 2;
  for (std::string_view name : kc::policies::preset_names) {
    kc::policies::with_preset(name, options, [&](auto policy) {
      const auto reference = compress_in(policy, source, source.layout, w);
      int compressed = 0;
      for (std::int32_t n : reference.lengths) compressed += n < 60;
      BOOST_TEST(compressed > 0, name << " compressed nothing: the comparison would be weak");
      BOOST_TEST((compress_in(policy, source, lay::bshd(S, L, H, CAP, D), w) == reference), name << ": bshd differs");
      BOOST_TEST((compress_in(policy, source, padded, w) == reference), name << ": padded strides differ");
      BOOST_TEST((compress_in(policy, source, dim_strided, w) == reference), name << ": dim stride 2 differs");
      BOOST_TEST((compress_in(policy, source, nhd.layout, w) == reference), name << ": paged NHD differs");
      BOOST_TEST((compress_in(policy, source, hnd.layout, w) == reference), name << ": paged HND differs");
      BOOST_TEST((compress_in(policy, source, slot_major_interleaved{S, L, H, CAP, D}, w) == reference), name << ": custom layout differs");
      BOOST_TEST((compress_in(policy, source, condensed, w) == reference), name << ": layer_condensed<paged> differs");
      return 0;
    });
  }
}

BOOST_AUTO_TEST_CASE(layer_map_parse_and_helpers) {
  // LCKV on TinyLlama (22 layers): layer 0 and 21 warm-up, 1..19 read layer 20
  std::string spec = "0";
  for (int l = 1; l <= 20; ++l) spec += "_20";
  spec += "_21";
  const auto m = lay::layer_map::parse(spec);
  BOOST_TEST(m.model_layers == 22);
  BOOST_TEST(m.cache_layers == 3);
  for (int l = 0; l < 22; ++l) {
    const int want_storage = l == 0 ? 0 : (l == 21 ? 2 : 1);
    BOOST_TEST(m.storage[l] == want_storage, "layer " << l);
    BOOST_TEST(m.computes_kv(l) == (l == 0 || l == 20 || l == 21), "layer " << l);
    BOOST_TEST(m.reads_ahead(l) == (l >= 1 && l <= 19), "layer " << l);
    BOOST_TEST(!m.sliding[l]);
  }
  BOOST_TEST((lay::layer_map::lckv(22, 1, 1).source[5] == 20));
  for (int l = 0; l < 22; ++l) BOOST_TEST(lay::layer_map::lckv(22, 1, 1).source[l] == m.source[l]);  // same map as the string
  // the abbreviated string "0_20_20_20_21" names layers outside its own 5-layer model
  BOOST_CHECK_THROW(lay::layer_map::parse("0_20_20_20_21"), kc::error);

  // YOCO-like sliding map
  const auto y = lay::layer_map::parse("0s_1s_2_2", 16);
  BOOST_TEST(y.model_layers == 4);
  BOOST_TEST(y.cache_layers == 3);
  BOOST_TEST(y.window == 16);
  const bool sliding[] = {true, true, false, false}, computes[] = {true, true, true, false};
  const int storage[] = {0, 1, 2, 2};
  for (int l = 0; l < 4; ++l) {
    BOOST_TEST(y.sliding[l] == sliding[l]);
    BOOST_TEST(y.computes_kv(l) == computes[l]);
    BOOST_TEST(y.storage[l] == storage[l]);
    BOOST_TEST(!y.reads_ahead(l));
  }
  // sliding visibility: key > query - window, key <= query
  BOOST_TEST(y.visible(0, 100, 100));
  BOOST_TEST(y.visible(0, 85, 100));
  BOOST_TEST(!y.visible(0, 84, 100));
  BOOST_TEST(!y.visible(0, 101, 100));
  BOOST_TEST(y.visible(2, 0, 100));  // not sliding

  // lckv(L, bottom, top): bottom warm-up layers and top ones keep their KV, the rest read layer L - top - 1
  const auto k = lay::layer_map::lckv(8, 2, 1);
  const int src[] = {0, 1, 6, 6, 6, 6, 6, 7};
  for (int l = 0; l < 8; ++l) {
    BOOST_TEST(k.source[l] == src[l]);
    BOOST_TEST(k.reads_ahead(l) == (l >= 2 && l <= 5));
    BOOST_TEST(k.computes_kv(l) == (l <= 1 || l >= 6));
  }
  BOOST_TEST(k.cache_layers == 4);
  BOOST_TEST(k.storage[3] == 2);
  BOOST_TEST(k.storage[7] == 3);
  BOOST_TEST(!k.visible(3, 10, 10));  // reads ahead: the current position is not visible
  BOOST_TEST(k.visible(3, 9, 10));
  BOOST_TEST(k.visible(6, 10, 10));   // ordinary layer: it is

  // cross_layer(L, 2): pairs share the lower layer's KV (reads below: ordinary causal)
  const auto cla = lay::layer_map::cross_layer(6, 2);
  for (int l = 0; l < 6; ++l) {
    BOOST_TEST(cla.source[l] == l - l % 2);
    BOOST_TEST(cla.storage[l] == l / 2);
    BOOST_TEST(cla.computes_kv(l) == (l % 2 == 0));
    BOOST_TEST(!cla.reads_ahead(l));
    BOOST_TEST(cla.visible(l, 7, 7));
  }
  BOOST_TEST(cla.cache_layers == 3);
  // force_nodiag-style exclusion on an ordinary layer
  auto forced = lay::layer_map::cross_layer(2, 1);
  forced.exclude_current[1] = true;
  BOOST_TEST(forced.reads_ahead(1));
  BOOST_TEST(!forced.visible(1, 4, 4));
}

// ---- decode with layer-map visibility vs a whole-sequence causal reference -------------------------------

namespace {

constexpr index_t TOKENS = 24, DS = 2, DH = 2, DG = 4, DD = 8, DCAP = 32;

// The per-layer visibility rule written from docs/methods.md 5.3/5.5 (not from layer_map::visible):
// c(l) > l reads ahead -> keys < t; otherwise keys <= t; sliding layers only the last `window` positions.
bool reference_visible(const lay::layer_map& m, int l, index_t key, index_t query) {
  const bool ahead = m.source[l] > l;
  if (ahead ? key >= query : key > query) return false;
  return !m.sliding[l] || key > query - m.window;
}

struct token_data {
  std::vector<float> k, v;  // [s][storage layer][t][h][d]
  std::vector<float> q;     // [s][model layer][t][g][d]
  int storage_layers, model_layers;
  token_data(const lay::layer_map& m, std::uint32_t seed) : storage_layers(m.cache_layers), model_layers(m.model_layers) {
    std::mt19937 rng(seed);
    k = kvtest::random_vector(DS * storage_layers * TOKENS * DH * DD, 1.0, rng);
    v = kvtest::random_vector(DS * storage_layers * TOKENS * DH * DD, 1.0, rng);
    q = kvtest::random_vector(DS * model_layers * TOKENS * DG * DD, 2.0, rng);
  }
  const float* key(index_t s, index_t sl, index_t t) const { return k.data() + ((s * storage_layers + sl) * TOKENS + t) * DH * DD; }
  const float* value(index_t s, index_t sl, index_t t) const { return v.data() + ((s * storage_layers + sl) * TOKENS + t) * DH * DD; }
  const float* query(index_t s, index_t l, index_t t) const { return q.data() + ((s * model_layers + l) * TOKENS + t) * DG * DD; }
};

// Causal attention of query (s, l, t, g) over the whole sequence's K/V of storage layer c(l), in double.
std::vector<double> reference_output(const token_data& data, const lay::layer_map& m, index_t s, int l, index_t t, index_t g, bool include_current) {
  const index_t sl = m.storage[l], h = g / (DG / DH);
  const float* q = data.query(s, l, t) + g * DD;
  std::vector<double> logits, out(DD, 0.0);
  std::vector<index_t> keys;
  for (index_t p = 0; p < TOKENS; ++p) {
    const bool vis = include_current ? (p <= t && (!m.sliding[l] || p > t - m.window)) : reference_visible(m, l, p, t);
    if (!vis) continue;
    double dot = 0;
    for (index_t d = 0; d < DD; ++d) dot += static_cast<double>(q[d]) * data.key(s, sl, p)[h * DD + d];
    logits.push_back(dot / std::sqrt(static_cast<double>(DD)));
    keys.push_back(p);
  }
  if (keys.empty()) return out;  // nothing visible (first token of a reads-ahead layer): zero output
  const double mx = *std::max_element(logits.begin(), logits.end());
  double sum = 0;
  for (double& x : logits) sum += (x = std::exp(x - mx));
  for (std::size_t i = 0; i < keys.size(); ++i)
    for (index_t d = 0; d < DD; ++d) out[static_cast<std::size_t>(d)] += logits[i] / sum * data.value(s, m.storage[l], keys[i])[h * DD + d];
  return out;
}

// Feeds the tokens one by one (append + attend) through a layer_condensed<Inner> cache and compares every
// attention output with the reference. `interleaved`: LCKV's decode order (a layer's KV is appended just
// before that layer attends, so reads-ahead layers attend before their cache layer holds token t);
// otherwise all storage layers are appended first.
template <class Inner>
void check_decode(const lay::layer_map& m, const Inner& inner, bool interleaved, std::uint32_t seed) {
  const token_data data(m, seed);
  using layout_t = lay::layer_condensed<Inner>;
  const layout_t layout{inner, m};
  kvtest::layout_cache<float, layout_t> c{layout,
                                          std::vector<float>(static_cast<std::size_t>(kvtest::storage_elements(layout)), 0.0f),
                                          {},
                                          std::vector<std::int32_t>(static_cast<std::size_t>(DS * m.cache_layers * DH), 0),
                                          std::vector<std::int32_t>(static_cast<std::size_t>(DS * m.cache_layers * DH * DCAP), -1)};
  c.values = c.keys;
  const auto policy = kc::policies::h2o(DCAP, 4);  // never evicts here; exercises the attention-scorer update
  kvtest::session_storage<decltype(policy), float, layout_t> storage(layout, kc::attention_shape{DG});
  kc::cpu::session<decltype(policy), float, layout_t> session(policy, c.view(), kc::attention_shape{DG}, storage.state_span(), storage.workspace_span());
  std::vector<float> out(DG * DD);
  int bad = 0, compared = 0, distinguishable = 0, zero_rows = 0;
  for (index_t t = 0; t < TOKENS; ++t)
    for (index_t s = 0; s < DS; ++s) {
      if (!interleaved)
        for (int sl = 0; sl < m.cache_layers; ++sl) session.append(s, sl, data.key(s, sl, t), data.value(s, sl, t), t);
      for (int l = 0; l < m.model_layers; ++l) {
        if (interleaved && m.computes_kv(l)) {
          int own = -1;  // storage layer holding layer l's own KV
          for (int r = 0; r < m.model_layers; ++r)
            if (m.source[r] == l) own = m.storage[r];
          session.append(s, own, data.key(s, own, t), data.value(s, own, t), t);
        }
        session.attend(s, l, data.query(s, l, t), t, out.data());
        for (index_t g = 0; g < DG; ++g) {
          const auto want = reference_output(data, m, s, l, t, g, false);
          bool all_zero = true;
          for (index_t d = 0; d < DD; ++d) {
            bad += !kvtest::close(out[static_cast<std::size_t>(g * DD + d)], want[static_cast<std::size_t>(d)], 1e-4, 1e-5);
            all_zero = all_zero && want[static_cast<std::size_t>(d)] == 0.0;
            ++compared;
          }
          zero_rows += all_zero;
          if (m.source[l] > l && t > 0) {  // the rule matters: including position t would give a different output
            const auto other = reference_output(data, m, s, l, t, g, true);
            double diff = 0;
            for (index_t d = 0; d < DD; ++d) diff = std::max(diff, std::abs(other[static_cast<std::size_t>(d)] - want[static_cast<std::size_t>(d)]));
            distinguishable += diff > 1e-3;
          }
        }
      }
    }
  BOOST_TEST(bad == 0, "mismatching elements out of " << compared);
  int ahead_layers = 0;
  for (int l = 0; l < m.model_layers; ++l) ahead_layers += m.source[l] > l;
  BOOST_TEST(zero_rows == ahead_layers * DS * DG);  // exactly the first token of every reads-ahead layer sees nothing
  if (ahead_layers > 0) BOOST_TEST(distinguishable > ahead_layers * DS * DG * (TOKENS - 1) * 9 / 10);
}

}  // namespace

BOOST_AUTO_TEST_CASE(decode_matches_whole_sequence_reference_with_layer_map_visibility) {
  // LCKV (1 bottom + 1 top warm-up) and a mixed map: reads-ahead, sliding, a CLA-style reader of a lower layer
  const lay::layer_map maps[] = {lay::layer_map::lckv(6, 1, 1), lay::layer_map::parse("0s_3_3_3s_4_4", 6)};
  std::uint32_t seed = 50;
  for (const auto& m : maps) {
    const kvtest::cache_shape shape{DS, m.cache_layers, DH, DCAP, DD};
    for (bool interleaved : {false, true}) {
      check_decode(m, lay::bhsd(DS, m.cache_layers, DH, DCAP, DD), interleaved, ++seed);
      kvtest::random_paging paging;
      kvtest::make_random_paging(paging, shape, 4, lay::page_format::hnd, 2, ++seed);
      check_decode(m, paging.layout, interleaved, ++seed);
      check_decode(m, slot_major_interleaved{DS, m.cache_layers, DH, DCAP, DD}, interleaved, ++seed);
    }
  }
}
