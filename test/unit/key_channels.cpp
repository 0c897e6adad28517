// SPDX-License-Identifier: Apache-2.0
// Key-channel pruning (ThinK, docs/methods.md 10) on the CPU backend: channels::think's selection
// against a double-precision reference of the channel scores (and the paper's Frobenius-norm criterion);
// properties of the pruned store (kept count, ascending unique indices, thin and tail rows bit-identical
// to the cache's keys, the unpruned tail); decode attention over the kept channels against a
// double-precision reference (prompt slots and appended tokens); a pruning ratio of 0 is full attention;
// ThinK after SnapKV through cpu::session; bad input refused with a kvcompact::error naming it.
#include "support/expect_error.hpp"
#include "support/pruned_reference.hpp"
#include "support/reference.hpp"

#include <kvcompact/kvcompact.hpp>

#include <boost/test/unit_test.hpp>

#include <cmath>
#include <random>
#include <span>
#include <string>
#include <type_traits>
#include <vector>

namespace kc = kvcompact;
using kc::index_t;
using kvtest::expect_error;

namespace {

constexpr kvtest::cache_shape shape_of(index_t capacity, index_t head_dim) { return {2, 2, 2, capacity, head_dim}; }

/// Channels of a head of the store, as a vector.
template <class T>
std::vector<index_t> kept_of(const kvtest::owned_pruned<T>& p, index_t head) {
  std::vector<index_t> out;
  for (index_t i = 0; i < p.view.kept; ++i) out.push_back(p.view.channel_list(head)[i]);
  return out;
}

/// Checks channel sets against the double reference: equal, or differing only where reference scores
/// tie within float rounding at the boundary.
void check_same_channels(const std::vector<index_t>& got, const std::vector<index_t>& want, const std::vector<double>& scores) {
  if (got == want) return;
  std::vector<double> sorted = scores;
  std::sort(sorted.rbegin(), sorted.rend());
  const double boundary = sorted[want.size() - 1];
  for (index_t c : got)
    if (std::find(want.begin(), want.end(), c) == want.end())
      BOOST_TEST(std::abs(scores[static_cast<std::size_t>(c)] - boundary) <= 1e-5 * boundary, "channel " << c << " kept against the reference");
}

/// Prunes a random cache and checks the store's properties and channel choice.
template <class T>
void check_pruning(float ratio, index_t head_dim, index_t tail, std::uint32_t seed) {
  constexpr index_t G = 3, ROWS = 8, CAP = 40;
  kvtest::fill_options fill;
  fill.min_length = 0;
  fill.max_length = CAP;
  auto cache = kvtest::make_random_cache<T>(shape_of(CAP, head_dim), fill, seed);
  const auto window = kvtest::make_random_window(2, 2, 2 * G, ROWS, head_dim, {CAP + 5, CAP + 5}, 1.0, seed + 1);
  const kc::channels::think think{ratio, tail};
  const index_t kept = think.kept_channels(head_dim);
  BOOST_TEST(kept == head_dim - static_cast<index_t>(std::floor(static_cast<double>(ratio) * static_cast<double>(head_dim))));
  kvtest::owned_pruned<T> pruned(cache.shape, kept, CAP, tail);
  kc::cpu::prune_key_channels(think, cache.view(), kc::attention_shape{2 * G}, window.view(), pruned.view);
  for (index_t s = 0; s < 2; ++s)
    for (index_t l = 0; l < 2; ++l)
      for (index_t h = 0; h < 2; ++h) {
        const index_t head = cache.head_index(s, l, h), length = cache.length(s, l, h), thin = pruned.thin_lengths[head];
        BOOST_TEST(thin == std::max<index_t>(0, length - tail));
        const auto channels = kept_of(pruned, head);
        BOOST_TEST(static_cast<index_t>(channels.size()) == kept);
        for (std::size_t i = 1; i < channels.size(); ++i) BOOST_TEST(channels[i - 1] < channels[i]);  // ascending, so unique
        const auto scores = kvtest::reference_channel_scores(cache, window, s, l, h, G);
        check_same_channels(channels, kvtest::reference_kept_channels(scores, kept), scores);
        for (index_t j = 0; j < length; ++j)
          for (index_t i = 0; i < (j < thin ? kept : head_dim); ++i) {
            const T stored = j < thin ? pruned.view.thin_row(head, j)[i] : pruned.view.tail_row(head, j - thin)[i];
            const index_t channel = j < thin ? channels[static_cast<std::size_t>(i)] : i;
            BOOST_TEST(kvtest::to_double(stored) == cache.key(s, l, h, j, channel));  // bit-identical copies
          }
      }
}

}  // namespace

