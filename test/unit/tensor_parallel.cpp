// SPDX-License-Identifier: Apache-2.0
// Tensor-parallel shards (issue 13.6): the KV heads of a model split over 1, 2 and 4 ranks, one
// cpu::session per rank, the ranks running in threads with an all-reduce over a barrier. The decisions
// that span the KV heads of a layer go through kvcompact::rank_group: Ada-KV's layer-wide ranking, the
// layer's newest position, scores shared across KV heads (TOVA, PrefixKV, Elastic Cache; at prefill and
// in decode attention, whose state drives decode-time eviction) and WindowKV's window scores. Each rank
// keeps exactly what one unsharded session keeps for its heads: the same slots, K/V and decode state
// bit for bit, and the same attention outputs; without the group a shard decides from its own heads
// only and keeps something else. Bad groups and Ada-KV's strict repair are refused by name.
#include <boost/test/unit_test.hpp>

#include <kvcompact/kvcompact.hpp>

#include "support/custom_layout.hpp"
#include "support/expect_error.hpp"
#include "support/layer_window.hpp"
#include "support/reference.hpp"
#include "support/shards.hpp"

#include <barrier>
#include <cstring>
#include <functional>
#include <random>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace kc = kvcompact;
namespace pol = kvcompact::policies;
using kc::index_t;

namespace {

constexpr index_t S = 2, L = 2, H = 8, G = 2, CAP = 48, D = 16, ROWS = 6;

/// An all-reduce over threads: each rank publishes its values, then every rank sums all ranks'
/// values in rank order (the same sum, bit for bit, on every rank).
class thread_all_reduce {
 public:
  explicit thread_all_reduce(int ranks) : sync_(ranks), slots_(static_cast<std::size_t>(ranks)) {}
  /// The group of rank @p rank (its context points at the rank's entry).
  kc::rank_group group(int rank) {
    entries_.push_back({this, rank});
    return {static_cast<int>(slots_.size()), rank, nullptr, &reduce};
  }
  /// Fixes the contexts once every rank's group exists (entries_ no longer moves).
  void bind(std::vector<kc::rank_group>& groups) {
    for (std::size_t r = 0; r < groups.size(); ++r) groups[r].context = &entries_[r];
  }

