// SPDX-License-Identifier: Apache-2.0
// The user guide's "Writing your own components" examples, compiled and run: a layout, two scorers (a
// slot scorer and an attention scorer), two selectors (a ranked and a cooperative one) and a merger,
// all written outside namespace kvcompact against the documented concepts only, composed into
// policies and run by cpu::session (prefill and decode) against plain double-precision references
// written here. test/cuda/composition_test.cu runs the same components on the (emulated) device.
// docs/user_guide.md shows the code between the "//! [name]" markers (Doxygen @snippet).
#include "support/custom_layout.hpp"
#include "support/reference.hpp"

#include <kvcompact/kvcompact.hpp>

#include <boost/test/unit_test.hpp>

#include <algorithm>
#include <cmath>
#include <set>
#include <vector>

//! [layout]
// Memory order [sequence][slot][layer][kv_head][dim]: one record per token position, as an engine
// that appends whole tokens might store it.
struct token_major {
  kvcompact::index_t sequences, layers, kv_heads, slots, dims;

  KVCOMPACT_HOST_DEVICE kvcompact::index_t num_sequences() const { return sequences; }
  KVCOMPACT_HOST_DEVICE kvcompact::index_t num_layers() const { return layers; }
  KVCOMPACT_HOST_DEVICE kvcompact::index_t num_kv_heads() const { return kv_heads; }
  KVCOMPACT_HOST_DEVICE kvcompact::index_t capacity() const { return slots; }
  KVCOMPACT_HOST_DEVICE kvcompact::index_t head_dim() const { return dims; }
  KVCOMPACT_HOST_DEVICE kvcompact::index_t dim_stride() const { return 1; }
  KVCOMPACT_HOST_DEVICE kvcompact::index_t offset(kvcompact::index_t sequence, kvcompact::index_t layer, kvcompact::index_t head, kvcompact::index_t slot) const {
    return (((sequence * slots + slot) * layers + layer) * kv_heads + head) * dims;
  }
  void validate(const char* where) const {  // optional: called before the backend touches memory
    if (sequences <= 0 || layers <= 0 || kv_heads <= 0 || slots <= 0 || dims <= 0)
      throw kvcompact::error(where, "layout", "every extent must be positive");
  }
};
static_assert(kvcompact::kv_layout<token_major>);
//! [layout]

//! [slot scorer]
// Keeps keys with a small L1 norm (a KNorm variant). Slot scorers read the key and position only.
struct key_l1 {
  using component_kind = kvcompact::scorer_tag;
  using state_type = float;  // per-slot decode state: the score itself
  static constexpr kvcompact::score_source source = kvcompact::score_source::slot;

  template <class Key>
  KVCOMPACT_HOST_DEVICE float slot_score(const Key& key, kvcompact::index_t dims, kvcompact::index_t) const {
    float sum = 0.0f;
    for (kvcompact::index_t d = 0; d < dims; ++d) sum += key(d) < 0.0f ? -key(d) : key(d);
    return -sum;  // higher means keep
  }
  KVCOMPACT_HOST_DEVICE state_type initial_state(float score, kvcompact::index_t) const { return score; }
  KVCOMPACT_HOST_DEVICE state_type state_from_prefill(float score, kvcompact::index_t, kvcompact::index_t) const { return score; }
  KVCOMPACT_HOST_DEVICE void observe(state_type&, float, kvcompact::index_t) const {}
  KVCOMPACT_HOST_DEVICE float decode_score(const state_type& state, kvcompact::index_t) const { return state; }
};
//! [slot scorer]

//! [attention scorer]
// The largest attention probability any query of the KV head's group ever gave the slot: the max over
// the observation-window rows at prefill, then a running max over decode queries.
struct peak_attention {
  using component_kind = kvcompact::scorer_tag;
  using state_type = float;
  static constexpr kvcompact::score_source source = kvcompact::score_source::attention;
  static constexpr bool shares_across_kv_heads = false;  // one score per KV head
  kvcompact::reduction rows = kvcompact::reduction::max;   // over window rows
  kvcompact::reduction group = kvcompact::reduction::max;  // over the query heads of a KV head

