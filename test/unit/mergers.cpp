// SPDX-License-Identifier: Apache-2.0
// Mergers (docs/methods.md 2.5 KVMerger's Gaussian-kernel merge, 3.2 CaM, the plain average and drop)
// run through a real cpu::session: a test selector imposes a keep-set and merge targets (or none, to
// exercise the adjacent-assignment rule), the session merges and compacts, and the compacted cache is
// compared with a double-precision reference written from the spec. The presets kvmerger and cam are
// checked end to end the same way.
//
// Tolerances: keys/values are O(1), merged sets have at most a few dozen members and head_dim <= 16, so
// the fp32 library results (exp, sqrt, sums of <= 64 terms) are within ~1e-6 relative of the exact value;
// we allow 2e-5 relative + 2e-5 absolute. Entries that are not merged must be bit-identical.
#include "support/custom_layout.hpp"
#include "support/reference.hpp"

#include <kvcompact/kvcompact.hpp>

#include <boost/test/unit_test.hpp>

#include <algorithm>
#include <cmath>
#include <map>
#include <numeric>
#include <vector>

namespace kc = kvcompact;
using kc::index_t;

namespace {

constexpr double rel_tol = 2e-5, abs_tol = 2e-5;

// ---- test components -----------------------------------------------------------------------------

/// Score of a slot = its key's first component (so tests choose scores through the keys).
struct first_key_component {
  using component_kind = kc::scorer_tag;
  using state_type = float;
  static constexpr kc::score_source source = kc::score_source::slot;
  template <class Key>
  float slot_score(const Key& key, index_t, index_t) const { return key(0); }
  state_type initial_state(float s, index_t) const { return s; }
  state_type state_from_prefill(float s, index_t, index_t) const { return s; }
  void observe(state_type&, float, index_t) const {}
  float decode_score(const state_type& s, index_t) const { return s; }
};

/// Imposes a keep-set and merge targets (slot indices, -1 = none) given per [s][l][h][slot].
struct plan_selector {
  using component_kind = kc::cooperative_selector_tag;
  static constexpr kc::selection_scope scope = kc::selection_scope::head;
  const std::uint8_t* keep;
  const std::int32_t* target;
  index_t layers, heads, capacity;
  template <class Group, class Ctx>
  void select(Group& group, Ctx& ctx, int h) const {
    group.for_each(ctx.length(h), [&](index_t j) {
      const auto i = static_cast<std::size_t>(((ctx.sequence() * layers + ctx.layer()) * heads + h) * capacity + j);
      ctx.keep(h, j, keep[i] != 0);
      ctx.set_target(h, j, target[i]);
    });
  }
  template <class Group, class Ctx>
  void select_decode(Group&, Ctx&, int) const {}
  index_t budget(index_t, index_t, index_t length) const { return length; }
};

/// Records the keep flags and merge targets the merger is handed (then merges nothing).
struct spy_merger {
  using component_kind = kc::merger_tag;
  static constexpr bool merges = true;
  std::uint8_t* keep;
  std::int32_t* target;
  index_t layers, heads, capacity;
  template <class Group, class Ctx>
  void merge(Group& group, Ctx& ctx, int h) const {
    group.for_each(ctx.length(h), [&](index_t j) {
      const auto i = static_cast<std::size_t>(((ctx.sequence() * layers + ctx.layer()) * heads + h) * capacity + j);
      keep[i] = ctx.kept(h, j) ? 1 : 0;
      target[i] = static_cast<std::int32_t>(ctx.target(h, j));
    });
  }
};

/// Keep flags and targets per [s][l][h][slot].
struct plan {
  std::vector<std::uint8_t> keep;
  std::vector<std::int32_t> target;
  explicit plan(const kvtest::cache_shape& s)
      : keep(static_cast<std::size_t>(s.sequences * s.layers * s.kv_heads * s.capacity), 0),
        target(keep.size(), -1) {}
  plan_selector selector(const kvtest::cache_shape& s) const { return {keep.data(), target.data(), s.layers, s.kv_heads, s.capacity}; }
};

// ---- reference --------------------------------------------------------------------------------------

using vec = std::vector<double>;

struct head_view {  // one head of the original cache, in double
  const kvtest::random_cache<float>& c;
  index_t s, l, h;
  index_t n() const { return c.length(s, l, h); }
  index_t dims() const { return c.shape.head_dim; }
  vec key(index_t j) const {
    vec k(static_cast<std::size_t>(dims()));
    for (index_t d = 0; d < dims(); ++d) k[static_cast<std::size_t>(d)] = c.key(s, l, h, j, d);
    return k;
  }
  vec value(index_t j) const {
    vec v(static_cast<std::size_t>(dims()));
    for (index_t d = 0; d < dims(); ++d) v[static_cast<std::size_t>(d)] = c.value(s, l, h, j, d);
    return v;
  }
  index_t position(index_t j) const { return c.position(s, l, h, j); }
  std::vector<index_t> order() const {  // slots by ascending position
    std::vector<index_t> o(static_cast<std::size_t>(n()));
    std::iota(o.begin(), o.end(), 0);
    std::sort(o.begin(), o.end(), [&](index_t a, index_t b) { return position(a) < position(b); });
    return o;
  }
};

double cosine(const vec& a, const vec& b) {
  double dot = 0, a2 = 0, b2 = 0;
  for (std::size_t d = 0; d < a.size(); ++d) dot += a[d] * b[d], a2 += a[d] * a[d], b2 += b[d] * b[d];
  return a2 > 0 && b2 > 0 ? dot / std::sqrt(a2 * b2) : 0.0;
}

/// Adjacent-assignment rule (gaussian_pivot / average doc): an evicted slot without a target joins the
/// more similar of its nearest kept neighbours in position order (older wins ties) when that cosine is at
/// least min_similarity. `margin` is lowered to the distance of any decision from flipping.
void assign_adjacent(const head_view& hv, const std::uint8_t* keep, std::int32_t* target, double min_similarity, double& margin) {
  const auto o = hv.order();
  index_t previous = -1;
  for (std::size_t i = 0; i < o.size(); ++i) {
    const index_t slot = o[i];
    if (keep[slot]) {
      previous = slot;
      continue;
    }
    if (target[slot] >= 0) continue;
    index_t next = -1;
    for (std::size_t k = i + 1; k < o.size() && next < 0; ++k)
      if (keep[o[k]]) next = o[k];
    const double cp = previous >= 0 ? cosine(hv.key(slot), hv.key(previous)) : -2.0;
    const double cn = next >= 0 ? cosine(hv.key(slot), hv.key(next)) : -2.0;
    if (previous >= 0 && next >= 0) margin = std::min(margin, std::abs(cp - cn));
    const index_t best = cp >= cn ? previous : next;
    const double sim = std::max(cp, cn);
    if (best >= 0) margin = std::min(margin, std::abs(sim - min_similarity));
    if (best >= 0 && sim >= min_similarity) target[slot] = static_cast<std::int32_t>(best);
  }
}

/// Expected content of one kept slot.
struct expected_slot {
  index_t source_slot;  // slot in the original cache
  bool merged;          // false: K/V must be bit-identical to the source slot
  vec key, value;
};

/// Merge sets S(p) = {p} + {evicted e : target(e) = p}, in position order (pivot included).
std::map<index_t, std::vector<index_t>> merge_sets(const head_view& hv, const std::uint8_t* keep, const std::int32_t* target) {
  std::map<index_t, std::vector<index_t>> sets;
  for (index_t j : hv.order()) {
    if (keep[j]) sets[j].push_back(j);
    else if (target[j] >= 0) sets[target[j]].push_back(j);
  }
  return sets;
}

enum class kernel_rule { gaussian_fixed, gaussian_mean_distance, average };

/// Kept slots of one head (slot order) with their expected K/V under a pivot merger (docs/methods.md 2.5).
std::vector<expected_slot> expected_pivot_merge(const head_view& hv, const std::uint8_t* keep, const std::int32_t* target, kernel_rule rule,
                                                double sigma, bool value_set_size) {
  const auto sets = merge_sets(hv, keep, target);
  std::vector<expected_slot> out;
  for (index_t p = 0; p < hv.n(); ++p) {
    if (!keep[p]) continue;
    expected_slot e{p, false, hv.key(p), hv.value(p)};
    const auto it = sets.find(p);
    if (it != sets.end() && it->second.size() > 1) {
      const auto& S = it->second;
      const double size = static_cast<double>(S.size());
      std::vector<double> g(S.size(), 1.0);
      if (rule != kernel_rule::average) {
        std::vector<double> dist(S.size());
        for (std::size_t i = 0; i < S.size(); ++i) {
          const vec a = hv.key(S[i]), b = hv.key(p);
          double d2 = 0;
          for (std::size_t d = 0; d < a.size(); ++d) d2 += (a[d] - b[d]) * (a[d] - b[d]);
          dist[i] = d2;
        }
        double width = sigma;
        if (rule == kernel_rule::gaussian_mean_distance) {
          double total = 0;
          for (double d2 : dist) total += std::sqrt(d2);
          width = total / (std::sqrt(2.0) * size);
        }
        for (std::size_t i = 0; i < S.size(); ++i) g[i] = std::exp(-dist[i] / (2 * width * width));
      }
      const double norm = std::accumulate(g.begin(), g.end(), 0.0);
      const double scale = rule != kernel_rule::average && value_set_size ? size : 1.0;
      e.merged = true;
      std::fill(e.key.begin(), e.key.end(), 0.0);
      std::fill(e.value.begin(), e.value.end(), 0.0);
      for (std::size_t i = 0; i < S.size(); ++i) {
        const vec k = hv.key(S[i]), v = hv.value(S[i]);
        for (std::size_t d = 0; d < k.size(); ++d) {
          e.key[d] += g[i] / norm * k[d];
          e.value[d] += scale * g[i] / norm * v[d];
        }
      }
    }
    out.push_back(std::move(e));
  }
  return out;
}

/// CaM (docs/methods.md 3.2) with z = p (expected) or z given per evicted slot; `score(slot)` is the statistic.
template <class Score, class Z>
std::vector<expected_slot> expected_cam(const head_view& hv, const std::uint8_t* keep, index_t merge_count, bool reference_max, const Score& score,
                                        const Z& z_of) {
  const auto o = hv.order();
  std::map<index_t, vec> value;
  std::map<index_t, bool> touched;
  for (index_t j = 0; j < hv.n(); ++j)
    if (keep[j]) value[j] = hv.value(j);
  for (std::size_t i = 0; i < o.size(); ++i) {
    const index_t e = o[i];
    if (keep[e]) continue;
    std::vector<index_t> targets;
    for (std::size_t k = i + 1; k < o.size() && static_cast<index_t>(targets.size()) < merge_count; ++k)
      if (keep[o[k]]) targets.push_back(o[k]);
    if (targets.empty()) continue;
    double ref = reference_max ? -1e300 : 0.0;
    for (index_t m : targets) ref = reference_max ? std::max(ref, score(m)) : ref + score(m);
    if (!reference_max) ref /= static_cast<double>(targets.size());
    const double p = std::clamp(score(e) / ref, 0.0, 1.0);
    const double z = z_of(e, p);
    if (z == 0.0) continue;
    const vec ve = hv.value(e);
    for (index_t m : targets) {
      touched[m] = true;
      for (std::size_t d = 0; d < ve.size(); ++d) value[m][d] += z * ve[d] / static_cast<double>(targets.size());
    }
  }
  std::vector<expected_slot> out;
  for (index_t j = 0; j < hv.n(); ++j)
    if (keep[j]) out.push_back({j, touched[j], hv.key(j), value[j]});
  return out;
}

/// Compares one compacted head with its expected kept slots; returns the number of mismatching elements.
template <class Layout>
int compare_head(const kvtest::layout_cache<float, Layout>& got, const head_view& hv, const std::vector<expected_slot>& want) {
  int bad = 0;
  const index_t head = got.head_index(hv.s, hv.l, hv.h);
  if (got.lengths[static_cast<std::size_t>(head)] != static_cast<std::int32_t>(want.size())) return 1000000;
  for (std::size_t k = 0; k < want.size(); ++k) {
    const auto& w = want[k];
    bad += got.positions[static_cast<std::size_t>(head * got.layout.capacity() + static_cast<index_t>(k))] != hv.position(w.source_slot);
    for (index_t d = 0; d < hv.dims(); ++d) {
      const float gk = got.keys[static_cast<std::size_t>(got.element(hv.s, hv.l, hv.h, static_cast<index_t>(k), d))];
      const float gv = got.values[static_cast<std::size_t>(got.element(hv.s, hv.l, hv.h, static_cast<index_t>(k), d))];
      if (w.merged) {
        bad += !kvtest::close(gk, w.key[static_cast<std::size_t>(d)], rel_tol, abs_tol);
        bad += !kvtest::close(gv, w.value[static_cast<std::size_t>(d)], rel_tol, abs_tol);
      } else {  // bit-identical to the original slot
        const auto src = static_cast<std::size_t>(hv.c.element(hv.s, hv.l, hv.h, w.source_slot, d));
        bad += kvtest::element_bits(gk) != kvtest::element_bits(hv.c.keys[src]);
        bad += kvtest::element_bits(gv) != kvtest::element_bits(hv.c.values[src]);
      }
    }
  }
  return bad;
}

// ---- data -------------------------------------------------------------------------------------------

const kvtest::cache_shape merge_shape{2, 2, 2, 48, 8};

kvtest::random_cache<float> shuffled_cache(std::uint32_t seed, const kvtest::cache_shape& shape = merge_shape, index_t n = 40) {
  kvtest::fill_options fill;
  fill.min_length = fill.max_length = n;
  fill.shuffle_slots = true;  // slots are not in position order: mergers must work in position order
  return kvtest::make_random_cache<float>(shape, fill, seed);
}

/// Keys drift slowly along positions (neighbours similar, cosine mostly 0.6..0.99) with occasional jumps,
/// so similarity-driven rules see both sides of their threshold.
void make_keys_drift(kvtest::random_cache<float>& c, std::uint32_t seed) {
  std::mt19937 rng(seed);
  const auto& sh = c.shape;
  for (index_t s = 0; s < sh.sequences; ++s)
    for (index_t l = 0; l < sh.layers; ++l)
      for (index_t h = 0; h < sh.kv_heads; ++h) {
        const head_view hv{c, s, l, h};
        std::vector<float> k = kvtest::random_vector(sh.head_dim, 1.0, rng);
        for (index_t j : hv.order()) {
          const bool jump = rng() % 6 == 0;
          for (auto& x : k) x = static_cast<float>(jump ? kvtest::uniform_pm1(rng) : 0.85 * x + 0.25 * kvtest::uniform_pm1(rng));
          for (index_t d = 0; d < sh.head_dim; ++d) c.keys[static_cast<std::size_t>(c.element(s, l, h, j, d))] = k[static_cast<std::size_t>(d)];
        }
      }
}

/// Runs `policy` over a copy of `c` (BHSD) and returns the compacted copy.
template <class Policy>
kvtest::layout_cache<float, kc::layouts::strided> run(const Policy& policy, const kvtest::random_cache<float>& c,
                                                       const kc::query_window& window = {}, index_t query_heads = 4) {
  auto copy = kvtest::copy_into(c, c.layout);
  kvtest::run_prefill(policy, copy.view(), kc::attention_shape{query_heads}, window);
  return copy;
}

/// Random plan: position order cut into runs of 1..max_run; each run keeps one random member (its pivot);
/// with `targets` every other member targets the pivot; `drop_runs` of the runs keep nothing and set no targets.
plan random_runs_plan(const kvtest::random_cache<float>& c, std::uint32_t seed, index_t max_run, bool targets, double drop_runs) {
  plan p(c.shape);
  std::mt19937 rng(seed);
  const auto& sh = c.shape;
  for (index_t s = 0; s < sh.sequences; ++s)
    for (index_t l = 0; l < sh.layers; ++l)
      for (index_t h = 0; h < sh.kv_heads; ++h) {
        const head_view hv{c, s, l, h};
        const auto o = hv.order();
        const auto base = static_cast<std::size_t>(c.slot_index(s, l, h, 0));
        for (std::size_t i = 0; i < o.size();) {
          const std::size_t len = std::min<std::size_t>(o.size() - i, 1 + rng() % static_cast<std::uint32_t>(max_run));
          const bool dropped = (rng() % 1000) < static_cast<std::uint32_t>(drop_runs * 1000);
          const index_t pivot = o[i + rng() % len];
          for (std::size_t m = i; m < i + len; ++m) {
            if (dropped) continue;
            if (o[m] == pivot) p.keep[base + static_cast<std::size_t>(pivot)] = 1;
            else if (targets) p.target[base + static_cast<std::size_t>(o[m])] = static_cast<std::int32_t>(pivot);
          }
          i += len;
        }
      }
  return p;
}

/// Runs a pivot merger with a plan and checks every head against the reference.
template <class Merger>
void check_pivot_merger(const kvtest::random_cache<float>& c, plan p, const Merger& merger, double min_similarity, kernel_rule rule,
                        double sigma, bool value_set_size) {
  const auto policy = kc::policy<first_key_component, plan_selector, Merger>{{}, p.selector(c.shape), merger};
  const auto got = run(policy, c);
  double margin = 1.0;
  int bad = 0, merged_sets = 0;
  const auto& sh = c.shape;
  for (index_t s = 0; s < sh.sequences; ++s)
    for (index_t l = 0; l < sh.layers; ++l)
      for (index_t h = 0; h < sh.kv_heads; ++h) {
        const head_view hv{c, s, l, h};
        const auto base = static_cast<std::size_t>(c.slot_index(s, l, h, 0));
        assign_adjacent(hv, p.keep.data() + base, p.target.data() + base, min_similarity, margin);
        const auto want = expected_pivot_merge(hv, p.keep.data() + base, p.target.data() + base, rule, sigma, value_set_size);
        for (const auto& w : want) merged_sets += w.merged;
        bad += compare_head(got, hv, want);
      }
  BOOST_TEST_REQUIRE(margin > 1e-5);  // no fp32 cosine decision is near a flip (else the seed is unsuitable)
  BOOST_TEST(merged_sets > 10);        // the data actually exercised merging
  BOOST_TEST(bad == 0);
}

}  // namespace

