// SPDX-License-Identifier: Apache-2.0
// Prefill scores computed by cpu::session for every scorer, against the double-precision references
// of test/support/reference.hpp (docs/methods.md P1, P2, P4, 1.4-1.7, 6.1-6.3, 6.8).
//
// Scores are observed through `recording_selector`, a pass-through selector defined here: it keeps
// every slot and copies ctx.score(h, j) and ctx.query_score(g, j) into test-owned buffers.
//
// Tolerance: the library computes dot products, softmax and the reductions in fp32, the reference in
// double. Logits are O(1) (keys and queries uniform in [-1, 1) / [-2, 2), scale 1/sqrt(d)), so each
// probability carries a relative error of a few fp32 ulps (~1e-6); sums over <= 16 rows and <= 8
// heads add a few more. We accept |lib - ref| <= 1e-5 * |ref| + 1e-7 (the absolute term covers
// probabilities near 0, whose absolute error is below 1e-7 anyway). CORM's last_hit scores are
// positions (or -1) and must match exactly; the tests require that no term a * n lies within a
// relative 1e-5 of alpha (checked on the reference), so fp32 rounding cannot flip a decision.
#include <boost/test/unit_test.hpp>

#include <kvcompact/kvcompact.hpp>

#include "support/reference.hpp"

#include <cmath>
#include <limits>
#include <vector>

namespace {

using kvcompact::index_t;
using kvtest::reduce;

/// Pass-through selector: keeps everything, records the scores the selector sees.
struct recording_selector {
  using component_kind = kvcompact::cooperative_selector_tag;
  static constexpr kvcompact::selection_scope scope = kvcompact::selection_scope::layer;
  float* scores = nullptr;        // [s][l][h][capacity]
  float* query_scores = nullptr;  // [s][l][g][capacity]
  index_t capacity = 0;