  KVCOMPACT_HOST_DEVICE float row_term(float probability, kvcompact::index_t, kvcompact::index_t) const { return probability; }
  KVCOMPACT_HOST_DEVICE state_type initial_state(float, kvcompact::index_t) const { return 0.0f; }
  KVCOMPACT_HOST_DEVICE state_type state_from_prefill(float score, kvcompact::index_t, kvcompact::index_t) const { return score; }
  KVCOMPACT_HOST_DEVICE void observe(state_type& state, float term, kvcompact::index_t) const { state = term > state ? term : state; }
  KVCOMPACT_HOST_DEVICE float decode_score(const state_type& state, kvcompact::index_t) const { return state; }
};
//! [attention scorer]

//! [selector]
// A ranked selector: it only judges slots and gives keys; the backend ranks (partial selection on the
// CPU, a parallel radix select on the GPU). Keeps the `recent` newest slots and every slot scoring at
// least `threshold` (budget-free at prefill); during decode a head at `cap` slots evicts its
// lowest-scoring slot outside the recent window.
struct threshold_selector {
  using component_kind = kvcompact::ranked_selector_tag;
  static constexpr kvcompact::selection_scope scope = kvcompact::selection_scope::head;
  float threshold = 0.0f;
  kvcompact::index_t recent = 4;
  kvcompact::index_t cap = 32;

  KVCOMPACT_HOST_DEVICE kvcompact::index_t budget(kvcompact::index_t, kvcompact::index_t, kvcompact::index_t) const { return cap; }

  // Each slot on its own: the recent window is kept, every other slot is a candidate.
  template <class Ctx>
  KVCOMPACT_HOST_DEVICE kvcompact::slot_verdict verdict(const Ctx& ctx, int h, kvcompact::index_t slot) const {
    const bool recent_slot = ctx.position(h, slot) > ctx.step() - recent;  // step(): the newest position
    return recent_slot ? kvcompact::slot_verdict::keep : kvcompact::slot_verdict::candidate;
  }
  // Candidates rank by their score (a key may also read neighbouring candidates, e.g. for pooling).
  template <class Candidates>
  KVCOMPACT_HOST_DEVICE float rank_key(const Candidates& candidates, kvcompact::index_t i) const {
    return candidates.score(i);
  }
  // No quota: every candidate may stay ...
  template <class Ctx>
  KVCOMPACT_HOST_DEVICE kvcompact::index_t keep_count(const Ctx& ctx, int h, kvcompact::index_t) const {
    return ctx.length(h);
  }
  // ... if its key reaches the floor.
  KVCOMPACT_HOST_DEVICE float key_floor() const { return threshold; }

  // Decode (scores are decode scores, step() is the incoming token): the same verdicts, and one
  // victim, the worst candidate, when the head is at its cap.
  template <class Ctx>
  KVCOMPACT_HOST_DEVICE kvcompact::slot_verdict decode_verdict(const Ctx& ctx, int h, kvcompact::index_t slot) const {
    return verdict(ctx, h, slot);
  }
  template <class Ctx>
  KVCOMPACT_HOST_DEVICE kvcompact::index_t decode_evictions(const Ctx& ctx, int h) const {
    return ctx.length(h) + 1 > ctx.budget(h) ? 1 : 0;
  }
};
//! [selector]

//! [cooperative selector]
// A cooperative selector: group code run by one worker on the CPU and by a thread block on the GPU.
// Keeps the `recent` newest slots and every run of at least `min_run` consecutive positions whose
// scores all reach `threshold`. Prefill-only (decode appends).
struct run_selector {
  using component_kind = kvcompact::cooperative_selector_tag;
  static constexpr kvcompact::selection_scope scope = kvcompact::selection_scope::head;
  float threshold = 0.0f;
  kvcompact::index_t min_run = 3;
  kvcompact::index_t recent = 4;

  KVCOMPACT_HOST_DEVICE kvcompact::index_t budget(kvcompact::index_t, kvcompact::index_t, kvcompact::index_t length) const { return length; }

