// SPDX-License-Identifier: Apache-2.0
// Selectors (top_k, hit_window, adaptive_heads, windows, merging_sets) against independent
// double-precision references written from docs/methods.md (P3, P5, P6, 1.5-1.7, 2.4, 2.6, 4.5-4.7, 6.6),
// called directly through the test-side selection context (support/selection_harness.hpp), plus
// cpu::session runs for WindowKV's intra-group sharing and a user-built CORM + WindowKV + KVMerger policy.
//
// Tie rule (P5): higher score first, lower logical position wins ties. Scores are continuous random
// values, so ties only occur where a test is about them (or where max pooling copies one value to its
// neighbours, which is exact in float and double alike).
//
// Float vs double: the library ranks fp32 scores, the references double ones. Where a decision compares
// sums or means (average pooling, window means, cosine similarities), the test first requires that the
// reference's decision boundary has a margin far above fp32 rounding (relative 1e-5; fp32 sums of a few
// dozen terms of this size err by ~1e-7), so a failure means a different rule, not rounding.
#include <boost/test/unit_test.hpp>

#include <kvcompact/cpu/session.hpp>
#include <kvcompact/policies.hpp>

#include "support/reference.hpp"
#include "support/selection_harness.hpp"

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstddef>
#include <map>
#include <numeric>
#include <set>
#include <vector>

namespace kvc = kvcompact;
using kvc::index_t;
using kvtest::selection_harness;
using kvtest::uniform_int;
using kvtest::uniform_pm1;

namespace {

constexpr double boundary_margin = 1e-5;

// ---- shared reference pieces ------------------------------------------------------------------------

// P6: sinks {0..s-1} and the r newest positions {t-r+1..t}.
bool ref_protected(index_t pos, index_t t, index_t sinks, index_t recent) { return pos < sinks || pos >= t - recent + 1; }

// A ranked candidate.
struct cand {
  double score;
  index_t pos;
  index_t slot;
};
// P5 order: higher score first, lower position on ties.
bool better(const cand& a, const cand& b) { return a.score > b.score || (a.score == b.score && a.pos < b.pos); }

enum class pool_kind { none, average, max };
kvc::selectors::pooling lib_pool(pool_kind p) {
  return p == pool_kind::none ? kvc::selectors::pooling::none : p == pool_kind::average ? kvc::selectors::pooling::average : kvc::selectors::pooling::max;
}

// P3 over a sequence in position order: kernel k, stride 1, padding k/2; average counts the zero padding
// (count_include_pad), max ignores it.
std::vector<double> ref_pool(const std::vector<double>& x, pool_kind mode, index_t k) {
  if (mode == pool_kind::none) return x;
  const index_t n = static_cast<index_t>(x.size()), half = k / 2;
  std::vector<double> out(x.size());
  for (index_t i = 0; i < n; ++i) {
    double sum = 0.0, best = -INFINITY;
    for (index_t o = i - half; o <= i + half; ++o) {
      if (o < 0 || o >= n) continue;  // padding: 0 in the sum, ignored by max
      sum += x[static_cast<std::size_t>(o)];
      best = std::max(best, x[static_cast<std::size_t>(o)]);
    }
    out[static_cast<std::size_t>(i)] = mode == pool_kind::average ? sum / static_cast<double>(k) : best;
  }
  return out;
}

// The unprotected slots of one head, pooled in position order, best first.
std::vector<cand> ranked_candidates(const std::vector<index_t>& pos, const std::vector<double>& score, index_t t, index_t sinks, index_t recent,
                                    pool_kind mode, index_t k) {
  std::vector<cand> c;
  for (std::size_t j = 0; j < pos.size(); ++j)
    if (!ref_protected(pos[j], t, sinks, recent)) c.push_back({score[j], pos[j], static_cast<index_t>(j)});
  std::sort(c.begin(), c.end(), [](const cand& a, const cand& b) { return a.pos < b.pos; });
  std::vector<double> raw;
  for (const auto& x : c) raw.push_back(x.score);
  const auto pooled = ref_pool(raw, mode, k);
  for (std::size_t i = 0; i < c.size(); ++i) c[i].score = pooled[i];
  std::sort(c.begin(), c.end(), better);
  return c;
}

// The cut between ranked[cut-1] and ranked[cut] is either an exact tie (resolved by position, exact in
// fp32 too) or separated by more than the margin.
bool clear_cut(const std::vector<cand>& ranked, std::size_t cut) {
  if (cut == 0 || cut >= ranked.size()) return true;
  const double a = ranked[cut - 1].score, b = ranked[cut].score;
  return a == b || std::abs(a - b) > boundary_margin * std::max(1.0, std::abs(a));
}

std::vector<index_t> sorted(std::vector<index_t> v) {
  std::sort(v.begin(), v.end());
  return v;
}

// Random distinct positions (with gaps, as after earlier evictions, unless `dense`: 0..n-1) in random slot
// order; the largest is returned as `t` so that the newest position is present (as at the end of a prefill).
std::vector<index_t> random_positions(index_t n, std::mt19937& rng, index_t* t, bool dense = false) {
  if (dense) {
    std::vector<index_t> pos(static_cast<std::size_t>(n));
    std::iota(pos.begin(), pos.end(), 0);
    kvtest::shuffle_portable(pos, rng);
    *t = n - 1;
    return pos;
  }
  std::vector<index_t> all(static_cast<std::size_t>(3 * n));
  std::iota(all.begin(), all.end(), 0);
  kvtest::shuffle_portable(all, rng);
  std::vector<index_t> pos(all.begin(), all.begin() + n);
  *t = *std::max_element(pos.begin(), pos.end());
  return pos;
}

double uniform01(std::mt19937& rng) { return 0.5 * (uniform_pm1(rng) + 1.0); }

// Loads one head of the harness: positions and scores per slot.
void load_head(selection_harness& ctx, int h, const std::vector<index_t>& pos, const std::vector<double>& score) {
  ctx.set_length(h, static_cast<index_t>(pos.size()));
  for (std::size_t j = 0; j < pos.size(); ++j) {
    ctx.position_ref(h, static_cast<index_t>(j)) = static_cast<std::int32_t>(pos[j]);
    ctx.score_ref(h, static_cast<index_t>(j)) = static_cast<float>(score[j]);
  }
}

// Scores as the harness holds them (fp32), read back as double for the reference.
std::vector<double> stored_scores(selection_harness& ctx, int h) {
  std::vector<double> s;
  for (index_t j = 0; j < ctx.length(h); ++j) s.push_back(ctx.score(h, j));
  return s;
}

// Reference top_k prefill keep-set (positions, ascending): protected plus the best pooled candidates up to
// the budget, never one below min_score; everything when the head fits.
std::vector<index_t> ref_top_k(const std::vector<index_t>& pos, const std::vector<double>& score, index_t t, index_t sinks, index_t recent,
                               index_t budget, pool_kind mode, index_t k, double min_score, bool* clean) {
  if (static_cast<index_t>(pos.size()) <= budget) return sorted(pos);
  std::vector<index_t> kept;
  for (index_t p : pos)
    if (ref_protected(p, t, sinks, recent)) kept.push_back(p);
  const auto ranked = ranked_candidates(pos, score, t, sinks, recent, mode, k);
  std::size_t taken = 0;
  while (taken < ranked.size() && static_cast<index_t>(kept.size()) < budget && ranked[taken].score >= min_score) kept.push_back(ranked[taken++].pos);
  *clean = clear_cut(ranked, taken);
  for (std::size_t i = 0; i < ranked.size(); ++i)  // no candidate within the margin of min_score
    if (std::abs(ranked[i].score - min_score) <= boundary_margin) *clean = false;
  return sorted(kept);
}

}  // namespace

// =====================================================================================================
// top_k
// =====================================================================================================
BOOST_AUTO_TEST_SUITE(top_k)

BOOST_AUTO_TEST_CASE(prefill_matches_reference_with_pooling) {
  int cases = 0;
  for (pool_kind mode : {pool_kind::none, pool_kind::average, pool_kind::max})
    for (index_t kernel : {5, 7})
      for (std::uint32_t seed = 1; seed <= 12; ++seed) {
        std::mt19937 rng(100 * seed + static_cast<std::uint32_t>(kernel) + 10 * static_cast<std::uint32_t>(mode));
        const int heads = 2;
        const index_t n = uniform_int(rng, 30, 70);
        selection_harness ctx(heads, 4, 80);
        const index_t sinks = uniform_int(rng, 0, 4), recent = uniform_int(rng, 0, 8);
        index_t t = 0;
        std::vector<std::vector<index_t>> pos(heads);
        for (int h = 0; h < heads; ++h) {
          index_t th = 0;
          pos[h] = random_positions(n, rng, &th);
          std::vector<double> s;
          for (index_t j = 0; j < n; ++j) s.push_back(uniform01(rng));
          load_head(ctx, h, pos[h], s);
          t = std::max(t, th);
        }
        ctx.set_step(t);
        index_t protected_max = 0;
        for (int h = 0; h < heads; ++h) {
          index_t p = 0;
          for (index_t x : pos[h]) p += ref_protected(x, t, sinks, recent);
          protected_max = std::max(protected_max, p);
        }
        const index_t budget = uniform_int(rng, protected_max + 1, n - 1);
        kvc::selectors::top_k<kvc::budgets::fixed> sel{kvc::budgets::fixed{budget}, {sinks, recent, lib_pool(mode), kernel}};
        ctx.begin_prefill();
        kvtest::select(sel, ctx);
        for (int h = 0; h < heads; ++h) {
          bool clean = true;
          const auto expected = ref_top_k(pos[h], stored_scores(ctx, h), t, sinks, recent, budget, mode, kernel, -DBL_MAX, &clean);
          BOOST_TEST_REQUIRE(clean);
          BOOST_TEST(ctx.kept_positions(h) == expected, "pool " << static_cast<int>(mode) << " kernel " << kernel << " seed " << seed << " head " << h);
          BOOST_TEST(ctx.kept_count(h) == budget);  // budget exactly respected
          for (index_t j = 0; j < n; ++j)
            if (ref_protected(ctx.position(h, j), t, sinks, recent)) BOOST_TEST(ctx.kept(h, j));
          for (index_t j = 0; j < n; ++j) BOOST_TEST(ctx.target(h, j) == -1);
        }
        BOOST_TEST(ctx.scratch_intact());
        ++cases;
      }
  BOOST_TEST(cases == 72);
}

