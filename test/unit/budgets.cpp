// SPDX-License-Identifier: Apache-2.0
// Budget schedules (docs/methods.md 4.4, 6.5) against references written from the spec.
#include <boost/test/unit_test.hpp>

#include <kvcompact/selectors/budgets.hpp>

#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

namespace kvc = kvcompact;
using kvc::index_t;

namespace {

// ---- references, written from docs/methods.md with plain integer arithmetic --------------------------

// PyramidKV per-layer budget (6.5), window tokens included. C = average, w = window, T = prompt length.
index_t ref_pyramid(index_t C, index_t w, index_t beta, index_t layer, index_t L, index_t T) {
  if (T < C) return T;  // no compression: the head keeps everything it has
  const index_t c = C - w;
  index_t min_n = c / beta;  // floor (all operands non-negative)
  index_t max_n = 2 * c - min_n;
  if (max_n >= T - w) {
    max_n = T - w;
    min_n = 2 * c - max_n;
  }
  if (T < 2 * c) return c + w;  // KVCache-Factory middle regime: uniform top-c
  const index_t step = (max_n - min_n) / (L - 1);
  return max_n - layer * step + w;
}

// WindowKV group budgets (4.4): review tokens only, groups of gamma layers, gamma | L, L / gamma >= 2.
std::vector<index_t> ref_group_budgets(index_t C, index_t gamma, index_t beta, index_t L) {
  const index_t Lg = L / gamma;
  const index_t b_last = C * gamma / beta;
  const index_t b_first = 2 * C - b_last;
  const index_t step = (b_first - b_last) / (Lg - 1);
  std::vector<index_t> b(static_cast<std::size_t>(Lg));
  for (index_t g = 0; g + 1 < Lg; ++g) b[static_cast<std::size_t>(g)] = b_first - g * step;
  b[static_cast<std::size_t>(Lg - 1)] = b_last;
  return b;
}

}  // namespace

BOOST_AUTO_TEST_SUITE(fixed_and_fraction)

BOOST_AUTO_TEST_CASE(fixed_ignores_layer_and_length) {
  std::mt19937 rng(11);
  std::uniform_int_distribution<index_t> any(0, 100000);
  const kvc::budgets::fixed schedule{137};
  for (int i = 0; i < 200; ++i) BOOST_TEST(schedule.budget(any(rng) % 64, 64, any(rng)) == 137);
}