  template <class Group, class Ctx>
  KVCOMPACT_HOST_DEVICE void select(Group& group, Ctx& ctx, int h) const {  // every slot starts not kept
    using kvcompact::index_t;
    const index_t n = ctx.length(h);
    const std::int32_t* order = ctx.order(h);      // slots in ascending position
    std::int32_t* run_start = ctx.index_scratch(h, 0);  // [order rank]: first rank of its run
    auto low = [&](index_t i) { return ctx.score(h, order[i]) < threshold; };
    auto later = [](index_t a, index_t b) { return a > b ? a : b; };
    auto earlier = [](index_t a, index_t b) { return a < b ? a : b; };
    // The run of rank i starts after the last low score before it ...
    group.exclusive_scan(n, [&](index_t i) { return low(i) ? i : index_t{-1}; }, index_t{-1}, later,
                         [&](index_t i, index_t last_low, index_t) { run_start[i] = static_cast<std::int32_t>(last_low + 1); });
    // ... and ends before the first low score after it (scanned from the newest rank down).
    group.exclusive_scan(n, [&](index_t r) { return low(n - 1 - r) ? n - 1 - r : n; }, n, earlier, [&](index_t r, index_t next_low, index_t) {
      const index_t i = n - 1 - r;
      const bool long_run = !low(i) && next_low - run_start[i] >= min_run;
      ctx.keep(h, order[i], long_run || ctx.position(h, order[i]) > ctx.step() - recent);
    });
  }

  template <class Group, class Ctx>
  KVCOMPACT_HOST_DEVICE void select_decode(Group&, Ctx&, int) const {}
};
//! [cooperative selector]

//! [merger]
// Adds `weight` times every evicted value to the next kept slot in position order (keys untouched).
// Group code: a scan finds each slot's previous kept slot, then one worker per (kept slot, dimension)
// adds the evicted values since it, in position order (the same sums on both backends).
struct fold_forward {
  using component_kind = kvcompact::merger_tag;
  static constexpr bool merges = true;
  float weight = 0.5f;

  template <class Group, class Ctx>
  KVCOMPACT_HOST_DEVICE void merge(Group& group, Ctx& ctx, int h) const {
    using kvcompact::index_t;
    const std::int32_t* order = ctx.order(h);          // slots in ascending position
    std::int32_t* previous_kept = ctx.index_scratch(h, 0);  // [order rank]: rank of the last kept slot before it, -1: none
    group.exclusive_scan(
        ctx.length(h), [&](index_t i) { return ctx.kept(h, order[i]) ? i : index_t{-1}; }, index_t{-1},
        [](index_t a, index_t b) { return a > b ? a : b; },
        [&](index_t i, index_t before, index_t) { previous_kept[i] = static_cast<std::int32_t>(before); });
    const index_t dims = ctx.head_dim();
    group.for_each(ctx.length(h) * dims, [&](index_t e) {
      const index_t i = e / dims, d = e % dims;
      if (!ctx.kept(h, order[i])) return;  // evicted entries after the last kept slot are dropped
      float v = ctx.value(h, order[i], d);
      for (index_t k = previous_kept[i] + 1; k < i; ++k) v += weight * ctx.value(h, order[k], d);
      ctx.set_value(h, order[i], d, v);
    });
  }
};
//! [merger]

//! [budget schedule]
// More slots for lower layers: `first` at layer 0 falling linearly to `last` at the top layer.
struct linear_decay {
  kvcompact::index_t first, last;

  KVCOMPACT_HOST_DEVICE kvcompact::index_t budget(kvcompact::index_t layer, kvcompact::index_t num_layers, kvcompact::index_t length) const {
    const kvcompact::index_t b = num_layers > 1 ? first - (first - last) * layer / (num_layers - 1) : first;
    return b < length ? b : length;  // a head never keeps more than it holds
  }
};
static_assert(kvcompact::budget_schedule<linear_decay>);
//! [budget schedule]

namespace kc = kvcompact;
using kc::index_t;

namespace {

//! [compose]
using my_policy = kc::policy<key_l1, threshold_selector, fold_forward>;
using run_policy = kc::policy<key_l1, run_selector>;
using peak_policy = kc::policy<peak_attention, kc::selectors::top_k<kc::budgets::fixed>>;  // user scorer, built-in selector
//! [compose]
static_assert(kc::compression_policy<my_policy> && kc::compression_policy<run_policy> && kc::compression_policy<peak_policy>);
static_assert(kc::ranked_selector<threshold_selector> && kc::cooperative_selector<run_selector>);
static_assert(!peak_policy::merges && my_policy::merges && peak_policy::needs_attention && !my_policy::needs_attention);

constexpr index_t S = 2, L = 2, H = 2, G = 4, CAP = 40, D = 8, T = 30;

template <class Policy, class Layout>
struct run_session {
  std::vector<std::byte> state, workspace;
  kc::cpu::session<Policy, float, Layout> session;
  run_session(const Policy& p, const kc::kv_cache<float, Layout>& c, const kc::attention_shape& shape)
      : state(kc::cpu::session<Policy, float, Layout>::state_bytes(c.layout)),
        workspace(kc::cpu::session<Policy, float, Layout>::workspace_bytes(c.layout, shape)),
        session(p, c, shape, state, workspace) {}
};

double l1_score(const kvtest::random_cache<float>& c, index_t s, index_t l, index_t h, index_t j) {
  double sum = 0.0;
  for (index_t d = 0; d < D; ++d) sum += std::abs(c.key(s, l, h, j, d));
  return -sum;
}

}  // namespace