 private:
  struct entry {
    thread_all_reduce* self;
    int rank;
  };
  static void reduce(void* context, double* values, index_t count) {
    const auto& e = *static_cast<entry*>(context);
    auto& slots = e.self->slots_;
    slots[static_cast<std::size_t>(e.rank)].assign(values, values + count);
    e.self->sync_.arrive_and_wait();
    for (index_t i = 0; i < count; ++i) {
      double sum = 0.0;
      for (const auto& slot : slots) sum += slot[static_cast<std::size_t>(i)];
      values[i] = sum;
    }
    e.self->sync_.arrive_and_wait();  // no rank overwrites its slot before every rank has read
  }
  std::barrier<> sync_;
  std::vector<std::vector<double>> slots_;
  std::vector<entry> entries_;
};

/// Decode steps of the whole model: per step, sequence and layer one token's keys and values
/// ([H][D]) and queries ([H * G][D]) at position CAP + step (above every prompt position).
struct decode_steps {
  index_t count = 0;          ///< steps
  std::vector<float> keys;    ///< [step][s][l][H][D]
  std::vector<float> values;  ///< [step][s][l][H][D]
  std::vector<float> queries; ///< [step][s][l][H * G][D]
  /// Offset of (step, s, l) in keys / values, plus the first of @p first_head's rows.
  static std::size_t kv_at(index_t step, index_t s, index_t l, index_t first_head) {
    return static_cast<std::size_t>((((step * S + s) * L + l) * H + first_head) * D);
  }
  /// Offset of (step, s, l) in queries, plus the first of @p first_query_head's rows.
  static std::size_t query_at(index_t step, index_t s, index_t l, index_t first_query_head) {
    return static_cast<std::size_t>((((step * S + s) * L + l) * H * G + first_query_head) * D);
  }
};

decode_steps make_steps(index_t count, std::uint32_t seed) {
  std::mt19937 rng(seed);
  decode_steps steps{count, {}, {}, {}};
  steps.keys = kvtest::random_vector(count * S * L * H * D, 1.0, rng);
  steps.values = kvtest::random_vector(count * S * L * H * D, 1.0, rng);
  steps.queries = kvtest::random_vector(count * S * L * H * G * D, 2.0, rng);
  return steps;
}

/// One rank's cache after prefill and after the decode steps, its decode state (state bits of every
/// slot, [s][l][h][CAP]) and its attention outputs ([attend() call][its query heads][D]).
struct shard_result {
  kvtest::random_cache<float> prefilled;  ///< after compress_prefill()
  kvtest::random_cache<float> decoded;    ///< after the decode steps
  std::vector<std::uint32_t> states;      ///< decode state of every slot, bits
  std::vector<float> outputs;             ///< attend() outputs
};

/// Runs @p policy over @p ranks shards in threads (with the rank group when @p grouped): prefill (layer
/// by layer with @p layer_by_layer, a failure for a policy without that entry), then the decode steps
/// (append(), then attend() or, every other step, observe() of every layer); returns each rank's results.
template <class Policy>
std::vector<shard_result> run_shards(const Policy& policy, const kvtest::random_cache<float>& full, const kvtest::random_window& w, int ranks, bool grouped,
                                     bool layer_by_layer, const decode_steps& steps = {}) {
  static_assert(sizeof(typename kc::cpu::session<Policy, float, kc::layouts::strided>::state_type) == sizeof(std::uint32_t));
  const index_t heads = H / ranks;
  std::vector<shard_result> shards;
  std::vector<kvtest::random_window> windows;
  for (int r = 0; r < ranks; ++r) {
    const auto cache = kvtest::shard_heads(full, r * heads, heads);
    shards.push_back({cache, cache, {}, {}});
    windows.push_back(kvtest::window_part(w, 0, L, r * heads * G, heads * G));
  }
  thread_all_reduce reduce(ranks);
  std::vector<kc::rank_group> groups;
  for (int r = 0; r < ranks; ++r) groups.push_back(reduce.group(r));
  reduce.bind(groups);
  std::vector<std::thread> threads;
  std::vector<std::string> failures(static_cast<std::size_t>(ranks));
  for (int r = 0; r < ranks; ++r)
    threads.emplace_back([&, r] {
      try {
        const kc::attention_shape shape{heads * G};
        shard_result& shard = shards[static_cast<std::size_t>(r)];
        kvtest::session_storage<Policy, float, kc::layouts::strided> storage(shard.decoded.layout, shape);
        kc::cpu::session<Policy, float, kc::layouts::strided> session(policy, shard.decoded.view(), shape, storage.state_span(), storage.workspace_span());
        if (grouped) session.set_rank_group(groups[static_cast<std::size_t>(r)]);
        const auto& win = windows[static_cast<std::size_t>(r)];
        if (layer_by_layer) {
          if constexpr (kc::layer_by_layer_prefill_v<Policy>) {
            for (index_t l = 0; l < L; ++l) {
              const kvtest::random_window slice = kvtest::layer_window(win, l);  // this layer's queries only
              session.compress_prefill_layer(l, slice.view());
            }
          } else {
            throw std::logic_error("run_shards: the policy has no per-layer entry");  // WindowKV
          }
        } else {
          session.compress_prefill(win.view());
        }
        shard.prefilled = shard.decoded;
        std::vector<float> out(static_cast<std::size_t>(heads * G * D));
        for (index_t t = 0; t < steps.count; ++t)
          for (index_t s = 0; s < S; ++s)
            for (index_t l = 0; l < L; ++l) {
              const std::size_t kv = decode_steps::kv_at(t, s, l, r * heads);
              session.append(s, l, steps.keys.data() + kv, steps.values.data() + kv, CAP + t);
              const float* queries = steps.queries.data() + decode_steps::query_at(t, s, l, r * heads * G);
              if (t % 2 == 1) {  // an engine with its own attention kernel
                session.observe(s, l, queries, CAP + t);
                continue;
              }
              session.attend(s, l, queries, CAP + t, out.data());
              shard.outputs.insert(shard.outputs.end(), out.begin(), out.end());
            }
        for (index_t s = 0; s < S; ++s)
          for (index_t l = 0; l < L; ++l)
            for (index_t h = 0; h < heads; ++h)
              for (index_t j = 0; j < CAP; ++j) {
                const auto state = j < shard.decoded.length(s, l, h) ? session.slot_state(s, l, h, j) : decltype(session.slot_state(s, l, h, j)){};
                std::uint32_t bits = 0;
                std::memcpy(&bits, &state, sizeof bits);
                shard.states.push_back(bits);
              }
      } catch (const std::exception& e) {
        failures[static_cast<std::size_t>(r)] = e.what();
      }
    });
  for (auto& t : threads) t.join();
  for (const auto& f : failures) BOOST_REQUIRE_MESSAGE(f.empty(), f);
  return shards;
}

/// Where the shards of a run and one unsharded session part: "" when every rank's heads hold what the
/// session's hold (after prefill and after the decode steps: lengths, positions, K/V and decode state
/// bits) and every rank's attention outputs are the session's for its query heads.
std::string first_difference(const std::vector<shard_result>& shards, const shard_result& unsharded) {
  const auto ranks = static_cast<index_t>(shards.size()), heads = H / ranks;
  for (index_t r = 0; r < ranks; ++r) {
    const shard_result& shard = shards[static_cast<std::size_t>(r)];
    const std::string where = "rank " + std::to_string(r) + " of " + std::to_string(ranks) + ": ";
    for (index_t s = 0; s < S; ++s)
      for (index_t l = 0; l < L; ++l)
        for (index_t h = 0; h < heads; ++h) {
          const std::string head = where + "sequence " + std::to_string(s) + " layer " + std::to_string(l) + " head " + std::to_string(h);
          if (!kvtest::same_head(shard.prefilled, h, unsharded.prefilled, r * heads + h, s, l)) return head + " after prefill";
          if (!kvtest::same_head(shard.decoded, h, unsharded.decoded, r * heads + h, s, l)) return head + " after decoding";
          for (index_t j = 0; j < CAP; ++j)
            if (shard.states[static_cast<std::size_t>(((s * L + l) * heads + h) * CAP + j)] !=
                unsharded.states[static_cast<std::size_t>(((s * L + l) * H + r * heads + h) * CAP + j)])
              return head + " decode state of slot " + std::to_string(j);
        }
    const auto calls = static_cast<index_t>(shard.outputs.size()) / (heads * G * D);
    for (index_t i = 0; i < calls; ++i)  // one attend() call: this rank's query heads
      for (index_t e = 0; e < heads * G * D; ++e)
        if (shard.outputs[static_cast<std::size_t>(i * heads * G * D + e)] != unsharded.outputs[static_cast<std::size_t>(i * H * G * D + r * heads * G * D + e)])
          return where + "attention output of call " + std::to_string(i);
  }
  return "";
}

/// Runs @p policy on one unsharded session and on 1, 2 and 4 ranks with the group (whole-cache and,
/// where the policy allows it, layer by layer): every run must match the session. Returns whether some
/// run of several ranks WITHOUT the group differs (each rank deciding from its own heads).
template <class Policy>
bool shards_match_one_session(const std::string& name, const Policy& policy, const kvtest::random_cache<float>& full, const kvtest::random_window& w,
                              const decode_steps& steps) {
  const shard_result unsharded = run_shards(policy, full, w, 1, false, false, steps).front();
  bool ungrouped_differs = false;
  for (const int ranks : {1, 2, 4}) {
    for (const bool by_layer : {false, true}) {
      if (by_layer && !kc::layer_by_layer_prefill_v<Policy>) continue;
      const std::string difference = first_difference(run_shards(policy, full, w, ranks, true, by_layer, steps), unsharded);
      BOOST_TEST(difference.empty(), name << (by_layer ? " layer by layer" : "") << ": " << difference);
    }
    if (ranks > 1) ungrouped_differs = ungrouped_differs || !first_difference(run_shards(policy, full, w, ranks, false, false, steps), unsharded).empty();
  }
  return ungrouped_differs;
}

}  // namespace

