// SPDX-License-Identifier: Apache-2.0
// cpu::session decode path: attend() output and scorer-state updates against the double references of
// test/support/reference.hpp, observe() == attend(), CORM's O(1) last_hit formulation against the
// windowed-OR definition (docs/methods.md 1.4-1.6), decode-time eviction of the presets (budget,
// protected tokens, victim choice, bit-exact survivors), and the error paths (NaN scores, full cache).
//
// Tolerances (fp32 library vs double reference):
//  - attention output: values are in [-1, 1) and the output is a convex combination, so its fp32
//    error is a few ulps per term over <= 72 slots: we accept 2e-6 + 1e-5 * |ref|;
//  - scorer states: probabilities carry ~1e-6 relative error; an H2O accumulator sums <= 48 of
//    them, so we accept 1e-5 * |ref| + 1e-6.
//  - CORM threshold decisions must match exactly; the test requires that no a * n lies within a
//    relative 1e-5 of alpha (checked on the reference data), so fp32 rounding cannot flip one.
// Victim predictions require the two lowest reference scores to be separated by more than the
// tolerance; steps where they are not are counted and must stay rare.
#include <boost/test/unit_test.hpp>

#include <kvcompact/kvcompact.hpp>

#include "support/reference.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <map>
#include <set>
#include <string>
#include <vector>

namespace {

using kvcompact::index_t;
using kvtest::reduce;
using strided = kvcompact::layouts::strided;

template <class Policy, class T>
using session_t = kvcompact::cpu::session<Policy, T, strided>;

/// Sorted positions held by a head.
template <class T>
std::vector<index_t> positions_of(const kvtest::random_cache<T>& c, index_t s, index_t l, index_t h) {
  std::vector<index_t> p;
  for (index_t j = 0; j < c.length(s, l, h); ++j) p.push_back(c.position(s, l, h, j));
  std::sort(p.begin(), p.end());
  return p;
}

/// The K/V written for every (sequence, layer, head, position), to check survivors bit for bit.
template <class T>
struct token_store {
  std::map<std::vector<index_t>, std::pair<std::vector<T>, std::vector<T>>> entries;

