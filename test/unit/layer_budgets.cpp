// SPDX-License-Identifier: Apache-2.0
// Per-layer budgets found offline (docs/methods.md 7, 8): budgets::layer_table against plain formulas;
// the budget file round trip and every malformed or foreign file refused with a kvcompact::error naming
// it; PrefixKV's prefix search against a plain re-statement of the search and against a hand-worked
// example; XKV's knapsack against exhaustive enumeration; the prefixkv and xkv presets through
// cpu::session against double-precision references (layer-shared accumulated attention, per-layer top-k)
// and against SnapKV run layer by layer with the table's budgets.
#include "support/custom_layout.hpp"
#include "support/expect_error.hpp"
#include "support/reference.hpp"

#include <kvcompact/calibration/knapsack.hpp>
#include <kvcompact/calibration/prefix_search.hpp>
#include <kvcompact/kvcompact.hpp>
#include <kvcompact/selectors/layer_budget_file.hpp>

#include <boost/test/unit_test.hpp>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <limits>
#include <numeric>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <vector>

namespace kc = kvcompact;
using kc::index_t;
using kvtest::expect_error;

namespace {

std::vector<double> random_fractions(std::mt19937& rng, index_t layers) {
  std::vector<double> keep;
  for (index_t l = 0; l < layers; ++l) keep.push_back(0.05 + 0.95 * (kvtest::uniform_pm1(rng) + 1.0) / 2.0);
  return keep;
}

}  // namespace

// ---- budgets::layer_table --------------------------------------------------------------------------

BOOST_AUTO_TEST_CASE(layer_table_budgets_follow_the_table) {
  std::mt19937 rng(3);
  for (int trial = 0; trial < 50; ++trial) {
    const index_t layers = kvtest::uniform_int(rng, 1, 40), min_slots = kvtest::uniform_int(rng, 1, 6);
    const auto keep = random_fractions(rng, layers);
    const auto table = kc::budgets::layer_table::fractions(keep, min_slots);
    BOOST_TEST(table.layers == layers);
    double mean = 0;
    for (index_t l = 0; l < layers; ++l) {
      const auto f = static_cast<double>(static_cast<float>(keep[static_cast<std::size_t>(l)]));  // stored as float
      mean += f / static_cast<double>(layers);
      for (index_t n : {index_t{1}, index_t{7}, index_t{100}, kvtest::uniform_int(rng, 1, 5000)}) {
        const index_t expected = std::max<index_t>(min_slots, static_cast<index_t>(std::floor(f * static_cast<double>(n) + 0.5)));
        BOOST_TEST(table.budget(l, layers, n) == expected, "layer " << l << " length " << n);
      }
    }
    BOOST_TEST(table.average() == mean, boost::test_tools::tolerance(1e-12));
  }
  const std::vector<index_t> slots{16, 1, 300, 16};
  const auto fixed = kc::budgets::layer_table::slots(slots);
  for (index_t l = 0; l < 4; ++l)
    for (index_t n : {1, 50, 1000}) BOOST_TEST(fixed.budget(l, 4, n) == slots[static_cast<std::size_t>(l)]);
  BOOST_TEST(fixed.budget(7, 8, 55) == 55);  // beyond the table (refused by validate): nothing compressed
  static_assert(std::is_trivially_copyable_v<kc::budgets::layer_table> && kc::budget_schedule<kc::budgets::layer_table>);
}

BOOST_AUTO_TEST_CASE(layer_table_refuses_bad_entries) {
  using table = kc::budgets::layer_table;
  const double nan = std::numeric_limits<double>::quiet_NaN();
  for (const std::vector<double>& bad : {std::vector<double>{0.5, 0.0}, {1.0001}, {-0.2, 0.5}, {0.5, nan}, {}})
    expect_error([&] { (void)table::fractions(bad); }, "keep");
  expect_error([&] { (void)table::fractions(std::vector<double>(257, 0.5)); }, "keep", "257");
  expect_error([&] { (void)table::fractions(std::vector<double>{0.5}, 0); }, "min_slots");
  for (const std::vector<index_t>& bad : {std::vector<index_t>{4, -1}, {0}, {index_t{1} << 25}, {}})
    expect_error([&] { (void)table::slots(bad); }, "slots");
  expect_error([&] { table::fractions(std::vector<double>{0.5, 0.5}).validate(3, "test"); }, "policy", "2 layers");
}

