// SPDX-License-Identifier: Apache-2.0
// Prefill compaction properties through cpu::session for every preset in policies::preset_names:
// the method's budget rule, protected sinks / recent tokens kept, kept K/V bit-identical to the original
// entry at the same position (merging presets: every entry that cannot have been merged), kept positions a
// duplicate-free subset of the original ones in ascending order, lengths per head returned; and fp32,
// fp16 and bf16 storage give identical keep-sets when the keys are the same numbers in all three types.
#include "support/custom_layout.hpp"
#include "support/reference.hpp"

#include <kvcompact/kvcompact.hpp>

#include <boost/test/unit_test.hpp>

#include <algorithm>
#include <cmath>
#include <map>
#include <set>
#include <string>
#include <vector>

namespace kc = kvcompact;
using kc::index_t;

namespace {

constexpr index_t S = 2, L = 4, H = 2, G = 4, CAP = 72, D = 16, ROWS = 8;
constexpr index_t BUDGET = 24, WINDOW = 8, SINKS = 4, LAYER_GROUP = 2;
constexpr index_t prompt_length(index_t s) { return s == 0 ? 64 : 56; }

// Keys and values are multiples of 1/64 in [-2, 2): exactly representable in fp32, fp16 and bf16
// (at most 8 significant bits), so all three storage types hold the same numbers.
kvtest::random_cache<float> exact_cache(std::uint32_t seed) {
  kvtest::fill_options fill;
  fill.min_length = fill.max_length = prompt_length(0);
  auto c = kvtest::make_random_cache<float>({S, L, H, CAP, D}, fill, seed);
  kvtest::round_to_exact_values(c);
  for (index_t l = 0; l < L; ++l)
    for (index_t h = 0; h < H; ++h) c.lengths[static_cast<std::size_t>(c.head_index(1, l, h))] = static_cast<std::int32_t>(prompt_length(1));
  return c;
}

// Independent budget schedules (docs/methods.md 6.5 PyramidKV, 4.4 WindowKV group pyramid).
index_t pyramid_budget(index_t C, index_t w, index_t layer, index_t layers, index_t T) {
  if (T < C) return T;
  const index_t c = C - w;
  index_t min_n = c / 20, max_n = 2 * c - min_n;
  if (max_n >= T - w) max_n = T - w, min_n = 2 * c - max_n;
  if (T < 2 * c) return c + w;
  return max_n - layer * ((max_n - min_n) / (layers - 1)) + w;
}
index_t windowkv_review_budget(index_t C, index_t group, index_t layer, index_t layers) {
  const index_t groups = layers / group, last = C * group / 14, first = 2 * C - last;
  const index_t g = layer / group;
  return g == groups - 1 ? last : first - g * ((first - last) / (groups - 1));
}

struct head_result {
  std::vector<index_t> positions;  // slot order
};

// Kept positions of every head of a compacted cache, [s][l][h] -> positions in slot order.
template <class T>
std::vector<std::vector<index_t>> kept_positions(const kvtest::random_cache<T>& c) {
  std::vector<std::vector<index_t>> out;
  for (index_t s = 0; s < S; ++s)
    for (index_t l = 0; l < L; ++l)
      for (index_t h = 0; h < H; ++h) {
        std::vector<index_t> p;
        for (index_t j = 0; j < c.length(s, l, h); ++j) p.push_back(c.position(s, l, h, j));
        out.push_back(p);
      }
  return out;
}

// Checks every property for one preset and one storage type; returns the keep-sets.
template <class T, class Policy>
std::vector<std::vector<index_t>> check_preset(const std::string& name, const Policy& policy, const kvtest::random_cache<float>& exact,
                                               const kvtest::random_window& window) {
  const kvtest::random_cache<T> original = kvtest::convert_cache<T>(exact);
  kvtest::random_cache<T> c = original;
  kvtest::run_prefill(policy, c.view(), kc::attention_shape{G}, window.view());
  const auto kept = kept_positions(c);
  std::size_t head = 0;
  std::map<std::pair<index_t, index_t>, std::set<index_t>> windowkv_sets;  // (s, layer group) -> kept review positions
  for (index_t s = 0; s < S; ++s)
    for (index_t l = 0; l < L; ++l)
      for (index_t h = 0; h < H; ++h, ++head) {
        BOOST_TEST_CONTEXT(name << " type " << sizeof(T) << " s " << s << " l " << l << " h " << h) {
          const index_t T0 = prompt_length(s), n = c.length(s, l, h);
          const auto& pos = kept[head];
          // positions: subset of [0, T0), strictly ascending (so unique), one per valid slot
          BOOST_TEST(static_cast<index_t>(pos.size()) == n);
          BOOST_TEST(std::is_sorted(pos.begin(), pos.end()));
          BOOST_TEST((std::adjacent_find(pos.begin(), pos.end()) == pos.end()));
          BOOST_TEST((pos.empty() || (pos.front() >= 0 && pos.back() < T0)));
          const std::set<index_t> keep(pos.begin(), pos.end());
          auto kept_range = [&](index_t first, index_t last) {  // every position in [first, last) kept
            for (index_t p = std::max<index_t>(first, 0); p < last; ++p)
              if (!keep.count(p)) return false;
            return true;
          };
          // the method's budget rule and protected tokens
          if (name == "streaming_llm") {
            BOOST_TEST(n == BUDGET);
            BOOST_TEST(kept_range(0, SINKS));
            BOOST_TEST(kept_range(T0 - (BUDGET - SINKS), T0));
          } else if (name == "h2o" || name == "snapkv" || name == "corm_budgeted" || name == "bounded_memory") {
            if (name == "corm_budgeted") BOOST_TEST((n >= WINDOW && n <= BUDGET));
            else BOOST_TEST(n == BUDGET);
            BOOST_TEST(kept_range(T0 - WINDOW, T0));
          } else if (name == "tova" || name == "knorm") {
            BOOST_TEST(n == BUDGET);
          } else if (name == "cam") {
            BOOST_TEST(n == BUDGET);
            BOOST_TEST(kept_range(0, SINKS));
            BOOST_TEST(kept_range(T0 - (BUDGET - SINKS), T0));
          } else if (name == "pyramidkv") {
            BOOST_TEST(n == std::min(T0, pyramid_budget(BUDGET, WINDOW, l, L, T0)));
            BOOST_TEST(kept_range(T0 - WINDOW, T0));
          } else if (name == "adakv") {
            BOOST_TEST(kept_range(T0 - WINDOW, T0));
            BOOST_TEST(n >= WINDOW + 3);  // every head gets at least round(floor((B - w) * 0.2)) = 3
          } else if (name == "corm") {
            BOOST_TEST(kept_range(0, SINKS));
            BOOST_TEST(kept_range(T0 - WINDOW, T0));
            BOOST_TEST(n <= T0);
          } else if (name == "windowkv") {
            const index_t review = T0 - WINDOW, b = windowkv_review_budget(BUDGET - WINDOW, LAYER_GROUP, l, L), omega = 8;
            BOOST_TEST(kept_range(review, T0));
            const index_t kept_review = n - WINDOW;
            BOOST_TEST(kept_review <= b + omega - 1);
            std::set<index_t> reviewed;
            for (index_t p : pos)
              if (p < review) reviewed.insert(p);
            for (index_t k = 0; k * omega < review; ++k) {  // whole grid windows only
              index_t in = 0;
              for (index_t p = k * omega; p < std::min((k + 1) * omega, review); ++p) in += keep.count(p);
              BOOST_TEST((in == 0 || in == std::min((k + 1) * omega, review) - k * omega));
            }
            auto [it, fresh] = windowkv_sets.try_emplace({s, l / LAYER_GROUP}, reviewed);
            if (!fresh) BOOST_TEST((it->second == reviewed));  // the group shares its leader's windows
          } else if (name == "kvmerger") {  // budgeted: every layer, the protected recent share capped to the budget
            const double fraction = static_cast<double>(BUDGET) / 64.0;
            const index_t limit = static_cast<index_t>(fraction * static_cast<double>(T0) + 0.5);
            const index_t recent = std::min(limit, static_cast<index_t>(kc::policies::kvmerger_protection(fraction).recent * static_cast<double>(T0)));
            BOOST_TEST(n <= limit);
            BOOST_TEST(kept_range(T0 - recent, T0));
          } else if (name == "elastic_cache") {  // T - floor(r T) anchors, r the evicted share; the first token and the last kept
            const double evicted = 1.0 - static_cast<double>(BUDGET) / 64.0;
            BOOST_TEST(n == T0 - static_cast<index_t>(std::floor(evicted * static_cast<double>(T0))));
            BOOST_TEST((keep.count(0) == 1 && keep.count(T0 - 1) == 1));
          } else {
            BOOST_ERROR("preset " << name << " has no budget rule in this test");
          }
          // K/V of kept entries: bit-identical to the original entry at the same position unless merged
          std::set<index_t> may_change;  // positions whose values a merger may have rewritten
          if (name == "bounded_memory") {  // evicted entries join their nearest kept entry, whatever its position
            if (n < T0) may_change = keep;
          } else if (name == "kvmerger" || name == "elastic_cache") {  // merged into an adjacent kept entry
            for (index_t p : pos)
              if ((p > 0 && !keep.count(p - 1)) || (p + 1 < T0 && !keep.count(p + 1))) may_change.insert(p);
          } else if (name == "cam") {
            // CaM (M = 32): the first 32 kept positions after any evicted one
            for (index_t i = 0; i < static_cast<index_t>(pos.size()); ++i) {
              const index_t evicted_before = pos[static_cast<std::size_t>(i)] - i;  // evicted positions smaller than this one
              if (evicted_before > 0) {
                index_t first_after = 0;  // index in pos of the first kept position after the first evicted
                while (pos[static_cast<std::size_t>(first_after)] == first_after) ++first_after;
                if (i - first_after < 32) may_change.insert(pos[static_cast<std::size_t>(i)]);
              }
            }
          }
          int bad = 0;
          for (index_t j = 0; j < n; ++j) {
            const index_t p = pos[static_cast<std::size_t>(j)];
            const index_t src = p;  // original slots are in position order
            for (index_t d = 0; d < D; ++d) {
              const auto a = static_cast<std::size_t>(c.element(s, l, h, j, d)), b = static_cast<std::size_t>(original.element(s, l, h, src, d));
              if (name != "cam" && may_change.count(p)) continue;  // merged key and value
              bad += kvtest::element_bits(c.keys[a]) != kvtest::element_bits(original.keys[b]);  // CaM never touches keys
              if (!may_change.count(p)) bad += kvtest::element_bits(c.values[a]) != kvtest::element_bits(original.values[b]);
            }
          }
          BOOST_TEST(bad == 0);
        }
      }
  if (name == "adakv") {  // head-wise allocation: the layer keeps about H * (B - w) non-window slots in all
    for (index_t s = 0; s < S; ++s)
      for (index_t l = 0; l < L; ++l) {
        index_t total = 0;
        for (index_t h = 0; h < H; ++h) total += c.length(s, l, h) - WINDOW;
        // sum of round(cnt (1 - 0.2) + floor(16 * 0.2)) with sum cnt = H * 16: H * (12.8 + 3) +- H / 2
        BOOST_TEST((std::abs(static_cast<double>(total) - H * (16 * 0.8 + 3)) <= H / 2.0 + 1e-9), "adakv s " << s << " l " << l << " total " << total);
      }
  }
  if (name == "tova" || name == "windowkv" || name == "elastic_cache")  // scores shared by all KV heads: every head keeps the same positions
    for (std::size_t i = 0; i + 1 < kept.size(); i += H) BOOST_TEST((kept[i] == kept[i + 1]));
  return kept;
}

}  // namespace