// The layout addresses every element once and gives the same results as BHSD.
BOOST_AUTO_TEST_CASE(user_layout_is_a_complete_layout) {
  const token_major layout{S, L, H, CAP, D};
  std::vector<int> hits(static_cast<std::size_t>(S * L * H * CAP * D), 0);
  for (index_t s = 0; s < S; ++s)
    for (index_t l = 0; l < L; ++l)
      for (index_t h = 0; h < H; ++h)
        for (index_t j = 0; j < CAP; ++j)
          for (index_t d = 0; d < D; ++d) ++hits.at(static_cast<std::size_t>(layout.offset(s, l, h, j) + d));
  BOOST_TEST((std::count(hits.begin(), hits.end(), 1) == static_cast<long>(hits.size())));
  kvtest::fill_options fill;
  fill.min_length = fill.max_length = T;
  const auto source = kvtest::make_random_cache<float>({S, L, H, CAP, D}, fill, 301);
  auto bhsd = source;
  auto mine = kvtest::copy_into(source, layout);
  const kc::policies::preset_options options{12, T};
  kc::policies::with_preset("knorm", options, [&](auto policy) {
    kvtest::run_prefill(policy, bhsd.view(), {G}, {});
    kvtest::run_prefill(policy, mine.view(), {G}, {});
    return 0;
  });
  BOOST_TEST((kvtest::take_snapshot(mine.view()) == kvtest::take_snapshot(bhsd.view())));
  auto bad = mine.view();
  bad.layout.dims = 0;
  BOOST_CHECK_THROW((run_session<peak_policy, token_major>(peak_policy{}, bad, {G})), kc::error);
}