BOOST_AUTO_TEST_CASE(think_keeps_the_reference_channels_and_copies_the_keys_bit_identically) {
  check_pruning<float>(0.4f, 64, 4, 11);
  check_pruning<float>(0.5f, 32, 0, 12);
  check_pruning<kc::half_t>(0.4f, 64, 8, 13);
  check_pruning<kc::bfloat16_t>(0.25f, 16, 40, 14);  // every slot in the tail
  check_pruning<float>(0.0f, 16, 2, 15);              // ratio 0 keeps every channel
  check_pruning<float>(0.99f, 64, 2, 16);             // one channel left
}

BOOST_AUTO_TEST_CASE(the_mean_product_ranks_channels_as_the_frobenius_norm_of_the_window_logits) {
  // ThinK's criterion is ||Q_c K_c^T||_F^2 = sum over rows and slots of (q_c k_c)^2: the same order as the score.
  const auto cache = kvtest::make_random_cache<float>({1, 1, 1, 30, 24}, {30, 30}, 22);
  const auto window = kvtest::make_random_window(1, 1, 2, 6, 24, {35}, 1.0, 23);
  const auto scores = kvtest::reference_channel_scores(cache, window, 0, 0, 0, 2);
  std::vector<double> frobenius(24, 0.0);
  for (index_t d = 0; d < 24; ++d)
    for (index_t g = 0; g < 2; ++g)
      for (index_t r = 0; r < 6; ++r)
        for (index_t j = 0; j < 30; ++j) frobenius[static_cast<std::size_t>(d)] += std::pow(window.query(0, 0, g, r)[d] * cache.key(0, 0, 0, j, d), 2.0);
  BOOST_TEST(kvtest::reference_kept_channels(scores, 14) == kvtest::reference_kept_channels(frobenius, 14));
}

BOOST_AUTO_TEST_CASE(decode_attention_over_the_kept_channels_matches_the_reference) {
  constexpr index_t G = 2, D = 32, CAP = 48, TAIL = 6, STEPS = 5;
  kvtest::fill_options fill;
  fill.min_length = 10;
  fill.max_length = 30;
  auto cache = kvtest::make_random_cache<kc::half_t>(shape_of(CAP, D), fill, 31);
  const auto window = kvtest::make_random_window(2, 2, 2 * G, 4, D, {29, 29}, 1.0, 32);
  const kc::channels::think think{0.5f, TAIL};
  kvtest::owned_pruned<kc::half_t> pruned(cache.shape, think.kept_channels(D), 30, TAIL + STEPS);
  kc::cpu::prune_key_channels(think, cache.view(), kc::attention_shape{2 * G}, window.view(), pruned.view);
  std::mt19937 rng(33);
  const double scale = 1.0 / std::sqrt(static_cast<double>(D));
  for (index_t step = 0; step <= STEPS; ++step)
    for (index_t s = 0; s < 2; ++s)
      for (index_t l = 0; l < 2; ++l) {
        if (step > 0) {  // append a token at position 99 + step: a full-width tail row
          std::vector<kc::half_t> k, v;
          for (float x : kvtest::random_vector(2 * D, 1.0, rng)) k.push_back(kc::from_float<kc::half_t>(x));
          for (float x : kvtest::random_vector(2 * D, 1.0, rng)) v.push_back(kc::from_float<kc::half_t>(x));
          kc::cpu::append_pruned(cache.view(), pruned.view, s, l, k.data(), v.data(), 99 + step);
          for (index_t h = 0; h < 2; ++h) {  // mirror the key into the reference cache's (unread) key slot
            const index_t j = cache.length(s, l, h) - 1;
            for (index_t d = 0; d < D; ++d) cache.keys[static_cast<std::size_t>(cache.element(s, l, h, j, d))] = k[static_cast<std::size_t>(h * D + d)];
          }
        }
        const auto queries = kvtest::random_vector(2 * G * D, 1.0, rng);
        const index_t position = step == 0 ? 15 : 99 + step;  // at step 0 part of the prompt is in the future
        std::vector<float> out(static_cast<std::size_t>(2 * G * D));
        kc::cpu::attend_pruned(cache.view(), pruned.view, kc::attention_shape{2 * G}, s, l, queries.data(), position, out.data());
        for (index_t qh = 0; qh < 2 * G; ++qh) {
          const index_t h = qh / G, head = cache.head_index(s, l, h);
          const auto want = kvtest::reference_pruned_attention(cache, s, l, h, queries.data() + qh * D, position, kept_of(pruned, head),
                                                               pruned.thin_lengths[head], scale);
          for (index_t d = 0; d < D; ++d) BOOST_TEST(std::abs(out[static_cast<std::size_t>(qh * D + d)] - want[static_cast<std::size_t>(d)]) <= 1e-5);
        }
      }
}