BOOST_AUTO_TEST_CASE(every_preset_respects_its_rules_and_storage_type_does_not_change_keep_sets) {
  for (std::uint32_t seed : {1u, 2u}) {
    const auto exact = exact_cache(seed);
    const auto window = kvtest::make_random_window(S, L, G, ROWS, D, {prompt_length(0) - 1, prompt_length(1) - 1}, 3.0, seed + 100);
    kc::policies::preset_options options{BUDGET, prompt_length(0)};
    options.window = WINDOW;
    options.sinks = SINKS;
    options.layer_group = LAYER_GROUP;
    int compressed_heads = 0;
    for (std::string_view name_view : kc::policies::preset_names) {
      const std::string name(name_view);
      kc::policies::with_preset(name, options, [&](auto policy) {
        const auto fp32 = check_preset<float>(name, policy, exact, window);
        const auto fp16 = check_preset<kc::half_t>(name, policy, exact, window);
        const auto bf16 = check_preset<kc::bfloat16_t>(name, policy, exact, window);
        BOOST_TEST((fp32 == fp16), name << ": fp16 keep-sets differ from fp32");
        BOOST_TEST((fp32 == bf16), name << ": bf16 keep-sets differ from fp32");
        for (std::size_t i = 0; i < fp32.size(); ++i) compressed_heads += static_cast<index_t>(fp32[i].size()) < prompt_length(static_cast<index_t>(i) / (L * H));
        return 0;
      });
    }
    BOOST_TEST(compressed_heads > 12 * 16 / 2);  // most presets compressed most heads (the test saw evictions)
  }
}

