// SPDX-License-Identifier: Apache-2.0
// The decode-eviction adapter (kvcompact/detail/decode_eviction.hpp) that the CUDA decode kernels
// use to find victims while they update the scorer's state: which presets evict by rank, and for
// those, that the per-slot verdict is the selector's protection rule and the scorer's decode score,
// so the worst candidate it yields is the victim of the selector's own select_decode().
#include <boost/test/unit_test.hpp>

#include <kvcompact/detail/decode_eviction.hpp>
#include <kvcompact/policies.hpp>

#include "support/selection_harness.hpp"

#include <algorithm>
#include <random>
#include <vector>

namespace kc = kvcompact;
using kc::index_t;
using kc::detail::decode_eviction_kind;

BOOST_AUTO_TEST_CASE(presets_are_classified_by_their_decode_eviction) {
  namespace p = kc::policies;
  BOOST_TEST((kc::detail::decode_eviction_of(p::h2o(64, 8)) == decode_eviction_kind::ranked));
  BOOST_TEST((kc::detail::decode_eviction_of(p::tova(64)) == decode_eviction_kind::ranked));
  BOOST_TEST((kc::detail::decode_eviction_of(p::streaming_llm(64)) == decode_eviction_kind::ranked));
  BOOST_TEST((kc::detail::decode_eviction_of(p::knorm(64)) == decode_eviction_kind::ranked));
  BOOST_TEST((kc::detail::decode_eviction_of(p::corm_budgeted(64, 8)) == decode_eviction_kind::ranked));
  BOOST_TEST((kc::detail::decode_eviction_of(p::snapkv(64, 8)) == decode_eviction_kind::none));      // prefill-only: appends
  BOOST_TEST((kc::detail::decode_eviction_of(p::pyramidkv(64, 8)) == decode_eviction_kind::none));
  BOOST_TEST((kc::detail::decode_eviction_of(p::corm(16, 16)) == decode_eviction_kind::general));     // budget-free rule
  BOOST_TEST((kc::detail::decode_eviction_of(p::cam(64, 4)) == decode_eviction_kind::general));       // merges
  BOOST_TEST((kc::detail::decode_eviction_of(p::adakv(64)) == decode_eviction_kind::general));        // not a top-k
  auto pooled = p::h2o(64, 8);
  pooled.selector.rule.pool = kc::selectors::pooling::max;
  pooled.selector.rule.kernel = 3;
  BOOST_TEST((kc::detail::decode_eviction_of(pooled) == decode_eviction_kind::general));  // ranks read neighbours
}

BOOST_AUTO_TEST_CASE(verdicts_follow_the_protection_rule_and_the_decode_score) {
  const auto policy = kc::policies::h2o(64, 8);  // the 8 newest positions are protected
  const index_t step = 100;
  for (index_t position = 80; position <= step; ++position) {
    const auto verdict = kc::detail::decode_eviction_verdict(policy, 0.25f, position, step);
    BOOST_TEST(verdict.candidate == (position <= step - 8), "position " << position);
    BOOST_TEST(verdict.key == 0.25f);
  }
  // One step later the window moves: the slot at step - 7 becomes a candidate.
  BOOST_TEST(!kc::detail::decode_eviction_verdict(policy, 0.0f, step - 7, step).candidate);
  BOOST_TEST(kc::detail::decode_eviction_verdict(policy, 0.0f, step - 7, step + 1).candidate);
  const auto sinks = kc::policies::streaming_llm(64, 4);  // recency scores, 4 sinks
  BOOST_TEST(!kc::detail::decode_eviction_verdict(sinks, 3.0f, 3, step).candidate);
  BOOST_TEST(kc::detail::decode_eviction_verdict(sinks, 4.0f, 4, step).candidate);
}

BOOST_AUTO_TEST_CASE(the_worst_verdict_is_the_victim_of_select_decode) {
  // A head one slot over its budget: select_decode evicts one slot; the adapter's worst candidate
  // (lowest key, then higher position) must be that slot, for random scores with many ties and
  // slots in random order.
  const auto policy = kc::policies::h2o(24, 4);
  std::mt19937 rng(3);
  constexpr index_t length = 24, step = 40;
  for (int trial = 0; trial < 50; ++trial) {
    kvtest::selection_harness ctx(1, 1, length);
    ctx.set_length(0, length);
    std::vector<std::int32_t> positions(static_cast<std::size_t>(length));
    for (index_t j = 0; j < length; ++j) positions[static_cast<std::size_t>(j)] = static_cast<std::int32_t>(step - length + j);
    std::shuffle(positions.begin(), positions.end(), rng);
    for (index_t j = 0; j < length; ++j) {
      ctx.position_ref(0, j) = positions[static_cast<std::size_t>(j)];
      ctx.score_ref(0, j) = static_cast<float>(rng() % 6) / 4.0f;
    }
    ctx.set_step(step);
    ctx.begin_decode();
    ctx.budget_ref(0) = length;  // excess 1
    kvtest::select_decode(policy.selector, ctx, 0);
    index_t victim = -1, worst = -1;
    for (index_t j = 0; j < length; ++j) {
      if (!ctx.kept(0, j)) victim = j;
      const auto verdict = kc::detail::decode_eviction_verdict(policy, ctx.score(0, j), ctx.position(0, j), step);
      if (!verdict.candidate) continue;
      if (worst < 0 || verdict.key < ctx.score(0, worst) || (verdict.key == ctx.score(0, worst) && ctx.position(0, j) > ctx.position(0, worst)))
        worst = j;
    }
    BOOST_TEST(victim >= 0);
    BOOST_TEST(victim == worst, "trial " << trial);
  }
}
