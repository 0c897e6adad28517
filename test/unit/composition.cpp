// SPDX-License-Identifier: Apache-2.0
// Compositions no preset uses, and decode in every layout, through cpu::session against independent
// double-precision references written here from docs/methods.md:
//  - window selection (selectors::windows, both task types) over SLOT scorers (recency, KNorm): the
//    session must hand a window selector a per-query-head score even for scorers without attention
//    (commit 5e14465), and both task types average over all query heads (4.5), so KV heads other than
//    head 0 count in aggregation mode too;
//  - CORM importance scores (1.7) + WindowKV windows (4.5-4.6) + KVMerger's Gaussian merge (2.5), with
//    keys similar enough that evicted windows really are merged: keep-set, every merged key/value and
//    every untouched kept entry against the formulas;
//  - decode (append with eviction, attend) of every preset gives bit-identical caches, scorer states and
//    attention outputs in contiguous (BHSD, BSHD), paged (NHD, HND), user-defined and
//    layer_condensed<paged> layouts, with no slot lost or duplicated.
// Sessions run on state and workspace filled with 0xff bytes (NaN floats, -1 indices), so scratch the
// session forgot to fill is garbage rather than a lucky zero.
#include "support/custom_layout.hpp"
#include "support/reference.hpp"

#include <kvcompact/kvcompact.hpp>

#include <boost/test/unit_test.hpp>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>
#include <numeric>
#include <set>
#include <string>
#include <vector>

namespace kc = kvcompact;
using kc::index_t;