// Pooling must run over the candidates in POSITION order, not slot order: a single high score smeared
// by max pooling keeps its position neighbours, wherever their slots are.
BOOST_AUTO_TEST_CASE(pooling_follows_positions_not_slots) {
  const index_t n = 20;
  selection_harness ctx(1, 1, n);
  std::vector<index_t> pos(n);
  std::iota(pos.begin(), pos.end(), 0);
  std::mt19937 rng(5);
  kvtest::shuffle_portable(pos, rng);  // slot order unrelated to position order
  std::vector<double> s(n, 0.0);
  for (index_t j = 0; j < n; ++j) s[static_cast<std::size_t>(j)] = 0.01 * static_cast<double>(j + 1);  // low, distinct
  const auto heavy = std::find(pos.begin(), pos.end(), 10) - pos.begin();
  s[static_cast<std::size_t>(heavy)] = 5.0;  // position 10 is the heavy hitter
  load_head(ctx, 0, pos, s);
  ctx.set_step(n - 1);
  kvc::selectors::top_k<kvc::budgets::fixed> sel{kvc::budgets::fixed{5}, {0, 0, kvc::selectors::pooling::max, 5}};
  ctx.begin_prefill();
  kvtest::select(sel, ctx);
  BOOST_TEST(ctx.kept_positions(0) == (std::vector<index_t>{8, 9, 10, 11, 12}));
}

BOOST_AUTO_TEST_CASE(head_under_budget_keeps_everything) {
  std::mt19937 rng(7);
  selection_harness ctx(1, 1, 32);
  index_t t = 0;
  const auto pos = random_positions(20, rng, &t);
  std::vector<double> s;
  for (int j = 0; j < 20; ++j) s.push_back(uniform01(rng));
  load_head(ctx, 0, pos, s);
  ctx.set_step(t);
  for (index_t budget : {20, 21, 100}) {
    kvc::selectors::top_k<kvc::budgets::fixed> sel{kvc::budgets::fixed{budget}, {2, 2}};
    ctx.begin_prefill();
    kvtest::select(sel, ctx);
    BOOST_TEST(ctx.kept_count(0) == 20);
  }
}

// Ties: equal scores, the lower positions are kept (P5).
BOOST_AUTO_TEST_CASE(ties_keep_lower_positions) {
  std::mt19937 rng(8);
  selection_harness ctx(1, 1, 40);
  index_t t = 0;
  const auto pos = random_positions(30, rng, &t);
  load_head(ctx, 0, pos, std::vector<double>(30, 0.25));
  ctx.set_step(t);
  kvc::selectors::top_k<kvc::budgets::fixed> sel{kvc::budgets::fixed{12}, {0, 4}};
  ctx.begin_prefill();
  kvtest::select(sel, ctx);
  std::vector<index_t> expected;
  for (index_t p : sorted(pos))
    if (p > t - 4) expected.push_back(p);
  for (index_t p : sorted(pos))
    if (p <= t - 4 && expected.size() < 12) expected.push_back(p);
  BOOST_TEST(ctx.kept_positions(0) == sorted(expected));
  // decode: the tied candidates with the HIGHEST positions go first
  ctx.begin_decode();
  ctx.budget_ref(0) = 27;  // 30 + 1 - 27 = 4 victims
  ctx.set_step(t + 1);
  kvtest::select_decode(sel, ctx, 0);
  std::vector<index_t> cands;
  for (index_t p : sorted(pos))
    if (p <= t + 1 - 4) cands.push_back(p);
  std::vector<index_t> evicted;
  for (index_t j = 0; j < 30; ++j)
    if (!ctx.kept(0, j)) evicted.push_back(ctx.position(0, j));
  BOOST_TEST(sorted(evicted) == std::vector<index_t>(cands.end() - 4, cands.end()));
}

// Budgeted CORM (1.7): top-k by u, but never a slot with u < alpha.
BOOST_AUTO_TEST_CASE(min_score_never_fills_with_minor_slots) {
  for (std::uint32_t seed = 1; seed <= 10; ++seed) {
    std::mt19937 rng(300 + seed);
    const index_t n = 60, recent = 6;
    selection_harness ctx(1, 1, n);
    index_t t = 0;
    const auto pos = random_positions(n, rng, &t);
    std::vector<double> u;
    for (index_t j = 0; j < n; ++j) u.push_back(2.0 * uniform01(rng) * (uniform01(rng) < 0.4 ? 1.0 : 0.45));  // many minor (< 1) slots
    load_head(ctx, 0, pos, u);
    ctx.set_step(t);
    index_t major = 0, prot = 0;
    for (index_t j = 0; j < n; ++j) {
      const bool is_prot = ref_protected(pos[static_cast<std::size_t>(j)], t, 0, recent);
      prot += is_prot;
      major += !is_prot && ctx.score(0, j) >= 1.0f;
    }
    BOOST_TEST_REQUIRE(major > 4);
    for (index_t budget : {prot + major / 2, prot + major + 10}) {
      kvc::selectors::top_k<kvc::budgets::fixed> sel{kvc::budgets::fixed{budget}, {0, recent}, 1.0f};
      ctx.begin_prefill();
      kvtest::select(sel, ctx);
      bool clean = true;
      const auto expected = ref_top_k(pos, stored_scores(ctx, 0), t, 0, recent, budget, pool_kind::none, 1, 1.0, &clean);
      BOOST_TEST_REQUIRE(clean);
      BOOST_TEST(ctx.kept_positions(0) == expected, "seed " << seed << " budget " << budget);
      BOOST_TEST(ctx.kept_count(0) == std::min(budget, prot + major));
      for (index_t j = 0; j < n; ++j)
        if (ctx.kept(0, j) && !ref_protected(ctx.position(0, j), t, 0, recent)) BOOST_TEST(ctx.score(0, j) >= 1.0f);
    }
  }
}

// Decode: exactly length + 1 - budget victims, the lowest-ranked unprotected slots (none under budget;
// never a protected slot, so at most all candidates).
BOOST_AUTO_TEST_CASE(decode_evicts_the_lowest_unprotected_slots) {
  int evicting = 0;
  for (pool_kind mode : {pool_kind::none, pool_kind::max})
    for (std::uint32_t seed = 1; seed <= 20; ++seed) {
      std::mt19937 rng(500 + seed + 50 * static_cast<std::uint32_t>(mode));
      const index_t n = uniform_int(rng, 10, 40), sinks = uniform_int(rng, 0, 3), recent = uniform_int(rng, 0, 5);
      selection_harness ctx(2, 2, 48);
      index_t t = 0;
      std::vector<std::vector<index_t>> pos(2);
      for (int h = 0; h < 2; ++h) {
        index_t th = 0;
        pos[h] = random_positions(n, rng, &th);
        std::vector<double> s;
        for (index_t j = 0; j < n; ++j) s.push_back(uniform01(rng));
        load_head(ctx, h, pos[h], s);
        t = std::max(t, th);
      }
      const index_t incoming = t + 1;
      ctx.set_step(incoming);
      kvc::selectors::top_k<kvc::budgets::fixed> sel{kvc::budgets::fixed{n}, {sinks, recent, lib_pool(mode), 5}};
      for (int h = 0; h < 2; ++h) {
        const index_t budget = seed == 20 ? 1 : uniform_int(rng, n - 6, n + 2);  // seed 20: more victims than candidates
        ctx.begin_decode();
        ctx.budget_ref(h) = budget;
        kvtest::select_decode(sel, ctx, h);
        const auto ranked = ranked_candidates(pos[h], stored_scores(ctx, h), incoming, sinks, recent, mode, 5);
        const index_t excess = std::max<index_t>(0, std::min<index_t>(n + 1 - budget, static_cast<index_t>(ranked.size())));
        BOOST_TEST_REQUIRE(clear_cut(ranked, ranked.size() - static_cast<std::size_t>(excess)));
        std::vector<index_t> expected;
        for (index_t i = 0; i < excess; ++i) expected.push_back(ranked[ranked.size() - 1 - static_cast<std::size_t>(i)].pos);
        std::vector<index_t> evicted;
        for (index_t j = 0; j < n; ++j)
          if (!ctx.kept(h, j)) evicted.push_back(ctx.position(h, j));
        BOOST_TEST(sorted(evicted) == sorted(expected), "seed " << seed << " head " << h << " budget " << budget);
        evicting += excess > 0;
        const int other = 1 - h;  // the other head is untouched
        BOOST_TEST(ctx.kept_count(other) == n);
      }
      BOOST_TEST(ctx.scratch_intact());
    }
  BOOST_TEST(evicting > 20);
}

BOOST_AUTO_TEST_CASE(decode_eviction_can_be_disabled) {
  selection_harness ctx(1, 1, 16);
  ctx.set_length(0, 16);
  for (index_t j = 0; j < 16; ++j) ctx.score_ref(0, j) = static_cast<float>(j);
  ctx.set_step(16);
  kvc::selectors::top_k<kvc::budgets::fixed> sel{kvc::budgets::fixed{8}, {}, -FLT_MAX, false};
  ctx.begin_decode();
  ctx.budget_ref(0) = 8;
  kvtest::select_decode(sel, ctx, 0);
  BOOST_TEST(ctx.kept_count(0) == 16);
}

BOOST_AUTO_TEST_SUITE_END()

// =====================================================================================================
// hit_window (CORM, 1.5 / 1.6)
// =====================================================================================================
BOOST_AUTO_TEST_SUITE(hit_window)