// ---------------------------------------------------------------------------------------------------

BOOST_AUTO_TEST_CASE(gaussian_pivot_with_selector_targets_fixed_sigma) {
  for (std::uint32_t seed : {1u, 2u}) {
    const auto c = shuffled_cache(seed);
    for (double sigma : {5.0, 1.0, 0.5}) {
      for (bool set_size : {true, false}) {
        kc::mergers::gaussian_pivot m{};
        m.sigma = static_cast<float>(sigma);
        m.value_scale = set_size ? kc::mergers::gaussian_pivot::value_rule::set_size : kc::mergers::gaussian_pivot::value_rule::one;
        m.min_similarity = 2.0f;  // no adjacent assignment: dropped runs are really dropped
        check_pivot_merger(c, random_runs_plan(c, seed + 10, 6, true, 0.2), m, 2.0, kernel_rule::gaussian_fixed, sigma, set_size);
      }
    }
  }
}

BOOST_AUTO_TEST_CASE(gaussian_pivot_mean_distance_sigma) {
  const auto c = shuffled_cache(3);
  kc::mergers::gaussian_pivot m{};
  m.sigma_mode = kc::mergers::gaussian_pivot::sigma_rule::mean_distance;
  m.min_similarity = 2.0f;
  check_pivot_merger(c, random_runs_plan(c, 33, 7, true, 0.0), m, 2.0, kernel_rule::gaussian_mean_distance, 0.0, true);
}