BOOST_AUTO_TEST_CASE(sessions_refuse_a_table_of_another_layer_count_or_above_the_capacity) {
  kvtest::fill_options fill;
  fill.min_length = fill.max_length = 12;
  auto cache = kvtest::make_random_cache<float>({1, 3, 2, 16, 8}, fill, 5);
  const kc::attention_shape shape{4};
  auto construct = [&](const auto& policy) {
    using policy_t = std::decay_t<decltype(policy)>;
    kvtest::session_storage<policy_t, float, kc::layouts::strided> storage(cache.layout, shape);
    kc::cpu::session<policy_t, float, kc::layouts::strided> s(policy, cache.view(), shape, storage.state_span(), storage.workspace_span());
  };
  const std::vector<double> two{0.5, 0.5}, three{0.5, 0.5, 0.5};
  expect_error([&] { construct(kc::policies::prefixkv(kc::budgets::layer_table::fractions(two))); }, "policy", "2 layers but the cache has 3");
  expect_error([&] { construct(kc::policies::xkv(kc::budgets::layer_table::fractions(two), 4)); }, "policy", "3 storage layers");
  BOOST_CHECK_NO_THROW(construct(kc::policies::prefixkv(kc::budgets::layer_table::fractions(three))));
  using selector = kc::selectors::top_k<kc::budgets::layer_table>;
  const std::vector<index_t> over{16, 17, 4};
  const kc::policy<kc::scorers::recency, selector> too_big{{}, {kc::budgets::layer_table::slots(over)}, {}};
  expect_error([&] { construct(too_big); }, "policy", "layer 1 is 17 slots");
  kc::policies::preset_options options{8, 12};
  expect_error([&] { kc::policies::with_preset("prefixkv", options, [](const auto&) {}); }, "options.layer_budgets");
  expect_error([&] { kc::policies::with_preset("xkv", options, [](const auto&) {}); }, "options.layer_budgets");
  const auto table = kc::budgets::layer_table::fractions(three);
  options.layer_budgets = &table;
  for (auto name : kc::policies::calibrated_preset_names) BOOST_CHECK_NO_THROW(kc::policies::with_preset(name, options, construct));
}

// ---- budget files -------------------------------------------------------------------------------

namespace {

kc::budgets::model_signature test_model() { return {"Test Model 3L", 3, 2, 8, "fnv1a64:00112233aabbccdd"}; }

kc::budgets::layer_budget_file test_file() {
  kc::budgets::layer_budget_file f;
  f.method = "prefixkv";
  f.model = test_model();
  f.notes = {"16 prompts x 1024 tokens", "second note"};
  f.tables = {{0.2, {0.1, 0.25, 0.25}, {0.01, 0.02, 0.0}}, {0.5, {0.4, 0.55, 0.55}, {}}};
  return f;
}

std::string written(const kc::budgets::layer_budget_file& f) {
  std::ostringstream out;
  kc::budgets::write_layer_budgets(out, f);
  return out.str();
}

// A temporary file removed at scope exit.
struct temp_file {
  std::string path;
  explicit temp_file(const std::string& text, const std::string& name = "kvcompact_layer_budgets_test.txt")
      : path((std::filesystem::temp_directory_path() / name).string()) {
    std::ofstream(path) << text;
  }
  ~temp_file() { std::filesystem::remove(path); }
};

}  // namespace

BOOST_AUTO_TEST_CASE(budget_file_round_trip_and_load) {
  const auto f = test_file();
  const std::string text = written(f);
  std::istringstream in(text);
  const auto back = kc::budgets::read_layer_budgets(in, "memory");
  BOOST_TEST(back.method == f.method);
  BOOST_TEST(back.model.name == f.model.name);
  BOOST_TEST(back.model.fingerprint == f.model.fingerprint);
  BOOST_TEST((back.notes == f.notes));
  BOOST_TEST_REQUIRE(back.tables.size() == 2u);
  for (std::size_t t = 0; t < 2; ++t) {
    BOOST_TEST(back.tables[t].keep_fraction == f.tables[t].keep_fraction);
    BOOST_TEST(back.tables[t].keep == f.tables[t].keep, boost::test_tools::per_element());
    BOOST_TEST(back.tables[t].spread == f.tables[t].spread, boost::test_tools::per_element());
  }
  BOOST_TEST(written(back) == text);
  const temp_file file(text);
  const auto table = kc::budgets::load_layer_budgets(file.path, test_model(), 0.5, 3);
  BOOST_TEST(table.layers == 3);
  BOOST_TEST(table.min_slots == 3);
  BOOST_TEST(table.budget(1, 3, 100) == 55);
  BOOST_TEST(table.budget(0, 3, 1000) == 400);
}