// Prefill: the scorer's score is the latest window query that found the slot important (-1: none). The
// reference works from the 1.5 definition: keep R (last r), the sinks, and every slot some query in
// [t-w+1, t] found important. Hits are drawn from a wider range so that older hits exist.
BOOST_AUTO_TEST_CASE(prefill_keeps_protected_and_recent_hits) {
  for (std::uint32_t seed = 1; seed <= 20; ++seed) {
    std::mt19937 rng(700 + seed);
    const index_t n = uniform_int(rng, 20, 60), w = uniform_int(rng, 2, 10), r = w + uniform_int(rng, 0, 4), s = uniform_int(rng, 0, 3);
    selection_harness ctx(2, 2, 64);
    index_t t = 0;
    std::vector<std::vector<index_t>> pos(2);
    std::vector<std::vector<std::vector<index_t>>> hits(2);
    for (int h = 0; h < 2; ++h) {
      index_t th = 0;
      pos[h] = random_positions(n, rng, &th);
      t = std::max(t, th);
    }
    for (int h = 0; h < 2; ++h) {
      std::vector<double> score;
      for (index_t p : pos[h]) {
        std::vector<index_t> hit;  // query positions i >= p (a query only sees older keys) that found p important
        for (index_t i = std::max(p, t - 3 * w); i <= t; ++i)
          if (uniform01(rng) < 0.08) hit.push_back(i);
        hits[h].push_back(hit);
        score.push_back(hit.empty() ? -1.0 : static_cast<double>(*std::max_element(hit.begin(), hit.end())));
      }
      load_head(ctx, h, pos[h], score);
    }
    ctx.set_step(t);
    const kvc::selectors::hit_window sel{w, r, s};
    ctx.begin_prefill();
    kvtest::select(sel, ctx);
    for (int h = 0; h < 2; ++h) {
      std::vector<index_t> expected;
      for (std::size_t j = 0; j < pos[h].size(); ++j) {
        bool keep = pos[h][j] < s || pos[h][j] > t - r;
        for (index_t i : hits[h][j]) keep = keep || (i >= t - w + 1 && i <= t);
        if (keep) expected.push_back(pos[h][j]);
      }
      BOOST_TEST(ctx.kept_positions(h) == sorted(expected), "seed " << seed << " head " << h);
    }
  }
}

// Decode: before the token at step t is inserted, the 1.6 rule of step t-1 runs on last_hit:
// evict j iff (t-1) - last_hit[j] >= w and pos[j] <= (t-1) - r and pos[j] >= s.
BOOST_AUTO_TEST_CASE(decode_applies_the_last_hit_rule) {
  int evicted_total = 0;
  for (std::uint32_t seed = 1; seed <= 20; ++seed) {
    std::mt19937 rng(800 + seed);
    const index_t n = uniform_int(rng, 20, 50), w = uniform_int(rng, 2, 8), r = w + uniform_int(rng, 0, 3), s = uniform_int(rng, 0, 3);
    selection_harness ctx(1, 1, 64);
    index_t last = 0;
    const auto pos = random_positions(n, rng, &last);
    const index_t t = last + 1;  // incoming token
    std::vector<double> last_hit;
    for (index_t p : pos) last_hit.push_back(static_cast<double>(uniform_int(rng, p, last)));  // state >= own position
    load_head(ctx, 0, pos, last_hit);
    ctx.set_step(t);
    ctx.begin_decode();
    ctx.budget_ref(0) = n;
    kvtest::select_decode(kvc::selectors::hit_window{w, r, s}, ctx, 0);
    for (index_t j = 0; j < n; ++j) {
      const index_t p = pos[static_cast<std::size_t>(j)];
      const bool evict = (t - 1) - static_cast<index_t>(last_hit[static_cast<std::size_t>(j)]) >= w && p <= (t - 1) - r && p >= s;
      BOOST_TEST(ctx.kept(0, j) == !evict, "seed " << seed << " position " << p);
      evicted_total += evict;
    }
  }
  BOOST_TEST(evicted_total > 20);
}

BOOST_AUTO_TEST_SUITE_END()

// =====================================================================================================
// adaptive_heads (Ada-KV, 6.6)
// =====================================================================================================
BOOST_AUTO_TEST_SUITE(adaptive_heads)

namespace {

struct ada_setup {
  int heads;
  index_t n, recent, budget;
  std::vector<std::vector<index_t>> pos;
  index_t t = 0;
};

// Fills a harness with heads of different score shapes (peaky vs flat) so that allocations differ.
ada_setup fill_ada(selection_harness& ctx, std::mt19937& rng, int heads, index_t n, index_t recent, index_t budget) {
  ada_setup a{heads, n, recent, budget, std::vector<std::vector<index_t>>(static_cast<std::size_t>(heads))};
  for (int h = 0; h < heads; ++h) {
    index_t th = 0;
    a.pos[h] = random_positions(n, rng, &th, true);  // dense: every head protects exactly `recent` slots
    a.t = std::max(a.t, th);
  }
  for (int h = 0; h < heads; ++h) {
    const double level = 0.2 + 0.8 * static_cast<double>(h) / heads, peak = uniform01(rng);
    std::vector<double> s;
    for (index_t j = 0; j < n; ++j) {
      const double x = uniform01(rng);
      s.push_back(x < peak * 0.3 ? level * (1.0 + 4.0 * x) : level * 0.3 * x);
    }
    load_head(ctx, h, a.pos[h], s);
  }
  ctx.set_step(a.t);
  return a;
}

// alloc[h] per 6.6 with alpha_f = num / 10 in exact integer arithmetic: cnt from the top H*B pooled
// candidates over all heads, round(cnt (1 - alpha_f) + floor(B alpha_f)) (never an exact half for
// num in {0, 2, 6}), at most the head's candidates.
std::vector<index_t> ref_ada_alloc(const std::vector<std::vector<cand>>& ranked, index_t base, int num) {
  const int heads = static_cast<int>(ranked.size());
  std::vector<std::pair<double, int>> flat;
  for (int h = 0; h < heads; ++h)
    for (const auto& c : ranked[h]) flat.push_back({c.score, h});
  std::sort(flat.begin(), flat.end(), [](const auto& a, const auto& b) { return a.first > b.first; });
  std::vector<index_t> cnt(static_cast<std::size_t>(heads), 0);
  for (index_t i = 0; i < heads * base && i < static_cast<index_t>(flat.size()); ++i) ++cnt[static_cast<std::size_t>(flat[static_cast<std::size_t>(i)].second)];
  const index_t floor_share = base * num / 10;
  std::vector<index_t> alloc;
  for (int h = 0; h < heads; ++h) {
    const index_t scaled10 = cnt[static_cast<std::size_t>(h)] * (10 - num);  // 10 * cnt * (1 - alpha_f)
    BOOST_TEST_REQUIRE(scaled10 % 10 != 5);
    const index_t a = (scaled10 + 5) / 10 + floor_share;
    alloc.push_back(std::min<index_t>(a, static_cast<index_t>(ranked[h].size())));
  }
  return alloc;
}

}  // namespace

BOOST_AUTO_TEST_CASE(allocation_matches_reference) {
  bool lengths_differ = false;
  for (int num : {0, 2, 6})
    for (pool_kind mode : {pool_kind::none, pool_kind::max})
      for (std::uint32_t seed = 1; seed <= 6; ++seed) {
        std::mt19937 rng(900 + seed + 10 * static_cast<std::uint32_t>(num) + 100 * static_cast<std::uint32_t>(mode));
        const int heads = 4;
        const index_t n = 48, recent = 6, budget = uniform_int(rng, 12, 30);
        selection_harness ctx(heads, 8, 64);
        const ada_setup a = fill_ada(ctx, rng, heads, n, recent, budget);
        kvc::selectors::adaptive_heads<kvc::budgets::fixed> sel{kvc::budgets::fixed{budget}, {0, recent, lib_pool(mode), 7}, num / 10.0};
        ctx.begin_prefill();
        kvtest::select(sel, ctx);
        std::vector<std::vector<cand>> ranked;
        index_t base = -1;
        for (int h = 0; h < heads; ++h) {
          ranked.push_back(ranked_candidates(a.pos[h], stored_scores(ctx, h), a.t, 0, recent, mode, 7));
          const index_t prot = n - static_cast<index_t>(ranked.back().size());
          if (base >= 0) BOOST_TEST_REQUIRE(base == budget - prot);  // same protected count on every head
          base = budget - prot;
        }
        const auto alloc = ref_ada_alloc(ranked, base, num);
        for (int h = 0; h < heads; ++h) {
          BOOST_TEST_REQUIRE(clear_cut(ranked[h], static_cast<std::size_t>(alloc[h])));
          std::vector<index_t> expected;
          for (index_t p : a.pos[h])
            if (ref_protected(p, a.t, 0, recent)) expected.push_back(p);
          for (index_t i = 0; i < alloc[h]; ++i) expected.push_back(ranked[h][static_cast<std::size_t>(i)].pos);
          BOOST_TEST(ctx.kept_positions(h) == sorted(expected), "alpha_f " << num / 10.0 << " pool " << static_cast<int>(mode) << " seed " << seed << " head " << h);
          lengths_differ = lengths_differ || ctx.kept_count(h) != ctx.kept_count(0);
        }
        BOOST_TEST(ctx.scratch_intact());
      }
  BOOST_TEST(lengths_differ);  // per-head lengths differ (the point of Ada-KV)
}