// Slots need not be in position order before compaction (decode reuses freed slots): compaction keeps
// the relative slot order of the kept entries, copies them bit-identically, and loses no position.
BOOST_AUTO_TEST_CASE(compaction_keeps_relative_slot_order_for_shuffled_slots) {
  kvtest::fill_options fill;
  fill.min_length = 20;
  fill.max_length = 40;
  fill.tokens = 60;  // sparse positions (an earlier compression happened)
  fill.shuffle_slots = true;
  const auto original = kvtest::make_random_cache<float>({2, 3, 2, 48, 8}, fill, 77);
  for (std::string name : {"knorm", "streaming_llm"}) {
    auto c = original;
    kc::policies::preset_options options{16, 60};
    options.window = 4;
    kc::policies::with_preset(name, options, [&](auto policy) {
      kvtest::run_prefill(policy, c.view(), kc::attention_shape{2}, {});
      return 0;
    });
    int bad = 0;
    for (index_t s = 0; s < 2; ++s)
      for (index_t l = 0; l < 3; ++l)
        for (index_t h = 0; h < 2; ++h) {
          const index_t n0 = original.length(s, l, h), n = c.length(s, l, h);
          BOOST_TEST(n == std::min<index_t>(n0, 16));
          std::map<index_t, index_t> slot_of;  // original position -> original slot
          for (index_t j = 0; j < n0; ++j) slot_of[original.position(s, l, h, j)] = j;
          index_t previous_slot = -1;
          for (index_t j = 0; j < n; ++j) {
            const auto it = slot_of.find(c.position(s, l, h, j));
            if (it == slot_of.end()) {
              ++bad;
              continue;
            }
            bad += it->second <= previous_slot;  // relative slot order kept (also: no duplicates)
            previous_slot = it->second;
            for (index_t d = 0; d < 8; ++d) {
              bad += kvtest::element_bits(c.keys[static_cast<std::size_t>(c.element(s, l, h, j, d))]) !=
                     kvtest::element_bits(original.keys[static_cast<std::size_t>(original.element(s, l, h, it->second, d))]);
              bad += kvtest::element_bits(c.values[static_cast<std::size_t>(c.element(s, l, h, j, d))]) !=
                     kvtest::element_bits(original.values[static_cast<std::size_t>(original.element(s, l, h, it->second, d))]);
            }
          }
          if (name == "streaming_llm" && n0 > 16) {  // sinks are the positions 0..3 (P6), the newest fill the budget
            std::vector<index_t> all, got, want;
            for (auto& [p, slot] : slot_of) all.push_back(p);
            for (index_t j = 0; j < n; ++j) got.push_back(c.position(s, l, h, j));
            std::sort(got.begin(), got.end());
            for (index_t p : all)
              if (p < 4) want.push_back(p);
            want.insert(want.end(), all.end() - (16 - static_cast<index_t>(want.size())), all.end());
            BOOST_TEST((got == want));
          }
        }
    BOOST_TEST(bad == 0, name);
  }
}