namespace {

constexpr double boundary_margin = 1e-5;  // relative distance a reference decision needs from its threshold

// A session over state and workspace poisoned with 0xff bytes.
template <class Policy, class T, class Layout>
struct poisoned_session {
  using session_type = kc::cpu::session<Policy, T, Layout>;
  std::vector<std::uint64_t> state, workspace;
  session_type session;
  poisoned_session(const Policy& p, const kc::kv_cache<T, Layout>& c, const kc::attention_shape& shape)
      : state(session_type::state_bytes(c.layout) / 8 + 1, ~std::uint64_t{0}),
        workspace(session_type::workspace_bytes(c.layout, shape) / 8 + 1, ~std::uint64_t{0}),
        session(p, c, shape, std::as_writable_bytes(std::span(state)), std::as_writable_bytes(std::span(workspace))) {}
};

// WindowKV decision (docs/methods.md 4.5, 4.6) from per-query-head scores S[g][i], i = position rank
// (0 = oldest) of a head holding n tokens. Returns keep flags per rank. *ok turns false when the last
// dropped and the first surviving window score closer than the margin (fp32 could swap them).
std::vector<bool> ref_windowkv(const std::vector<std::vector<double>>& S, index_t n, index_t suffix, index_t omega, index_t budget,
                               bool localization, bool strict, bool* ok) {
  std::vector<bool> keep(static_cast<std::size_t>(n), true);
  const index_t review = n - suffix;
  if (review <= budget) return keep;
  const index_t count = (review + omega - 1) / omega;
  std::vector<double> score(static_cast<std::size_t>(count), 0.0);
  for (index_t k = 0; k < count; ++k) {
    const index_t begin = k * omega, end = std::min(review, (k + 1) * omega);
    for (const auto& Sg : S) {
      std::vector<double> v(Sg.begin() + begin, Sg.begin() + end);
      double part = 0.0;
      if (localization) {  // mean of the top omega/2 (at least 1) scores of the window
        const std::size_t p = std::min<std::size_t>(static_cast<std::size_t>(std::max<index_t>(omega / 2, 1)), v.size());
        std::sort(v.begin(), v.end(), [](double a, double b) { return a > b; });
        for (std::size_t i = 0; i < p; ++i) part += v[i];
        part /= static_cast<double>(p);
      } else {  // mean of the window
        for (double x : v) part += x;
        part /= static_cast<double>(v.size());
      }
      score[static_cast<std::size_t>(k)] += part / static_cast<double>(S.size());
    }
  }
  const index_t n_drop = (review - budget + omega - 1) / omega;
  if (n_drop * omega >= review) {
    for (index_t i = 0; i < review; ++i) keep[static_cast<std::size_t>(i)] = false;
    return keep;
  }
  std::vector<index_t> worst(static_cast<std::size_t>(count));
  std::iota(worst.begin(), worst.end(), 0);
  std::sort(worst.begin(), worst.end(), [&](index_t a, index_t b) {  // lowest first; ties: the later window goes first
    const double sa = score[static_cast<std::size_t>(a)], sb = score[static_cast<std::size_t>(b)];
    return sa < sb || (sa == sb && a > b);
  });
  index_t kept_review = review, dropped = 0;
  while (dropped < count && (dropped < n_drop || (strict && kept_review > budget))) {
    const index_t k = worst[static_cast<std::size_t>(dropped++)];
    for (index_t i = k * omega; i < std::min(review, (k + 1) * omega); ++i) keep[static_cast<std::size_t>(i)] = false;
    kept_review -= std::min(review, (k + 1) * omega) - k * omega;
  }
  if (dropped < count) {
    const double a = score[static_cast<std::size_t>(worst[static_cast<std::size_t>(dropped - 1)])];
    const double b = score[static_cast<std::size_t>(worst[static_cast<std::size_t>(dropped)])];
    *ok = *ok && (a == b || std::abs(a - b) > boundary_margin * std::max(std::abs(a), std::abs(b)));
  }
  return keep;
}

std::vector<index_t> kept_positions(const std::vector<bool>& keep) {
  std::vector<index_t> out;
  for (std::size_t i = 0; i < keep.size(); ++i)
    if (keep[i]) out.push_back(static_cast<index_t>(i));
  return out;
}

template <class T>
std::vector<index_t> sorted_positions(const kvtest::random_cache<T>& c, index_t s, index_t l, index_t h) {
  std::vector<index_t> p;
  for (index_t j = 0; j < c.length(s, l, h); ++j) p.push_back(c.position(s, l, h, j));
  std::sort(p.begin(), p.end());
  return p;
}

// Slot of head (s, l, h) holding `position`, or -1.
template <class T>
index_t slot_of(const kvtest::random_cache<T>& c, index_t s, index_t l, index_t h, index_t position) {
  for (index_t j = 0; j < c.length(s, l, h); ++j)
    if (c.position(s, l, h, j) == position) return j;
  return -1;
}

}  // namespace

// ---------------------------------------------------------------------------------------------------
// Window selection over slot scorers
// ---------------------------------------------------------------------------------------------------