  void record_cache(const kvtest::random_cache<T>& c) {
    for (index_t s = 0; s < c.shape.sequences; ++s)
      for (index_t l = 0; l < c.shape.layers; ++l)
        for (index_t h = 0; h < c.shape.kv_heads; ++h)
          for (index_t j = 0; j < c.length(s, l, h); ++j) {
            auto& e = entries[{s, l, h, c.position(s, l, h, j)}];
            for (index_t d = 0; d < c.shape.head_dim; ++d) {
              e.first.push_back(c.keys[static_cast<std::size_t>(c.element(s, l, h, j, d))]);
              e.second.push_back(c.values[static_cast<std::size_t>(c.element(s, l, h, j, d))]);
            }
          }
  }
  void record(index_t s, index_t l, index_t h, index_t pos, const T* k, const T* v, index_t dims) {
    entries[{s, l, h, pos}] = {std::vector<T>(k, k + dims), std::vector<T>(v, v + dims)};
  }
  /// Every valid slot holds exactly the K (and V, when check_values) appended at its position.
  void check(const kvtest::random_cache<T>& c, bool check_values) const {
    index_t bad = 0;
    for (index_t s = 0; s < c.shape.sequences; ++s)
      for (index_t l = 0; l < c.shape.layers; ++l)
        for (index_t h = 0; h < c.shape.kv_heads; ++h)
          for (index_t j = 0; j < c.length(s, l, h); ++j) {
            const auto it = entries.find({s, l, h, c.position(s, l, h, j)});
            if (it == entries.end()) {
              ++bad;
              continue;
            }
            for (index_t d = 0; d < c.shape.head_dim; ++d) {
              const T k = c.keys[static_cast<std::size_t>(c.element(s, l, h, j, d))];
              const T v = c.values[static_cast<std::size_t>(c.element(s, l, h, j, d))];
              if (std::memcmp(&k, &it->second.first[static_cast<std::size_t>(d)], sizeof(T)) != 0 ||
                  (check_values && std::memcmp(&v, &it->second.second[static_cast<std::size_t>(d)], sizeof(T)) != 0)) {
                ++bad;
                break;
              }
            }
          }
    BOOST_TEST(bad == 0, bad << " slots do not hold the K/V appended at their position");
  }
};

/// One new token: per-head keys and values in storage type (same for the session and the store).
template <class T>
struct new_token {
  std::vector<T> keys, values;
};
template <class T>
new_token<T> make_token(index_t kv_heads, index_t dims, std::mt19937& rng) {
  new_token<T> t;
  for (index_t i = 0; i < kv_heads * dims; ++i) t.keys.push_back(kvtest::from_float_test<T>(static_cast<float>(kvtest::uniform_pm1(rng))));
  for (index_t i = 0; i < kv_heads * dims; ++i) t.values.push_back(kvtest::from_float_test<T>(static_cast<float>(kvtest::uniform_pm1(rng))));
  return t;
}

constexpr double state_rel = 1e-5;
constexpr double state_abs = 1e-6;

// -----------------------------------------------------------------------------------------------
// Generic decode driver for the score-based presets
// -----------------------------------------------------------------------------------------------

enum class method { h2o, tova, knorm, streaming_llm, cam };

const char* name(method m) {
  switch (m) {
    case method::h2o: return "h2o";
    case method::tova: return "tova";
    case method::knorm: return "knorm";
    case method::streaming_llm: return "streaming_llm";
    case method::cam: return "cam";
  }
  return "?";
}

struct decode_config {
  method m = method::h2o;
  index_t group = 2;       // GQA group size (2 KV heads)
  index_t head_dim = 16;
  index_t prompt = 32;     // dense prompt 0..prompt-1
  index_t budget = 20;     // decode budget (slots per head)
  index_t sinks = 4;       // streaming_llm sinks / cam start
  index_t recent = 6;      // h2o recent
  index_t window = 8;      // prefill observation window rows (attention scorers)
  index_t steps = 40;
  std::uint32_t seed = 1;
};

/// Reference scorer state per (s, l, h) and position, and the protection rule, for a method.
struct reference_states {
  std::vector<std::map<index_t, double>> state;  // [(s * L + l) * H + h][position]
};

/// Runs prefill + `steps` decode steps (append then attend for every layer) of a preset and checks,
/// after every append: budget, protected tokens, unique positions, the victim against the reference
/// scores, bit-exact survivors; after every attend: every slot's state against the reference.
template <class T = float, class Policy>
void run_decode(const Policy& policy, const decode_config& cfg) {
  const index_t L = 2, H = 2, S = 1, Hq = H * cfg.group, D = cfg.head_dim;
  const index_t capacity = cfg.prompt + cfg.steps;
  kvtest::fill_options fill;
  fill.min_length = fill.max_length = cfg.prompt;
  auto cache = kvtest::make_random_cache<T>({S, L, H, capacity, D}, fill, cfg.seed);
  token_store<T> store;
  store.record_cache(cache);
  const double scale = kvtest::default_scale(D);
  const bool attention = Policy::needs_attention;
  const bool shared = Policy::shares_scores_across_kv_heads;
  const index_t rows = cfg.m == method::tova ? 1 : cfg.window;
  const auto window = kvtest::make_random_window(S, L, Hq, rows, D, {cfg.prompt - 1}, 2.0, cfg.seed + 1000);

  // Reference state after prefill, for every prompt position (computed before compaction).
  reference_states ref;
  ref.state.resize(static_cast<std::size_t>(S * L * H));
  for (index_t l = 0; l < L; ++l) {
    kvtest::attention_score_spec spec;
    spec.all_heads = shared;
    const auto scores = attention ? kvtest::prefill_attention_scores(cache, window, 0, l, Hq, scale, spec) : std::vector<std::vector<double>>{};
    for (index_t h = 0; h < H; ++h)
      for (index_t j = 0; j < cache.length(0, l, h); ++j) {
        double v = 0.0;
        if (attention) v = scores[static_cast<std::size_t>(h)][static_cast<std::size_t>(j)];
        else if (cfg.m == method::knorm) v = kvtest::key_norm_score(cache, 0, l, h, j);
        else v = kvtest::recency_score(cache, 0, l, h, j);
        ref.state[static_cast<std::size_t>(l * H + h)][cache.position(0, l, h, j)] = v;
      }
  }

  const kvcompact::attention_shape shape{Hq};
  auto memory = kvtest::session_memory::for_session<session_t<Policy, T>>(cache.layout, shape);
  session_t<Policy, T> session(policy, cache.view(), shape, memory.state(), memory.workspace());
  session.compress_prefill(attention ? window.view() : kvcompact::query_window{});

  const index_t sinks = cfg.m == method::streaming_llm || cfg.m == method::cam ? cfg.sinks : 0;
  const index_t recent = cfg.m == method::h2o ? cfg.recent : cfg.m == method::cam ? cfg.budget - cfg.sinks : 0;
  const index_t prefill_len = std::min(cfg.prompt, cfg.budget);

  auto check_states = [&](const char* when, index_t t) {
    index_t bad = 0;
    for (index_t l = 0; l < L; ++l)
      for (index_t h = 0; h < H; ++h)
        for (index_t j = 0; j < cache.length(0, l, h); ++j) {
          const double lib = session.slot_state(0, l, h, j);
          const double r = ref.state[static_cast<std::size_t>(l * H + h)].at(cache.position(0, l, h, j));
          if (!kvtest::close(lib, r, state_rel, state_abs) && bad++ < 3)
            BOOST_ERROR(name(cfg.m) << " state " << when << " t=" << t << " l=" << l << " h=" << h << " position=" << cache.position(0, l, h, j)
                                    << ": library " << lib << " reference " << r);
        }
    BOOST_TEST(bad == 0);
  };
  for (index_t l = 0; l < L; ++l)
    for (index_t h = 0; h < H; ++h) BOOST_TEST(cache.length(0, l, h) == prefill_len);
  check_states("after prefill", cfg.prompt - 1);

  std::mt19937 rng(cfg.seed + 2000);
  index_t ambiguous = 0, predicted = 0;
  for (index_t t = cfg.prompt; t < cfg.prompt + cfg.steps; ++t) {
    for (index_t l = 0; l < L; ++l) {
      // Reference victim: lowest reference score among unprotected slots (ties: higher position evicted).
      std::vector<std::vector<index_t>> expected(static_cast<std::size_t>(H));
      std::vector<bool> decided(static_cast<std::size_t>(H), true);
      for (index_t h = 0; h < H; ++h) {
        auto before = positions_of(cache, 0, l, h);
        const auto& st = ref.state[static_cast<std::size_t>(l * H + h)];
        if (static_cast<index_t>(before.size()) + 1 > cfg.budget) {
          std::vector<std::pair<double, index_t>> cand;
          for (index_t p : before)
            if (!(p < sinks || p > t - recent)) cand.push_back({st.at(p), p});
          std::sort(cand.begin(), cand.end(), [](auto a, auto b) { return a.first < b.first || (a.first == b.first && a.second > b.second); });
          BOOST_REQUIRE(!cand.empty());
          if (cand.size() > 1 && !(cand[1].first - cand[0].first > state_rel * std::abs(cand[0].first) + state_abs) &&
              cfg.m != method::streaming_llm && cfg.m != method::cam) {
            decided[static_cast<std::size_t>(h)] = false;
            ++ambiguous;
          }
          before.erase(std::find(before.begin(), before.end(), cand[0].second));
        }
        before.push_back(t);
        expected[static_cast<std::size_t>(h)] = before;
      }
      const auto tok = make_token<T>(H, D, rng);
      session.append(0, l, tok.keys.data(), tok.values.data(), t);
      for (index_t h = 0; h < H; ++h) {
        store.record(0, l, h, t, tok.keys.data() + h * D, tok.values.data() + h * D, D);
        auto& st = ref.state[static_cast<std::size_t>(l * H + h)];
        if (cfg.m == method::knorm) {
          double sum = 0.0;
          for (index_t d = 0; d < D; ++d) sum += kvtest::to_double(tok.keys[static_cast<std::size_t>(h * D + d)]) * kvtest::to_double(tok.keys[static_cast<std::size_t>(h * D + d)]);
          st[t] = -std::sqrt(sum);
        } else {
          st[t] = cfg.m == method::streaming_llm ? static_cast<double>(t) : 0.0;
        }
        const auto after = positions_of(cache, 0, l, h);
        BOOST_TEST_CONTEXT(name(cfg.m) << " t=" << t << " l=" << l << " h=" << h) {
          BOOST_TEST(static_cast<index_t>(after.size()) <= cfg.budget);
          BOOST_TEST(static_cast<index_t>(after.size()) == std::min(cfg.budget, prefill_len + (t - cfg.prompt + 1)));
          BOOST_TEST((std::adjacent_find(after.begin(), after.end()) == after.end()), "duplicate position");
          BOOST_TEST(std::binary_search(after.begin(), after.end(), t));
          for (index_t p = 0; p < sinks; ++p) BOOST_TEST(std::binary_search(after.begin(), after.end(), p), "sink " << p << " lost");
          for (index_t p = std::max<index_t>(0, t - recent + 1); p <= t; ++p)
            BOOST_TEST(std::binary_search(after.begin(), after.end(), p), "recent " << p << " lost");
          if (decided[static_cast<std::size_t>(h)]) {
            ++predicted;
            std::vector<index_t> e = expected[static_cast<std::size_t>(h)];
            std::sort(e.begin(), e.end());
            BOOST_TEST(after == e, boost::test_tools::per_element());
          }
          if (cfg.m == method::streaming_llm || cfg.m == method::cam) {
            std::vector<index_t> exact;
            for (index_t p = 0; p < sinks; ++p) exact.push_back(p);
            for (index_t p = t - (cfg.budget - sinks) + 1; p <= t; ++p) exact.push_back(p);
            BOOST_TEST(after == exact, boost::test_tools::per_element());
          }
        }
      }
    }
    store.check(cache, cfg.m != method::cam);
    // attend for every layer; reference state update on the cache as the library sees it.
    for (index_t l = 0; l < L; ++l) {
      const auto q = kvtest::random_vector(Hq * D, 2.0, rng);
      if (attention) {
        for (index_t h = 0; h < H; ++h) {
          const auto p = kvtest::decode_reduced_probabilities(cache, 0, l, h, q.data(), Hq, t, scale, reduce::mean, shared);
          auto& st = ref.state[static_cast<std::size_t>(l * H + h)];
          for (index_t j = 0; j < cache.length(0, l, h); ++j) {
            double& v = st.at(cache.position(0, l, h, j));
            v = cfg.m == method::tova ? p[static_cast<std::size_t>(j)] : v + p[static_cast<std::size_t>(j)];
          }
        }
      }
      std::vector<float> out(static_cast<std::size_t>(Hq * D));
      session.attend(0, l, q.data(), t, out.data());
    }
    check_states("after attend", t);
  }
  BOOST_TEST(ambiguous <= 2);
  BOOST_TEST(predicted > 0);
}

}  // namespace

