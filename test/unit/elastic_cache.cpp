// SPDX-License-Identifier: Apache-2.0
// Elastic Cache (docs/methods.md 12) through a real cpu::session against a plain double-precision
// reference written from the rule:
//  - prefill: layer-shared column sums over every prompt row, the `sinks` first tokens and the last one
//    kept, the floor(r T) lowest other tokens evicted (ties: the higher position goes), each evicted token
//    averaged into the anchor nearest in position (the older on a tie), keys and values;
//  - decode: the first tau slots frozen, the slot after them dropped (not merged) whenever the head holds
//    at least (1 - r) times the tokens seen.
// Properties checked besides: budget respected, protected tokens kept, anchors not merged into are
// bit-identical, every prompt token is counted once (value sums conserved), no position lost or
// duplicated. Bad arguments throw kvcompact::error naming them.
//
// Tolerance: anchors are means of at most a few fp32 values of magnitude < 1 (2e-6 relative + 1e-6
// absolute covers fp32 summation); everything else is exact.
#include "support/expect_error.hpp"
#include "support/reference.hpp"

#include <kvcompact/kvcompact.hpp>

#include <boost/test/unit_test.hpp>

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>
#include <vector>

namespace kc = kvcompact;
using kc::index_t;

namespace {

constexpr index_t L = 2, H = 2, G = 2, D = 16, T = 64, CAP = 128;
constexpr double rel_tol = 2e-6, abs_tol = 1e-6;

using elastic_policy = decltype(kc::policies::elastic_cache(0.5));
using session_type = kc::cpu::session<elastic_policy, float, kc::layouts::strided>;

// A prompt of T tokens in every head (heads aligned: the scores are shared by the layer's heads).
kvtest::random_cache<float> prompt_cache(std::uint32_t seed) {
  kvtest::fill_options fill;
  fill.min_length = fill.max_length = T;
  fill.aligned_heads = true;
  return kvtest::make_random_cache<float>({1, L, H, CAP, D}, fill, seed);
}

// Every prompt row as the window (Elastic Cache's column sums run over the whole prompt).
kvtest::random_window prompt_window(std::uint32_t seed) { return kvtest::make_random_window(1, L, H * G, T, D, {T - 1}, 1.0, seed); }

// The reference's prefill result of one layer: anchors (ascending position) and, per prompt position, the
// anchor position it is averaged into (itself for anchors).
struct prefill_plan {
  std::vector<index_t> anchors;
  std::vector<index_t> into;  // [T]
  index_t ties = 0;           // evicted tokens exactly between two anchors
};

prefill_plan reference_plan(const std::vector<double>& score, double fraction, index_t sinks) {
  const double evicted = 1.0 - fraction;
  const index_t budget = std::max(sinks + 1, T - static_cast<index_t>(std::floor(evicted * T)));
  std::vector<index_t> candidates;
  for (index_t j = sinks; j < T - 1; ++j) candidates.push_back(j);
  std::sort(candidates.begin(), candidates.end(), [&](index_t a, index_t b) {
    return score[static_cast<std::size_t>(a)] > score[static_cast<std::size_t>(b)] ||
           (score[static_cast<std::size_t>(a)] == score[static_cast<std::size_t>(b)] && a < b);
  });
  std::vector<bool> anchor(static_cast<std::size_t>(T), false);
  for (index_t j = 0; j < sinks; ++j) anchor[static_cast<std::size_t>(j)] = true;
  anchor[static_cast<std::size_t>(T - 1)] = true;
  for (index_t i = 0; i < budget - sinks - 1; ++i) anchor[static_cast<std::size_t>(candidates[static_cast<std::size_t>(i)])] = true;
  prefill_plan plan;
  plan.into.assign(static_cast<std::size_t>(T), -1);
  for (index_t j = 0; j < T; ++j)
    if (anchor[static_cast<std::size_t>(j)]) plan.anchors.push_back(j);
  for (index_t j = 0; j < T; ++j) {
    if (anchor[static_cast<std::size_t>(j)]) {
      plan.into[static_cast<std::size_t>(j)] = j;
      continue;
    }
    index_t older = j - 1, newer = j + 1;
    while (older >= 0 && !anchor[static_cast<std::size_t>(older)]) --older;
    while (newer < T && !anchor[static_cast<std::size_t>(newer)]) ++newer;
    if (older < 0) plan.into[static_cast<std::size_t>(j)] = newer;
    else if (newer >= T) plan.into[static_cast<std::size_t>(j)] = older;
    else {
      plan.ties += j - older == newer - j ? 1 : 0;
      plan.into[static_cast<std::size_t>(j)] = j - older <= newer - j ? older : newer;
    }
  }
  return plan;
}

// Layer-shared accumulated attention: every prompt row, mean over all query heads, in double.
std::vector<double> reference_scores(const kvtest::random_cache<float>& c, const kvtest::random_window& w, index_t l) {
  kvtest::attention_score_spec spec;
  spec.rows = kvtest::reduce::sum;
  spec.group = kvtest::reduce::mean;
  spec.all_heads = true;
  return kvtest::prefill_attention_scores(c, w, 0, l, H * G, kvtest::default_scale(D), spec)[0];
}

struct run {
  kvtest::random_cache<float> cache;
  kvtest::session_memory memory;
  session_type session;
  run(const elastic_policy& policy, const kvtest::random_cache<float>& source)
      : cache(source),
        memory(kvtest::session_memory::for_session<session_type>(cache.layout, kc::attention_shape{H * G})),
        session(policy, cache.view(), kc::attention_shape{H * G}, memory.state(), memory.workspace()) {}
};

// Positions a head holds, ascending, with the slot of each.
std::map<index_t, index_t> slots_by_position(const kvtest::random_cache<float>& c, index_t l, index_t h) {
  std::map<index_t, index_t> out;
  for (index_t j = 0; j < c.length(0, l, h); ++j) {
    const bool fresh = out.emplace(c.position(0, l, h, j), j).second;
    BOOST_TEST(fresh, "position " << c.position(0, l, h, j) << " held twice by layer " << l << " head " << h);
  }
  return out;
}

// Returns the evicted tokens that lay midway between two anchors (where the tie rule decides).
index_t check_prefill(double fraction, index_t sinks, std::uint32_t seed) {
  index_t ties = 0;
  BOOST_TEST_CONTEXT("fraction " << fraction << ", sinks " << sinks << ", seed " << seed) {
    const auto source = prompt_cache(seed);
    const auto window = prompt_window(seed + 1);
    run r(kc::policies::elastic_cache(fraction, sinks), source);
    r.session.compress_prefill(window.view());
    index_t merged_anchors = 0;
    for (index_t l = 0; l < L; ++l) {
      const prefill_plan plan = reference_plan(reference_scores(source, window, l), fraction, sinks);
      ties += plan.ties;
      for (index_t h = 0; h < H; ++h) {
        const auto held = slots_by_position(r.cache, l, h);
        std::vector<index_t> positions;
        for (const auto& [p, slot] : held) positions.push_back(p);
        BOOST_TEST(positions == plan.anchors, "layer " << l << " head " << h << ": kept positions differ from the reference");
        BOOST_TEST(r.cache.length(0, l, h) == r.session.budget(0, l, h), "the head holds its budget");
        for (index_t j = 0; j < sinks; ++j) BOOST_TEST(held.count(j) == 1, "sink " << j << " kept");
        BOOST_TEST(held.count(T - 1) == 1, "last prompt token kept");
        if (positions != plan.anchors) continue;
        for (index_t d = 0; d < D; ++d) {
          double value_sum_before = 0.0, value_sum_after = 0.0;
          for (index_t j = 0; j < T; ++j) value_sum_before += source.value(0, l, h, j, d);
          for (index_t a : plan.anchors) {
            double key = 0.0, value = 0.0;
            index_t members = 0;
            for (index_t j = 0; j < T; ++j)
              if (plan.into[static_cast<std::size_t>(j)] == a) key += source.key(0, l, h, j, d), value += source.value(0, l, h, j, d), ++members;
            const index_t slot = held.at(a);
            const double got_key = r.cache.key(0, l, h, slot, d), got_value = r.cache.value(0, l, h, slot, d);
            value_sum_after += got_value * static_cast<double>(members);
            if (members == 1) {
              BOOST_TEST((got_key == source.key(0, l, h, a, d) && got_value == source.value(0, l, h, a, d)), "anchor " << a << " not merged into: unchanged");
              continue;
            }
            merged_anchors += d == 0 ? 1 : 0;
            BOOST_TEST(kvtest::close(got_key, key / static_cast<double>(members), rel_tol, abs_tol), "key of anchor " << a << " dim " << d);
            BOOST_TEST(kvtest::close(got_value, value / static_cast<double>(members), rel_tol, abs_tol), "value of anchor " << a << " dim " << d);
          }
          BOOST_TEST(kvtest::close(value_sum_after, value_sum_before, 1e-5, 1e-5), "every prompt token counted once (dim " << d << ")");
        }
      }
    }
    BOOST_TEST(merged_anchors > 0, "the data merges something");
  }
  return ties;
}

}  // namespace