BOOST_AUTO_TEST_CASE(a_pruning_ratio_of_zero_is_full_attention) {
  constexpr index_t D = 16, CAP = 20;
  auto cache = kvtest::make_random_cache<float>(shape_of(CAP, D), {5, CAP}, 41);
  const auto window = kvtest::make_random_window(2, 2, 2, 3, D, {25, 25}, 1.0, 42);
  kvtest::owned_pruned<float> pruned(cache.shape, D, CAP, 0);
  kc::cpu::prune_key_channels(kc::channels::think{0.0f, 0}, cache.view(), kc::attention_shape{2}, window.view(), pruned.view);
  std::mt19937 rng(43);
  const auto queries = kvtest::random_vector(2 * D, 1.0, rng);
  std::vector<float> out(2 * D);
  kc::cpu::attend_pruned(cache.view(), pruned.view, kc::attention_shape{2}, 1, 1, queries.data(), 100, out.data());
  std::vector<index_t> all(D);
  std::iota(all.begin(), all.end(), index_t{0});
  for (index_t h = 0; h < 2; ++h) {
    const auto want = kvtest::reference_pruned_attention(cache, 1, 1, h, queries.data() + h * D, 100, all, 0, 0.25);
    for (index_t d = 0; d < D; ++d) BOOST_TEST(std::abs(out[static_cast<std::size_t>(h * D + d)] - want[static_cast<std::size_t>(d)]) <= 1e-5);
  }
}

BOOST_AUTO_TEST_CASE(think_after_snapkv_prunes_the_slots_snapkv_kept) {
  constexpr index_t G = 3, D = 32, CAP = 64, PROMPT = 60, WINDOW = 8, BUDGET = 24;
  auto cache = kvtest::make_random_cache<float>({1, 2, 2, CAP, D}, {PROMPT, PROMPT}, 51);
  const auto window = kvtest::make_random_window(1, 2, 2 * G, WINDOW, D, {PROMPT - 1}, 1.0, 52);
  const auto policy = kc::policies::snapkv(BUDGET, WINDOW);
  using session_type = kc::cpu::session<decltype(policy), float, kc::layouts::strided>;
  const kc::attention_shape shape{2 * G};
  std::vector<std::byte> state(session_type::state_bytes(cache.layout)), workspace(session_type::workspace_bytes(cache.layout, shape));
  session_type session(policy, cache.view(), shape, state, workspace);
  session.compress_prefill(window.view());
  const kc::channels::think think{0.4f, WINDOW};
  kvtest::owned_pruned<float> pruned(cache.shape, think.kept_channels(D), BUDGET - WINDOW, WINDOW);
  kc::cpu::prune_key_channels(think, cache.view(), shape, window.view(), pruned.view);
  for (index_t l = 0; l < 2; ++l)
    for (index_t h = 0; h < 2; ++h) {
      const index_t head = cache.head_index(0, l, h);
      BOOST_TEST(cache.length(0, l, h) == BUDGET);
      BOOST_TEST(pruned.thin_lengths[head] == BUDGET - WINDOW);
      for (index_t j = BUDGET - WINDOW; j < BUDGET; ++j) BOOST_TEST(cache.position(0, l, h, j) >= PROMPT - WINDOW);  // the tail is the window
      const auto scores = kvtest::reference_channel_scores(cache, window, 0, l, h, G);  // over the kept slots only
      check_same_channels(kept_of(pruned, head), kvtest::reference_kept_channels(scores, pruned.view.kept), scores);
    }
  // key bytes: 16 thin slots of 20 channels + 8 full slots per head, against 24 full slots
  BOOST_TEST(pruned.view.key_bytes() == (4u * (16 * 20 + 8 * 32)) * sizeof(float) + 4u * 20 * sizeof(std::uint16_t));
}