// -----------------------------------------------------------------------------------------------

BOOST_AUTO_TEST_SUITE(attend_output)

/// Shape of one check_attend_output() run: capacity (and the token range of the positions), GQA groups, head dims.
struct attend_shape {
  index_t capacity = 24, tokens = 40, min_length = 10;
  std::vector<index_t> groups{1, 2, 4}, dims{16, 64};
};

template <class T>
void check_attend_output(std::uint32_t seed, const attend_shape& shape_set = {}) {
  for (index_t group : shape_set.groups)
    for (index_t d : shape_set.dims)
      for (float custom_scale : {0.0f, 0.3f}) {
        BOOST_TEST_CONTEXT("G=" << group << " d=" << d << " scale=" << custom_scale << " capacity=" << shape_set.capacity) {
          ++seed;
          kvtest::fill_options fill;
          fill.min_length = shape_set.min_length;
          fill.max_length = shape_set.capacity;
          fill.tokens = shape_set.tokens;
          fill.shuffle_slots = true;
          auto cache = kvtest::make_random_cache<T>({2, 2, 2, shape_set.capacity, d}, fill, seed);
          const index_t Hq = 2 * group;
          const auto policy = kvcompact::policies::h2o(24, 4);
          using P = std::remove_const_t<decltype(policy)>;
          const kvcompact::attention_shape shape{Hq, custom_scale};
          auto memory = kvtest::session_memory::for_session<session_t<P, T>>(cache.layout, shape);
          session_t<P, T> session(policy, cache.view(), shape, memory.state(), memory.workspace());
          const double scale = custom_scale != 0.0f ? static_cast<double>(custom_scale) : kvtest::default_scale(d);
          std::mt19937 rng(seed + 1);
          index_t bad = 0;
          for (index_t s = 0; s < 2; ++s)
            for (index_t l = 0; l < 2; ++l)
              for (index_t position : {shape_set.tokens / 2, shape_set.tokens * 5 / 6, shape_set.tokens - 1}) {  // < last: future slots are masked
                const auto q = kvtest::random_vector(Hq * d, 2.0, rng);
                std::vector<float> out(static_cast<std::size_t>(Hq * d), std::numeric_limits<float>::quiet_NaN());
                session.attend(s, l, q.data(), position, out.data());
                for (index_t g = 0; g < Hq; ++g) {
                  const auto ref = kvtest::attention_output(cache, s, l, g / group, q.data() + g * d, position, scale);
                  for (index_t k = 0; k < d; ++k) {
                    const double lib = out[static_cast<std::size_t>(g * d + k)];
                    if (!kvtest::close(lib, ref[static_cast<std::size_t>(k)], 1e-5, 2e-6) && bad++ < 3)
                      BOOST_ERROR("s=" << s << " l=" << l << " g=" << g << " d=" << k << " position=" << position << ": " << lib << " vs "
                                       << ref[static_cast<std::size_t>(k)]);
                  }
                }
              }
          BOOST_TEST(bad == 0);
        }
      }
}