BOOST_AUTO_TEST_CASE(budget_file_of_another_model_or_budget_is_refused) {
  const temp_file file(written(test_file()));
  auto other = test_model();
  other.fingerprint = "fnv1a64:ffffffffffffffff";
  other.name = "Other Model";
  expect_error([&] { (void)kc::budgets::load_layer_budgets(file.path, other, 0.2); }, "model", "Test Model 3L");
  expect_error([&] { (void)kc::budgets::load_layer_budgets(file.path, other, 0.2); }, "model", file.path);
  for (auto change : {+[](kc::budgets::model_signature& m) { m.layers = 4; }, +[](kc::budgets::model_signature& m) { m.kv_heads = 1; },
                      +[](kc::budgets::model_signature& m) { m.head_dim = 16; }}) {
    auto m = test_model();
    change(m);
    expect_error([&] { (void)kc::budgets::load_layer_budgets(file.path, m, 0.2); }, "model", "not for the model running");
  }
  expect_error([&] { (void)kc::budgets::load_layer_budgets(file.path, test_model(), 0.35); }, "keep_fraction", "0.200000, 0.500000");
  expect_error([&] { (void)kc::budgets::load_layer_budgets(file.path + ".missing", test_model(), 0.2); }, "path");
}

BOOST_AUTO_TEST_CASE(malformed_budget_files_are_refused_with_their_line) {
  const std::string good = written(test_file());
  auto replace = [&](const std::string& from, const std::string& to) {
    std::string s = good;
    const auto at = s.find(from);
    BOOST_TEST_REQUIRE(at != std::string::npos);
    return s.replace(at, from.size(), to);
  };
  const std::vector<std::pair<std::string, std::string>> cases{
      {"", "empty"},
      {"# only a comment\n", "empty"},
      {replace("kvcompact-layer-budgets 1", "kvcompact-layer-budgets 2"), "version 2"},
      {replace("kvcompact-layer-budgets 1", "budgets 1"), "not a kvcompact budget file"},
      {replace("layers 3", "layers 0"), "positive integer"},
      {replace("layers 3", "layers 300"), "at most 256"},
      {replace("kv_heads 2\n", ""), "table before"},
      {replace("keep 0.100000 0.250000 0.250000", "keep 0.100000 0.250000"), "2 entries but the file's model has 3 layers"},
      {replace("keep 0.100000 0.250000 0.250000", "keep 0.100000 0.250000 0.250000 0.1"), "4 entries"},
      {replace("keep 0.100000", "keep -0.100000"), "outside (0"},
      {replace("keep 0.100000", "keep 0.000000"), "outside (0"},
      {replace("keep 0.400000", "keep 1.400000"), "outside (0"},
      {replace("keep 0.100000", "keep abc"), "not a number"},
      {replace("keep 0.100000", "keep 0.1x"), "not a number"},
      {replace("spread 0.010000", "spread -0.010000"), "outside [0"},
      {replace("table 0.5", "table 0.2"), "second table"},
      {replace("table 0.5", "table 1.5"), "(0, 1]"},
      {replace("table 0.5\n", "table 0.5\nmethod xkv\n"), "after the first table"},
      {replace("model Test", "method xkv\nmodel Test"), "given twice"},
      {replace("note second note", "notes second note"), "unknown key \"notes\""},
      {replace("table 0.2\n", "table 0.2\ntable 0.3\n"), "no keep line"},
      {good + "table 0.7\n", "no keep line"},
      {replace("table 0.2\n", "keep 0.1 0.1 0.1\ntable 0.2\n"), "before the first table"},
  };
  for (const auto& [text, mentions] : cases) {
    std::istringstream in(text);
    expect_error([&] { (void)kc::budgets::read_layer_budgets(in, "bad.txt"); }, "file", mentions);
    std::istringstream again(text);
    expect_error([&] { (void)kc::budgets::read_layer_budgets(again, "bad.txt"); }, "file", "bad.txt:");
  }
  auto f = test_file();
  f.tables[0].keep.pop_back();
  expect_error([&] { (void)written(f); }, "file", "2 layers");
  f = test_file();
  f.method = "two words";
  expect_error([&] { (void)written(f); }, "file", "one word");
}

// ---- PrefixKV's prefix search ---------------------------------------------------------------------