// key_l1 + threshold_selector + fold_forward at prefill, then decode eviction at the cap.
BOOST_AUTO_TEST_CASE(user_scorer_selector_and_merger_compose) {
  kvtest::fill_options fill;
  fill.min_length = fill.max_length = T;
  auto cache = kvtest::make_random_cache<float>({S, L, H, CAP, D}, fill, 302);
  const auto original = cache;  // slot j holds position j
  const double threshold = -3.4;  // about the median L1 norm of 8 uniform[-1, 1) entries (mean 4)
  const my_policy policy{{}, threshold_selector{static_cast<float>(threshold), 4, 20}, fold_forward{0.5f}};
  run_session<my_policy, kc::layouts::strided> run(policy, cache.view(), {G});
  run.session.compress_prefill();
  int folded = 0, dropped_tail = 0;
  for (index_t s = 0; s < S; ++s)
    for (index_t l = 0; l < L; ++l)
      for (index_t h = 0; h < H; ++h) {
        BOOST_TEST_CONTEXT("s " << s << " l " << l << " h " << h) {
          std::vector<index_t> expected;
          for (index_t p = 0; p < T; ++p) {
            const double score = l1_score(original, s, l, h, p);
            BOOST_TEST_REQUIRE(std::abs(score - threshold) > 1e-4);  // no decision within fp32 reach of the threshold
            if (p > T - 1 - 4 || score >= threshold) expected.push_back(p);
          }
          std::vector<index_t> got;
          for (index_t j = 0; j < cache.length(s, l, h); ++j) got.push_back(cache.position(s, l, h, j));
          BOOST_TEST(got == expected, boost::test_tools::per_element());  // compaction keeps position order
          const std::set<index_t> kept(expected.begin(), expected.end());
          for (index_t j = 0; j < static_cast<index_t>(expected.size()); ++j) {
            const index_t p = expected[static_cast<std::size_t>(j)], previous = j > 0 ? expected[static_cast<std::size_t>(j - 1)] : -1;
            folded += p - previous - 1;
            for (index_t d = 0; d < D; ++d) {
              double v = original.value(s, l, h, p, d);
              for (index_t q = previous + 1; q < p; ++q) v += 0.5 * original.value(s, l, h, q, d);  // evicted since the last kept one
              BOOST_TEST(kvtest::close(cache.value(s, l, h, j, d), v, 1e-5, 1e-6));
              BOOST_TEST(cache.key(s, l, h, j, d) == original.key(s, l, h, p, d));
            }
          }
          dropped_tail += T - 1 - expected.back();
          BOOST_TEST(run.session.budget(s, l, h) == 20);
        }
      }
  BOOST_TEST(folded > 20);
  BOOST_TEST(dropped_tail == 0);  // the recent window is kept, so every evicted entry has a newer kept one

  // Decode: heads fill up to the cap, then each append evicts the lowest L1 score outside the recent window.
  std::mt19937 rng(303);
  int evictions = 0;
  for (index_t t = T; t < T + 24; ++t) {
    for (index_t s = 0; s < S; ++s)
      for (index_t l = 0; l < L; ++l) {
        std::vector<std::vector<double>> held(H);  // scores of the slots outside the recent window, before the append
        std::vector<index_t> lowest(H, -1), before(H);
        for (index_t h = 0; h < H; ++h) {
          before[static_cast<std::size_t>(h)] = cache.length(s, l, h);
          double best = 0.0;
          for (index_t j = 0; j < cache.length(s, l, h); ++j) {
            if (cache.position(s, l, h, j) > t - 4) continue;
            const double sc = run.session.slot_state(s, l, h, j);
            if (lowest[static_cast<std::size_t>(h)] < 0 || sc < best) lowest[static_cast<std::size_t>(h)] = cache.position(s, l, h, j), best = sc;
          }
        }
        const auto k = kvtest::random_vector(H * D, 1.0, rng), v = kvtest::random_vector(H * D, 1.0, rng);
        run.session.append(s, l, k.data(), v.data(), t);
        for (index_t h = 0; h < H; ++h) {
          std::set<index_t> now;
          for (index_t j = 0; j < cache.length(s, l, h); ++j) now.insert(cache.position(s, l, h, j));
          BOOST_TEST(static_cast<index_t>(now.size()) == cache.length(s, l, h));  // no duplicate
          BOOST_TEST(now.count(t) == 1u);
          if (before[static_cast<std::size_t>(h)] + 1 > 20) {  // one victim per step makes room for the new token
            ++evictions;
            BOOST_TEST(cache.length(s, l, h) == before[static_cast<std::size_t>(h)]);
            BOOST_TEST(now.count(lowest[static_cast<std::size_t>(h)]) == 0u, "t " << t << ": the lowest-scoring slot was not evicted");
          } else {
            BOOST_TEST(cache.length(s, l, h) == before[static_cast<std::size_t>(h)] + 1);
          }
        }
      }
  }
  BOOST_TEST(evictions > 40);
}

// run_selector at prefill: the recent window plus every run of at least min_run consecutive positions
// whose L1 scores all reach the threshold; the other slots are dropped, kept K/V are untouched.
BOOST_AUTO_TEST_CASE(user_cooperative_selector_keeps_long_runs) {
  kvtest::fill_options fill;
  fill.min_length = fill.max_length = T;
  auto cache = kvtest::make_random_cache<float>({S, L, H, CAP, D}, fill, 307);
  const auto original = cache;  // slot j holds position j
  const double threshold = -4.4;  // most scores reach it, so runs of every length occur
  const run_policy policy{{}, run_selector{static_cast<float>(threshold), 3, 4}, {}};
  run_session<run_policy, kc::layouts::strided> run(policy, cache.view(), {G});
  run.session.compress_prefill();
  int short_runs = 0, long_runs = 0;
  for (index_t s = 0; s < S; ++s)
    for (index_t l = 0; l < L; ++l)
      for (index_t h = 0; h < H; ++h) {
        BOOST_TEST_CONTEXT("s " << s << " l " << l << " h " << h) {
          std::vector<bool> high(T), keep(T, false);
          for (index_t p = 0; p < T; ++p) {
            const double score = l1_score(original, s, l, h, p);
            BOOST_TEST_REQUIRE(std::abs(score - threshold) > 1e-4);
            high[static_cast<std::size_t>(p)] = score >= threshold;
          }
          for (index_t p = 0; p < T;) {  // runs of high scores
            index_t end = p;
            while (end < T && high[static_cast<std::size_t>(end)]) ++end;
            if (end - p >= 3) ++long_runs;
            else if (end > p) ++short_runs;
            for (index_t q = p; q < end; ++q) keep[static_cast<std::size_t>(q)] = end - p >= 3;
            p = end > p ? end : p + 1;
          }
          std::vector<index_t> expected;
          for (index_t p = 0; p < T; ++p)
            if (keep[static_cast<std::size_t>(p)] || p > T - 1 - 4) expected.push_back(p);
          std::vector<index_t> got;
          for (index_t j = 0; j < cache.length(s, l, h); ++j) {
            got.push_back(cache.position(s, l, h, j));
            for (index_t d = 0; d < D; ++d) BOOST_TEST(cache.key(s, l, h, j, d) == original.key(s, l, h, got.back(), d));
          }
          BOOST_TEST(got == expected, boost::test_tools::per_element());
        }
      }
  BOOST_TEST(short_runs > 2);  // some runs were too short and went
  BOOST_TEST(long_runs > 2);
}