BOOST_AUTO_TEST_CASE(fp32_storage) { check_attend_output<float>(10); }
BOOST_AUTO_TEST_CASE(fp16_storage) { check_attend_output<kvcompact::half_t>(20); }
BOOST_AUTO_TEST_CASE(bf16_storage) { check_attend_output<kvcompact::bfloat16_t>(30); }
// Several 256-slot blocks, row chunks of 128 dimensions and group sizes off the 4-query-head passes.
BOOST_AUTO_TEST_CASE(long_caches_in_blocks) {
  const attend_shape long_cache{600, 900, 300, {3, 5}, {160}};
  check_attend_output<float>(40, long_cache);
  check_attend_output<kvcompact::half_t>(50, long_cache);
}

BOOST_AUTO_TEST_CASE(slot_scorer_policy_attends_the_same) {
  // A policy without attention scoring (KNorm) runs the same attention.
  kvtest::fill_options fill;
  fill.min_length = fill.max_length = 16;
  auto cache = kvtest::make_random_cache({1, 1, 2, 16, 16}, fill, 41);
  const auto policy = kvcompact::policies::knorm(16);
  using P = std::remove_const_t<decltype(policy)>;
  const kvcompact::attention_shape shape{4};
  auto memory = kvtest::session_memory::for_session<session_t<P, float>>(cache.layout, shape);
  session_t<P, float> session(policy, cache.view(), shape, memory.state(), memory.workspace());
  std::mt19937 rng(42);
  const auto q = kvtest::random_vector(4 * 16, 2.0, rng);
  std::vector<float> out(64);
  session.attend(0, 0, q.data(), 15, out.data());
  for (index_t g = 0; g < 4; ++g) {
    const auto ref = kvtest::attention_output(cache, 0, 0, g / 2, q.data() + g * 16, 15, kvtest::default_scale(16));
    for (index_t k = 0; k < 16; ++k) BOOST_TEST(kvtest::close(out[static_cast<std::size_t>(g * 16 + k)], ref[static_cast<std::size_t>(k)], 1e-5, 2e-6));
  }
}

BOOST_AUTO_TEST_CASE(no_visible_key_gives_zero_output_and_no_state_change) {
  // Every cached position is after the query's: the softmax is empty, the output must be 0 (not NaN)
  // and the H2O accumulators must not move.
  kvtest::fill_options fill;
  fill.min_length = fill.max_length = 8;
  auto cache = kvtest::make_random_cache({1, 1, 1, 8, 16}, fill, 51);
  for (auto& p : cache.positions) p += 10;
  const auto policy = kvcompact::policies::h2o(8, 2);
  using P = std::remove_const_t<decltype(policy)>;
  const kvcompact::attention_shape shape{2};
  auto memory = kvtest::session_memory::for_session<session_t<P, float>>(cache.layout, shape);
  session_t<P, float> session(policy, cache.view(), shape, memory.state(), memory.workspace());
  std::mt19937 rng(52);
  const auto q = kvtest::random_vector(2 * 16, 2.0, rng);
  std::vector<float> out(32, std::numeric_limits<float>::quiet_NaN());
  session.attend(0, 0, q.data(), 5, out.data());
  for (float x : out) BOOST_TEST(x == 0.0f);
  for (index_t j = 0; j < 8; ++j) BOOST_TEST(session.slot_state(0, 0, 0, j) == 0.0f);
}