namespace {

// The search of docs/methods.md 7.3, restated with plain loops (linear counts, no library helpers).
std::vector<double> reference_prefix_search(const std::vector<std::vector<double>>& a, double r, index_t P) {
  const auto L = static_cast<index_t>(a.size()), T = static_cast<index_t>(a[0].size());
  std::vector<std::vector<double>> C;
  for (const auto& row : a) {
    std::vector<double> s = row;
    std::sort(s.rbegin(), s.rend());
    double total = 0;
    for (double x : s) total += x;
    double run = 0;
    std::vector<double> c;
    for (double x : s) c.push_back((run += x) / total);
    C.push_back(c);
  }
  auto forget = [&](index_t l, double p) {
    index_t count = 0;
    for (double c : C[static_cast<std::size_t>(l)]) count += c < p ? 1 : 0;
    return std::max<index_t>(0, T - (1 + count) - P);
  };
  const double target = r * static_cast<double>(L * T);
  double lo = 0, hi = 1, p = 0.5;
  for (int i = 0; i < 64; ++i) {
    p = (lo + hi) / 2;
    double F = 0;
    for (index_t l = 0; l < L; ++l) F += static_cast<double>(forget(l, p));
    if (std::abs(F - target) < 5 && (F > 0 || std::floor(target + 1e-9) == 0)) break;
    if (F < target) hi = p;
    else lo = p;
  }
  double F = 0;
  for (index_t l = 0; l < L; ++l) F += static_cast<double>(forget(l, p));
  std::vector<double> rho(static_cast<std::size_t>(L), 0.0);
  if (F == 0) return rho;
  // scaled, capped at T - P, truncated; then the tokens short of floor(target) one each to the largest
  // remainders (lower layer first among equal ones; layers that forget nothing excluded), in rounds
  std::vector<double> scaled, count;
  double total = 0;
  for (index_t l = 0; l < L; ++l) {
    scaled.push_back(std::min(static_cast<double>(forget(l, p)) * target / F, static_cast<double>(T - P)));
    count.push_back(std::floor(scaled.back()));
    total += count.back();
  }
  const double wanted = std::floor(target + 1e-9);
  std::vector<bool> given(static_cast<std::size_t>(L), false);
  while (total < wanted) {
    index_t best = -1;
    for (index_t l = 0; l < L; ++l) {
      const auto i = static_cast<std::size_t>(l);
      if (given[i] || scaled[i] == 0 || count[i] >= static_cast<double>(T - P)) continue;
      const auto b = static_cast<std::size_t>(best);
      if (best < 0 || scaled[i] - std::floor(scaled[i]) > scaled[b] - std::floor(scaled[b])) best = l;
    }
    if (best < 0) {  // a round is over: start the next one, unless no layer has room
      bool room = false;
      for (index_t l = 0; l < L; ++l) room = room || (scaled[static_cast<std::size_t>(l)] > 0 && count[static_cast<std::size_t>(l)] < static_cast<double>(T - P));
      if (!room) break;
      std::fill(given.begin(), given.end(), false);
      continue;
    }
    given[static_cast<std::size_t>(best)] = true;
    count[static_cast<std::size_t>(best)] += 1;
    total += 1;
  }
  for (index_t l = 0; l < L; ++l) rho[static_cast<std::size_t>(l)] = count[static_cast<std::size_t>(l)] / static_cast<double>(T);
  return rho;
}

// Importance of a layer: a power law whose steepness sets how concentrated the layer is.
std::vector<double> power_law_layer(std::mt19937& rng, index_t tokens, double steepness) {
  std::vector<double> a;
  for (index_t j = 0; j < tokens; ++j) a.push_back(std::pow(static_cast<double>(j + 1), -steepness));
  kvtest::shuffle_portable(a, rng);
  return a;
}

}  // namespace

BOOST_AUTO_TEST_CASE(prefix_search_hand_worked_example) {
  // Two layers of 4 tokens, P = 1. Layer 0 is concentrated (0.7, 0.1, 0.1, 0.1), layer 1 uniform.
  // r = 0.25: target 2 tokens. p = 0.5 forgets 4 - (1 + 0) - 1 = 2 in layer 0 and 4 - (1 + 1) - 1 = 1 in
  // layer 1 (total 3, not within 5? it is: |3 - 2| < 5), so p = 0.5 stops at once; scaled by 2 / 3:
  // f = (1.33, 0.67), truncated to (1, 0): one token short of 2, which goes to the larger remainder
  // (layer 1's 0.67) -> (1, 1), rho = (0.25, 0.25).
  const std::vector<std::vector<double>> a{{0.1, 0.7, 0.1, 0.1}, {1, 1, 1, 1}};
  const auto result = kc::calibration::prefix_search(a, 0.25, 1);
  BOOST_TEST(result.converged);
  BOOST_TEST(result.iterations == 1);
  BOOST_TEST(result.share == 0.5);
  BOOST_TEST(result.evicted == (std::vector<double>{0.25, 0.25}), boost::test_tools::per_element());
}