BOOST_AUTO_TEST_CASE(prefill_keeps_and_merges_as_the_reference) {
  const index_t ties = check_prefill(0.5, 1, 11) + check_prefill(0.8, 1, 21) + check_prefill(0.25, 4, 31);
  BOOST_TEST(ties > 0, "the data exercises the tie rule (evicted tokens midway between two anchors)");
}

BOOST_AUTO_TEST_CASE(decode_freezes_a_prefix_and_drops_the_slot_after_it) {
  struct setting {
    double fraction;
    index_t offset;
  };
  // m = 32 anchors: tau = 7; m = 16: 16 - 25 < 1 so tau = 8; a positive offset is the frozen count itself.
  for (const setting& s : {setting{0.5, -25}, setting{0.25, -25}, setting{0.5, 10}}) {
    BOOST_TEST_CONTEXT("fraction " << s.fraction << ", offset " << s.offset) {
      const auto source = prompt_cache(41);
      run r(kc::policies::elastic_cache(s.fraction, 1, s.offset), source);
      r.session.compress_prefill(prompt_window(42).view());
      const index_t kept = r.cache.length(0, 0, 0);
      const index_t tau = s.offset > 0 ? s.offset : (kept + s.offset >= 1 ? kept + s.offset : kept / 2);
      // expected[l][h]: position -> (key, value) of every slot the head should hold
      std::vector<std::map<index_t, std::pair<std::vector<float>, std::vector<float>>>> expected(static_cast<std::size_t>(L * H));
      for (index_t l = 0; l < L; ++l)
        for (index_t h = 0; h < H; ++h)
          for (index_t j = 0; j < r.cache.length(0, l, h); ++j) {
            std::vector<float> k, v;
            for (index_t d = 0; d < D; ++d) k.push_back(static_cast<float>(r.cache.key(0, l, h, j, d))), v.push_back(static_cast<float>(r.cache.value(0, l, h, j, d)));
            expected[static_cast<std::size_t>(l * H + h)][r.cache.position(0, l, h, j)] = {k, v};
          }
      std::mt19937 rng(43);
      const double evicted = 1.0 - s.fraction;
      index_t evictions = 0;
      for (index_t t = T; t < T + 48; ++t) {
        for (index_t l = 0; l < L; ++l) {
          const auto keys = kvtest::random_vector(H * D, 1.0, rng), values = kvtest::random_vector(H * D, 1.0, rng);
          r.session.append(0, l, keys.data(), values.data(), t);
          for (index_t h = 0; h < H; ++h) {
            auto& held = expected[static_cast<std::size_t>(l * H + h)];
            const index_t length = static_cast<index_t>(held.size());
            if (static_cast<double>(length + 1) - static_cast<double>(t + 1) * (1.0 - evicted) >= 1.0) {
              auto victim = held.begin();
              std::advance(victim, std::min(tau, length - 1));
              held.erase(victim);
              evictions += l == 0 && h == 0 ? 1 : 0;
            }
            held[t] = {std::vector<float>(keys.begin() + h * D, keys.begin() + (h + 1) * D), std::vector<float>(values.begin() + h * D, values.begin() + (h + 1) * D)};
            const auto got = slots_by_position(r.cache, l, h);
            BOOST_TEST(got.size() == held.size(), "step " << t << " layer " << l << " head " << h << ": length");
            for (const auto& [p, kv] : held) {
              const auto it = got.find(p);
              BOOST_TEST((it != got.end()), "step " << t << ": position " << p << " kept");
              if (it == got.end()) continue;
              for (index_t d = 0; d < D; ++d)
                BOOST_TEST((r.cache.key(0, l, h, it->second, d) == kv.first[static_cast<std::size_t>(d)] &&
                            r.cache.value(0, l, h, it->second, d) == kv.second[static_cast<std::size_t>(d)]),
                           "step " << t << ": position " << p << " unchanged (decode drops, never merges)");
            }
          }
        }
      }
      BOOST_TEST(evictions > 10, "the loop truncates");
      // steady state: at most the kept share of the tokens seen, rounded up
      const index_t seen = T + 48;
      BOOST_TEST(r.cache.length(0, 0, 0) <= static_cast<index_t>(std::ceil(seen * s.fraction)) + 1);
    }
  }
}