BOOST_AUTO_TEST_SUITE_END()

// -----------------------------------------------------------------------------------------------

BOOST_AUTO_TEST_SUITE(decode_state_and_eviction)

BOOST_AUTO_TEST_CASE(h2o_accumulates_group_mean_without_eviction) {
  // budget = capacity: nothing is evicted, the state of every slot is its prefill window sum plus the
  // group-mean probability of every decode step.
  for (index_t group : {1, 2, 4}) {
    BOOST_TEST_CONTEXT("G=" << group) {
      decode_config cfg;
      cfg.m = method::h2o;
      cfg.group = group;
      cfg.steps = 24;
      cfg.budget = cfg.prompt + cfg.steps;
      cfg.seed = 100 + static_cast<std::uint32_t>(group);
      run_decode(kvcompact::policies::h2o(cfg.budget, cfg.recent), cfg);
    }
  }
}

BOOST_AUTO_TEST_CASE(blocked_passes_over_long_caches) {
  // The CPU backend works in blocks of 256 slots, strips of at most 32 window rows (all query heads
  // of a group), row chunks of 128 dimensions and passes of 4 query heads: a 560-token prompt, a
  // 40-row window inside it, head_dim 160 and groups of 3 and 5 cross every one of those edges. No
  // eviction (budget = capacity), so every state is checked against the per-slot definition.
  for (method m : {method::h2o, method::tova})
    for (index_t group : {3, 5}) {
      BOOST_TEST_CONTEXT(name(m) << " G=" << group) {
        decode_config cfg;
        cfg.m = m;
        cfg.group = group;
        cfg.head_dim = 160;
        cfg.prompt = 560;
        cfg.window = 40;
        cfg.steps = 4;
        cfg.budget = cfg.prompt + cfg.steps;
        cfg.seed = 700 + static_cast<std::uint32_t>(group);
        if (m == method::h2o) run_decode(kvcompact::policies::h2o(cfg.budget, cfg.recent), cfg);
        else run_decode(kvcompact::policies::tova(cfg.budget), cfg);
      }
    }
}

BOOST_AUTO_TEST_CASE(h2o_evicts_lowest_accumulated_attention) {
  for (index_t group : {1, 4})
    for (index_t d : {16, 64}) {
      BOOST_TEST_CONTEXT("G=" << group << " d=" << d) {
        decode_config cfg;
        cfg.m = method::h2o;
        cfg.group = group;
        cfg.head_dim = d;
        cfg.seed = 200 + static_cast<std::uint32_t>(group * 100 + d);
        run_decode(kvcompact::policies::h2o(cfg.budget, cfg.recent), cfg);
      }
    }
}

BOOST_AUTO_TEST_CASE(tova_state_is_last_all_head_mean) {
  for (index_t group : {1, 2, 4}) {
    BOOST_TEST_CONTEXT("G=" << group) {
      decode_config cfg;
      cfg.m = method::tova;
      cfg.group = group;
      cfg.seed = 300 + static_cast<std::uint32_t>(group);
      run_decode(kvcompact::policies::tova(cfg.budget), cfg);
    }
  }
}

BOOST_AUTO_TEST_CASE(knorm_evicts_largest_key_norm) {
  decode_config cfg;
  cfg.m = method::knorm;
  cfg.seed = 400;
  run_decode(kvcompact::policies::knorm(cfg.budget), cfg);
}

BOOST_AUTO_TEST_CASE(streaming_llm_keeps_exactly_sinks_and_recent) {
  for (index_t sinks : {0, 1, 4}) {
    BOOST_TEST_CONTEXT("sinks=" << sinks) {
      decode_config cfg;
      cfg.m = method::streaming_llm;
      cfg.sinks = sinks;
      cfg.seed = 500 + static_cast<std::uint32_t>(sinks);
      run_decode(kvcompact::policies::streaming_llm(cfg.budget, sinks), cfg);
    }
  }
}

BOOST_AUTO_TEST_CASE(cam_keeps_start_and_recent_and_keys_intact) {
  decode_config cfg;
  cfg.m = method::cam;
  cfg.seed = 600;
  run_decode(kvcompact::policies::cam(cfg.budget, cfg.sinks, 8), cfg);
}

BOOST_AUTO_TEST_CASE(half_precision_storage_decode) {
  // fp16 / bf16 caches: states and victims follow the reference computed on the stored values,
  // survivors stay bit-identical.
  decode_config cfg;
  cfg.m = method::h2o;
  cfg.seed = 650;
  run_decode<kvcompact::half_t>(kvcompact::policies::h2o(cfg.budget, cfg.recent), cfg);
  cfg.m = method::knorm;
  cfg.seed = 651;
  run_decode<kvcompact::bfloat16_t>(kvcompact::policies::knorm(cfg.budget), cfg);
}