// peak_attention with a built-in selector: prefill state = max over window rows and the group's query
// heads of the probability; every attend raises it to the current group max when larger.
BOOST_AUTO_TEST_CASE(user_attention_scorer_tracks_the_peak_probability) {
  kvtest::fill_options fill;
  fill.min_length = fill.max_length = T;
  auto cache = kvtest::make_random_cache<float>({S, L, H, CAP, D}, fill, 304);
  const auto window = kvtest::make_random_window(S, L, G, 6, D, {T - 1, T - 1}, 2.0, 305);
  const double scale = kvtest::default_scale(D);
  kvtest::attention_score_spec spec;
  spec.rows = kvtest::reduce::max;
  spec.group = kvtest::reduce::max;
  std::vector<std::vector<std::vector<double>>> peak;  // [s * L + l][h][position]
  for (index_t s = 0; s < S; ++s)
    for (index_t l = 0; l < L; ++l) peak.push_back(kvtest::prefill_attention_scores(cache, window, s, l, G, scale, spec));
  const peak_policy policy{{}, {kc::budgets::fixed{CAP}}, {}};  // budget = capacity: nothing is evicted
  run_session<peak_policy, kc::layouts::strided> run(policy, cache.view(), {G});
  run.session.compress_prefill(window.view());
  std::mt19937 rng(306);
  int bad = 0, raised = 0;
  for (index_t t = T; t < T + 6; ++t)
    for (index_t s = 0; s < S; ++s)
      for (index_t l = 0; l < L; ++l) {
        const auto k = kvtest::random_vector(H * D, 1.0, rng), v = kvtest::random_vector(H * D, 1.0, rng);
        run.session.append(s, l, k.data(), v.data(), t);
        for (index_t h = 0; h < H; ++h) peak[static_cast<std::size_t>(s * L + l)][static_cast<std::size_t>(h)].push_back(0.0);  // slot t holds position t
        const auto q = kvtest::random_vector(G * D, 2.0, rng);
        std::vector<float> out(static_cast<std::size_t>(G * D));
        run.session.attend(s, l, q.data(), t, out.data());
        for (index_t h = 0; h < H; ++h) {
          const auto p = kvtest::decode_reduced_probabilities(cache, s, l, h, q.data(), G, t, scale, kvtest::reduce::max, false);
          auto& ref = peak[static_cast<std::size_t>(s * L + l)][static_cast<std::size_t>(h)];
          for (index_t j = 0; j < cache.length(s, l, h); ++j) {
            double& r = ref.at(static_cast<std::size_t>(cache.position(s, l, h, j)));
            raised += p[static_cast<std::size_t>(j)] > r;
            r = std::max(r, p[static_cast<std::size_t>(j)]);
            bad += !kvtest::close(run.session.slot_state(s, l, h, j), r, 1e-5, 1e-7);
          }
        }
      }
  BOOST_TEST(bad == 0);
  BOOST_TEST(raised > 10);  // decode queries did raise some peaks
}

// Scores shared across KV heads (TOVA's last-query scorer): top_k declares same_for_equal_heads(), so
// the CPU backend selects head 0 and copies its verdicts; a selector that does not (here one whose
// quota grows with the head index) is run on every head. Both keep-sets follow from the layer's one
// score per position (the heads hold the same positions), computed by a plain double reference.
struct head_quota_selector : kc::selectors::top_k<kc::budgets::fixed> {
  template <class Ctx>
  index_t keep_count(const Ctx& ctx, int h, index_t protected_count) const {
    return top_k::keep_count(ctx, h, protected_count) + h;
  }
  bool same_for_equal_heads() const { return false; }  // the quota depends on the head
};
static_assert(kc::ranked_selector<head_quota_selector>);