BOOST_AUTO_TEST_CASE(the_budget_rounds_the_evicted_share_down) {
  const kc::selectors::elastic s{0.2, 1, -25};
  BOOST_TEST(s.budget(0, 1, 64) == 64 - 12);  // floor(12.8) evicted
  BOOST_TEST(s.budget(0, 1, 5) == 4);         // floor(1.0)
  BOOST_TEST(s.budget(0, 1, 1) == 2);         // at least the sink and the last token (above the length: nothing to do)
  BOOST_TEST(s.frozen_slots(52) == 27);
  BOOST_TEST(s.frozen_slots(20) == 10);
}

BOOST_AUTO_TEST_CASE(bad_arguments_are_named) {
  kvtest::expect_error([] { (void)kc::policies::elastic_cache(0.0); }, "fraction");
  kvtest::expect_error([] { (void)kc::policies::elastic_cache(1.5); }, "fraction");
  kvtest::expect_error([] { (void)kc::policies::elastic_cache(std::numeric_limits<double>::quiet_NaN()); }, "fraction");
  kvtest::expect_error([] { (void)kc::policies::elastic_cache(0.5, -1); }, "sinks");
  auto cache = prompt_cache(51);
  auto policy = kc::policies::elastic_cache(0.5);
  policy.selector.evicted = 1.0;
  auto memory = kvtest::session_memory::for_session<session_type>(cache.layout, kc::attention_shape{H * G});
  kvtest::expect_error([&] { session_type(policy, cache.view(), kc::attention_shape{H * G}, memory.state(), memory.workspace()); },
                       "policy.selector.evicted");
  policy.selector.evicted = 0.5;
  policy.selector.sinks = -2;
  kvtest::expect_error([&] { session_type(policy, cache.view(), kc::attention_shape{H * G}, memory.state(), memory.workspace()); },
                       "policy.selector.sinks");
}