/// Runs two identical sessions, one with attend() and one with observe(), and requires identical state,
/// positions and K/V after every step.
template <class Policy>
void check_observe_equals_attend(const Policy& policy, bool aligned, std::uint32_t seed) {
  const index_t L = 2, H = 2, Hq = 4, D = 16, T = 24, steps = 30, capacity = T + steps;
  kvtest::fill_options fill;
  fill.min_length = fill.max_length = T;
  fill.aligned_heads = aligned;
  auto a = kvtest::make_random_cache({1, L, H, capacity, D}, fill, seed);
  auto b = a;
  const auto window = kvtest::make_random_window(1, L, Hq, 4, D, {T - 1}, 2.0, seed + 1);
  const kvcompact::attention_shape shape{Hq};
  auto ma = kvtest::session_memory::for_session<session_t<Policy, float>>(a.layout, shape);
  auto mb = kvtest::session_memory::for_session<session_t<Policy, float>>(b.layout, shape);
  session_t<Policy, float> sa(policy, a.view(), shape, ma.state(), ma.workspace());
  session_t<Policy, float> sb(policy, b.view(), shape, mb.state(), mb.workspace());
  sa.compress_prefill(window.view());
  sb.compress_prefill(window.view());
  std::mt19937 rng(seed + 2);
  for (index_t t = T; t < T + steps; ++t) {
    for (index_t l = 0; l < L; ++l) {
      const auto tok = make_token<float>(H, D, rng);
      sa.append(0, l, tok.keys.data(), tok.values.data(), t);
      sb.append(0, l, tok.keys.data(), tok.values.data(), t);
    }
    for (index_t l = 0; l < L; ++l) {
      const auto q = kvtest::random_vector(Hq * D, 2.0, rng);
      std::vector<float> out(static_cast<std::size_t>(Hq * D));
      sa.attend(0, l, q.data(), t, out.data());
      sb.observe(0, l, q.data(), t);
    }
    BOOST_TEST(a.lengths == b.lengths);
    BOOST_TEST(a.positions == b.positions);
    BOOST_TEST(a.keys == b.keys);
    bool same_state = true;
    for (index_t l = 0; l < L; ++l)
      for (index_t h = 0; h < H; ++h)
        for (index_t j = 0; j < a.length(0, l, h); ++j) {
          const auto x = sa.slot_state(0, l, h, j), y = sb.slot_state(0, l, h, j);
          same_state = same_state && std::memcmp(&x, &y, sizeof(x)) == 0;
        }
    BOOST_TEST(same_state, "state differs at t=" << t);
  }
}

BOOST_AUTO_TEST_CASE(observe_updates_state_exactly_like_attend) {
  check_observe_equals_attend(kvcompact::policies::h2o(16, 4), false, 700);
  check_observe_equals_attend(kvcompact::policies::tova(16), true, 701);
  check_observe_equals_attend(kvcompact::policies::corm(3, 4, 1), false, 702);
  check_observe_equals_attend(kvcompact::policies::corm_budgeted(16, 4), false, 703);
}

BOOST_AUTO_TEST_SUITE_END()

// -----------------------------------------------------------------------------------------------
// CORM: O(1) last_hit state vs the windowed-OR definition (docs/methods.md 1.5, 1.6)
// -----------------------------------------------------------------------------------------------

BOOST_AUTO_TEST_SUITE(corm_decode)