// Strict mode: the layer keeps exactly H * B candidates; each head keeps a prefix of its own ranking;
// the repair only moves in one direction from the faithful allocation.
BOOST_AUTO_TEST_CASE(strict_mode_sums_to_h_times_b) {
  int repaired = 0;
  for (std::uint32_t seed = 1; seed <= 30; ++seed) {
    std::mt19937 rng(1100 + seed);
    const int heads = static_cast<int>(uniform_int(rng, 2, 6));
    const index_t n = 40, recent = 4, budget = uniform_int(rng, 8, 30);
    selection_harness ctx(heads, heads, 48);
    const ada_setup a = fill_ada(ctx, rng, heads, n, recent, budget);
    const double alpha_f = 0.1 * static_cast<double>(uniform_int(rng, 1, 9));  // any fraction: strict repairs rounding
    kvc::selectors::adaptive_heads<kvc::budgets::fixed> loose{kvc::budgets::fixed{budget}, {0, recent}, alpha_f, false};
    auto strict = loose;
    strict.strict = true;
    ctx.begin_prefill();
    kvtest::select(loose, ctx);
    std::vector<index_t> faithful;
    for (int h = 0; h < heads; ++h) faithful.push_back(ctx.kept_count(h) - recent);
    ctx.begin_prefill();
    kvtest::select(strict, ctx);
    index_t total = 0, moved = 0;
    const index_t diff = std::accumulate(faithful.begin(), faithful.end(), index_t{0}) - heads * (budget - recent);
    for (int h = 0; h < heads; ++h) {
      const index_t kept = ctx.kept_count(h) - recent;
      total += kept;
      moved += std::abs(kept - faithful[static_cast<std::size_t>(h)]);
      if (diff > 0) BOOST_TEST(kept <= faithful[static_cast<std::size_t>(h)]);
      if (diff < 0) BOOST_TEST(kept >= faithful[static_cast<std::size_t>(h)]);
      const auto ranked = ranked_candidates(a.pos[h], stored_scores(ctx, h), a.t, 0, recent, pool_kind::none, 1);
      std::vector<index_t> expected;
      for (index_t p : a.pos[h])
        if (ref_protected(p, a.t, 0, recent)) expected.push_back(p);
      for (index_t i = 0; i < kept; ++i) expected.push_back(ranked[static_cast<std::size_t>(i)].pos);
      BOOST_TEST(ctx.kept_positions(h) == sorted(expected));
    }
    BOOST_TEST(total == heads * (budget - recent), "seed " << seed);
    BOOST_TEST(moved == std::abs(diff));
    repaired += diff != 0;
  }
  BOOST_TEST(repaired > 0);  // some draws needed the repair
}

BOOST_AUTO_TEST_SUITE_END()

// =====================================================================================================
// windows (WindowKV, 4.5-4.7)
// =====================================================================================================
BOOST_AUTO_TEST_SUITE(windows)

namespace {

// Reference WindowKV decision from per-query-head scores S[g][i] indexed by the POSITION RANK i
// (0 = oldest). Returns keep flags by rank. `margin_ok` is false when the dropped/kept boundary is
// closer than the margin (fp32 could flip it).
std::vector<bool> ref_windows(const std::vector<std::vector<double>>& S, index_t n, index_t suffix, index_t omega, index_t b,
                              kvc::selectors::task_type task, bool strict, bool* margin_ok, index_t* kept_review_out = nullptr) {
  std::vector<bool> keep(static_cast<std::size_t>(n), true);
  *margin_ok = true;
  const index_t R = n - suffix;
  if (kept_review_out) *kept_review_out = R;
  if (R <= b) return keep;  // no compression
  const index_t count = (R + omega - 1) / omega;
  std::vector<double> score(static_cast<std::size_t>(count));
  for (index_t k = 0; k < count; ++k) {
    const index_t begin = k * omega, end = std::min((k + 1) * omega, R);
    double total = 0.0;
    for (const auto& Sg : S) {
      std::vector<double> v(Sg.begin() + begin, Sg.begin() + end);
      if (task == kvc::selectors::task_type::aggregation) {
        total += std::accumulate(v.begin(), v.end(), 0.0) / static_cast<double>(v.size());
      } else {
        const index_t p = std::min<index_t>(std::max<index_t>(omega / 2, 1), static_cast<index_t>(v.size()));  // p = omega/2 (at least 1)
        std::sort(v.begin(), v.end(), std::greater<>());
        total += std::accumulate(v.begin(), v.begin() + p, 0.0) / static_cast<double>(p);
      }
    }
    score[static_cast<std::size_t>(k)] = total / static_cast<double>(S.size());
  }
  const index_t n_drop = (R - b + omega - 1) / omega;
  if (n_drop * omega >= R) {  // keep only the suffix
    for (index_t i = 0; i < R; ++i) keep[static_cast<std::size_t>(i)] = false;
    if (kept_review_out) *kept_review_out = 0;
    return keep;
  }
  std::vector<index_t> worst(static_cast<std::size_t>(count));
  std::iota(worst.begin(), worst.end(), 0);
  // lowest score first; ties: the higher window index is dropped first (lower index kept)
  std::sort(worst.begin(), worst.end(), [&](index_t a, index_t c) {
    const double sa = score[static_cast<std::size_t>(a)], sc = score[static_cast<std::size_t>(c)];
    return sa < sc || (sa == sc && a > c);
  });
  index_t kept_review = R, dropped = 0;
  while (dropped < count && (dropped < n_drop || (strict && kept_review > b))) {
    const index_t k = worst[static_cast<std::size_t>(dropped++)];
    const index_t begin = k * omega, end = std::min((k + 1) * omega, R);
    for (index_t i = begin; i < end; ++i) keep[static_cast<std::size_t>(i)] = false;
    kept_review -= end - begin;
  }
  if (dropped < count) {
    const double a = score[static_cast<std::size_t>(worst[static_cast<std::size_t>(dropped - 1)])];
    const double c = score[static_cast<std::size_t>(worst[static_cast<std::size_t>(dropped)])];
    *margin_ok = a == c || std::abs(a - c) > boundary_margin * std::max(std::abs(a), std::abs(c));
  }
  if (kept_review_out) *kept_review_out = kept_review;
  return keep;
}

// Loads per-query-head scores S[g][rank] into a harness whose heads store their slots in different random
// orders (the same positions on every head, as after a prefill), and the shared per-KV-head score
// (mean over all query heads, what scorers::last_query hands the selector).
void load_windows(selection_harness& ctx, const std::vector<std::vector<double>>& S, const std::vector<index_t>& rank_pos, std::mt19937& rng,
                  int group_size) {
  const index_t n = static_cast<index_t>(rank_pos.size());
  const int G = static_cast<int>(S.size());
  for (int h = 0; h < ctx.kv_heads(); ++h) {
    std::vector<index_t> perm(static_cast<std::size_t>(n));  // slot -> rank
    std::iota(perm.begin(), perm.end(), 0);
    kvtest::shuffle_portable(perm, rng);
    ctx.set_length(h, n);
    for (index_t j = 0; j < n; ++j) {
      const index_t i = perm[static_cast<std::size_t>(j)];
      ctx.position_ref(h, j) = static_cast<std::int32_t>(rank_pos[static_cast<std::size_t>(i)]);
      double mean = 0.0;
      for (int g = 0; g < G; ++g) mean += S[g][static_cast<std::size_t>(i)];
      ctx.score_ref(h, j) = static_cast<float>(mean / G);
      for (int g = h * group_size; g < (h + 1) * group_size; ++g) ctx.query_score_ref(g, j) = static_cast<float>(S[g][static_cast<std::size_t>(i)]);
    }
  }
}

std::vector<index_t> kept_from_ranks(const std::vector<bool>& keep, const std::vector<index_t>& rank_pos) {
  std::vector<index_t> out;
  for (std::size_t i = 0; i < keep.size(); ++i)
    if (keep[i]) out.push_back(rank_pos[i]);
  return out;
}

std::vector<index_t> dense_ranks(index_t n, std::mt19937& rng) {
  std::vector<index_t> p(static_cast<std::size_t>(n));  // positions with gaps, ascending by rank
  index_t x = 0;
  for (auto& v : p) v = (x += uniform_int(rng, 1, 3));
  return p;
}

}  // namespace

BOOST_AUTO_TEST_CASE(decision_matches_reference) {
  int compressed = 0, suffix_only = 0, short_dropped = 0;
  for (auto task : {kvc::selectors::task_type::localization, kvc::selectors::task_type::aggregation})
    for (bool strict : {false, true})
      for (std::uint32_t seed = 1; seed <= 15; ++seed) {
        std::mt19937 rng(1300 + seed + 20 * static_cast<std::uint32_t>(task) + 40 * static_cast<std::uint32_t>(strict));
        const int kv_heads = 2, G = 6;
        const index_t omega = uniform_int(rng, 0, 1) ? 4 : 8, suffix = uniform_int(rng, 2, 10), n = uniform_int(rng, 20, 90);
        const index_t b = seed == 15 ? 1 : uniform_int(rng, 0, n);  // seed 15: the "keep only the suffix" branch
        std::vector<std::vector<double>> S(G);
        for (auto& Sg : S)
          for (index_t i = 0; i < n; ++i) Sg.push_back(uniform01(rng) * uniform01(rng));
        const auto rank_pos = dense_ranks(n, rng);
        selection_harness ctx(kv_heads, G, n);  // capacity == length: no slack in the scratch arrays
        load_windows(ctx, S, rank_pos, rng, G / kv_heads);
        ctx.set_step(rank_pos.back());
        ctx.set_layer(0, 4);
        kvc::selectors::windows<kvc::budgets::fixed> sel{kvc::budgets::fixed{b}, omega, suffix, 2, task, strict};
        ctx.reset_shared();
        ctx.begin_prefill();
        kvtest::select(sel, ctx);
        bool margin_ok = true;
        index_t kept_review = 0;
        const auto keep = ref_windows(S, n, suffix, omega, b, task, strict, &margin_ok, &kept_review);
        BOOST_TEST_REQUIRE(margin_ok);
        const auto expected = kept_from_ranks(keep, rank_pos);
        for (int h = 0; h < kv_heads; ++h)
          BOOST_TEST(ctx.kept_positions(h) == expected, "task " << static_cast<int>(task) << " strict " << strict << " seed " << seed << " n " << n
                                                                 << " omega " << omega << " suffix " << suffix << " b " << b << " head " << h);
        // budget: faithful overshoots by less than omega (short last window), strict never
        if (n - suffix > b) {
          ++compressed;
          BOOST_TEST(kept_review <= (strict ? b : b + omega - 1));
          BOOST_TEST(ctx.kept_count(0) - std::min(suffix, n) <= (strict ? b : b + omega - 1));
          suffix_only += kept_review == 0;
          const index_t R = n - suffix;
          short_dropped += R % omega != 0 && !keep[static_cast<std::size_t>(R - 1)];
        }
        BOOST_TEST(ctx.scratch_intact());
      }
  BOOST_TEST(compressed > 30);
  BOOST_TEST(suffix_only > 0);
  BOOST_TEST(short_dropped > 0);
}