BOOST_AUTO_TEST_CASE(shared_scores_select_each_head_unless_heads_are_alike) {
  constexpr index_t heads = 4, query_heads = 8, budget = 12;
  kvtest::fill_options fill;
  fill.min_length = fill.max_length = T;
  fill.aligned_heads = true;
  fill.shuffle_slots = true;
  const auto window = kvtest::make_random_window(S, L, query_heads, 1, D, {T - 1, T - 1}, 2.0, 308);
  kvtest::attention_score_spec spec;  // TOVA: the last row's probabilities, averaged over every query head
  spec.group = kvtest::reduce::mean;
  spec.all_heads = true;
  using tova_policy = decltype(kc::policies::tova(budget));
  using quota_policy = kc::policy<tova_policy::scorer_type, head_quota_selector>;
  static_assert(tova_policy::shares_scores_across_kv_heads && quota_policy::shares_scores_across_kv_heads);
  for (int alike = 0; alike < 2; ++alike) {
    auto cache = kvtest::make_random_cache<float>({S, L, heads, CAP, D}, fill, 307);
    std::vector<std::vector<double>> scores;  // [s * L + l][position]
    for (index_t s = 0; s < S; ++s)
      for (index_t l = 0; l < L; ++l) {
        const auto by_slot = kvtest::prefill_attention_scores(cache, window, s, l, query_heads, kvtest::default_scale(D), spec)[0];
        scores.emplace_back(static_cast<std::size_t>(T));
        for (index_t j = 0; j < T; ++j) scores.back()[static_cast<std::size_t>(cache.position(s, l, 0, j))] = by_slot[static_cast<std::size_t>(j)];
      }
    if (alike) {
      run_session<tova_policy, kc::layouts::strided> run(kc::policies::tova(budget), cache.view(), {query_heads});
      run.session.compress_prefill(window.view());
    } else {
      run_session<quota_policy, kc::layouts::strided> run(quota_policy{{}, {kc::budgets::fixed{budget}}, {}}, cache.view(), {query_heads});
      run.session.compress_prefill(window.view());
    }
    for (index_t s = 0; s < S; ++s)
      for (index_t l = 0; l < L; ++l) {
        const auto& score = scores[static_cast<std::size_t>(s * L + l)];
        std::vector<index_t> best(static_cast<std::size_t>(T));  // positions, best first (lower position on ties)
        for (index_t p = 0; p < T; ++p) best[static_cast<std::size_t>(p)] = p;
        std::stable_sort(best.begin(), best.end(), [&](index_t a, index_t b) { return score[static_cast<std::size_t>(a)] > score[static_cast<std::size_t>(b)]; });
        for (index_t h = 0; h < heads; ++h)
          BOOST_TEST_CONTEXT("alike " << alike << " sequence " << s << " layer " << l << " head " << h) {
            const index_t kept = alike ? budget : budget + h;
            std::set<index_t> expected(best.begin(), best.begin() + kept), actual;
            for (index_t j = 0; j < cache.length(s, l, h); ++j) actual.insert(cache.position(s, l, h, j));
            BOOST_TEST(cache.length(s, l, h) == kept);
            BOOST_TEST((actual == expected));
          }
      }
  }
}

// A user budget schedule under a built-in selector: each layer keeps the schedule's budget.
BOOST_AUTO_TEST_CASE(user_budget_schedule_sets_each_layers_budget) {
  constexpr index_t layers = 4, first = 24, last = 6;
  kvtest::fill_options fill;
  fill.min_length = fill.max_length = T;
  auto cache = kvtest::make_random_cache<float>({1, layers, H, CAP, D}, fill, 311);
  using schedule_policy = kc::policy<key_l1, kc::selectors::top_k<linear_decay>>;
  const schedule_policy policy{{}, {linear_decay{first, last}}, {}};
  run_session<schedule_policy, kc::layouts::strided> run(policy, cache.view(), {G});
  run.session.compress_prefill();
  for (index_t l = 0; l < layers; ++l) {
    const index_t want = first - (first - last) * l / (layers - 1);  // 24, 18, 12, 6
    for (index_t h = 0; h < H; ++h) {
      BOOST_TEST(cache.length(0, l, h) == want, "layer " << l << " head " << h);
      BOOST_TEST(run.session.budget(0, l, h) == want);
    }
  }
}