BOOST_AUTO_TEST_CASE(gaussian_pivot_adjacent_assignment_without_targets) {
  for (std::uint32_t seed : {4u, 5u, 6u}) {
    auto c = shuffled_cache(seed);
    make_keys_drift(c, seed + 100);
    for (float threshold : {0.75f, 0.0f}) {
      kc::mergers::gaussian_pivot m{};
      m.min_similarity = threshold;
      m.sigma = 1.0f;
      check_pivot_merger(c, random_runs_plan(c, seed + 20, 5, false, 0.1), m, threshold, kernel_rule::gaussian_fixed, 1.0, true);
    }
  }
}

BOOST_AUTO_TEST_CASE(average_merger_means_over_adjacent_sets) {
  for (std::uint32_t seed : {7u, 8u}) {
    auto c = shuffled_cache(seed);
    make_keys_drift(c, seed + 100);
    kc::mergers::average m{};  // min_similarity -1: every evicted slot with a kept neighbour joins one
    check_pivot_merger(c, random_runs_plan(c, seed + 30, 6, false, 0.0), m, -1.0, kernel_rule::average, 0.0, false);
    m.min_similarity = 0.8f;
    check_pivot_merger(c, random_runs_plan(c, seed + 31, 6, false, 0.0), m, 0.8, kernel_rule::average, 0.0, false);
    // explicit targets are honoured as given
    check_pivot_merger(c, random_runs_plan(c, seed + 32, 4, true, 0.0), kc::mergers::average{2.0f}, 2.0, kernel_rule::average, 0.0, false);
  }
}