// 4.6's example: R = 100, omega = 8, b = 45. n_drop = 7; when the short (4-token) last window is among the
// dropped, 52 tokens go and 48 > 45 review tokens stay (faithful); strict drops one more window (40).
BOOST_AUTO_TEST_CASE(short_last_window_overshoot_and_strict_budget) {
  const index_t R = 100, suffix = 4, n = R + suffix, omega = 8;
  std::vector<std::vector<double>> S(1, std::vector<double>(static_cast<std::size_t>(n)));
  for (index_t i = 0; i < n; ++i) S[0][static_cast<std::size_t>(i)] = 1.0 + 0.01 * static_cast<double>((i / omega * 7) % 13);  // window-wise levels
  for (index_t i = 96; i < 100; ++i) S[0][static_cast<std::size_t>(i)] = 0.001;  // the short window is the worst
  std::vector<index_t> rank_pos(static_cast<std::size_t>(n));
  std::iota(rank_pos.begin(), rank_pos.end(), 0);
  for (bool strict : {false, true}) {
    selection_harness ctx(1, 1, n);
    std::mt19937 rng(17);
    load_windows(ctx, S, rank_pos, rng, 1);
    ctx.set_step(n - 1);
    kvc::selectors::windows<kvc::budgets::fixed> sel{kvc::budgets::fixed{45}, omega, suffix, 1, kvc::selectors::task_type::aggregation, strict};
    ctx.reset_shared();
    ctx.begin_prefill();
    kvtest::select(sel, ctx);
    BOOST_TEST(ctx.kept_count(0) == (strict ? 40 : 48) + suffix);
    const auto kept = ctx.kept_positions(0);  // positions == ranks here
    for (index_t i = 96; i < 100; ++i) BOOST_TEST(!std::binary_search(kept.begin(), kept.end(), i));
    for (index_t i = 100; i < n; ++i) BOOST_TEST(std::binary_search(kept.begin(), kept.end(), i));
  }
}

// Short heads (a window longer than a few slots, capacity == length): the selector's scratch must stay
// within `capacity` floats per head (the layer_context contract), and omega = 1 must not divide by zero.
BOOST_AUTO_TEST_CASE(small_heads_stay_inside_scratch) {
  int checked = 0;
  for (index_t omega : {1, 2, 8, 16})
    for (index_t n = 2; n <= 2 * omega + 2; ++n)
      for (index_t suffix : {0, 1}) {
        std::mt19937 rng(static_cast<std::uint32_t>(31 + 100 * omega + 7 * n + suffix));
        std::vector<std::vector<double>> S(2);
        for (auto& Sg : S)
          for (index_t i = 0; i < n; ++i) Sg.push_back(uniform01(rng));
        const auto rank_pos = dense_ranks(n, rng);
        for (index_t b = 0; b < n - suffix; ++b) {
          selection_harness ctx(1, 2, n);
          load_windows(ctx, S, rank_pos, rng, 2);
          ctx.set_step(rank_pos.back());
          kvc::selectors::windows<kvc::budgets::fixed> sel{kvc::budgets::fixed{b}, omega, suffix, 1, kvc::selectors::task_type::localization};
          ctx.reset_shared();
          ctx.begin_prefill();
          kvtest::select(sel, ctx);
          BOOST_TEST(ctx.scratch_intact(), "omega " << omega << " n " << n << " suffix " << suffix << " b " << b);
          bool ok = true;
          const auto expected = kept_from_ranks(ref_windows(S, n, suffix, omega, b, sel.task, false, &ok), rank_pos);
          if (ok) BOOST_TEST(ctx.kept_positions(0) == expected, "omega " << omega << " n " << n << " suffix " << suffix << " b " << b);
          ++checked;
        }
      }
  BOOST_TEST(checked > 100);
}

// Equal window scores: the windows with the lower index are kept.
BOOST_AUTO_TEST_CASE(ties_keep_lower_window_index) {
  const index_t n = 43, suffix = 3, omega = 4, b = 21;  // R = 40: 10 windows, n_drop = 5
  for (auto task : {kvc::selectors::task_type::localization, kvc::selectors::task_type::aggregation}) {
    std::vector<std::vector<double>> S(2, std::vector<double>(static_cast<std::size_t>(n), 0.5));
    std::mt19937 rng(19);
    const auto rank_pos = dense_ranks(n, rng);
    selection_harness ctx(1, 2, n);
    load_windows(ctx, S, rank_pos, rng, 2);
    ctx.set_step(rank_pos.back());
    kvc::selectors::windows<kvc::budgets::fixed> sel{kvc::budgets::fixed{b}, omega, suffix, 1, task};
    ctx.reset_shared();
    ctx.begin_prefill();
    kvtest::select(sel, ctx);
    std::vector<index_t> expected(rank_pos.begin(), rank_pos.begin() + 20);  // windows 0..4
    expected.insert(expected.end(), rank_pos.end() - suffix, rank_pos.end());
    BOOST_TEST(ctx.kept_positions(0) == expected);
  }
}

BOOST_AUTO_TEST_CASE(no_compression_when_review_fits) {
  std::mt19937 rng(23);
  const index_t n = 30, suffix = 5;
  std::vector<std::vector<double>> S(1);
  for (index_t i = 0; i < n; ++i) S[0].push_back(uniform01(rng));
  const auto rank_pos = dense_ranks(n, rng);
  for (index_t b : {25, 26, 40}) {
    selection_harness ctx(1, 1, n);
    load_windows(ctx, S, rank_pos, rng, 1);
    kvc::selectors::windows<kvc::budgets::fixed> sel{kvc::budgets::fixed{b}, 4, suffix, 1};
    ctx.reset_shared();
    ctx.begin_prefill();
    kvtest::select(sel, ctx);
    BOOST_TEST(ctx.kept_count(0) == n);
  }
}

// A follower layer (layer % group != 0) reuses the leader's published windows whatever its own scores.
BOOST_AUTO_TEST_CASE(followers_reuse_the_leaders_windows_in_the_context) {
  std::mt19937 rng(29);
  const index_t n = 50, suffix = 6, omega = 4, b = 20;
  std::vector<std::vector<double>> S(2), other(2);
  for (int g = 0; g < 2; ++g)
    for (index_t i = 0; i < n; ++i) {
      S[g].push_back(uniform01(rng));
      other[g].push_back(uniform01(rng));
    }
  const auto rank_pos = dense_ranks(n, rng);
  kvc::selectors::windows<kvc::budgets::fixed> sel{kvc::budgets::fixed{b}, omega, suffix, 3, kvc::selectors::task_type::localization};
  selection_harness ctx(1, 2, n);
  ctx.reset_shared();
  std::vector<index_t> leader;
  for (int layer = 0; layer < 3; ++layer) {
    load_windows(ctx, layer == 0 ? S : other, rank_pos, rng, 2);
    ctx.set_layer(layer, 6);
    ctx.begin_prefill();
    kvtest::select(sel, ctx);
    if (layer == 0) leader = ctx.kept_positions(0);
    BOOST_TEST(ctx.kept_positions(0) == leader, "layer " << layer);
  }
  bool ok = true;
  BOOST_TEST_REQUIRE(kept_from_ranks(ref_windows(other, n, suffix, omega, b, sel.task, false, &ok), rank_pos) != leader);  // own decision would differ
}

// 4.7: the leader always publishes its decision, including the degenerate branches, so a follower never
// reuses a stale list from an earlier group: "keep only the suffix" and "no compression" reach followers.
BOOST_AUTO_TEST_CASE(degenerate_leader_decisions_reach_followers) {
  std::mt19937 rng(37);
  const index_t n = 50, suffix = 6, omega = 4;
  std::vector<std::vector<double>> S(1);
  for (index_t i = 0; i < n; ++i) S[0].push_back(uniform01(rng));
  const auto rank_pos = dense_ranks(n, rng);
  selection_harness ctx(1, 1, n);
  ctx.reset_shared();
  auto run = [&](int layer, index_t b, index_t length) {
    std::vector<std::vector<double>> cut(1, std::vector<double>(S[0].begin(), S[0].begin() + length));
    const std::vector<index_t> pos(rank_pos.begin(), rank_pos.begin() + length);
    load_windows(ctx, cut, pos, rng, 1);
    ctx.set_layer(layer, 6);
    ctx.begin_prefill();
    kvtest::select(kvc::selectors::windows<kvc::budgets::fixed>{kvc::budgets::fixed{b}, omega, suffix, 2, kvc::selectors::task_type::aggregation}, ctx);
    return ctx.kept_count(0);
  };
  BOOST_TEST(run(0, 20, n) < n - suffix);  // a normal decision is published ...
  BOOST_TEST(run(2, 1, n) == suffix);      // ... then a leader keeps only its suffix (n_drop * omega >= R)
  BOOST_TEST(run(3, 1, n) == suffix);      // its follower too
  BOOST_TEST(run(4, 20, 24) == 24);        // a leader with R <= b keeps everything
  BOOST_TEST(run(5, 20, 24) == 24);        // and so does its follower
}

BOOST_AUTO_TEST_SUITE_END()

// =====================================================================================================
// merging_sets (KVMerger, 2.4 / 2.6)
// =====================================================================================================
BOOST_AUTO_TEST_SUITE(merging_sets)