// recency scores every slot by its position and KNorm by -||k||; a window selector sees, for query head
// g, the score of g's KV head. With the recency scorer the newest windows must win in both task types;
// with KNorm the decision must equal the reference over ALL query heads (the two KV heads hold
// different keys, so KV head 0 alone decides differently in some configurations, which is checked).
BOOST_AUTO_TEST_CASE(window_selectors_compose_with_slot_scorers) {
  const index_t L = 2, H = 2, G = 6, T = 50, CAP = 56, D = 16, omega = 4, suffix = 6, budget = 20;
  using sel_t = kc::selectors::windows<kc::budgets::fixed>;
  kvtest::fill_options fill;
  fill.min_length = fill.max_length = T;
  fill.shuffle_slots = true;  // slots of every head in their own random order
  int head0_differs_aggregation = 0, checked = 0;
  std::uint32_t seed = 70;
  for (auto task : {kc::selectors::task_type::localization, kc::selectors::task_type::aggregation})
    for (bool strict : {false, true}) {
      const bool localization = task == kc::selectors::task_type::localization;
      const sel_t selector{kc::budgets::fixed{budget}, omega, suffix, 1, task, strict};
      BOOST_TEST_CONTEXT("task " << (localization ? "localization" : "aggregation") << " strict " << strict) {
        {  // recency: S[g][i] = i for every query head
          auto cache = kvtest::make_random_cache<float>({1, L, H, CAP, D}, fill, ++seed);
          std::vector<std::vector<double>> S(G, std::vector<double>(T));
          for (auto& Sg : S) std::iota(Sg.begin(), Sg.end(), 0.0);
          bool ok = true;
          const auto expected = kept_positions(ref_windowkv(S, T, suffix, omega, budget, localization, strict, &ok));
          BOOST_TEST_REQUIRE(ok);
          BOOST_TEST_REQUIRE((expected.size() < static_cast<std::size_t>(T) && expected.front() > 0));  // a real choice, newest first
          const kc::policy<kc::scorers::recency, sel_t> policy{{}, selector, {}};
          poisoned_session<decltype(policy), float, kc::layouts::strided> run(policy, cache.view(), {G});
          run.session.compress_prefill();
          for (index_t l = 0; l < L; ++l)
            for (index_t h = 0; h < H; ++h) BOOST_TEST(sorted_positions(cache, 0, l, h) == expected, "recency layer " << l << " head " << h);
        }
        {  // KNorm: S[g][i] = -||k|| of the key at position i in KV head g / 3. The library's fp32 norms (lane
           // sums) are within a few ulp of these double ones; random keys put no two norms that close at the
           // budget's boundary, so the keep-sets must match exactly (a tie within rounding would fail here).
          auto cache = kvtest::make_random_cache<float>({1, L, H, CAP, D}, fill, ++seed);
          const auto original = cache;
          std::vector<std::vector<index_t>> expected(static_cast<std::size_t>(L));
          for (index_t l = 0; l < L; ++l) {
            std::vector<std::vector<double>> S(G, std::vector<double>(T));
            for (index_t g = 0; g < G; ++g)
              for (index_t j = 0; j < T; ++j)
                S[static_cast<std::size_t>(g)][static_cast<std::size_t>(original.position(0, l, g / (G / H), j))] =
                    kvtest::key_norm_score(original, 0, l, g / (G / H), j);
            bool ok = true;
            expected[static_cast<std::size_t>(l)] = kept_positions(ref_windowkv(S, T, suffix, omega, budget, localization, strict, &ok));
            BOOST_TEST_REQUIRE(ok);
            const std::vector<std::vector<double>> head0(S.begin(), S.begin() + G / H);
            bool ok0 = true;
            if (!localization)
              head0_differs_aggregation +=
                  kept_positions(ref_windowkv(head0, T, suffix, omega, budget, localization, strict, &ok0)) != expected[static_cast<std::size_t>(l)];
          }
          const kc::policy<kc::scorers::key_norm, sel_t> policy{{}, selector, {}};
          poisoned_session<decltype(policy), float, kc::layouts::strided> run(policy, cache.view(), {G});
          run.session.compress_prefill();
          for (index_t l = 0; l < L; ++l)
            for (index_t h = 0; h < H; ++h) {
              BOOST_TEST(sorted_positions(cache, 0, l, h) == expected[static_cast<std::size_t>(l)], "knorm layer " << l << " head " << h);
              ++checked;
              for (index_t j = 0; j < cache.length(0, l, h); ++j) {  // kept entries are bit-identical copies
                const index_t from = slot_of(original, 0, l, h, cache.position(0, l, h, j));
                for (index_t d = 0; d < D; ++d) BOOST_TEST(cache.key(0, l, h, j, d) == original.key(0, l, h, from, d));
              }
            }
        }
      }
    }
  BOOST_TEST(checked == 4 * L * H);
  // The all-head average matters in aggregation mode too: KV head 0's scores alone choose other windows.
  BOOST_TEST(head0_differs_aggregation > 0);
}

// ---------------------------------------------------------------------------------------------------
// CORM scores + WindowKV windows + KVMerger merge, with real merges
// ---------------------------------------------------------------------------------------------------