BOOST_AUTO_TEST_CASE(drop_keeps_kept_entries_bit_identical) {
  const auto c = shuffled_cache(9);
  const plan p = random_runs_plan(c, 90, 5, true, 0.3);  // targets are ignored by drop
  const auto got = run(kc::policy<first_key_component, plan_selector>{{}, p.selector(c.shape), {}}, c);
  int bad = 0, kept = 0;
  for (index_t s = 0; s < 2; ++s)
    for (index_t l = 0; l < 2; ++l)
      for (index_t h = 0; h < 2; ++h) {
        const head_view hv{c, s, l, h};
        const auto base = static_cast<std::size_t>(c.slot_index(s, l, h, 0));
        std::vector<expected_slot> want;
        for (index_t j = 0; j < hv.n(); ++j)
          if (p.keep[base + static_cast<std::size_t>(j)]) want.push_back({j, false, {}, {}});
        kept += static_cast<int>(want.size());
        bad += compare_head(got, hv, want);
      }
  BOOST_TEST(kept > 20);
  BOOST_TEST(kept < 8 * 40);
  BOOST_TEST(bad == 0);
}

// ---- CaM -----------------------------------------------------------------------------------------------

namespace {
/// Positive scores through key[0] (0.05 .. 1) so p = score_e / ref is a proper ratio.
void positive_first_component(kvtest::random_cache<float>& c) {
  for (std::size_t i = 0; i < c.keys.size(); i += static_cast<std::size_t>(c.shape.head_dim)) c.keys[i] = 0.05f + 0.95f * std::fabs(c.keys[i]);
}
/// Random keep flags (about `kept` of the slots).
plan random_keep_plan(const kvtest::random_cache<float>& c, std::uint32_t seed, double kept) {
  plan p(c.shape);
  std::mt19937 rng(seed);
  for (std::size_t i = 0; i < p.keep.size(); ++i) p.keep[i] = (rng() % 1000) < static_cast<std::uint32_t>(kept * 1000);
  return p;
}
}  // namespace