BOOST_AUTO_TEST_CASE(adakv_shards_keep_what_one_session_keeps) {
  for (const std::uint32_t seed : {2u, 3u, 4u}) {
    kvtest::fill_options fill;
    fill.min_length = 30;
    const auto full = kvtest::make_random_cache<float>({S, L, H, CAP, D}, fill, seed);
    const auto w = kvtest::make_random_window(S, L, H * G, ROWS, D, {CAP - 1, CAP - 1}, 2.0, seed + 50);
    const auto policy = pol::adakv({.budget = 16, .window = 4, .floor_fraction = 0.2});
    auto reference = full;
    kvtest::run_prefill(policy, reference.view(), kc::attention_shape{H * G}, w.view());
    bool uneven = false;  // Ada-KV gives heads different budgets, or the test proves little
    for (index_t h = 1; h < H; ++h) uneven = uneven || reference.length(0, 0, h) != reference.length(0, 0, 0);
    BOOST_TEST(uneven);
    bool ungrouped_differs = false;
    for (const int ranks : {1, 2, 4})
      for (const bool layer_by_layer : {false, true}) {
        const auto shards = run_shards(policy, full, w, ranks, true, layer_by_layer);
        for (int r = 0; r < ranks; ++r)
          for (index_t s = 0; s < S; ++s)
            for (index_t l = 0; l < L; ++l)
              for (index_t h = 0; h < H / ranks; ++h)
                BOOST_TEST(kvtest::same_head(shards[static_cast<std::size_t>(r)].prefilled, h, reference, r * (H / ranks) + h, s, l),
                           "seed " << seed << " ranks " << ranks << " rank " << r << " sequence " << s << " layer " << l << " head " << h);
        if (ranks > 1 && !layer_by_layer) {
          const auto alone = run_shards(policy, full, w, ranks, false, false);
          for (int r = 0; r < ranks; ++r)
            for (index_t h = 0; h < H / ranks; ++h)
              ungrouped_differs = ungrouped_differs || !kvtest::same_head(alone[static_cast<std::size_t>(r)].prefilled, h, reference, r * (H / ranks) + h, 0, 0);
        }
      }
    BOOST_TEST(ungrouped_differs, "seed " << seed << ": shards without the group keep the same as with it, so the group is not exercised");
  }
}