BOOST_AUTO_TEST_CASE(fraction_rounds_to_nearest_and_is_at_least_one) {
  std::mt19937 rng(12);
  std::uniform_real_distribution<double> ratio(0.001, 1.0);
  std::uniform_int_distribution<index_t> length(1, 5000);
  for (int i = 0; i < 500; ++i) {
    const double r = ratio(rng);
    const index_t n = length(rng);
    const kvc::budgets::fraction schedule{r};
    const double exact = r * static_cast<double>(n);
    // nearest integer; exact halves do not occur for random real ratios (checked below)
    BOOST_TEST_REQUIRE(std::fabs(exact - std::floor(exact) - 0.5) > 1e-9);
    index_t expected = static_cast<index_t>(std::llround(exact));
    if (expected < 1) expected = 1;
    BOOST_TEST(schedule.budget(3, 32, n) == expected, "ratio " << r << " length " << n);
    BOOST_TEST(schedule.budget(3, 32, n) <= n);
  }
  BOOST_TEST(kvc::budgets::fraction{0.5}.budget(0, 1, 1) == 1);    // 0.5 rounds up, and never below 1
  BOOST_TEST(kvc::budgets::fraction{0.01}.budget(0, 1, 10) == 1);  // 0.1 -> 0 -> clamped to 1
  BOOST_TEST(kvc::budgets::fraction{1.0}.budget(0, 1, 777) == 777);
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(pyramid)

// A worked example computed by hand from the 6.5 formula: C = 2048, w = 32, beta = 20, L = 32, T = 8000.
// c = 2016, min_n = 100, max_n = 3932 (< T - w), T >= 2c, step = floor(3832 / 31) = 123.
BOOST_AUTO_TEST_CASE(hand_computed_example) {
  const kvc::budgets::pyramid schedule{2048, 32, 20};
  BOOST_TEST(schedule.budget(0, 32, 8000) == 3932 + 32);
  BOOST_TEST(schedule.budget(1, 32, 8000) == 3932 - 123 + 32);
  BOOST_TEST(schedule.budget(31, 32, 8000) == 3932 - 31 * 123 + 32);
}

BOOST_AUTO_TEST_CASE(short_prompt_is_not_compressed) {
  const kvc::budgets::pyramid schedule{512, 32, 20};
  for (index_t T : {1, 100, 511})
    for (index_t l = 0; l < 8; ++l) BOOST_TEST(schedule.budget(l, 8, T) == T);
}

BOOST_AUTO_TEST_CASE(middle_regime_is_uniform) {
  // C <= T < 2c: every layer keeps c + w = C.
  const kvc::budgets::pyramid schedule{512, 32, 20};
  for (index_t T : {512, 700, 959})
    for (index_t l = 0; l < 16; ++l) BOOST_TEST(schedule.budget(l, 16, T) == 512, "T " << T << " layer " << l);
}

BOOST_AUTO_TEST_CASE(clamped_max_n) {
  // C = 100, w = 32: c = 68, min_n = 3, max_n = 133; T in [136, 165] has T >= 2c and max_n >= T - w,
  // so max_n is clamped to T - w and min_n = 2c - max_n.
  const kvc::budgets::pyramid schedule{100, 32, 20};
  const index_t L = 5;
  for (index_t T = 136; T <= 165; ++T) {
    const index_t max_n = T - 32, min_n = 136 - max_n;
    const index_t step = (max_n - min_n) / (L - 1);
    for (index_t l = 0; l < L; ++l) BOOST_TEST(schedule.budget(l, L, T) == max_n - l * step + 32, "T " << T << " layer " << l);
    BOOST_TEST(schedule.budget(0, L, T) == T);  // the bottom layer keeps the whole prompt
  }
}

BOOST_AUTO_TEST_CASE(matches_reference_and_properties_on_random_configurations) {
  std::mt19937 rng(13);
  std::uniform_int_distribution<index_t> window(1, 64), base(8, 2048), beta(2, 30), layers(2, 40);
  int compressed = 0, clamped = 0;
  for (int i = 0; i < 400; ++i) {
    const index_t w = window(rng), c = base(rng), C = c + w, b = beta(rng), L = layers(rng);
    if (c < w) continue;  // the formula assumes the pyramid base is at least the window (else max_n < min_n)
    std::uniform_int_distribution<index_t> prompt(1, 4 * C);
    const index_t T = prompt(rng);
    const kvc::budgets::pyramid schedule{C, w, b};
    double sum = 0.0;
    for (index_t l = 0; l < L; ++l) {
      const index_t got = schedule.budget(l, L, T);
      BOOST_TEST(got == ref_pyramid(C, w, b, l, L, T), "C " << C << " w " << w << " beta " << b << " L " << L << " T " << T << " l " << l);
      BOOST_TEST(got <= T);  // never more than the prompt
      if (l > 0) BOOST_TEST(got <= schedule.budget(l - 1, L, T));  // monotone non-increasing over layers
      sum += static_cast<double>(got);
    }
    if (T >= 2 * c) {
      ++compressed;
      clamped += (2 * c - c / b >= T - w);
      // Average over layers: the linear part averages to exactly c; flooring `step` adds at most
      // (L - 2) / 2 (step * (L - 1) >= max_n - min_n - (L - 2)). Window tokens come on top.
      const double average = sum / static_cast<double>(L) - static_cast<double>(w);
      BOOST_TEST(average >= static_cast<double>(c) - 1e-9);
      BOOST_TEST(average <= static_cast<double>(c) + static_cast<double>(L - 2) / 2.0 + 1e-9);
    }
  }
  BOOST_TEST(compressed > 100);  // the random draw covers the pyramid regime ...
  BOOST_TEST(clamped > 0);       // ... including the clamp
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(group_pyramid)

// Worked examples of docs/methods.md 4.4 (LLaMA-3-8B: L = 32, gamma = 8, beta = 14).
BOOST_AUTO_TEST_CASE(windowkv_worked_examples) {
  const struct {
    index_t C;
    index_t expected[4];
  } cases[] = {{2048, {2926, 2341, 1756, 1170}}, {1024, {1463, 1171, 879, 585}}, {512, {732, 586, 440, 292}}};
  for (const auto& c : cases) {
    const kvc::budgets::group_pyramid schedule{c.C, 8, 14};
    for (index_t l = 0; l < 32; ++l)
      BOOST_TEST(schedule.budget(l, 32, 100000) == c.expected[l / 8], "C " << c.C << " layer " << l);
  }
}

BOOST_AUTO_TEST_CASE(matches_reference_and_properties_on_random_configurations) {
  std::mt19937 rng(14);
  std::uniform_int_distribution<index_t> average(16, 4096), gamma(1, 8), groups(2, 10), length(1, 100000);
  for (int i = 0; i < 300; ++i) {
    const index_t C = average(rng), g = gamma(rng), Lg = groups(rng), L = g * Lg;
    // beta >= gamma keeps b_last <= C (the schedule is a pyramid only then; WindowKV uses beta = 14, gamma <= 8)
    const index_t b = std::uniform_int_distribution<index_t>(g, 30)(rng);
    const kvc::budgets::group_pyramid schedule{C, g, b};
    const auto expected = ref_group_budgets(C, g, b, L);
    double sum = 0.0;
    for (index_t l = 0; l < L; ++l) {
      const index_t got = schedule.budget(l, L, length(rng));  // independent of the length
      BOOST_TEST(got == expected[static_cast<std::size_t>(l / g)], "C " << C << " gamma " << g << " L " << L << " layer " << l);
      if (l > 0) BOOST_TEST(got <= schedule.budget(l - 1, L, 0));
      sum += static_cast<double>(got);
    }
    // b_first + b_last = 2C, so the linear part averages to C; flooring `step` adds
    // sum_{g < Lg-1} g * frac <= (Lg - 2)(Lg - 1) / 2 over Lg groups.
    const double avg = sum / static_cast<double>(L);
    BOOST_TEST(avg >= static_cast<double>(C) - 1e-9);
    BOOST_TEST(avg <= static_cast<double>(C) + static_cast<double>((Lg - 2) * (Lg - 1)) / (2.0 * static_cast<double>(Lg)) + 1e-9);
  }
}

BOOST_AUTO_TEST_SUITE_END()