BOOST_AUTO_TEST_CASE(prefix_search_matches_the_reference_and_meets_the_target) {
  std::mt19937 rng(17);
  int converged = 0;
  for (int trial = 0; trial < 40; ++trial) {
    const index_t L = kvtest::uniform_int(rng, 2, 12), T = kvtest::uniform_int(rng, 64, 400), P = kvtest::uniform_int(rng, 0, 4);
    std::vector<std::vector<double>> a;
    std::vector<double> steepness;
    for (index_t l = 0; l < L; ++l) {
      steepness.push_back(0.2 + 1.8 * (kvtest::uniform_pm1(rng) + 1) / 2);
      a.push_back(power_law_layer(rng, T, steepness.back()));
    }
    const double r = 0.1 + 0.8 * (kvtest::uniform_pm1(rng) + 1) / 2;
    const auto got = kc::calibration::prefix_search(a, r, P);
    const auto want = reference_prefix_search(a, r, P);
    BOOST_TEST(got.evicted == want, boost::test_tools::per_element());
    double mean = 0;
    for (index_t l = 0; l < L; ++l) {
      const double rho = got.evicted[static_cast<std::size_t>(l)];
      BOOST_TEST(rho >= 0.0);
      BOOST_TEST(rho * static_cast<double>(T) <= static_cast<double>(T - P) + 1e-9);
      mean += rho / static_cast<double>(L);
    }
    if (!got.converged) continue;
    ++converged;
    BOOST_TEST(mean <= r + 1e-12, "trial " << trial);
    BOOST_TEST(mean * static_cast<double>(L * T) >= std::floor(r * static_cast<double>(L * T) + 1e-9) - 1e-9, "trial " << trial);  // rounding loses < 1 token in all
    // a more concentrated layer (steeper law) never keeps more than a much flatter one
    for (index_t i = 0; i < L; ++i)
      for (index_t j = 0; j < L; ++j)
        if (steepness[static_cast<std::size_t>(i)] > steepness[static_cast<std::size_t>(j)] + 0.5)
          BOOST_TEST(got.evicted[static_cast<std::size_t>(i)] >= got.evicted[static_cast<std::size_t>(j)], "layers " << i << ", " << j);
  }
  BOOST_TEST(converged >= 30);
}

// Calibration at short prompts (calibrate_budgets --tokens 64 refused its own tables while the search
// truncated each layer's count: up to 1 / T off the target). Random small prompts: every prompt's
// result, and the mean of several (the calibrated table), meet the share, and the total is floor(r L T).
BOOST_AUTO_TEST_CASE(prefix_search_meets_the_share_at_short_prompts) {
  std::mt19937 rng(29);
  int checked = 0;
  for (int trial = 0; trial < 300; ++trial) {
    const index_t L = kvtest::uniform_int(rng, 1, 30), T = kvtest::uniform_int(rng, 4, 128), P = kvtest::uniform_int(rng, 0, 2);
    const double r = 0.05 + 0.9 * (kvtest::uniform_pm1(rng) + 1) / 2;
    if (r * static_cast<double>(T) > static_cast<double>(T - P)) continue;  // the protected tokens leave too few to evict
    std::vector<double> table(static_cast<std::size_t>(L), 0.0);
    const int prompts = 4;
    for (int n = 0; n < prompts; ++n) {
      std::vector<std::vector<double>> a;
      for (index_t l = 0; l < L; ++l) a.push_back(power_law_layer(rng, T, 0.2 + 1.8 * (kvtest::uniform_pm1(rng) + 1) / 2));
      const auto got = kc::calibration::prefix_search(a, r, P);
      double tokens = 0;
      for (index_t l = 0; l < L; ++l) {
        const double count = got.evicted[static_cast<std::size_t>(l)] * static_cast<double>(T);
        BOOST_TEST(std::abs(count - std::round(count)) < 1e-9, "trial " << trial << ": whole tokens");
        BOOST_TEST(count <= static_cast<double>(T - P) + 1e-9, "trial " << trial << ": protected tokens kept");
        tokens += std::round(count);
        table[static_cast<std::size_t>(l)] += got.evicted[static_cast<std::size_t>(l)] / prompts;
      }
      BOOST_TEST(tokens == std::floor(r * static_cast<double>(L * T) + 1e-9), "trial " << trial << " (L " << L << ", T " << T << ", P " << P << ", r " << r << ")");
      BOOST_TEST(kc::calibration::meets_evicted_share(got.evicted, r, T), "trial " << trial);
    }
    double table_tokens = 0;
    for (double x : table) table_tokens += x * static_cast<double>(T);
    BOOST_TEST(std::abs(table_tokens - std::floor(r * static_cast<double>(L * T) + 1e-9)) < 1e-9, "trial " << trial);
    BOOST_TEST(kc::calibration::meets_evicted_share(table, r, T), "trial " << trial << ": the table is accepted");
    ++checked;
  }
  BOOST_TEST(checked >= 250);
}