BOOST_AUTO_TEST_CASE(cam_expected_mode_matches_reference) {
  for (std::uint32_t seed : {11u, 12u}) {
    auto c = shuffled_cache(seed);
    positive_first_component(c);
    const plan p = random_keep_plan(c, seed + 1, 0.4);
    for (index_t merge_count : {1, 3, 32}) {
      for (bool reference_max : {true, false}) {
        kc::mergers::cam m{};
        m.merge_count = merge_count;
        m.reference = reference_max ? kc::mergers::cam::reference_rule::max : kc::mergers::cam::reference_rule::mean;
        m.expected = true;
        const auto got = run(kc::policy<first_key_component, plan_selector, kc::mergers::cam>{{}, p.selector(c.shape), m}, c);
        int bad = 0, touched = 0;
        for (index_t s = 0; s < 2; ++s)
          for (index_t l = 0; l < 2; ++l)
            for (index_t h = 0; h < 2; ++h) {
              const head_view hv{c, s, l, h};
              const auto base = static_cast<std::size_t>(c.slot_index(s, l, h, 0));
              auto score = [&](index_t j) { return hv.key(j)[0]; };
              const auto want = expected_cam(hv, p.keep.data() + base, merge_count, reference_max, score, [](index_t, double q) { return q; });
              for (const auto& w : want) touched += w.merged;  // keys stay bit-identical: compare_head checks merged keys with the tolerance,
              bad += compare_head(got, hv, want);             // so check key bits separately below
              const index_t head = got.head_index(s, l, h);
              for (std::size_t k = 0; k < want.size(); ++k)
                for (index_t d = 0; d < hv.dims(); ++d)
                  bad += kvtest::element_bits(got.keys[static_cast<std::size_t>(got.element(s, l, h, static_cast<index_t>(k), d))]) !=
                         kvtest::element_bits(c.keys[static_cast<std::size_t>(c.element(s, l, h, want[k].source_slot, d))]);
              (void)head;
            }
        BOOST_TEST(touched > 10);
        BOOST_TEST(bad == 0, "seed " << seed << " M " << merge_count << " max " << reference_max);
      }
    }
  }
}