BOOST_AUTO_TEST_CASE(bad_input_is_refused_naming_the_argument) {
  constexpr index_t D = 16, CAP = 20;
  auto cache = kvtest::make_random_cache<float>(shape_of(CAP, D), {5, CAP - 1}, 61);
  const auto window = kvtest::make_random_window(2, 2, 2, 3, D, {25, 25}, 1.0, 62);
  const kc::attention_shape shape{2};
  auto prune = [&](const kc::channels::think& think, const kc::pruned_keys<float>& store, const kc::query_window& w, const kc::attention_shape& sh) {
    kc::cpu::prune_key_channels(think, cache.view(), sh, w, store);
  };
  kvtest::owned_pruned<float> pruned(cache.shape, 10, CAP, 4);
  for (float ratio : {-0.1f, 1.0f, 1.5f, std::nanf("")})
    expect_error([&] { prune({ratio, 4}, pruned.view, window.view(), shape); }, "think.pruning_ratio");
  expect_error([&] { prune({0.4f, -1}, pruned.view, window.view(), shape); }, "think.full_tail");
  expect_error([&] { prune({0.5f, 4}, pruned.view, window.view(), shape); }, "pruned.kept");  // 8 kept, the store has 10
  auto wrong_dim = pruned.view;
  wrong_dim.head_dim = 32;
  expect_error([&] { prune({0.4f, 4}, wrong_dim, window.view(), shape); }, "pruned.head_dim");
  auto window_view = window.view();
  window_view.head_dim = 8;
  expect_error([&] { prune({0.4f, 4}, pruned.view, window_view, shape); }, "window.head_dim");
  expect_error([&] { prune({0.4f, 4}, pruned.view, window.view(), kc::attention_shape{2, 0.0f, 32}); }, "shape.head_dim");
  kvtest::owned_pruned<float> small(cache.shape, 10, 2, 4);
  expect_error([&] { prune({0.4f, 4}, small.view, window.view(), shape); }, "pruned.thin_capacity");
  std::swap(cache.positions[0], cache.positions[1]);
  expect_error([&] { prune({0.4f, 4}, pruned.view, window.view(), shape); }, "cache.positions");
  std::swap(cache.positions[0], cache.positions[1]);
  prune({0.4f, 4}, pruned.view, window.view(), shape);
  std::vector<float> token(2 * D, 0.5f), out(2 * D);
  expect_error([&] { kc::cpu::attend_pruned(cache.view(), wrong_dim, shape, 0, 0, token.data(), 50, out.data()); }, "pruned.head_dim");
  expect_error([&] { kc::cpu::attend_pruned(cache.view(), pruned.view, shape, 0, 2, token.data(), 50, out.data()); }, "layer");
  const std::int32_t length = cache.lengths[0];
  cache.lengths[0] = CAP + 1;
  expect_error([&] { kc::cpu::attend_pruned(cache.view(), pruned.view, shape, 0, 0, token.data(), 50, out.data()); }, "cache.lengths");
  cache.lengths[0] = length;
  // every head holds at least 5 < CAP slots, 4 of them in a tail of capacity 4: no tail row is left
  expect_error([&] { kc::cpu::append_pruned(cache.view(), pruned.view, 0, 0, token.data(), token.data(), 60); }, "pruned.tail_capacity");
  kvtest::owned_pruned<float> roomy(cache.shape, 10, CAP, CAP);
  prune({0.4f, 4}, roomy.view, window.view(), shape);
  cache.lengths[0] = CAP;
  roomy.thin_lengths[0] = CAP - 4;
  expect_error([&] { kc::cpu::append_pruned(cache.view(), roomy.view, 0, 0, token.data(), token.data(), 60); }, "cache.lengths");
}

BOOST_AUTO_TEST_CASE(the_think_presets_compose_snapkv_with_channels_think) {
  const auto policy = kc::policies::think_snapkv(64, 0.5f, 16);
  static_assert(std::is_same_v<decltype(policy.tokens), decltype(kc::policies::snapkv(64, 16))>);
  BOOST_TEST(policy.channels.pruning_ratio == 0.5f);
  BOOST_TEST(policy.channels.full_tail == 16);
  BOOST_TEST(policy.channels.kept_channels(64) == 32);
  kc::policies::preset_options options{100, 400, 32};
  for (auto name : kc::policies::channel_preset_names)
    kc::policies::with_channel_preset(name, options, [&](const auto& p) {
      BOOST_TEST(p.channels.pruning_ratio == (name == "think_snapkv" ? 0.4f : 0.5f));
      BOOST_TEST(p.channels.full_tail == 32);
    });
  options.budget = 20;  // the window is capped at half the budget, as in with_preset
  kc::policies::with_channel_preset("think_snapkv", options, [&](const auto& p) { BOOST_TEST(p.channels.full_tail == 10); });
  expect_error([&] { kc::policies::with_channel_preset("think", options, [](const auto&) {}); }, "name");
  expect_error([&] { (void)kc::policies::think_snapkv(64, 1.0f); }, "think.pruning_ratio");
}