// Keys share one direction per head plus noise, so most evicted slots are at least 0.75-cosine similar
// to a kept neighbour and get merged. Reference: the windows decision from u[g][j] = max over window rows
// of a[g][r][j] * n_r (CORM importance, 1.7); then every evicted slot joins the more similar of its kept
// neighbours in position order when that cosine is >= 0.75 (gaussian_pivot's rule for slots without a
// selector target), and each set S with pivot p becomes K* = sum w K, V* = |S| sum w V,
// w_i = g_i / sum g, g_i = exp(-||K_i - K_p||^2 / (2 sigma^2)), sigma = 5 (2.5).
BOOST_AUTO_TEST_CASE(corm_scores_windowkv_windows_kvmerger_merge_matches_the_formulas) {
  const index_t L = 2, H = 2, G = 4, T = 56, CAP = 64, D = 16, omega = 4, suffix = 8, budget = 20;
  using sel_t = kc::selectors::windows<kc::budgets::fixed>;
  kc::scorers::recent_query scorer{};
  scorer.score_mode = kc::scorers::recent_query::mode::importance;
  const kc::mergers::gaussian_pivot merger{};
  const kc::policy<kc::scorers::recent_query, sel_t, kc::mergers::gaussian_pivot> policy{
      scorer, sel_t{kc::budgets::fixed{budget}, omega, suffix, 1, kc::selectors::task_type::localization, true}, merger};
  const double sigma = merger.sigma, threshold = merger.min_similarity;
  int merged_sets = 0, dropped = 0, untouched = 0;
  for (std::uint32_t seed : {81u, 82u, 83u}) {
    BOOST_TEST_CONTEXT("seed " << seed) {
      kvtest::fill_options fill;
      fill.min_length = fill.max_length = T;
      auto cache = kvtest::make_random_cache<float>({1, L, H, CAP, D}, fill, seed);
      std::mt19937 rng(seed + 1000);
      for (index_t l = 0; l < L; ++l)
        for (index_t h = 0; h < H; ++h) {
          const auto direction = kvtest::random_vector(D, 1.0, rng);
          for (index_t j = 0; j < T; ++j)
            for (index_t d = 0; d < D; ++d)
              cache.keys[static_cast<std::size_t>(cache.element(0, l, h, j, d))] =
                  direction[static_cast<std::size_t>(d)] + static_cast<float>(0.35 * kvtest::uniform_pm1(rng));
        }
      const auto original = cache;  // slots hold positions 0..T-1 in order
      const auto window = kvtest::make_random_window(1, L, G, suffix, D, {T - 1}, 3.0, seed + 2000);
      kvtest::attention_score_spec spec;
      spec.rows = kvtest::reduce::max;
      spec.term = kvtest::term_kind::corm_importance;
      std::vector<std::vector<index_t>> expected(static_cast<std::size_t>(L));
      for (index_t l = 0; l < L; ++l) {
        std::vector<std::vector<double>> u;
        for (index_t g = 0; g < G; ++g) u.push_back(kvtest::query_head_scores(original, window, 0, l, g, G, kvtest::default_scale(D), spec));
        bool ok = true;
        expected[static_cast<std::size_t>(l)] = kept_positions(ref_windowkv(u, T, suffix, omega, budget, true, true, &ok));
        BOOST_TEST_REQUIRE(ok);
        BOOST_TEST_REQUIRE((expected[static_cast<std::size_t>(l)].size() > static_cast<std::size_t>(suffix) &&
                            expected[static_cast<std::size_t>(l)].size() < static_cast<std::size_t>(T)));
      }
      poisoned_session<decltype(policy), float, kc::layouts::strided> run(policy, cache.view(), {G});
      run.session.compress_prefill(window.view());

      for (index_t l = 0; l < L; ++l)
        for (index_t h = 0; h < H; ++h) {
          BOOST_TEST_CONTEXT("layer " << l << " head " << h) {
            const auto& keep = expected[static_cast<std::size_t>(l)];
            BOOST_TEST(sorted_positions(cache, 0, l, h) == keep);
            const std::set<index_t> kept(keep.begin(), keep.end());
            auto key = [&](index_t p) {
              std::vector<double> k(static_cast<std::size_t>(D));
              for (index_t d = 0; d < D; ++d) k[static_cast<std::size_t>(d)] = original.key(0, l, h, p, d);
              return k;
            };
            auto cosine = [&](index_t a, index_t b) {
              const auto x = key(a), y = key(b);
              double dot = 0, xx = 0, yy = 0;
              for (index_t d = 0; d < D; ++d) {
                dot += x[static_cast<std::size_t>(d)] * y[static_cast<std::size_t>(d)];
                xx += x[static_cast<std::size_t>(d)] * x[static_cast<std::size_t>(d)];
                yy += y[static_cast<std::size_t>(d)] * y[static_cast<std::size_t>(d)];
              }
              return dot / std::sqrt(xx * yy);
            };
            std::map<index_t, std::vector<index_t>> sets;  // pivot -> members (pivot included)
            for (index_t p : keep) sets[p] = {p};
            for (index_t q = 0; q < T; ++q) {
              if (kept.count(q)) continue;
              const auto next_it = kept.upper_bound(q);
              const index_t next = next_it == kept.end() ? -1 : *next_it;
              const index_t prev = next_it == kept.begin() ? -1 : *std::prev(next_it);
              const double c_prev = prev >= 0 ? cosine(q, prev) : -2.0, c_next = next >= 0 ? cosine(q, next) : -2.0;
              BOOST_TEST_REQUIRE((prev < 0 || next < 0 || std::abs(c_prev - c_next) > boundary_margin));
              const index_t best = c_prev >= c_next ? prev : next;
              const double similarity = std::max(c_prev, c_next);
              BOOST_TEST_REQUIRE(std::abs(similarity - threshold) > boundary_margin);
              if (best >= 0 && similarity >= threshold) sets[best].push_back(q);
              else ++dropped;
            }
            for (const auto& [pivot, members] : sets) {
              const index_t j = slot_of(cache, 0, l, h, pivot);
              BOOST_TEST_REQUIRE(j >= 0);
              if (members.size() == 1) {  // not merged: a bit-identical copy
                ++untouched;
                for (index_t d = 0; d < D; ++d) {
                  BOOST_TEST(cache.key(0, l, h, j, d) == original.key(0, l, h, pivot, d));
                  BOOST_TEST(cache.value(0, l, h, j, d) == original.value(0, l, h, pivot, d));
                }
                continue;
              }
              ++merged_sets;
              const auto kp = key(pivot);
              std::vector<double> weight;
              double total = 0.0;
              for (index_t m : members) {
                const auto km = key(m);
                double d2 = 0.0;
                for (index_t d = 0; d < D; ++d) d2 += (km[static_cast<std::size_t>(d)] - kp[static_cast<std::size_t>(d)]) * (km[static_cast<std::size_t>(d)] - kp[static_cast<std::size_t>(d)]);
                weight.push_back(std::exp(-d2 / (2.0 * sigma * sigma)));
                total += weight.back();
              }
              int bad = 0;
              for (index_t d = 0; d < D; ++d) {
                double k = 0.0, v = 0.0;
                for (std::size_t i = 0; i < members.size(); ++i) {
                  k += weight[i] / total * original.key(0, l, h, members[i], d);
                  v += weight[i] / total * original.value(0, l, h, members[i], d);
                }
                v *= static_cast<double>(members.size());
                bad += !kvtest::close(cache.key(0, l, h, j, d), k, 1e-5, 1e-6);
                bad += !kvtest::close(cache.value(0, l, h, j, d), v, 1e-5, 1e-6);
              }
              BOOST_TEST(bad == 0, "pivot " << pivot << " with " << members.size() << " members");
            }
          }
        }
    }
  }
  BOOST_TEST(merged_sets > 20);  // the merge stage really ran ...
  BOOST_TEST(untouched > 20);    // ... and left the other kept entries alone
  BOOST_TEST_MESSAGE("merged sets " << merged_sets << ", untouched kept entries " << untouched << ", evicted without a merge " << dropped);
}