namespace {
// Alternating kept / evicted slots along positions with M = 1: evicted position 2i+1 merges into 2i+2
// only, with p = (its score) / (target score) = its bucket's probability. Target values start at 0 in
// dimension 0 and evicted values are 1 there, so afterwards dimension 0 of the target is exactly z.
struct bernoulli_setup {
  kvtest::cache_shape shape{2, 4, 4, 1000, 2};
  std::vector<double> bucket_p{0.1, 0.3, 0.5, 0.7, 0.9};
  kvtest::random_cache<float> c{shape};
  plan p{shape};
  bernoulli_setup(std::uint32_t seed) {
    kvtest::fill_options fill;
    fill.min_length = fill.max_length = shape.capacity;
    fill.shuffle_slots = true;
    c = kvtest::make_random_cache<float>(shape, fill, seed);
    for (index_t s = 0; s < shape.sequences; ++s)
      for (index_t l = 0; l < shape.layers; ++l)
        for (index_t h = 0; h < shape.kv_heads; ++h)
          for (index_t j = 0; j < shape.capacity; ++j) {
            const index_t pos = c.position(s, l, h, j);
            const bool kept = pos % 2 == 0;
            p.keep[static_cast<std::size_t>(c.slot_index(s, l, h, j))] = kept;
            c.keys[static_cast<std::size_t>(c.element(s, l, h, j, 0))] =
                kept ? 1.0f : static_cast<float>(bucket_p[static_cast<std::size_t>((pos / 2) % 5)]);
            c.values[static_cast<std::size_t>(c.element(s, l, h, j, 0))] = kept ? 0.0f : 1.0f;
          }
  }
  // z per (s, l, h, evicted position) read from the compacted cache: dimension 0 of the next kept slot
  std::map<std::array<index_t, 4>, float> draws(const kvtest::layout_cache<float, kc::layouts::strided>& got) const {
    std::map<std::array<index_t, 4>, float> z;
    for (index_t s = 0; s < shape.sequences; ++s)
      for (index_t l = 0; l < shape.layers; ++l)
        for (index_t h = 0; h < shape.kv_heads; ++h) {
          const index_t head = got.head_index(s, l, h);
          for (index_t k = 0; k < got.lengths[static_cast<std::size_t>(head)]; ++k) {
            const index_t pos = got.positions[static_cast<std::size_t>(head * shape.capacity + k)];
            if (pos == 0) continue;  // no evicted slot before position 0
            z[{s, l, h, pos - 1}] = got.values[static_cast<std::size_t>(got.element(s, l, h, k, 0))];
          }
        }
    return z;
  }
};
}  // namespace