// Heads of different lengths: the recent tokens SnapKV protects count from the layer's newest position,
// which the group agrees on across ranks.
BOOST_AUTO_TEST_CASE(per_head_policies_give_the_same_keep_sets) {
  kvtest::fill_options fill;
  fill.min_length = 30;
  const auto full = kvtest::make_random_cache<float>({S, L, H, CAP, D}, fill, 8);
  const auto w = kvtest::make_random_window(S, L, H * G, ROWS, D, {CAP - 1, CAP - 1}, 2.0, 9);
  const auto policy = pol::snapkv(16, 4);
  auto reference = full;
  kvtest::run_prefill(policy, reference.view(), kc::attention_shape{H * G}, w.view());
  const auto shards = run_shards(policy, full, w, 4, true, false);
  for (int r = 0; r < 4; ++r)
    for (index_t s = 0; s < S; ++s)
      for (index_t l = 0; l < L; ++l)
        for (index_t h = 0; h < H / 4; ++h) BOOST_TEST(kvtest::same_head(shards[static_cast<std::size_t>(r)].prefilled, h, reference, r * (H / 4) + h, s, l));
}

// Scores shared across the KV heads of a layer: every query head of the model contributes to a slot's
// score, so the ranks continue one reduction over their query heads in the unsharded order, at prefill
// and in every attend() (TOVA's decode-time eviction follows that state).
BOOST_AUTO_TEST_CASE(shared_score_policies_give_the_same_keep_sets_over_decode) {
  const std::vector<double> half{0.5, 0.6};
  for (const std::uint32_t seed : {11u, 12u}) {
    kvtest::fill_options fill;
    fill.min_length = 30;
    fill.max_length = 40;
    fill.aligned_heads = true;
    const auto full = kvtest::make_random_cache<float>({S, L, H, CAP, D}, fill, seed);
    const auto w = kvtest::make_random_window(S, L, H * G, ROWS, D, {CAP - 1, CAP - 1}, 2.0, seed + 50);
    const decode_steps steps = make_steps(6, seed + 100);
    const std::string at = " (seed " + std::to_string(seed) + ")";
    BOOST_TEST(shards_match_one_session("tova" + at, pol::tova(16), full, w, steps), "tova" << at << ": shards without the group agree");
    BOOST_TEST(shards_match_one_session("prefixkv" + at, pol::prefixkv(kc::budgets::layer_table::fractions(half)), full, w, steps),
               "prefixkv" << at << ": shards without the group agree");
    BOOST_TEST(shards_match_one_session("elastic_cache" + at, pol::elastic_cache(0.5), full, w, steps),
               "elastic_cache" << at << ": shards without the group agree");
  }
}