// ---------------------------------------------------------------------------------------------------
// Decode of every preset is layout independent
// ---------------------------------------------------------------------------------------------------

namespace {

constexpr index_t DS = 2, DL = 4, DH = 2, DG = 4, DCAP = 64, DD = 8, PROMPT = 44, STEPS = 16;

// Everything a decode run produced: cache snapshots after prefill and after every step, attention
// outputs and scorer states (raw bits).
struct decode_trace {
  std::vector<kvtest::snapshot> snapshots;
  std::vector<std::uint32_t> outputs;
  std::vector<std::uint8_t> states;
  bool operator==(const decode_trace&) const = default;
};

struct decode_inputs {
  std::vector<float> keys, values;  // [step][s][l][h][d]
  std::vector<float> queries;       // [step][s][l][g][d]
  explicit decode_inputs(std::uint32_t seed) {
    std::mt19937 rng(seed);
    keys = kvtest::random_vector(STEPS * DS * DL * DH * DD, 1.0, rng);
    values = kvtest::random_vector(STEPS * DS * DL * DH * DD, 1.0, rng);
    queries = kvtest::random_vector(STEPS * DS * DL * DG * DD, 2.0, rng);
  }
  const float* key(index_t t, index_t s, index_t l) const { return keys.data() + ((t * DS + s) * DL + l) * DH * DD; }
  const float* value(index_t t, index_t s, index_t l) const { return values.data() + ((t * DS + s) * DL + l) * DH * DD; }
  const float* query(index_t t, index_t s, index_t l) const { return queries.data() + ((t * DS + s) * DL + l) * DG * DD; }
};

// Prefill + STEPS decode steps (append every storage layer, then attend every layer) of `policy` over a
// copy of `source` in `layout`. For a layer-mapped layout the CLA map pairs model layers 2l and 2l + 1
// on storage layer l; model layer 2l reads its own KV, so it attends exactly like storage layer l.
// Checks, after every append: unique positions, the new token present, no head above its capacity and,
// when `bounded`, none above its decode budget.
template <class Policy, class Layout>
decode_trace run_decode(const Policy& policy, const kvtest::random_cache<float>& source, const Layout& layout, const kvtest::random_window& window,
                        const decode_inputs& in, bool bounded) {
  auto c = kvtest::copy_into(source, layout);
  const kc::attention_shape shape{DG};
  poisoned_session<Policy, float, Layout> run(policy, c.view(), shape);
  run.session.compress_prefill(window.view());
  decode_trace trace;
  trace.snapshots.push_back(kvtest::take_snapshot(c.view()));
  int bad = 0;
  std::vector<float> out(static_cast<std::size_t>(DG * DD));
  for (index_t step = 0; step < STEPS; ++step) {
    const index_t t = PROMPT + step;
    for (index_t s = 0; s < DS; ++s)
      for (index_t l = 0; l < DL; ++l) {
        run.session.append(s, l, in.key(step, s, l), in.value(step, s, l), t);
        for (index_t h = 0; h < DH; ++h) {
          const index_t head = c.head_index(s, l, h), n = c.lengths[static_cast<std::size_t>(head)];
          std::vector<std::int32_t> p(c.positions.begin() + head * DCAP, c.positions.begin() + head * DCAP + n);
          std::sort(p.begin(), p.end());
          bad += std::adjacent_find(p.begin(), p.end()) != p.end();
          bad += !std::binary_search(p.begin(), p.end(), static_cast<std::int32_t>(t));
          bad += n > DCAP || (bounded && n > run.session.budget(s, l, h));
        }
      }
    for (index_t s = 0; s < DS; ++s)
      for (index_t l = 0; l < DL; ++l) {
        const index_t attending = kc::layer_mapped_layout<Layout> ? 2 * l : l;
        run.session.attend(s, attending, in.query(step, s, l), t, out.data());
        for (float x : out) trace.outputs.push_back(kvtest::element_bits(x));
      }
    trace.snapshots.push_back(kvtest::take_snapshot(c.view()));
    for (index_t s = 0; s < DS; ++s)
      for (index_t l = 0; l < DL; ++l)
        for (index_t h = 0; h < DH; ++h)
          for (index_t j = 0; j < c.lengths[static_cast<std::size_t>(c.head_index(s, l, h))]; ++j) {
            const auto st = run.session.slot_state(s, l, h, j);
            const auto* bytes = reinterpret_cast<const std::uint8_t*>(&st);
            trace.states.insert(trace.states.end(), bytes, bytes + sizeof(st));
          }
  }
  BOOST_TEST(bad == 0, "lost, duplicated or over-budget slots");
  return trace;
}

}  // namespace