BOOST_AUTO_TEST_CASE(meets_evicted_share_bounds) {
  using kc::calibration::meets_evicted_share;
  // 2 layers of 10 tokens, r = 0.3: 6 tokens in all meets it, 5 (one short) and 7 (one over) do not
  BOOST_TEST(meets_evicted_share({0.4, 0.2}, 0.3, 10));
  BOOST_TEST(!meets_evicted_share({0.3, 0.2}, 0.3, 10));
  BOOST_TEST(!meets_evicted_share({0.4, 0.3}, 0.3, 10));
  BOOST_TEST(meets_evicted_share({0.3, 0.25}, 0.29, 10));  // 5.5 tokens (a table's mean): between floor(5.8) and 5.8
  BOOST_TEST(!meets_evicted_share({0.2, 0.25}, 0.29, 10));  // 4.5: below floor(5.8)
  BOOST_TEST(!meets_evicted_share({}, 0.3, 10));
}

BOOST_AUTO_TEST_CASE(prefix_search_refuses_bad_input) {
  using kc::calibration::prefix_search;
  const std::vector<std::vector<double>> good{{1, 2, 3}, {3, 2, 1}};
  expect_error([] { (void)prefix_search({}, 0.5, 1); }, "importance");
  expect_error([] { (void)prefix_search({{1, 2, 3}, {1, 2}}, 0.5, 1); }, "importance", "layer 1 has 2 tokens");
  expect_error([] { (void)prefix_search({{1, -2, 3}}, 0.5, 1); }, "importance", "negative");
  expect_error([] { (void)prefix_search({{0, 0, 0}}, 0.5, 1); }, "importance", "zero total");
  expect_error([&] { (void)prefix_search(good, 1.0, 1); }, "evicted_fraction");
  expect_error([&] { (void)prefix_search(good, -0.1, 1); }, "evicted_fraction");
  expect_error([&] { (void)prefix_search(good, 0.5, 3); }, "protected_slots");
}

// ---- XKV's knapsack --------------------------------------------------------------------------------

BOOST_AUTO_TEST_CASE(knapsack_matches_exhaustive_enumeration) {
  std::mt19937 rng(23);
  for (int trial = 0; trial < 60; ++trial) {
    const int L = static_cast<int>(kvtest::uniform_int(rng, 1, 4)), K = static_cast<int>(kvtest::uniform_int(rng, 1, 5));
    std::vector<int> cost;
    for (int k = 0; k < K; ++k) cost.push_back(static_cast<int>(kvtest::uniform_int(rng, 1, 4)));
    std::vector<std::vector<double>> loss(static_cast<std::size_t>(L));
    for (auto& row : loss)  // coarse values so that ties occur
      for (int k = 0; k < K; ++k) row.push_back(std::round(4.0 * (kvtest::uniform_pm1(rng) + 1)) / 4.0);
    const int cheapest = *std::min_element(cost.begin(), cost.end());
    const int budget = L * cheapest + static_cast<int>(kvtest::uniform_int(rng, 0, 6));
    const auto got = kc::calibration::allocate_budget(loss, cost, budget);
    double best = std::numeric_limits<double>::infinity();
    int best_units = -1;
    std::vector<int> choice(static_cast<std::size_t>(L), 0);
    for (;;) {
      double sum = 0;
      int units = 0;
      for (int l = 0; l < L; ++l) {
        sum += loss[static_cast<std::size_t>(l)][static_cast<std::size_t>(choice[static_cast<std::size_t>(l)])];
        units += cost[static_cast<std::size_t>(choice[static_cast<std::size_t>(l)])];
      }
      if (units <= budget && (sum < best || (sum == best && units > best_units))) best = sum, best_units = units;
      int l = 0;
      while (l < L && ++choice[static_cast<std::size_t>(l)] == K) choice[static_cast<std::size_t>(l++)] = 0;
      if (l == L) break;
    }
    BOOST_TEST(got.loss == best, "trial " << trial);
    BOOST_TEST(got.units == best_units, "trial " << trial);
    double sum = 0;
    int units = 0;
    for (int l = 0; l < L; ++l) {
      sum += loss[static_cast<std::size_t>(l)][static_cast<std::size_t>(got.choice[static_cast<std::size_t>(l)])];
      units += cost[static_cast<std::size_t>(got.choice[static_cast<std::size_t>(l)])];
    }
    BOOST_TEST(sum == got.loss);
    BOOST_TEST(units == got.units);
  }
}