namespace {

// One head's data in position-rank space (rank 0 = oldest) and its slot permutation.
struct merge_data {
  index_t n, d;
  std::vector<std::vector<double>> key;  // [rank][d]
  std::vector<double> score;             // [rank]
  std::vector<index_t> pos;              // [rank], ascending
  std::vector<index_t> slot_of;          // [rank] -> slot
};

// Keys in runs: each token continues its predecessor's direction (small noise) with probability `p_run`,
// else starts a fresh random direction; cosine of neighbours is then ~0.95+ or ~random.
merge_data make_merge_data(std::mt19937& rng, index_t n, index_t d, double p_run, bool equal_scores = false) {
  merge_data m{n, d, {}, {}, {}, {}};
  index_t x = 0;
  for (index_t i = 0; i < n; ++i) {
    std::vector<double> k(static_cast<std::size_t>(d));
    const bool run = i > 0 && uniform01(rng) < p_run;
    for (index_t e = 0; e < d; ++e) k[static_cast<std::size_t>(e)] = run ? m.key.back()[static_cast<std::size_t>(e)] + 0.15 * uniform_pm1(rng) : uniform_pm1(rng);
    for (auto& v : k) v = static_cast<double>(static_cast<float>(v));  // as stored (fp32)
    m.key.push_back(k);
    m.score.push_back(equal_scores ? 0.5 : static_cast<double>(static_cast<float>(uniform01(rng))));
    m.pos.push_back(x += uniform_int(rng, 1, 2));
  }
  m.slot_of.resize(static_cast<std::size_t>(n));
  std::iota(m.slot_of.begin(), m.slot_of.end(), 0);
  kvtest::shuffle_portable(m.slot_of, rng);
  return m;
}

void load_merge(selection_harness& ctx, int h, const merge_data& m) {
  ctx.set_length(h, m.n);
  for (index_t i = 0; i < m.n; ++i) {
    const index_t j = m.slot_of[static_cast<std::size_t>(i)];
    ctx.position_ref(h, j) = static_cast<std::int32_t>(m.pos[static_cast<std::size_t>(i)]);
    ctx.score_ref(h, j) = static_cast<float>(m.score[static_cast<std::size_t>(i)]);
    for (index_t e = 0; e < m.d; ++e) ctx.key_ref(h, j, e) = static_cast<float>(m.key[static_cast<std::size_t>(i)][static_cast<std::size_t>(e)]);
  }
}

double cosine(const std::vector<double>& a, const std::vector<double>& b) {
  double dot = 0, na = 0, nb = 0;
  for (std::size_t e = 0; e < a.size(); ++e) {
    dot += a[e] * b[e];
    na += a[e] * a[e];
    nb += b[e] * b[e];
  }
  return dot / std::sqrt(na * nb);
}

// Protected ranks: the floor(rho_r n) newest, then the floor(rho_a n) best scores among the rest (P5 order).
// (2.6 does not say how rho * T is rounded; the library floors, the reference does the same.) At most
// `cap` in all (the budgeted mode's budget): the recent ones first, then the top-scoring ones.
std::vector<bool> ref_merge_protected(const merge_data& m, double rho_r, double rho_a, index_t cap) {
  const index_t recent = std::min(static_cast<index_t>(std::floor(rho_r * static_cast<double>(m.n))), cap);
  const index_t top = std::min(static_cast<index_t>(std::floor(rho_a * static_cast<double>(m.n))), cap - recent);
  std::vector<bool> prot(static_cast<std::size_t>(m.n), false);
  std::vector<cand> rest;
  for (index_t i = 0; i < m.n; ++i) {
    if (i >= m.n - recent) prot[static_cast<std::size_t>(i)] = true;
    else rest.push_back({m.score[static_cast<std::size_t>(i)], m.pos[static_cast<std::size_t>(i)], i});
  }
  std::sort(rest.begin(), rest.end(), better);
  for (index_t k = 0; k < top && k < static_cast<index_t>(rest.size()); ++k) prot[static_cast<std::size_t>(rest[static_cast<std::size_t>(k)].slot)] = true;
  return prot;
}

// 2.4's backward scan: rank i joins rank i+1's set unless either is protected or the link does not chain.
std::vector<std::vector<index_t>> ref_sets(index_t n, const std::vector<bool>& prot, const std::vector<bool>& chains) {
  std::vector<std::vector<index_t>> sets;
  std::vector<index_t> cur{n - 1};
  for (index_t i = n - 2; i >= 0; --i) {
    if (prot[static_cast<std::size_t>(i)] || prot[static_cast<std::size_t>(i + 1)] || !chains[static_cast<std::size_t>(i)]) {
      sets.push_back(cur);
      cur = {i};
    } else {
      cur.push_back(i);
    }
  }
  sets.push_back(cur);
  for (auto& s : sets) std::sort(s.begin(), s.end());
  std::reverse(sets.begin(), sets.end());
  return sets;
}

// Pivot of a set: the highest score, lower position on ties.
index_t ref_pivot(const merge_data& m, const std::vector<index_t>& set) {
  index_t best = set[0];
  for (index_t i : set)
    if (better({m.score[static_cast<std::size_t>(i)], m.pos[static_cast<std::size_t>(i)], i},
               {m.score[static_cast<std::size_t>(best)], m.pos[static_cast<std::size_t>(best)], best}))
      best = i;
  return best;
}

// Expected keep flags / targets (by rank) from the sets of the unprotected tokens; `keep_sets` (by
// index into the unprotected sets) says which sets survive (all in faithful mode).
struct merge_expect {
  std::vector<bool> keep;
  std::vector<index_t> target_rank;  // -1: none
  index_t unprotected_sets = 0;
};
merge_expect expect_from_sets(const merge_data& m, const std::vector<bool>& prot, const std::vector<std::vector<index_t>>& sets, index_t room) {
  merge_expect e{std::vector<bool>(static_cast<std::size_t>(m.n), false), std::vector<index_t>(static_cast<std::size_t>(m.n), -1), 0};
  std::vector<std::pair<index_t, const std::vector<index_t>*>> free_sets;  // (pivot, set)
  for (const auto& s : sets) {
    if (s.size() == 1 && prot[static_cast<std::size_t>(s[0])]) {
      e.keep[static_cast<std::size_t>(s[0])] = true;
      continue;
    }
    free_sets.push_back({ref_pivot(m, s), &s});
  }
  e.unprotected_sets = static_cast<index_t>(free_sets.size());
  // fallback: keep the `room` sets with the best pivots, drop the rest whole
  std::sort(free_sets.begin(), free_sets.end(), [&](const auto& a, const auto& b) {
    return better({m.score[static_cast<std::size_t>(a.first)], m.pos[static_cast<std::size_t>(a.first)], a.first},
                  {m.score[static_cast<std::size_t>(b.first)], m.pos[static_cast<std::size_t>(b.first)], b.first});
  });
  for (std::size_t k = 0; k < free_sets.size() && static_cast<index_t>(k) < room; ++k) {
    const index_t p = free_sets[k].first;
    e.keep[static_cast<std::size_t>(p)] = true;
    for (index_t i : *free_sets[k].second)
      if (i != p) e.target_rank[static_cast<std::size_t>(i)] = p;
  }
  return e;
}

void check_against(const selection_harness& ctx, int h, const merge_data& m, const merge_expect& e, const std::string& what) {
  for (index_t i = 0; i < m.n; ++i) {
    const index_t j = m.slot_of[static_cast<std::size_t>(i)];
    BOOST_TEST(ctx.kept(h, j) == e.keep[static_cast<std::size_t>(i)], what << " rank " << i);
    const index_t t = e.target_rank[static_cast<std::size_t>(i)];
    BOOST_TEST(ctx.target(h, j) == (t < 0 ? -1 : m.slot_of[static_cast<std::size_t>(t)]), what << " target of rank " << i);
  }
}

std::vector<double> link_sims(const merge_data& m) {
  std::vector<double> sim;
  for (index_t i = 0; i + 1 < m.n; ++i) sim.push_back(cosine(m.key[static_cast<std::size_t>(i)], m.key[static_cast<std::size_t>(i + 1)]));
  return sim;
}

// Budgeted mode (2.6 [ext]) for budget B >= P (P = protected count, already capped to B): the largest eps
// whose set count + P fits B. With distinct link similarities the set count at eps is
// U - #{eligible links with sim >= eps} (U unprotected tokens, eligible = both ends unprotected), so the
// largest fitting eps is the k-th largest eligible similarity, k = U - (B - P): exactly B slots stay, and
// any eps above it (one link fewer) would not fit. If fewer than k eligible links reach eps_min, the sets
// at eps_min are built and the lowest-pivot ones dropped whole down to B - P. `resolvable` is false when
// the k-th and (k+1)-th similarities are too close for the fp32 bisection to separate them.
struct budgeted_expect {
  merge_expect e;
  enum class kind { nothing_merged, exact, fallback } how;
  bool resolvable = true;
};
budgeted_expect ref_budgeted(const merge_data& m, const std::vector<double>& sim, const std::vector<bool>& prot, index_t B, double eps_min) {
  const index_t n = m.n, P = std::count(prot.begin(), prot.end(), true), U = n - P;
  std::vector<double> eligible;
  for (index_t i = 0; i + 1 < n; ++i)
    if (!prot[static_cast<std::size_t>(i)] && !prot[static_cast<std::size_t>(i + 1)]) eligible.push_back(sim[static_cast<std::size_t>(i)]);
  std::sort(eligible.begin(), eligible.end(), std::greater<>());
  const index_t k = U - (B - P);  // links that must chain
  index_t usable = 0;
  for (double s : eligible) usable += s >= eps_min;
  std::vector<bool> chains(sim.size(), false);
  budgeted_expect out;
  if (k <= 0) {
    out.e = expect_from_sets(m, prot, ref_sets(n, prot, chains), n);
    out.how = budgeted_expect::kind::nothing_merged;
  } else if (k <= usable) {
    const double threshold = eligible[static_cast<std::size_t>(k - 1)];
    out.resolvable = k == static_cast<index_t>(eligible.size()) || threshold - eligible[static_cast<std::size_t>(k)] > boundary_margin;
    for (std::size_t i = 0; i < sim.size(); ++i) chains[i] = sim[i] >= threshold;
    out.e = expect_from_sets(m, prot, ref_sets(n, prot, chains), n);
    BOOST_TEST(out.e.unprotected_sets + P == B);  // fits, and exactly
    std::vector<bool> stricter(sim.size());        // eps just above the threshold: one link fewer, does not fit
    for (std::size_t i = 0; i < sim.size(); ++i) stricter[i] = sim[i] > threshold;
    BOOST_TEST(expect_from_sets(m, prot, ref_sets(n, prot, stricter), n).unprotected_sets + P > B);
    out.how = budgeted_expect::kind::exact;
  } else {
    for (std::size_t i = 0; i < sim.size(); ++i) chains[i] = sim[i] >= eps_min;
    out.e = expect_from_sets(m, prot, ref_sets(n, prot, chains), B - P);
    out.how = budgeted_expect::kind::fallback;
  }
  return out;
}

using merge_selector = kvc::selectors::merging_sets<kvc::budgets::fixed>;

}  // namespace