  index_t budget(index_t, index_t, index_t length) const { return length; }
  template <class Group, class Ctx>
  void select(Group& workers, Ctx& ctx) const {
    const index_t layers = ctx.num_layers();
    for (int h = 0; h < ctx.kv_heads(); ++h)
      workers.for_each(ctx.length(h), [&](index_t j) {
        ctx.keep(h, j, true);
        scores[((ctx.sequence() * layers + ctx.layer()) * ctx.kv_heads() + h) * capacity + j] = ctx.score(h, j);
      });
    if (query_scores == nullptr) return;
    const int group = ctx.query_heads() / ctx.kv_heads();
    for (int g = 0; g < ctx.query_heads(); ++g)
      workers.for_each(ctx.length(g / group), [&](index_t j) {
        query_scores[((ctx.sequence() * layers + ctx.layer()) * ctx.query_heads() + g) * capacity + j] = ctx.query_score(g, j);
      });
  }
  template <class Group, class Ctx>
  void select_decode(Group&, Ctx&, int) const {}
};
static_assert(kvcompact::keep_selector<recording_selector>);

struct recorded {
  std::vector<float> scores, query_scores;
};

/// Runs compress_prefill with the recording selector and returns what the selector saw.
template <class Scorer, class T>
recorded run_prefill(const Scorer& scorer, kvtest::random_cache<T>& cache, const kvtest::random_window* window, index_t query_heads) {
  const auto& sh = cache.shape;
  recorded out;
  const float nan = std::numeric_limits<float>::quiet_NaN();
  out.scores.assign(static_cast<std::size_t>(sh.sequences * sh.layers * sh.kv_heads * sh.capacity), nan);
  out.query_scores.assign(static_cast<std::size_t>(sh.sequences * sh.layers * query_heads * sh.capacity), nan);
  recording_selector selector{out.scores.data(), Scorer::source == kvcompact::score_source::attention ? out.query_scores.data() : nullptr,
                              sh.capacity};
  using policy_t = kvcompact::policy<Scorer, recording_selector>;
  using session_t = kvcompact::cpu::session<policy_t, T, kvcompact::layouts::strided>;
  const kvcompact::attention_shape shape{query_heads};
  auto memory = kvtest::session_memory::for_session<session_t>(cache.layout, shape);
  const auto lengths_before = cache.lengths;
  const auto positions_before = cache.positions;
  session_t session(policy_t{scorer, selector, {}}, cache.view(), shape, memory.state(), memory.workspace());
  session.compress_prefill(window ? window->view() : kvcompact::query_window{});
  // Keeping everything must leave the cache untouched.
  BOOST_TEST(cache.lengths == lengths_before);
  BOOST_TEST(cache.positions == positions_before);
  return out;
}

constexpr double rel_tol = 1e-5;
constexpr double abs_tol = 1e-7;

/// Compares every valid slot's recorded score with reference(s, l, h, j).
template <class T, class Ref>
void check_slot_scores(const kvtest::random_cache<T>& cache, const std::vector<float>& got, Ref&& reference, bool exact) {
  const auto& sh = cache.shape;
  index_t mismatches = 0;
  for (index_t s = 0; s < sh.sequences; ++s)
    for (index_t l = 0; l < sh.layers; ++l)
      for (index_t h = 0; h < sh.kv_heads; ++h)
        for (index_t j = 0; j < cache.length(s, l, h); ++j) {
          const double lib = got[static_cast<std::size_t>(cache.slot_index(s, l, h, j))];
          const double ref = reference(s, l, h, j);
          const bool ok = exact ? lib == ref : kvtest::close(lib, ref, rel_tol, abs_tol);
          if (!ok && mismatches++ < 5)
            BOOST_ERROR("score mismatch s=" << s << " l=" << l << " h=" << h << " slot=" << j << " position=" << cache.position(s, l, h, j)
                                            << " library=" << lib << " reference=" << ref);
        }
  BOOST_TEST(mismatches == 0);
}

/// Compares the library's prefill scores of an attention scorer with the reference (all s, l), and the
/// per-query-head row-reduced scores with the reference before the group reduction.
template <class Scorer, class T>
void check_attention_scorer(const Scorer& scorer, kvtest::random_cache<T>& cache, const kvtest::random_window& window, index_t query_heads,
                            const kvtest::attention_score_spec& spec) {
  const auto& sh = cache.shape;
  const double scale = kvtest::default_scale(sh.head_dim);
  double margin = std::numeric_limits<double>::infinity();
  std::vector<std::vector<std::vector<double>>> ref(static_cast<std::size_t>(sh.sequences * sh.layers));
  std::vector<std::vector<double>> ref_query(static_cast<std::size_t>(sh.sequences * sh.layers * query_heads));
  for (index_t s = 0; s < sh.sequences; ++s)
    for (index_t l = 0; l < sh.layers; ++l) {
      ref[static_cast<std::size_t>(s * sh.layers + l)] = kvtest::prefill_attention_scores(cache, window, s, l, query_heads, scale, spec, &margin);
      for (index_t g = 0; g < query_heads; ++g)
        ref_query[static_cast<std::size_t>((s * sh.layers + l) * query_heads + g)] =
            kvtest::query_head_scores(cache, window, s, l, g, query_heads, scale, spec);
    }
  const bool exact = spec.term == kvtest::term_kind::corm_last_hit;
  if (exact) BOOST_REQUIRE_MESSAGE(margin > 1e-5, "test data too close to the CORM threshold (margin " << margin << "): change the seed");
  const recorded got = run_prefill(scorer, cache, &window, query_heads);
  check_slot_scores(cache, got.scores, [&](index_t s, index_t l, index_t h, index_t j) {
    return ref[static_cast<std::size_t>(s * sh.layers + l)][static_cast<std::size_t>(h)][static_cast<std::size_t>(j)];
  }, exact);
  // Row-reduced per-query-head scores (ctx.query_score), before the GQA reduction.
  const index_t group = query_heads / sh.kv_heads;
  index_t mismatches = 0;
  for (index_t s = 0; s < sh.sequences; ++s)
    for (index_t l = 0; l < sh.layers; ++l)
      for (index_t g = 0; g < query_heads; ++g)
        for (index_t j = 0; j < cache.length(s, l, g / group); ++j) {
          const double lib = got.query_scores[static_cast<std::size_t>(((s * sh.layers + l) * query_heads + g) * sh.capacity + j)];
          const double r = ref_query[static_cast<std::size_t>((s * sh.layers + l) * query_heads + g)][static_cast<std::size_t>(j)];
          const bool ok = exact ? lib == r : kvtest::close(lib, r, rel_tol, abs_tol);
          if (!ok && mismatches++ < 5) BOOST_ERROR("query_score mismatch s=" << s << " l=" << l << " g=" << g << " slot=" << j << " " << lib << " vs " << r);
        }
  BOOST_TEST(mismatches == 0);
}

kvcompact::reduction to_library(reduce r) {
  return r == reduce::sum ? kvcompact::reduction::sum : r == reduce::mean ? kvcompact::reduction::mean : kvcompact::reduction::max;
}

/// A cache of 2 sequences x 2 layers x 2 KV heads, sparse positions out of `tokens`, shuffled slots.
template <class T = float>
kvtest::random_cache<T> sparse_cache(index_t head_dim, index_t tokens, std::uint32_t seed, bool aligned = false) {
  kvtest::fill_options fill;
  fill.min_length = 12;
  fill.max_length = 24;
  fill.tokens = tokens;
  fill.shuffle_slots = true;
  fill.aligned_heads = aligned;
  fill.key_scale = 1.0;
  return kvtest::make_random_cache<T>({2, 2, 2, 24, head_dim}, fill, seed);
}

/// Heads of min_length to 600 shuffled slots holding sparse positions out of 700 (several blocks of 256).
kvtest::fill_options long_fill(index_t min_length) {
  kvtest::fill_options fill;
  fill.min_length = min_length;
  fill.max_length = 600;
  fill.tokens = 700;
  fill.shuffle_slots = true;
  return fill;
}

constexpr index_t kTokens = 40;  // positions 0..39; window rows are the last `rows` of them
const std::vector<index_t> kLast{kTokens - 1, kTokens - 1};

}  // namespace