BOOST_AUTO_TEST_CASE(knapsack_gives_sensitive_layers_more_and_refuses_bad_input) {
  // XKV's setting: options 0.05..1.00 (cost 1..20 units), loss falling with the kept fraction, layer 1
  // ten times as sensitive as layer 0: at an average of 0.5 layer 1 gets more.
  std::vector<std::vector<double>> loss(2);
  std::vector<int> cost;
  for (int k = 0; k < 20; ++k) {
    cost.push_back(k + 1);
    const double f = 0.05 * (k + 1);
    loss[0].push_back(1.0 - f);
    loss[1].push_back(10.0 * (1.0 - f) * (1.0 - f));
  }
  const auto got = kc::calibration::allocate_budget(loss, cost, 20);
  BOOST_TEST(got.units == 20);
  BOOST_TEST(got.choice[1] > got.choice[0]);
  std::vector<std::vector<double>> noisy{{0.9, 0.5, 0.7, 0.2, 0.3}};
  kc::calibration::make_non_increasing(noisy);
  BOOST_TEST(noisy[0] == (std::vector<double>{0.9, 0.5, 0.5, 0.2, 0.2}), boost::test_tools::per_element());
  using kc::calibration::allocate_budget;
  expect_error([] { (void)allocate_budget({}, {1}, 3); }, "loss");
  expect_error([] { (void)allocate_budget({{1, 2}, {1}}, {1, 2}, 3); }, "loss", "layer 1 has 1 options");
  expect_error([] { (void)allocate_budget({{1, std::nan("")}}, {1, 2}, 3); }, "loss", "NaN");
  expect_error([] { (void)allocate_budget({{1, 2}}, {0, 2}, 3); }, "cost");
  expect_error([] { (void)allocate_budget({{1, 2}, {1, 2}}, {2, 3}, 3); }, "budget_units");
}

// ---- the presets through cpu::session ---------------------------------------------------------------

namespace {

constexpr index_t PS = 2, PL = 3, PH = 2, PG = 3, PCAP = 48, PD = 8;

// Kept positions per head after compress_prefill, for every (s, l, h).
template <class Policy>
std::vector<std::set<std::int32_t>> kept_after_prefill(const Policy& policy, kvtest::random_cache<float> cache, const kvtest::random_window& window) {
  kvtest::run_prefill(policy, cache.view(), kc::attention_shape{PH * PG}, window.view());
  std::vector<std::set<std::int32_t>> kept;
  for (index_t s = 0; s < PS; ++s)
    for (index_t l = 0; l < PL; ++l)
      for (index_t h = 0; h < PH; ++h) {
        std::set<std::int32_t> k;
        for (index_t j = 0; j < cache.length(s, l, h); ++j) k.insert(static_cast<std::int32_t>(cache.position(s, l, h, j)));
        kept.push_back(k);
      }
  return kept;
}

}  // namespace