BOOST_AUTO_TEST_CASE(faithful_sets_pivots_and_targets) {
  int merged_sets = 0;
  for (std::uint32_t seed = 1; seed <= 20; ++seed) {
    std::mt19937 rng(1500 + seed);
    const index_t n = uniform_int(rng, 20, 80);
    const merge_data m = make_merge_data(rng, n, 8, 0.7);
    const auto sim = link_sims(m);
    const double eps = 0.75;
    for (double s : sim) BOOST_TEST_REQUIRE(std::abs(s - eps) > boundary_margin);
    merge_selector sel{kvc::budgets::fixed{n}};
    sel.eps = static_cast<float>(eps);
    const auto prot = ref_merge_protected(m, sel.recent_fraction, sel.top_fraction, n);
    std::vector<bool> chains;
    for (double s : sim) chains.push_back(s >= eps);
    const auto sets = ref_sets(n, prot, chains);
    const auto e = expect_from_sets(m, prot, sets, n);
    for (index_t schedule : {n, index_t{1}}) {  // faithful mode ignores the schedule's budget
      sel.schedule = kvc::budgets::fixed{schedule};
      selection_harness ctx(1, 1, n + 3, 8);
      load_merge(ctx, 0, m);
      ctx.set_step(m.pos.back());
      ctx.set_layer(3, 8);
      ctx.begin_prefill();
      kvtest::select(sel, ctx);
      check_against(ctx, 0, m, e, "seed " + std::to_string(seed) + " schedule " + std::to_string(schedule));
      BOOST_TEST(ctx.scratch_intact());
    }
    for (const auto& s : sets) merged_sets += s.size() > 1;
  }
  BOOST_TEST(merged_sets > 40);
}

// Equal scores everywhere: every pivot is the set's oldest member; the "top" protection takes the
// oldest non-recent tokens (lower position wins ties).
BOOST_AUTO_TEST_CASE(pivot_ties_go_to_the_lower_position) {
  std::mt19937 rng(1601);
  const index_t n = 60;
  const merge_data m = make_merge_data(rng, n, 8, 0.8, true);
  const auto sim = link_sims(m);
  for (double s : sim) BOOST_TEST_REQUIRE(std::abs(s - 0.75) > boundary_margin);
  selection_harness ctx(1, 1, n, 8);
  load_merge(ctx, 0, m);
  ctx.set_step(m.pos.back());
  ctx.set_layer(2, 8);
  merge_selector sel{kvc::budgets::fixed{n}};
  ctx.begin_prefill();
  kvtest::select(sel, ctx);
  const auto prot = ref_merge_protected(m, sel.recent_fraction, sel.top_fraction, n);
  for (index_t i = 0; i < static_cast<index_t>(std::floor(sel.top_fraction * n)); ++i) BOOST_TEST(prot[static_cast<std::size_t>(i)]);
  std::vector<bool> chains;
  for (double s : sim) chains.push_back(s >= 0.75);
  const auto sets = ref_sets(n, prot, chains);
  int multi = 0;
  for (const auto& s : sets)
    if (s.size() > 1) {
      ++multi;
      BOOST_TEST(ref_pivot(m, s) == s.front());
    }
  BOOST_TEST_REQUIRE(multi > 3);
  check_against(ctx, 0, m, expect_from_sets(m, prot, sets, n), "ties");
}

// Faithful mode only: the budgeted mode applies its budget in every layer (next tests).
BOOST_AUTO_TEST_CASE(faithful_mode_leaves_skipped_layers_untouched) {
  std::mt19937 rng(1602);
  const index_t n = 40;
  const merge_data m = make_merge_data(rng, n, 8, 0.9);
  for (int layer : {0, 1, 7}) {
    selection_harness ctx(2, 2, n, 8);
    load_merge(ctx, 0, m);
    load_merge(ctx, 1, m);
    ctx.set_step(m.pos.back());
    ctx.set_layer(layer, 8);
    merge_selector sel{kvc::budgets::fixed{5}};
    ctx.begin_prefill();
    kvtest::select(sel, ctx);
    for (int h = 0; h < 2; ++h)
      for (index_t j = 0; j < n; ++j) {
        BOOST_TEST(ctx.kept(h, j));
        BOOST_TEST(ctx.target(h, j) == -1);
      }
  }
  // control: a middle layer does merge this data
  selection_harness ctx(1, 1, n, 8);
  load_merge(ctx, 0, m);
  ctx.set_step(m.pos.back());
  ctx.set_layer(3, 8);
  ctx.begin_prefill();
  kvtest::select(merge_selector{kvc::budgets::fixed{5}}, ctx);
  BOOST_TEST(ctx.kept_count(0) < n);
}

// Budgeted mode, budgets between the protected count and the length (see ref_budgeted): the bisection
// finds the exact eps, or the fallback (eps_min too high) drops the lowest-pivot sets whole.
BOOST_AUTO_TEST_CASE(budgeted_bisection_and_fallback) {
  int exact = 0, fallback = 0;
  for (std::uint32_t seed = 1; seed <= 30; ++seed) {
    std::mt19937 rng(1700 + seed);
    const index_t n = uniform_int(rng, 30, 80);
    const merge_data m = make_merge_data(rng, n, 8, 0.6);
    const auto sim = link_sims(m);
    const double eps_min = seed % 3 == 0 ? 0.9 : -1.0;
    merge_selector sel{kvc::budgets::fixed{0}};
    sel.budgeted = true;
    sel.eps_min = static_cast<float>(eps_min);
    const auto prot = ref_merge_protected(m, sel.recent_fraction, sel.top_fraction, n);
    const index_t P = std::count(prot.begin(), prot.end(), true);
    const index_t B = uniform_int(rng, P + 1, n - 1);
    sel.schedule = kvc::budgets::fixed{B};
    const auto want = ref_budgeted(m, sim, prot, B, eps_min);
    BOOST_TEST_REQUIRE(want.resolvable);  // fp32 bisection resolves the gap
    exact += want.how == budgeted_expect::kind::exact;
    fallback += want.how == budgeted_expect::kind::fallback;
    selection_harness ctx(1, 1, n, 8);
    load_merge(ctx, 0, m);
    ctx.set_step(m.pos.back());
    ctx.set_layer(4, 10);
    ctx.begin_prefill();
    kvtest::select(sel, ctx);
    check_against(ctx, 0, m, want.e, "seed " + std::to_string(seed) + " B " + std::to_string(B));
    BOOST_TEST(ctx.kept_count(0) <= B);
    BOOST_TEST(ctx.scratch_intact());
  }
  BOOST_TEST(exact > 5);
  BOOST_TEST(fallback > 2);
}

// Budgeted mode with a fraction schedule, including budgets far below the protected shares 0.17 + 0.12
// and the layers faithful mode skips (0, 1, L-1): every head keeps at most round(f n) slots, the protected
// tokens are capped to the budget (recent first, then top), and keep flags and targets match the plain
// reference. Budget rounding (budgets::fraction): round half up, at least 1.
BOOST_AUTO_TEST_CASE(budgeted_mode_meets_every_budget_in_every_layer) {
  using fraction_selector = kvc::selectors::merging_sets<kvc::budgets::fraction>;
  constexpr int layers = 6;
  int checked = 0, capped = 0, only_protected = 0, merged = 0, unresolved = 0;
  std::uint32_t seed = 0;
  for (double f : {0.01, 0.05, 0.1, 0.2, 0.3, 0.35, 0.5, 0.8, 1.0})
    for (int layer : {0, 1, 3, layers - 1}) {
      std::mt19937 rng(1800 + ++seed);
      const index_t n = uniform_int(rng, 40, 120);
      const merge_data m = make_merge_data(rng, n, 8, 0.7);
      const auto sim = link_sims(m);
      const double eps_min = seed % 4 == 0 ? 0.9 : -1.0;
      fraction_selector sel{kvc::budgets::fraction{f}};
      sel.budgeted = true;
      sel.eps_min = static_cast<float>(eps_min);
      const index_t B = std::max<index_t>(1, static_cast<index_t>(std::floor(f * static_cast<double>(n) + 0.5)));
      const auto prot = ref_merge_protected(m, sel.recent_fraction, sel.top_fraction, B);
      const index_t P = std::count(prot.begin(), prot.end(), true);
      const index_t uncapped = static_cast<index_t>(std::floor(sel.recent_fraction * n)) + static_cast<index_t>(std::floor(sel.top_fraction * n));
      capped += uncapped > B;
      only_protected += P == B;
      const auto want = ref_budgeted(m, sim, prot, B, eps_min);
      selection_harness ctx(1, 1, n, 8);
      load_merge(ctx, 0, m);
      ctx.set_step(m.pos.back());
      ctx.set_layer(layer, layers);
      ctx.begin_prefill();
      kvtest::select(sel, ctx);
      const std::string what = "f " + std::to_string(f) + " layer " + std::to_string(layer) + " n " + std::to_string(n);
      BOOST_TEST(ctx.kept_count(0) <= B, what);
      const index_t recent = std::min(static_cast<index_t>(std::floor(sel.recent_fraction * n)), B);
      for (index_t i = n - recent; i < n; ++i) BOOST_TEST(ctx.kept(0, m.slot_of[static_cast<std::size_t>(i)]), what << " recent rank " << i);
      if (want.resolvable) {
        check_against(ctx, 0, m, want.e, what);
        ++checked;
      } else {
        ++unresolved;
      }
      for (index_t t : want.e.target_rank) merged += t >= 0;
      BOOST_TEST(ctx.scratch_intact());
    }
  BOOST_TEST_MESSAGE("budgeted KVMerger: " << checked << " heads checked exactly, " << unresolved << " unresolved, " << capped
                                            << " with capped protection, " << only_protected << " filled by it, " << merged << " merged tokens");
  BOOST_TEST(checked >= 30);
  BOOST_TEST(unresolved <= 2);
  BOOST_TEST(capped >= 8);          // protection alone exceeded the budget
  BOOST_TEST(only_protected >= 4);  // and filled it
  BOOST_TEST(merged > 100);
}