/// Reference by definition: for every (layer, head, position) the list of query steps (prefill window
/// rows and decode steps) at which some query head of the group had a >= alpha / n. At step t the
/// retained set is R (pos > t - r) + sinks + { j : some hit in [t-w+1, t] }. The library's last_hit
/// must equal the latest hit (or the position when none).
void check_corm_definition(index_t group, index_t w, index_t r, index_t sinks, float alpha, bool position_reference, std::uint32_t seed) {
  using rq = kvcompact::scorers::recent_query;
  const index_t L = 2, H = 2, Hq = H * group, D = 16, T = 24, steps = 60, capacity = T + steps;
  const double query_scale = 4.0;  // peaked attention: many keys fall below alpha / n, so evictions happen
  kvtest::fill_options fill;
  fill.min_length = fill.max_length = T;
  auto cache = kvtest::make_random_cache({1, L, H, capacity, D}, fill, seed);
  const auto window = kvtest::make_random_window(1, L, Hq, w, D, {T - 1}, query_scale, seed + 1);
  const double scale = kvtest::default_scale(D);
  double margin = std::numeric_limits<double>::infinity();

  auto policy = kvcompact::policies::corm(w, r, sinks);
  policy.scorer.alpha = alpha;
  policy.scorer.reference = position_reference ? rq::threshold_reference::position : rq::threshold_reference::cache_length;
  using P = decltype(policy);

  // hits[l * H + h][position] = steps at which the position was important
  std::vector<std::map<index_t, std::vector<index_t>>> hits(static_cast<std::size_t>(L * H));
  for (index_t l = 0; l < L; ++l)
    for (index_t row = 0; row < w; ++row) {
      std::vector<float> q(static_cast<std::size_t>(Hq * D));
      for (index_t g = 0; g < Hq; ++g) std::copy_n(window.query(0, l, g, row), D, q.begin() + g * D);
      const index_t qp = window.position(0, row);
      for (index_t h = 0; h < H; ++h) {
        const auto hit = kvtest::corm_decode_hits(cache, 0, l, h, q.data(), Hq, qp, scale, alpha, position_reference, &margin);
        for (index_t j = 0; j < cache.length(0, l, h); ++j)
          if (hit[static_cast<std::size_t>(j)]) hits[static_cast<std::size_t>(l * H + h)][cache.position(0, l, h, j)].push_back(qp);
      }
    }
  auto retained = [&](index_t l, index_t h, index_t p, index_t t) {
    if (p < sinks || p > t - r) return true;
    const auto it = hits[static_cast<std::size_t>(l * H + h)].find(p);
    if (it == hits[static_cast<std::size_t>(l * H + h)].end()) return false;
    for (index_t step : it->second)
      if (step > t - w && step <= t) return true;
    return false;
  };
  auto expected_set = [&](index_t l, index_t h, index_t t, const std::vector<index_t>& held) {
    std::vector<index_t> e;
    for (index_t p : held)
      if (retained(l, h, p, t)) e.push_back(p);
    return e;
  };
  token_store<float> store;
  store.record_cache(cache);
  // prefill: expected = definition at step T-1 over the full prompt
  std::vector<std::vector<index_t>> expected(static_cast<std::size_t>(L * H));
  for (index_t l = 0; l < L; ++l)
    for (index_t h = 0; h < H; ++h) expected[static_cast<std::size_t>(l * H + h)] = expected_set(l, h, T - 1, positions_of(cache, 0, l, h));

  const kvcompact::attention_shape shape{Hq};
  auto memory = kvtest::session_memory::for_session<session_t<P, float>>(cache.layout, shape);
  session_t<P, float> session(policy, cache.view(), shape, memory.state(), memory.workspace());
  session.compress_prefill(window.view());
  index_t evicted = 0, kept_old = 0;
  for (index_t l = 0; l < L; ++l)
    for (index_t h = 0; h < H; ++h) {
      BOOST_TEST(positions_of(cache, 0, l, h) == expected[static_cast<std::size_t>(l * H + h)], boost::test_tools::per_element());
      evicted += T - cache.length(0, l, h);
    }
  // last_hit after prefill
  {
    index_t bad = 0;
    for (index_t l = 0; l < L; ++l)
      for (index_t h = 0; h < H; ++h)
        for (index_t j = 0; j < cache.length(0, l, h); ++j) {
          const index_t p = cache.position(0, l, h, j);
          const auto it = hits[static_cast<std::size_t>(l * H + h)].find(p);
          const index_t latest = it == hits[static_cast<std::size_t>(l * H + h)].end() ? p : std::max(p, it->second.back());
          bad += session.slot_state(0, l, h, j) != static_cast<float>(latest) ? 1 : 0;
        }
    BOOST_TEST(bad == 0, "last_hit after prefill differs from the definition for " << bad << " slots");
  }

  std::mt19937 rng(seed + 2);
  for (index_t t = T; t < T + steps; ++t) {
    for (index_t l = 0; l < L; ++l) {
      for (index_t h = 0; h < H; ++h) {
        auto e = expected_set(l, h, t - 1, positions_of(cache, 0, l, h));  // decision after step t-1
        e.push_back(t);
        expected[static_cast<std::size_t>(l * H + h)] = e;
      }
      const auto tok = make_token<float>(H, D, rng);
      std::vector<index_t> before_len;
      for (index_t h = 0; h < H; ++h) before_len.push_back(cache.length(0, l, h));
      session.append(0, l, tok.keys.data(), tok.values.data(), t);
      for (index_t h = 0; h < H; ++h) {
        store.record(0, l, h, t, tok.keys.data() + h * D, tok.values.data() + h * D, D);
        const auto got = positions_of(cache, 0, l, h);
        BOOST_TEST_CONTEXT("t=" << t << " l=" << l << " h=" << h) {
          BOOST_TEST(got == expected[static_cast<std::size_t>(l * H + h)], boost::test_tools::per_element());
        }
        evicted += before_len[static_cast<std::size_t>(h)] + 1 - cache.length(0, l, h);
        for (index_t p : got) kept_old += (p >= sinks && p <= t - r) ? 1 : 0;
      }
    }
    store.check(cache, true);
    for (index_t l = 0; l < L; ++l) {
      const auto q = kvtest::random_vector(Hq * D, query_scale, rng);
      for (index_t h = 0; h < H; ++h) {
        const auto hit = kvtest::corm_decode_hits(cache, 0, l, h, q.data(), Hq, t, scale, alpha, position_reference, &margin);
        for (index_t j = 0; j < cache.length(0, l, h); ++j)
          if (hit[static_cast<std::size_t>(j)]) hits[static_cast<std::size_t>(l * H + h)][cache.position(0, l, h, j)].push_back(t);
      }
      std::vector<float> out(static_cast<std::size_t>(Hq * D));
      session.attend(0, l, q.data(), t, out.data());
    }
    {
      index_t bad = 0;
      for (index_t l = 0; l < L; ++l)
        for (index_t h = 0; h < H; ++h)
          for (index_t j = 0; j < cache.length(0, l, h); ++j) {
            const index_t p = cache.position(0, l, h, j);
            const auto it = hits[static_cast<std::size_t>(l * H + h)].find(p);
            const index_t latest = it == hits[static_cast<std::size_t>(l * H + h)].end() ? p : std::max(p, it->second.back());
            if (session.slot_state(0, l, h, j) != static_cast<float>(latest) && bad++ < 3)
              BOOST_ERROR("last_hit t=" << t << " l=" << l << " h=" << h << " position=" << p << ": library " << session.slot_state(0, l, h, j)
                                        << " definition " << latest);
          }
      BOOST_TEST(bad == 0);
    }
  }
  BOOST_REQUIRE_MESSAGE(margin > 1e-5, "test data too close to the CORM threshold (margin " << margin << "): change the seed");
  // Non-trivial run: some slots evicted, and some old (unprotected) slots survived thanks to hits.
  BOOST_TEST(evicted > 10);
  BOOST_TEST(kept_old > 10);
}