BOOST_AUTO_TEST_CASE(prefixkv_keeps_the_layer_shared_heaviest_under_each_layers_budget) {
  std::mt19937 rng(31);
  kvtest::fill_options fill;
  fill.min_length = fill.max_length = 40;
  fill.aligned_heads = true;
  for (int trial = 0; trial < 4; ++trial) {
    const auto cache = kvtest::make_random_cache<float>({PS, PL, PH, PCAP, PD}, fill, 100 + static_cast<std::uint32_t>(trial));
    const auto window = kvtest::make_random_window(PS, PL, PH * PG, 40, PD, {39, 39}, 2.0, 200 + static_cast<std::uint32_t>(trial));  // every prompt row
    const std::vector<double> keep{0.2 + 0.1 * trial, 0.5, 0.9 - 0.1 * trial};
    const auto table = kc::budgets::layer_table::fractions(keep);
    const auto kept = kept_after_prefill(kc::policies::prefixkv(table), cache, window);
    kvtest::attention_score_spec spec;
    spec.all_heads = true;  // mean over every query head of the layer
    for (index_t s = 0; s < PS; ++s)
      for (index_t l = 0; l < PL; ++l) {
        const auto scores = kvtest::prefill_attention_scores(cache, window, s, l, PH * PG, kvtest::default_scale(PD), spec);
        const index_t budget = std::max<index_t>(2, static_cast<index_t>(std::floor(static_cast<float>(keep[static_cast<std::size_t>(l)]) * 40.0 + 0.5)));
        // reference: sink 0 and the last token 39, then the heaviest of positions 1..38 (ties: lower position)
        std::vector<index_t> candidates(38);
        std::iota(candidates.begin(), candidates.end(), 1);
        const auto& sc = scores[0];
        std::stable_sort(candidates.begin(), candidates.end(), [&](index_t a, index_t b) { return sc[static_cast<std::size_t>(a)] > sc[static_cast<std::size_t>(b)]; });
        std::set<std::int32_t> want{0, 39};
        for (index_t i = 0; i + 2 < budget; ++i) want.insert(static_cast<std::int32_t>(candidates[static_cast<std::size_t>(i)]));
        const std::size_t boundary = static_cast<std::size_t>(budget - 2);  // near-ties at the cut may flip in fp32
        const bool near_tie = boundary < candidates.size() && boundary > 0 &&
                              kvtest::close(sc[static_cast<std::size_t>(candidates[boundary - 1])], sc[static_cast<std::size_t>(candidates[boundary])], 1e-5, 0);
        for (index_t h = 0; h < PH; ++h) {
          const auto& got = kept[static_cast<std::size_t>((s * PL + l) * PH + h)];
          BOOST_TEST(got.size() == static_cast<std::size_t>(budget), "s " << s << " l " << l << " h " << h);
          if (!near_tie) BOOST_TEST((got == want), "s " << s << " l " << l << " h " << h);
          BOOST_TEST((got == kept[static_cast<std::size_t>((s * PL + l) * PH)]), "KV heads of a layer keep the same tokens");
        }
      }
  }
}

BOOST_AUTO_TEST_CASE(xkv_equals_snapkv_run_layer_by_layer_with_the_tables_budgets) {
  kvtest::fill_options fill;
  fill.min_length = 30;
  fill.max_length = 44;
  const auto cache = kvtest::make_random_cache<float>({PS, PL, PH, PCAP, PD}, fill, 41);
  std::vector<index_t> last(PS, 0);
  for (index_t s = 0; s < PS; ++s)
    for (index_t l = 0; l < PL; ++l)
      for (index_t h = 0; h < PH; ++h) last[static_cast<std::size_t>(s)] = std::max(last[static_cast<std::size_t>(s)], cache.length(s, l, h) - 1);
  const auto rows = kvtest::make_random_window(PS, PL, PH * PG, 6, PD, last, 2.0, 43);
  const std::vector<double> keep{0.15, 0.6, 0.35};
  const auto got = kept_after_prefill(kc::policies::xkv(kc::budgets::layer_table::fractions(keep), 6, 3), cache, rows);
  for (index_t l = 0; l < PL; ++l)
    for (index_t s = 0; s < PS; ++s)
      for (index_t h = 0; h < PH; ++h) {
        const index_t n = cache.length(s, l, h);
        const index_t budget = std::max<index_t>(6, static_cast<index_t>(std::floor(static_cast<float>(keep[static_cast<std::size_t>(l)]) * static_cast<double>(n) + 0.5)));
        const auto want = kept_after_prefill(kc::policies::snapkv(budget, 6, 3), cache, rows);
        const std::size_t head = static_cast<std::size_t>((s * PL + l) * PH + h);
        BOOST_TEST((got[head] == want[head]), "s " << s << " l " << l << " h " << h);
        BOOST_TEST(got[head].size() == static_cast<std::size_t>(std::min(budget, n)));
      }
}