// The kvmerger preset's protected shares (policies::kvmerger_protection): the paper's two settings
// (2.6: 0.17 / 0.12 at 50 %, 0.08 / 0.02 at 35 %), linear between them, the 50 % setting above, the 35 %
// setting scaled by f / 0.35 below; the protected share always leaves room in the budget for merged sets.
BOOST_AUTO_TEST_CASE(kvmerger_preset_protection_rule) {
  auto close = [](double a, double b) { return std::abs(a - b) <= 1e-12; };
  auto check = [&](double f, double recent, double top) {
    const auto p = kvc::policies::kvmerger_protection(f);
    BOOST_TEST(close(p.recent, recent), "f " << f << ": recent " << p.recent << " != " << recent);
    BOOST_TEST(close(p.top, top), "f " << f << ": top " << p.top << " != " << top);
    const auto preset = kvc::policies::kvmerger(f);
    BOOST_TEST(preset.selector.budgeted);
    BOOST_TEST(preset.selector.recent_fraction == p.recent);
    BOOST_TEST(preset.selector.top_fraction == p.top);
    BOOST_TEST(preset.selector.schedule.ratio == f);
  };
  check(0.5, 0.17, 0.12);
  check(0.35, 0.08, 0.02);
  check(1.0, 0.17, 0.12);
  check(0.7, 0.17, 0.12);
  check(0.425, 0.125, 0.07);               // midway between the paper's settings
  check(0.4, 0.08 + 0.09 / 3, 0.02 + 0.1 / 3);
  check(0.1, 0.08 / 3.5, 0.02 / 3.5);
  check(0.2, 0.16 / 3.5, 0.04 / 3.5);
  double previous = 0.0;
  for (int i = 1; i <= 100; ++i) {
    const double f = i / 100.0;
    const auto p = kvc::policies::kvmerger_protection(f);
    const double share = p.recent + p.top;
    BOOST_TEST(share <= 0.6 * f, "f " << f << ": protected " << share);  // at least 40 % of the budget for sets
    BOOST_TEST(share >= previous - 1e-12, "f " << f);                     // never decreases with the budget
    previous = share;
  }
}

BOOST_AUTO_TEST_SUITE_END()

// =====================================================================================================
// Through cpu::session: WindowKV group sharing, and a user-built CORM + WindowKV + KVMerger policy
// =====================================================================================================
BOOST_AUTO_TEST_SUITE(session_policies)

namespace {

template <class Policy>
struct session_run {
  std::vector<std::byte> state, workspace;
  kvc::cpu::session<Policy, float, kvc::layouts::strided> session;
  session_run(const Policy& p, kvtest::random_cache<float>& c, index_t query_heads)
      : state(kvc::cpu::session<Policy, float, kvc::layouts::strided>::state_bytes(c.layout)),
        workspace(kvc::cpu::session<Policy, float, kvc::layouts::strided>::workspace_bytes(c.layout, {query_heads})),
        session(p, c.view(), {query_heads}, state, workspace) {}
};

std::vector<index_t> cache_positions(const kvtest::random_cache<float>& c, index_t l, index_t h) {
  std::vector<index_t> p;
  for (index_t j = 0; j < c.length(0, l, h); ++j) p.push_back(c.position(0, l, h, j));
  return p;
}

}  // namespace

// WindowKV (4.7): layers 1 and 3 follow leaders 0 and 2 (group 2); different keys per layer, so a
// follower's own scores would pick other windows. The leaders' decisions match the reference from
// all-query-head window-summed attention (P1, P2 = sum).
BOOST_AUTO_TEST_CASE(windowkv_followers_reuse_leader_windows) {
  const index_t T = 60, L = 4, kv_heads = 2, G = 4, d = 16, suffix = 8, omega = 4, b = 24;
  auto cache = kvtest::make_random_cache<float>({1, L, kv_heads, 64, d}, {T, T}, 41);
  const auto original = cache;
  const auto window = kvtest::make_random_window(1, L, G, suffix, d, {T - 1}, 2.0, 42);
  using sel_t = kvc::selectors::windows<kvc::budgets::fixed>;
  const kvc::policy<kvc::scorers::last_query, sel_t> policy{{}, sel_t{kvc::budgets::fixed{b}, omega, suffix, 2, kvc::selectors::task_type::localization}, {}};
  kvtest::attention_score_spec spec;  // rows: sum of probabilities
  std::vector<std::vector<index_t>> expected(static_cast<std::size_t>(L));
  std::vector<index_t> rank_pos(static_cast<std::size_t>(T));
  std::iota(rank_pos.begin(), rank_pos.end(), 0);
  for (index_t l = 0; l < L; ++l) {
    std::vector<std::vector<double>> S;
    for (index_t g = 0; g < G; ++g) S.push_back(kvtest::query_head_scores(original, window, 0, l, g, G, kvtest::default_scale(d), spec));
    bool ok = true;
    expected[static_cast<std::size_t>(l)] = windows::kept_from_ranks(windows::ref_windows(S, T, suffix, omega, b, kvc::selectors::task_type::localization, false, &ok), rank_pos);
    if (l % 2 == 0) BOOST_TEST_REQUIRE(ok);
  }
  BOOST_TEST_REQUIRE(expected[1] != expected[0]);  // followers' own decisions would differ
  BOOST_TEST_REQUIRE(expected[3] != expected[2]);
  session_run<decltype(policy)> run(policy, cache, G);
  run.session.compress_prefill(window.view());
  for (index_t l = 0; l < L; ++l)
    for (index_t h = 0; h < kv_heads; ++h) {
      BOOST_TEST(cache_positions(cache, l, h) == expected[static_cast<std::size_t>(l - l % 2)], "layer " << l << " head " << h);
      // kept slots compacted in position order, bit-identical
      for (index_t j = 0; j < cache.length(0, l, h); ++j) {
        const index_t p = cache.position(0, l, h, j);
        for (index_t e = 0; e < d; ++e) BOOST_TEST(cache.key(0, l, h, j, e) == original.key(0, l, h, p, e));
      }
    }
}

// A policy no preset uses: CORM importance scores (1.7) + WindowKV windows (4.5-4.6, localization mode,
// strict budget) + KVMerger's Gaussian pivot merge (2.5). The keep-set must equal the windows decision on
// u[g][j] = max over window rows of a[g][r][j] * n_r, and the budget must hold. The merger may only
// rewrite kept slots next to an evicted slot whose key is at least min_similarity-cosine similar;
// every other kept slot is a bit-identical copy.
BOOST_AUTO_TEST_CASE(corm_scores_windowkv_windows_kvmerger_merge) {
  const index_t T = 56, L = 2, kv_heads = 2, G = 4, d = 16, suffix = 8, omega = 4, b = 22;
  auto cache = kvtest::make_random_cache<float>({1, L, kv_heads, 64, d}, {T, T}, 51);
  const auto original = cache;
  const auto window = kvtest::make_random_window(1, L, G, suffix, d, {T - 1}, 3.0, 52);
  kvc::scorers::recent_query scorer{};
  scorer.score_mode = kvc::scorers::recent_query::mode::importance;
  using sel_t = kvc::selectors::windows<kvc::budgets::fixed>;
  sel_t selector{kvc::budgets::fixed{b}, omega, suffix, 1, kvc::selectors::task_type::localization, true};
  kvc::mergers::gaussian_pivot merger{};
  const kvc::policy<kvc::scorers::recent_query, sel_t, kvc::mergers::gaussian_pivot> policy{scorer, selector, merger};

  kvtest::attention_score_spec spec;
  spec.rows = kvtest::reduce::max;
  spec.term = kvtest::term_kind::corm_importance;
  std::vector<index_t> rank_pos(static_cast<std::size_t>(T));
  std::iota(rank_pos.begin(), rank_pos.end(), 0);
  std::vector<std::vector<index_t>> expected;
  for (index_t l = 0; l < L; ++l) {
    std::vector<std::vector<double>> u;
    for (index_t g = 0; g < G; ++g) u.push_back(kvtest::query_head_scores(original, window, 0, l, g, G, kvtest::default_scale(d), spec));
    bool ok = true;
    index_t kept_review = 0;
    expected.push_back(windows::kept_from_ranks(windows::ref_windows(u, T, suffix, omega, b, kvc::selectors::task_type::localization, true, &ok, &kept_review), rank_pos));
    BOOST_TEST_REQUIRE(ok);
    BOOST_TEST_REQUIRE(kept_review > 0);   // a real selection, not a degenerate branch
    BOOST_TEST_REQUIRE(kept_review < T - suffix);
  }
  session_run<decltype(policy)> run(policy, cache, G);
  run.session.compress_prefill(window.view());
  int identical = 0;
  for (index_t l = 0; l < L; ++l)
    for (index_t h = 0; h < kv_heads; ++h) {
      const auto kept = cache_positions(cache, l, h);
      BOOST_TEST(kept == expected[static_cast<std::size_t>(l)], "layer " << l << " head " << h);
      BOOST_TEST(static_cast<index_t>(kept.size()) <= b + suffix);  // strict budget, suffix on top
      BOOST_TEST(run.session.budget(0, l, h) == b + suffix);
      std::set<index_t> keep_set(kept.begin(), kept.end());
      for (index_t j = 0; j < static_cast<index_t>(kept.size()); ++j) {
        const index_t p = kept[static_cast<std::size_t>(j)];
        // could an evicted slot have been folded into p? (nearest kept neighbours of each evicted slot)
        bool touchable = false;
        for (index_t q = 0; q < T && !touchable; ++q) {
          if (keep_set.count(q)) continue;
          index_t prev = q - 1, next = q + 1;
          while (prev >= 0 && !keep_set.count(prev)) --prev;
          while (next < T && !keep_set.count(next)) ++next;
          if (prev != p && next != p) continue;
          std::vector<double> kq, kp;
          for (index_t e = 0; e < d; ++e) {
            kq.push_back(original.key(0, l, h, q, e));
            kp.push_back(original.key(0, l, h, p, e));
          }
          touchable = merging_sets::cosine(kq, kp) >= merger.min_similarity - 1e-3;
        }
        if (touchable) continue;
        ++identical;
        for (index_t e = 0; e < d; ++e) {
          BOOST_TEST(cache.key(0, l, h, j, e) == original.key(0, l, h, p, e));
          BOOST_TEST(cache.value(0, l, h, j, e) == original.value(0, l, h, p, e));
        }
      }
    }
  BOOST_TEST(identical > 0);
}

BOOST_AUTO_TEST_SUITE_END()