BOOST_AUTO_TEST_CASE(decode_of_every_preset_is_identical_in_every_layout) {
  kvtest::fill_options fill;
  fill.min_length = fill.max_length = PROMPT;
  const auto source = kvtest::make_random_cache<float>({DS, DL, DH, DCAP, DD}, fill, 90);
  const auto window = kvtest::make_random_window(DS, DL, DG, 8, DD, {PROMPT - 1, PROMPT - 1}, 3.0, 91);
  const decode_inputs in(92);
  const kvtest::cache_shape shape{DS, DL, DH, DCAP, DD};
  kvtest::random_paging nhd, hnd;
  kvtest::make_random_paging(nhd, shape, 8, kc::layouts::page_format::nhd, 3, 93);
  kvtest::make_random_paging(hnd, shape, 16, kc::layouts::page_format::hnd, 1, 94);
  const kc::layouts::layer_condensed<kc::layouts::paged> condensed{nhd.layout, kc::layouts::layer_map::cross_layer(2 * DL, 2)};
  kc::policies::preset_options options{20, PROMPT};
  options.window = 8;
  options.sinks = 4;
  options.layer_group = 2;
  const std::set<std::string> evicting{"streaming_llm", "h2o", "tova", "knorm", "corm_budgeted", "cam"};
  for (std::string_view name : kc::policies::preset_names) {
    BOOST_TEST_CONTEXT(name) {
      kc::policies::with_preset(name, options, [&](auto policy) {
        const bool bounded = evicting.count(std::string(name)) > 0;
        const auto reference = run_decode(policy, source, source.layout, window, in, bounded);
        int changed = 0;  // the run must have compressed and, where the method evicts, evicted during decode
        for (std::size_t i = 0; i < reference.snapshots.front().lengths.size(); ++i) changed += reference.snapshots.front().lengths[i] < PROMPT;
        BOOST_TEST(changed > 0, "prefill compressed nothing");
        if (bounded) BOOST_TEST((reference.snapshots.back().lengths == reference.snapshots[reference.snapshots.size() - 2].lengths));
        BOOST_TEST((run_decode(policy, source, kc::layouts::bshd(DS, DL, DH, DCAP, DD), window, in, bounded) == reference), "bshd differs");
        BOOST_TEST((run_decode(policy, source, nhd.layout, window, in, bounded) == reference), "paged NHD differs");
        BOOST_TEST((run_decode(policy, source, hnd.layout, window, in, bounded) == reference), "paged HND differs");
        BOOST_TEST((run_decode(policy, source, slot_major_interleaved{DS, DL, DH, DCAP, DD}, window, in, bounded) == reference), "user layout differs");
        BOOST_TEST((run_decode(policy, source, condensed, window, in, bounded) == reference), "layer_condensed<paged> differs");
        return 0;
      });
    }
  }
}