BOOST_AUTO_TEST_CASE(last_hit_formulation_equals_windowed_or_definition) {
  std::uint32_t seed = 910;
  for (index_t group : {1, 2, 4})
    for (bool position_reference : {false, true}) {
      BOOST_TEST_CONTEXT("G=" << group << " position_reference=" << position_reference << " w=4 r=6 s=2 alpha=1") {
        check_corm_definition(group, 4, 6, 2, 1.0f, position_reference, ++seed);
      }
    }
  BOOST_TEST_CONTEXT("G=2 w=r=5 s=0 alpha=1.5") { check_corm_definition(2, 5, 5, 0, 1.5f, false, ++seed); }
  BOOST_TEST_CONTEXT("G=1 w=1 r=3 s=1 alpha=0.8") { check_corm_definition(1, 1, 3, 1, 0.8f, false, ++seed); }
}

BOOST_AUTO_TEST_SUITE_END()

// -----------------------------------------------------------------------------------------------

BOOST_AUTO_TEST_SUITE(errors)

// A NaN key surfaces as a NaN score; a NaN query is rejected where it enters, as window.queries.
bool names_its_source(const kvcompact::error& e, bool nan_in_key) {
  const std::string argument = nan_in_key ? "scores" : "window.queries";
  return e.argument() == argument && std::string(e.what()).find(argument) != std::string::npos;
}

template <class Policy>
void expect_nan_error(const Policy& policy, bool nan_in_key) {
  kvtest::fill_options fill;
  fill.min_length = fill.max_length = 16;
  auto cache = kvtest::make_random_cache({1, 2, 2, 16, 16}, fill, 61);
  auto window = kvtest::make_random_window(1, 2, 4, 4, 16, {15}, 2.0, 62);
  if (nan_in_key) cache.keys[static_cast<std::size_t>(cache.element(0, 1, 1, 5, 3))] = std::numeric_limits<float>::quiet_NaN();
  else window.queries[static_cast<std::size_t>(window.query(0, 1, 2, 1) - window.queries.data()) + 7] = std::numeric_limits<float>::quiet_NaN();
  const kvcompact::attention_shape shape{4};
  auto memory = kvtest::session_memory::for_session<session_t<Policy, float>>(cache.layout, shape);
  session_t<Policy, float> session(policy, cache.view(), shape, memory.state(), memory.workspace());
  BOOST_CHECK_EXCEPTION(session.compress_prefill(window.view()), kvcompact::error,
                        [&](const kvcompact::error& e) { return names_its_source(e, nan_in_key); });
}

BOOST_AUTO_TEST_CASE(nan_in_keys_or_queries_at_prefill_is_reported) {
  for (bool key : {true, false}) {
    BOOST_TEST_CONTEXT((key ? "NaN key" : "NaN query")) {
      expect_nan_error(kvcompact::policies::snapkv(8, 4, 3), key);
      expect_nan_error(kvcompact::policies::h2o(8, 2), key);
      expect_nan_error(kvcompact::policies::tova(8), key);
    }
  }
  // KNorm reads keys only: a NaN key is a NaN score.
  expect_nan_error(kvcompact::policies::knorm(8), true);
}

BOOST_AUTO_TEST_CASE(append_to_a_full_head_without_eviction_throws) {
  // SnapKV is prefill-only: decode appends never evict, so once a head reaches capacity append throws.
  const index_t C = 24, D = 16;
  kvtest::fill_options fill;
  fill.min_length = fill.max_length = C;
  auto cache = kvtest::make_random_cache({1, 1, 2, C, D}, fill, 71);
  const auto window = kvtest::make_random_window(1, 1, 4, 4, D, {C - 1}, 2.0, 72);
  const auto policy = kvcompact::policies::snapkv(16, 4, 3);
  using P = std::remove_const_t<decltype(policy)>;
  const kvcompact::attention_shape shape{4};
  auto memory = kvtest::session_memory::for_session<session_t<P, float>>(cache.layout, shape);
  session_t<P, float> session(policy, cache.view(), shape, memory.state(), memory.workspace());
  session.compress_prefill(window.view());
  BOOST_TEST(cache.length(0, 0, 0) == 16);
  std::mt19937 rng(73);
  for (index_t t = C; t < C + 8; ++t) {
    const auto tok = make_token<float>(2, D, rng);
    BOOST_CHECK_NO_THROW(session.append(0, 0, tok.keys.data(), tok.values.data(), t));
  }
  BOOST_TEST(cache.length(0, 0, 0) == C);
  BOOST_TEST(cache.length(0, 0, 1) == C);
  const auto positions_before = cache.positions;
  const auto tok = make_token<float>(2, D, rng);
  BOOST_CHECK_EXCEPTION(session.append(0, 0, tok.keys.data(), tok.values.data(), C + 8), kvcompact::error,
                        [](const kvcompact::error& e) { return e.argument() == "cache"; });
  BOOST_TEST(cache.length(0, 0, 0) == C);
  BOOST_TEST(cache.positions == positions_before);
}

BOOST_AUTO_TEST_SUITE_END()