BOOST_AUTO_TEST_CASE(cam_bernoulli_is_deterministic_and_hits_p) {
  bernoulli_setup a(21), b(22);  // same plan, different slot shuffles
  kc::mergers::cam m{};
  m.merge_count = 1;
  m.expected = false;
  m.seed = 0x1234abcdull;
  const auto policy_a = kc::policy<first_key_component, plan_selector, kc::mergers::cam>{{}, a.p.selector(a.shape), m};
  const auto policy_b = kc::policy<first_key_component, plan_selector, kc::mergers::cam>{{}, b.p.selector(b.shape), m};
  const auto za = a.draws(run(policy_a, a.c)), za2 = a.draws(run(policy_a, a.c)), zb = b.draws(run(policy_b, b.c));
  BOOST_TEST((za == za2));  // same seed, same data: same draws
  BOOST_TEST((za == zb));   // z depends on (seed, sequence, layer, head, position), not on the slot
  std::vector<double> hits(5, 0), count(5, 0);
  int not_binary = 0;
  for (const auto& [key, z] : za) {
    not_binary += z != 0.0f && z != 1.0f;
    const auto bucket = static_cast<std::size_t>((key[3] / 2) % 5);
    hits[bucket] += z;
    count[bucket] += 1;
  }
  BOOST_TEST(not_binary == 0);
  for (std::size_t i = 0; i < 5; ++i) {
    // about 3200 draws per bucket: standard error <= 0.009; 5 standard errors
    const double rate = hits[i] / count[i], p = a.bucket_p[i], tol = 5 * std::sqrt(p * (1 - p) / count[i]);
    BOOST_TEST(count[i] >= 3100.0);
    BOOST_TEST(std::abs(rate - p) <= tol, "bucket p=" << p << " rate " << rate);
  }
  // another seed: same rates, different individual draws (mismatch fraction about 2 p (1 - p))
  m.seed = 99;
  const auto zc = a.draws(run(kc::policy<first_key_component, plan_selector, kc::mergers::cam>{{}, a.p.selector(a.shape), m}, a.c));
  double differ = 0, expected_differ = 0;
  for (const auto& [key, z] : za) {
    const double p = a.bucket_p[static_cast<std::size_t>((key[3] / 2) % 5)];
    differ += z != zc.at(key);
    expected_differ += 2 * p * (1 - p);
  }
  BOOST_TEST(std::abs(differ - expected_differ) <= 5 * std::sqrt(expected_differ));
}

// ---- presets end to end --------------------------------------------------------------------------------