BOOST_AUTO_TEST_SUITE(slot_scorers)

BOOST_AUTO_TEST_CASE(recency_score_is_the_position) {
  auto cache = sparse_cache(16, 100, 11);
  const recorded got = run_prefill(kvcompact::scorers::recency{}, cache, nullptr, 2);
  check_slot_scores(cache, got.scores, [&](index_t s, index_t l, index_t h, index_t j) { return kvtest::recency_score(cache, s, l, h, j); }, true);
}

BOOST_AUTO_TEST_CASE(key_norm_score_is_minus_the_l2_norm) {
  // The library sums the squares in 16 strided lane sums combined pairwise (key_norm::slot_scores), the
  // reference in double in order: for <= 64 squares of O(1) values the fp32 relative error is at most
  // ~(64 / 16 + 4) ulp, far below 1e-5, so the check is a tolerance, not bit equality.
  for (index_t d : {16, 64}) {
    BOOST_TEST_CONTEXT("fp32 head_dim " << d) {
      auto cache = sparse_cache(d, 100, 12 + static_cast<std::uint32_t>(d));
      const recorded got = run_prefill(kvcompact::scorers::key_norm{}, cache, nullptr, 4);
      check_slot_scores(cache, got.scores, [&](index_t s, index_t l, index_t h, index_t j) { return kvtest::key_norm_score(cache, s, l, h, j); },
                        false);
    }
    BOOST_TEST_CONTEXT("fp16 head_dim " << d) {
      auto cache = sparse_cache<kvcompact::half_t>(d, 100, 13 + static_cast<std::uint32_t>(d));
      const recorded got = run_prefill(kvcompact::scorers::key_norm{}, cache, nullptr, 2);
      check_slot_scores(cache, got.scores, [&](index_t s, index_t l, index_t h, index_t j) { return kvtest::key_norm_score(cache, s, l, h, j); },
                        false);
    }
    BOOST_TEST_CONTEXT("bf16 head_dim " << d) {
      auto cache = sparse_cache<kvcompact::bfloat16_t>(d, 100, 14 + static_cast<std::uint32_t>(d));
      const recorded got = run_prefill(kvcompact::scorers::key_norm{}, cache, nullptr, 2);
      check_slot_scores(cache, got.scores, [&](index_t s, index_t l, index_t h, index_t j) { return kvtest::key_norm_score(cache, s, l, h, j); },
                        false);
    }
  }
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(attention_scorers)

BOOST_AUTO_TEST_CASE(observation_window_all_row_and_group_reductions) {
  std::uint32_t seed = 100;
  for (index_t group : {1, 2, 4})
    for (index_t d : {16, 64})
      for (index_t rows : {1, 3, 8, 16})
        for (reduce row_reduction : {reduce::sum, reduce::mean})
          for (reduce group_reduction : {reduce::mean, reduce::max, reduce::sum}) {
            BOOST_TEST_CONTEXT("G=" << group << " d=" << d << " rows=" << rows << " row_reduction=" << static_cast<int>(row_reduction)
                                    << " group_reduction=" << static_cast<int>(group_reduction)) {
              ++seed;
              auto cache = sparse_cache(d, kTokens, seed);
              const index_t query_heads = 2 * group;
              const auto window = kvtest::make_random_window(2, 2, query_heads, rows, d, kLast, 2.0, seed + 7777);
              kvcompact::scorers::observation_window scorer{};
              scorer.rows = to_library(row_reduction);
              scorer.group = to_library(group_reduction);
              kvtest::attention_score_spec spec;
              spec.rows = row_reduction;
              spec.group = group_reduction;
              check_attention_scorer(scorer, cache, window, query_heads, spec);
            }
          }
}

BOOST_AUTO_TEST_CASE(blocked_window_scoring_over_long_caches) {
  // The backend scores in blocks of 256 slots and strips of at most 32 window rows (all query heads of
  // a group per row), converting keys in chunks of 128 dimensions: 520-600 shuffled slots, 70 window
  // rows inside the cache (causal masking within every strip), head_dim 160 and groups of 1, 3 and 5
  // cross all of those edges.
  std::uint32_t seed = 900;
  for (index_t group : {1, 3, 5}) {
    BOOST_TEST_CONTEXT("G=" << group) {
      auto cache = kvtest::make_random_cache({1, 2, 2, 600, 160}, long_fill(520), ++seed);
      const auto window = kvtest::make_random_window(1, 2, 2 * group, 70, 160, {699}, 2.0, seed + 50);
      check_attention_scorer(kvcompact::scorers::observation_window{}, cache, window, 2 * group, kvtest::attention_score_spec{});
      auto half_cache = kvtest::make_random_cache<kvcompact::half_t>({1, 2, 2, 600, 160}, long_fill(520), seed + 100);
      kvtest::attention_score_spec max_rows;
      max_rows.rows = reduce::max;
      kvcompact::scorers::observation_window max_scorer{};
      max_scorer.rows = kvcompact::reduction::max;
      check_attention_scorer(max_scorer, half_cache, window, 2 * group, max_rows);
    }
  }
}

BOOST_AUTO_TEST_CASE(narrow_windows_score_several_heads_per_pass) {
  // A window of at most 4 rows per KV head (rows x group) is scored for several KV heads per pass,
  // their rows stacked: 4 KV heads of 40 to 600 shuffled slots (1 to 3 blocks of 256, a different
  // number per head), 1 or 2 window rows inside the cache, groups of 1, 2 and 4, head_dim 160 (two
  // chunks of the key rows).
  std::uint32_t seed = 950;
  for (index_t group : {1, 2, 4})
    for (index_t rows : {1, 2}) {
      if (rows * group > 4) continue;
      BOOST_TEST_CONTEXT("G=" << group << " rows=" << rows) {
        auto cache = kvtest::make_random_cache({2, 1, 4, 600, 160}, long_fill(40), ++seed);
        const auto window = kvtest::make_random_window(2, 1, 4 * group, rows, 160, {699, 650}, 2.0, seed + 50);
        check_attention_scorer(kvcompact::scorers::observation_window{}, cache, window, 4 * group, kvtest::attention_score_spec{});
      }
    }
}

BOOST_AUTO_TEST_CASE(window_rows_inside_the_cache_are_causally_masked) {
  // Dense prompt of 20 tokens (positions 0..19, all in the cache) and a 16-row window at 4..19: each
  // row sees only its prefix. Guards against a window that attends the whole cache (the sum of all
  // probabilities would then differ); also checks that row r's probabilities sum to 1 over the
  // slots it sees (the reference does), i.e. the total score mass equals the number of rows.
  kvtest::fill_options fill;
  fill.min_length = fill.max_length = 20;
  fill.shuffle_slots = true;
  auto cache = kvtest::make_random_cache({1, 1, 2, 20, 16}, fill, 501);
  const auto window = kvtest::make_random_window(1, 1, 4, 16, 16, {19}, 2.0, 502);
  kvcompact::scorers::observation_window scorer{};
  check_attention_scorer(scorer, cache, window, 4, kvtest::attention_score_spec{});
  const recorded got = run_prefill(scorer, cache, &window, 4);
  for (index_t h = 0; h < 2; ++h) {
    double total = 0.0;
    for (index_t j = 0; j < 20; ++j) {
      total += got.scores[static_cast<std::size_t>(cache.slot_index(0, 0, h, j))];
      // A key at position p is seen by rows at positions >= p only: the last key gets one row's worth at most.
      if (cache.position(0, 0, h, j) == 19) BOOST_TEST(got.scores[static_cast<std::size_t>(cache.slot_index(0, 0, h, j))] < 1.0f);
    }
    BOOST_TEST(std::abs(total - 16.0) < 1e-4);  // sum of 16 probability rows, group mean
  }
}

BOOST_AUTO_TEST_CASE(accumulated_attention_defaults_sum_rows_mean_group) {
  std::uint32_t seed = 300;
  for (index_t group : {1, 2, 4})
    for (index_t rows : {1, 5, 16}) {
      BOOST_TEST_CONTEXT("G=" << group << " rows=" << rows) {
        ++seed;
        auto cache = sparse_cache(16, kTokens, seed);
        const auto window = kvtest::make_random_window(2, 2, 2 * group, rows, 16, kLast, 2.0, seed + 5000);
        check_attention_scorer(kvcompact::scorers::accumulated_attention{}, cache, window, 2 * group, kvtest::attention_score_spec{});
      }
    }
}

BOOST_AUTO_TEST_CASE(last_query_is_shared_across_all_query_heads) {
  std::uint32_t seed = 400;
  for (index_t group : {1, 2, 4})
    for (index_t d : {16, 64})
      for (index_t rows : {1, 4}) {
        BOOST_TEST_CONTEXT("G=" << group << " d=" << d << " rows=" << rows) {
          ++seed;
          auto cache = sparse_cache(d, kTokens, seed, /*aligned=*/true);
          const auto window = kvtest::make_random_window(2, 2, 2 * group, rows, d, kLast, 2.0, seed + 5000);
          kvtest::attention_score_spec spec;
          spec.all_heads = true;
          check_attention_scorer(kvcompact::scorers::last_query{}, cache, window, 2 * group, spec);
          // Same score for every KV head of a layer (hence the same keep-set).
          const recorded got = run_prefill(kvcompact::scorers::last_query{}, cache, &window, 2 * group);
          for (index_t s = 0; s < 2; ++s)
            for (index_t l = 0; l < 2; ++l)
              for (index_t j = 0; j < cache.length(s, l, 0); ++j)
                BOOST_TEST(got.scores[static_cast<std::size_t>(cache.slot_index(s, l, 0, j))] ==
                           got.scores[static_cast<std::size_t>(cache.slot_index(s, l, 1, j))]);
        }
      }
}

BOOST_AUTO_TEST_CASE(recent_query_last_hit_and_importance_both_references) {
  using rq = kvcompact::scorers::recent_query;
  std::uint32_t seed = 600;
  for (rq::mode mode : {rq::mode::last_hit, rq::mode::importance})
    for (rq::threshold_reference reference : {rq::threshold_reference::cache_length, rq::threshold_reference::position})
      for (float alpha : {1.0f, 0.5f})
        for (index_t group : {1, 2, 4})
          for (index_t rows : {1, 6, 16}) {
            BOOST_TEST_CONTEXT("mode=" << static_cast<int>(mode) << " reference=" << static_cast<int>(reference) << " alpha=" << alpha
                                       << " G=" << group << " rows=" << rows) {
              ++seed;
              auto cache = sparse_cache(16, kTokens, seed);
              const auto window = kvtest::make_random_window(2, 2, 2 * group, rows, 16, kLast, 2.0, seed + 9000);
              rq scorer{};
              scorer.score_mode = mode;
              scorer.reference = reference;
              scorer.alpha = alpha;
              kvtest::attention_score_spec spec;
              spec.rows = reduce::max;
              spec.group = reduce::max;
              spec.term = mode == rq::mode::last_hit ? kvtest::term_kind::corm_last_hit : kvtest::term_kind::corm_importance;
              spec.alpha = alpha;
              spec.position_reference = reference == rq::threshold_reference::position;
              check_attention_scorer(scorer, cache, window, 2 * group, spec);
            }
          }
}

BOOST_AUTO_TEST_CASE(recent_query_threshold_references_differ_on_a_sparse_cache) {
  // Property check that the two threshold references are really different inputs: on a sparse cache
  // (n_i visible keys << position + 1) the position reference raises a*n, so it finds at least as many
  // hits, and strictly more somewhere for this data.
  using rq = kvcompact::scorers::recent_query;
  auto cache = sparse_cache(16, 200, 777);
  const auto window = kvtest::make_random_window(2, 2, 4, 8, 16, {199, 199}, 2.0, 778);
  rq by_length{};
  rq by_position{};
  by_position.reference = rq::threshold_reference::position;
  const recorded a = run_prefill(by_length, cache, &window, 4);
  const recorded b = run_prefill(by_position, cache, &window, 4);
  index_t more = 0;
  for (index_t s = 0; s < 2; ++s)
    for (index_t l = 0; l < 2; ++l)
      for (index_t h = 0; h < 2; ++h)
        for (index_t j = 0; j < cache.length(s, l, h); ++j) {
          const auto i = static_cast<std::size_t>(cache.slot_index(s, l, h, j));
          // a hit under cache_length implies a hit under position (n_i <= position + 1), so last_hit can only grow
          BOOST_TEST(b.scores[i] >= a.scores[i]);
          more += b.scores[i] > a.scores[i] ? 1 : 0;
        }
  BOOST_TEST(more > 0);
}

BOOST_AUTO_TEST_SUITE_END()