// WindowKV: a window's score averages every query head of the layer (here 2 layers of one group: layer 1
// follows layer 0's windows), in both task modes; decode appends.
BOOST_AUTO_TEST_CASE(windowkv_shards_keep_the_same_windows) {
  for (const std::uint32_t seed : {21u, 22u}) {
    kvtest::fill_options fill;
    fill.min_length = fill.max_length = 40;  // every head of the group holds the same positions
    fill.aligned_heads = true;
    const auto full = kvtest::make_random_cache<float>({S, L, H, CAP, D}, fill, seed);
    const auto w = kvtest::make_random_window(S, L, H * G, ROWS, D, {CAP - 1, CAP - 1}, 2.0, seed + 50);
    const decode_steps steps = make_steps(4, seed + 100);
    for (const auto task : {kc::selectors::task_type::localization, kc::selectors::task_type::aggregation}) {
      const std::string name = std::string(task == kc::selectors::task_type::localization ? "windowkv localization" : "windowkv aggregation") +
                               " (seed " + std::to_string(seed) + ")";
      BOOST_TEST(shards_match_one_session(name, pol::windowkv(12, 2, task, 4, ROWS), full, w, steps), name << ": shards without the group agree");
    }
  }
}

BOOST_AUTO_TEST_CASE(bad_groups_and_strict_adakv_are_refused) {
  auto c = kvtest::make_random_cache<float>({1, 1, 2, 16, 8}, {}, 1);
  const kc::attention_shape shape{4};
  auto reduce = [](void*, double*, index_t) {};
  {
    using policy_type = decltype(pol::adakv(8, 2));
    kvtest::session_storage<policy_type, float, kc::layouts::strided> storage(c.layout, shape);
    kc::cpu::session<policy_type, float, kc::layouts::strided> s(pol::adakv(8, 2), c.view(), shape, storage.state_span(), storage.workspace_span());
    kvtest::expect_error([&] { s.set_rank_group({0, 0, nullptr, reduce}); }, "group.ranks");
    kvtest::expect_error([&] { s.set_rank_group({2, 2, nullptr, reduce}); }, "group.rank");
    kvtest::expect_error([&] { s.set_rank_group({2, -1, nullptr, reduce}); }, "group.rank");
    kvtest::expect_error([&] { s.set_rank_group({2, 1, nullptr, nullptr}); }, "group.all_reduce_sum");
    s.set_rank_group({1, 0, nullptr, nullptr});  // one rank: no hook needed
  }
  {
    const auto strict = pol::adakv({.budget = 8, .window = 2, .strict = true});
    using policy_type = std::remove_const_t<decltype(strict)>;
    kvtest::session_storage<policy_type, float, kc::layouts::strided> storage(c.layout, shape);
    kc::cpu::session<policy_type, float, kc::layouts::strided> s(strict, c.view(), shape, storage.state_span(), storage.workspace_span());
    kvtest::expect_error([&] { s.set_rank_group({2, 0, nullptr, reduce}); }, "policy", "strict");
  }
}