BOOST_AUTO_TEST_CASE(cam_preset_merges_evicted_values_into_the_recent_window) {
  const kvtest::cache_shape shape{2, 2, 2, 48, 8};
  kvtest::fill_options fill;
  fill.min_length = fill.max_length = 40;
  const auto c = kvtest::make_random_cache<float>(shape, fill, 31);
  const auto w = kvtest::make_random_window(2, 2, 4, 8, 8, {39, 39}, 2.0, 32);
  const index_t budget = 16, start = 4;
  for (index_t merge_count : {5, 32}) {
    const auto policy = kc::policies::cam(budget, start, merge_count);
    const auto got = run(policy, c, w.view());
    int bad = 0, touched = 0;
    for (index_t s = 0; s < 2; ++s)
      for (index_t l = 0; l < 2; ++l) {
        const auto scores = kvtest::prefill_attention_scores(c, w, s, l, 4, kvtest::default_scale(8), kvtest::attention_score_spec{});
        for (index_t h = 0; h < 2; ++h) {
          const head_view hv{c, s, l, h};
          std::vector<std::uint8_t> keep(static_cast<std::size_t>(hv.n()));
          for (index_t j = 0; j < hv.n(); ++j) keep[static_cast<std::size_t>(j)] = hv.position(j) < start || hv.position(j) >= 40 - (budget - start);
          auto score = [&](index_t j) { return scores[static_cast<std::size_t>(h)][static_cast<std::size_t>(j)]; };
          const auto want = expected_cam(hv, keep.data(), merge_count, true, score, [](index_t, double q) { return q; });
          for (const auto& x : want) touched += x.merged;
          bad += compare_head(got, hv, want);
        }
      }
    BOOST_TEST(touched == 8 * std::min<index_t>(merge_count, budget - start));
    BOOST_TEST(bad == 0, "merge_count " << merge_count);
  }
}

// The preset at several kept fractions, small ones included: the merger folds every set into its pivot
// (as the reference computes from the sets the selector hands over), and no head of any layer (0, 1 and
// 4 are the layers faithful mode would skip) keeps more than round(f T) slots.
BOOST_AUTO_TEST_CASE(kvmerger_preset_merges_each_set_into_its_pivot_within_the_budget) {
  const kvtest::cache_shape shape{1, 5, 2, 64, 8};
  kvtest::fill_options fill;
  fill.min_length = fill.max_length = 64;
  auto c = kvtest::make_random_cache<float>(shape, fill, 41);
  make_keys_drift(c, 42);
  const auto w = kvtest::make_random_window(1, 5, 4, 64, 8, {63}, 1.0, 43);  // every prompt query
  for (double f : {0.05, 0.1, 0.2, 0.35, 0.5}) {
    BOOST_TEST_CONTEXT("fraction " << f) {
      const auto preset = kc::policies::kvmerger(f);
      using preset_t = std::remove_const_t<decltype(preset)>;
      // 1. the sets the preset's selector hands to the merger
      plan seen(shape);
      const spy_merger spy{seen.keep.data(), seen.target.data(), shape.layers, shape.kv_heads, shape.capacity};
      (void)run(kc::policy<preset_t::scorer_type, preset_t::selector_type, spy_merger>{preset.scorer, preset.selector, spy}, c, w.view());
      // 2. the preset itself
      const auto got = run(preset, c, w.view());
      const index_t budget = std::max<index_t>(1, static_cast<index_t>(std::floor(f * 64.0 + 0.5)));
      double margin = 1.0;
      int bad = 0, merged = 0, over_budget = 0;
      for (index_t l = 0; l < shape.layers; ++l)
        for (index_t h = 0; h < shape.kv_heads; ++h) {
          const head_view hv{c, 0, l, h};
          const auto base = static_cast<std::size_t>(c.slot_index(0, l, h, 0));
          over_budget += got.lengths[static_cast<std::size_t>(got.head_index(0, l, h))] > budget;
          assign_adjacent(hv, seen.keep.data() + base, seen.target.data() + base, preset.merger.min_similarity, margin);
          const auto want = expected_pivot_merge(hv, seen.keep.data() + base, seen.target.data() + base, kernel_rule::gaussian_fixed,
                                                 preset.merger.sigma, true);
          for (const auto& x : want) merged += x.merged;
          bad += compare_head(got, hv, want);
        }
      BOOST_TEST_REQUIRE(margin > 1e-5);
      BOOST_TEST(over_budget == 0);
      BOOST_TEST(merged > 5);
      BOOST_TEST(bad == 0);
    }
  }
}
