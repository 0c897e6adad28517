// SPDX-License-Identifier: Apache-2.0
// GPU test: tensor-parallel shards on the CUDA backend (issue 13.6). The KV heads of a model split over
// 1, 2 and 4 ranks, one kvcompact::cuda::session per rank with a kvcompact::cuda::device_rank_group
// whose all-reduce sums device doubles on the session's stream. The ranks are simulated one at a time
// in rank order (one thread each, but only the thread whose turn it is runs: the emulator, like one
// GPU, sees one rank at a time). Heads have different lengths, so the newest position of a layer,
// which recent-token protection counts from, differs across heads and ranks: with the group every rank
// keeps exactly what one unsharded session keeps for its heads (slots, positions, K/V bits, decode
// state, budgets); without it a shard counts from its own heads' newest position and keeps something
// else. Ada-KV's layer-wide ranking spans the heads of every rank (its radix select's rounds between
// device all-reduces). Scores shared across KV heads (TOVA, PrefixKV, Elastic Cache) average every
// query head of the model: the ranks carry that reduction on in the unsharded query-head order, at
// prefill and in every attend() / observe() of the decode steps that follow (their state drives
// decode-time eviction), so the decode-time keep-sets, states and attention outputs match too.
// WindowKV's window scores average every query head of the model: the ranks sum them rank after rank
// before the selection kernel ranks the windows. A layer-scope cooperative selector without that
// stage, Ada-KV's strict repair and bad groups are refused by name.
#define BOOST_TEST_NO_MAIN
#define BOOST_TEST_ALTERNATIVE_INIT_API
#include <boost/test/unit_test.hpp>

#include <kvcompact/cuda.cuh>

#include "support/custom_layout.hpp"
#include "support/device_cache.hpp"
#include "support/expect_error.hpp"
#include "support/layer_window.hpp"
#include "support/shards.hpp"

#include <chrono>
#include <condition_variable>
#include <cstring>
#include <functional>
#include <initializer_list>
#include <mutex>
#include <random>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace kc = kvcompact;
namespace pol = kvcompact::policies;
using kc::index_t;

namespace {

constexpr index_t S = 2, L = 2, H = 4, G = 2, CAP = 32, D = 16, ROWS = 4;
using T = kc::bfloat16_t;
using layout_type = kc::layouts::strided;

/// Ranks taking turns in rank order, one thread each, only one running at a time; the all-reduce is
/// where a rank hands the turn on: it copies its device values out, the last rank of the round sums
/// every rank's values (in rank order), and each rank copies the sum back into its device values when
/// its turn comes again. A rank that ends hands the turn on too; a rank that throws ends the run.
class turn_taking_ranks {
 public:
  explicit turn_taking_ranks(int ranks) : published_(static_cast<std::size_t>(ranks)), contexts_(static_cast<std::size_t>(ranks)) {
    for (int r = 0; r < ranks; ++r) contexts_[static_cast<std::size_t>(r)] = {this, r};
  }
  /// The group of rank @p rank.
  kc::cuda::device_rank_group group(int rank) {
    return {static_cast<int>(published_.size()), rank, &contexts_[static_cast<std::size_t>(rank)], &all_reduce_sum};
  }
  /// Runs @p body(rank) for every rank, in turns; the first failure is rethrown as std::runtime_error.
  void run(const std::function<void(int)>& body) {
    std::vector<std::thread> threads;
    std::vector<std::string> failures(published_.size());
    for (int r = 0; r < static_cast<int>(published_.size()); ++r)
      threads.emplace_back([&, r] {
        try {
          wait_for_turn(r);
          body(r);
        } catch (const std::exception& e) {
          failures[static_cast<std::size_t>(r)] = e.what();
          const std::lock_guard<std::mutex> lock(mutex_);
          aborted_ = true;
        }
        hand_on(r);
      });
    for (auto& t : threads) t.join();
    for (const auto& f : failures)
      if (!f.empty()) throw std::runtime_error(f);
  }

 private:
  struct context {
    turn_taking_ranks* self;
    int rank;
  };
  static void all_reduce_sum(void* opaque, double* device_values, index_t count, cudaStream_t stream) {
    const auto& c = *static_cast<context*>(opaque);
    turn_taking_ranks& self = *c.self;
    auto& mine = self.published_[static_cast<std::size_t>(c.rank)];
    mine.resize(static_cast<std::size_t>(count));
    KVCOMPACT_CUDA_CHECK(cudaMemcpyAsync(mine.data(), device_values, mine.size() * sizeof(double), cudaMemcpyDeviceToHost, stream));
    KVCOMPACT_CUDA_CHECK(cudaStreamSynchronize(stream));
    if (c.rank + 1 == static_cast<int>(self.published_.size())) {  // the round is complete
      self.sum_.assign(mine.size(), 0.0);
      for (const auto& values : self.published_) {
        if (values.size() != mine.size()) throw std::runtime_error("all_reduce_sum: the ranks passed different counts");
        for (std::size_t i = 0; i < values.size(); ++i) self.sum_[i] += values[i];
      }
    }
    self.hand_on(c.rank);
    self.wait_for_turn(c.rank);
    KVCOMPACT_CUDA_CHECK(cudaMemcpyAsync(device_values, self.sum_.data(), self.sum_.size() * sizeof(double), cudaMemcpyHostToDevice, stream));
    KVCOMPACT_CUDA_CHECK(cudaStreamSynchronize(stream));
  }
  void hand_on(int rank) {
    {
      const std::lock_guard<std::mutex> lock(mutex_);
      turn_ = (rank + 1) % static_cast<int>(published_.size());
    }
    turns_.notify_all();
  }
  void wait_for_turn(int rank) {
    std::unique_lock<std::mutex> lock(mutex_);
    const bool mine = turns_.wait_for(lock, std::chrono::minutes(5), [&] { return turn_ == rank || aborted_; });
    if (!mine || aborted_) throw std::runtime_error("rank " + std::to_string(rank) + ": another rank failed or never reached the all-reduce");
  }

  std::vector<std::vector<double>> published_;  // each rank's values of the current round
  std::vector<double> sum_;                     // the last complete round's sum
  std::vector<context> contexts_;
  std::mutex mutex_;
  std::condition_variable turns_;
  int turn_ = 0;
  bool aborted_ = false;
};

/// Decode steps of the whole model: per step and layer one token's keys and values ([S][H][D]) and
/// queries ([S][H * G][D]) at position CAP + step (above every prompt position), in the storage type.
struct decode_steps {
  index_t count = 0;      ///< steps
  std::vector<T> keys;    ///< [step][l][s][H][D]
  std::vector<T> values;  ///< [step][l][s][H][D]
  std::vector<T> queries; ///< [step][l][s][H * G][D]

  /// @p count steps of random tokens from @p seed.
  static decode_steps make(index_t count, std::uint32_t seed) {
    std::mt19937 rng(seed);
    const auto stored = [&](index_t n, double scale) {
      std::vector<T> out;
      for (const float x : kvtest::random_vector(n, scale, rng)) out.push_back(kc::from_float<T>(x));
      return out;
    };
    decode_steps steps{count, {}, {}, {}};
    steps.keys = stored(count * L * S * H * D, 1.0);
    steps.values = stored(count * L * S * H * D, 1.0);
    steps.queries = stored(count * L * S * H * G * D, 2.0);
    return steps;
  }
  /// Rows [@p first, @p first + @p count) of each sequence of (@p step, @p l) in @p all, whose
  /// sequences have @p rows rows of D values each.
  static std::vector<T> rows_of(const std::vector<T>& all, index_t step, index_t l, index_t rows, index_t first, index_t count) {
    std::vector<T> out;
    for (index_t s = 0; s < S; ++s) {
      const auto from = all.begin() + static_cast<std::ptrdiff_t>((((step * L + l) * S + s) * rows + first) * D);
      out.insert(out.end(), from, from + static_cast<std::ptrdiff_t>(count * D));
    }
    return out;
  }
};

/// One rank's cache after compress_prefill() and the decode steps, its decode state bytes, budgets and
/// attention outputs.
struct shard_result {
  kvtest::random_cache<T> cache;  ///< the compressed cache
  std::vector<std::byte> states;  ///< per-slot decode state, [s][l][h][CAP]
  std::vector<std::int32_t> budgets;  ///< [s][l][h]
  std::vector<T> outputs;  ///< [attend() call][s][this rank's query heads][D]
};

/// Runs @p policy's compress_prefill() (or compress_prefill_layer() on each layer, @p by_layer; throws
/// std::logic_error for a policy without that entry) over @p ranks shards of @p full (with the rank
/// group when @p grouped), then @p steps decode steps (per layer append(), then attend() or, every
/// other step, observe()), the ranks one at a time; returns each rank's result.
template <class Policy>
std::vector<shard_result> run_shards(const Policy& policy, const kvtest::random_cache<T>& full, const kvtest::random_window& w, int ranks, bool grouped,
                                     bool by_layer = false, const decode_steps& steps = {}) {
  using session_type = kc::cuda::session<Policy, T, layout_type>;
  const index_t heads = H / ranks;
  std::vector<shard_result> shards(static_cast<std::size_t>(ranks), shard_result{kvtest::random_cache<T>({S, L, heads, CAP, D}), {}, {}, {}});
  turn_taking_ranks group(ranks);
  group.run([&](int r) {
    const auto host = kvtest::shard_heads(full, r * heads, heads);
    const kvtest::random_window window = kvtest::window_part(w, 0, L, r * heads * G, heads * G);
    const kc::attention_shape shape{heads * G};
    kvtest::device_cache<T, layout_type> device(kvtest::copy_into(host, host.layout));
    kvtest::device_session_storage<session_type> storage(device.layout.layout, shape, ROWS);
    session_type session(policy, device.view(), shape, storage.state.bytes(), storage.workspace.bytes(), nullptr, ROWS);
    if (grouped) session.set_rank_group(group.group(r));
    if (by_layer) {
      if constexpr (kc::layer_by_layer_prefill_v<Policy>) {
        for (index_t l = 0; l < L; ++l) {
          const kvtest::device_window layer(kvtest::layer_window(window, l));
          session.compress_prefill_layer(l, layer.view());
        }
      } else {
        throw std::logic_error("run_shards: the policy has no per-layer entry");  // WindowKV
      }
    } else {
      const kvtest::device_window device_window(window);
      session.compress_prefill(device_window.view());
    }
    session.check("compress_prefill");
    shard_result& shard = shards[static_cast<std::size_t>(r)];
    for (index_t t = 0; t < steps.count; ++t) {
      const kvtest::device_array<std::int32_t> positions(std::vector<std::int32_t>(S, static_cast<std::int32_t>(CAP + t)));
      for (index_t l = 0; l < L; ++l) {
        const kvtest::device_array<T> keys(decode_steps::rows_of(steps.keys, t, l, H, r * heads, heads));
        const kvtest::device_array<T> values(decode_steps::rows_of(steps.values, t, l, H, r * heads, heads));
        const kvtest::device_array<T> queries(decode_steps::rows_of(steps.queries, t, l, H * G, r * heads * G, heads * G));
        session.append(l, keys.data(), values.data(), positions.data());
        if (t % 2 == 1) {
          session.observe(l, queries.data(), positions.data());
          continue;
        }
        const kvtest::device_array<T> output(static_cast<std::size_t>(S * heads * G * D));
        session.attend(l, queries.data(), positions.data(), output.data());
        const std::vector<T> out = output.download();
        shard.outputs.insert(shard.outputs.end(), out.begin(), out.end());
      }
    }
    session.check("decode steps");
    shard.cache = host;
    shard.cache.keys = device.keys.download();
    shard.cache.values = device.values.download();
    shard.cache.lengths = device.lengths.download();
    shard.cache.positions = device.positions.download();
    shard.states.resize(static_cast<std::size_t>(S * L * heads * CAP) * sizeof(typename session_type::state_type));
    shard.budgets.resize(static_cast<std::size_t>(S * L * heads));
    KVCOMPACT_CUDA_CHECK(cudaMemcpy(shard.states.data(), session.slot_states(), shard.states.size(), cudaMemcpyDeviceToHost));
    KVCOMPACT_CUDA_CHECK(cudaMemcpy(shard.budgets.data(), session.budgets(), shard.budgets.size() * 4, cudaMemcpyDeviceToHost));
  });
  return shards;
}

/// Where @p shards and one unsharded run part: "" when every rank's heads hold what the unsharded
/// heads hold (lengths, positions, K/V bits), with the same decode state of every valid slot and the same budgets.
template <std::size_t StateBytes>
std::string first_difference(const std::vector<shard_result>& shards, const shard_result& unsharded) {
  const auto ranks = static_cast<index_t>(shards.size()), heads = H / ranks;
  for (index_t r = 0; r < ranks; ++r) {
    const shard_result& shard = shards[static_cast<std::size_t>(r)];
    for (index_t s = 0; s < S; ++s)
      for (index_t l = 0; l < L; ++l)
        for (index_t h = 0; h < heads; ++h) {
          const std::string head = "rank " + std::to_string(r) + " of " + std::to_string(ranks) + ": sequence " + std::to_string(s) + " layer " +
                                   std::to_string(l) + " head " + std::to_string(h);
          const index_t full_head = r * heads + h;
          if (!kvtest::same_head(shard.cache, h, unsharded.cache, full_head, s, l)) return head + ": keep-set, positions or K/V";
          const auto mine = static_cast<std::size_t>(shard.cache.head_index(s, l, h)), theirs = static_cast<std::size_t>(unsharded.cache.head_index(s, l, full_head));
          if (shard.budgets[mine] != unsharded.budgets[theirs]) return head + ": budget";
          if (std::memcmp(shard.states.data() + mine * CAP * StateBytes, unsharded.states.data() + theirs * CAP * StateBytes,
                          static_cast<std::size_t>(shard.cache.lengths[mine]) * StateBytes) != 0)
            return head + ": decode state";
        }
    const index_t rows = S * heads * G * D, calls = static_cast<index_t>(unsharded.outputs.size()) / (S * H * G * D);
    if (static_cast<index_t>(shard.outputs.size()) != calls * rows) return "rank " + std::to_string(r) + ": attend() calls";
    for (index_t i = 0; i < calls; ++i)
      for (index_t s = 0; s < S; ++s)
        if (std::memcmp(shard.outputs.data() + i * rows + s * heads * G * D, unsharded.outputs.data() + (i * S + s) * H * G * D + r * heads * G * D,
                        static_cast<std::size_t>(heads * G * D) * sizeof(T)) != 0)
          return "rank " + std::to_string(r) + ": attend() output of call " + std::to_string(i) + ", sequence " + std::to_string(s);
  }
  return "";
}

/// The cache filling of check_shards(): heads of different lengths (different newest positions), or
/// slot-aligned heads where @p aligned (scores shared across KV heads, WindowKV's windows).
kvtest::fill_options shard_fill(bool aligned) {
  kvtest::fill_options fill;
  fill.min_length = 14;
  fill.aligned_heads = aligned;
  return fill;
}

/// Checks that 1, 2 and 4 grouped ranks keep what one unsharded session keeps, over a cache filled by
/// @p fill; returns whether 4 ranks without the group keep something else (each counting from its own
/// heads' newest position, or averaging its own query heads).
template <class Policy>
bool shards_match_one_session(const std::string& name, const Policy& policy, std::uint32_t seed, index_t decode_count, const kvtest::fill_options& fill) {
  constexpr std::size_t state_bytes = sizeof(typename kc::cuda::session<Policy, T, layout_type>::state_type);
  const auto full = kvtest::convert_cache<T>([&] {
    auto exact = kvtest::make_random_cache<float>({S, L, H, CAP, D}, fill, seed);
    kvtest::round_to_exact_values(exact);
    return exact;
  }());
  auto w = kvtest::make_random_window(S, L, H * G, ROWS, D, {CAP - 1, CAP - 1}, 1.5, seed + 3);
  kvtest::round_to_exact_values(w);
  const decode_steps steps = decode_steps::make(decode_count, seed + 7);
  const shard_result unsharded = run_shards(policy, full, w, 1, false, false, steps).front();
  BOOST_TEST((unsharded.cache.lengths != full.lengths), name << ": the policy compressed nothing, so the comparison proves little");
  if (!fill.aligned_heads) {  // some layer's heads end at different positions, or the test proves little
    bool newest_differs = false;
    for (index_t s = 0; s < S; ++s)
      for (index_t l = 0; l < L; ++l)
        for (index_t h = 1; h < H; ++h) newest_differs = newest_differs || full.length(s, l, h) != full.length(s, l, 0);
    BOOST_TEST(newest_differs, name);
  }
  for (const int ranks : {1, 2, 4}) {
    const std::string difference = first_difference<state_bytes>(run_shards(policy, full, w, ranks, true, false, steps), unsharded);
    BOOST_TEST(difference.empty(), name << " seed " << seed << ": " << difference);
  }
  if constexpr (Policy::shares_scores_across_kv_heads && kc::layer_by_layer_prefill_v<Policy>) {  // the reduction handed on layer by layer too
    const std::string difference = first_difference<state_bytes>(run_shards(policy, full, w, 2, true, true, steps), unsharded);
    BOOST_TEST(difference.empty(), name << " seed " << seed << " layer by layer: " << difference);
  }
  return !first_difference<state_bytes>(run_shards(policy, full, w, 4, false, false, steps), unsharded).empty();
}

/// Runs shards_match_one_session() over @p seeds, with @p decode_count decode steps after the prefill,
/// over caches filled by @p fill; without the group some seed must keep something else, or the group
/// is not exercised.
template <class Policy>
void check_shards(const std::string& name, const Policy& policy, index_t decode_count = 0,
                  const kvtest::fill_options& fill = shard_fill(Policy::shares_scores_across_kv_heads), std::initializer_list<std::uint32_t> seeds = {5u, 6u}) {
  bool ungrouped_differs = false;
  for (const std::uint32_t seed : seeds) ungrouped_differs = shards_match_one_session(name, policy, seed, decode_count, fill) || ungrouped_differs;
  BOOST_TEST(ungrouped_differs, name << ": shards without the group keep what one session keeps, so the group is not exercised");
}

}  // namespace

BOOST_AUTO_TEST_CASE(shards_keep_what_one_session_keeps) {
  check_shards("snapkv", pol::snapkv(12, 4, 3));
  check_shards("h2o", pol::h2o(12, 4), 0, shard_fill(false), {5u});  // one seed each for the top-k policies after SnapKV
  check_shards("corm", pol::corm(4, 4));
  check_shards("bounded_memory", pol::bounded_memory(12, 4), 0, shard_fill(false), {6u});
  check_shards("adakv", pol::adakv(12, 4));  // the layer-wide ranking spans every rank's heads
}

// Ada-KV with every head holding the same keys, values and window queries: the layer's ranking ties
// across heads and ranks at its threshold, where the lower heads take the tied candidates first (the
// ranks before this one tell how many they took), layer by layer too.
BOOST_AUTO_TEST_CASE(adakv_ties_across_ranks_go_to_the_lower_heads) {
  const auto policy = pol::adakv(12, 4);
  constexpr std::size_t state_bytes = sizeof(typename kc::cuda::session<decltype(policy), T, layout_type>::state_type);
  kvtest::fill_options fill;
  fill.min_length = 20;
  auto exact = kvtest::make_random_cache<float>({S, L, H, CAP, D}, fill, 11);
  kvtest::round_to_exact_values(exact);
  auto w = kvtest::make_random_window(S, L, H * G, ROWS, D, {CAP - 1, CAP - 1}, 1.5, 14);
  kvtest::round_to_exact_values(w);
  for (index_t s = 0; s < S; ++s)
    for (index_t l = 0; l < L; ++l) {
      for (index_t h = 1; h < H; ++h) {
        exact.lengths[static_cast<std::size_t>(exact.head_index(s, l, h))] = static_cast<std::int32_t>(exact.length(s, l, 0));
        for (index_t j = 0; j < CAP; ++j) {
          float k[D], v[D];
          for (index_t d = 0; d < D; ++d) {
            k[d] = static_cast<float>(exact.key(s, l, 0, j, d));
            v[d] = static_cast<float>(exact.value(s, l, 0, j, d));
          }
          exact.set_slot(s, l, h, j, k, v, exact.position(s, l, 0, j));
        }
      }
      for (index_t g = G; g < H * G; ++g)
        for (index_t r = 0; r < ROWS; ++r) std::memcpy(w.queries.data() + (w.query(s, l, g, r) - w.queries.data()), w.query(s, l, g % G, r), sizeof(float) * D);
    }
  const auto full = kvtest::convert_cache<T>(exact);
  const shard_result unsharded = run_shards(policy, full, w, 1, false).front();
  bool uneven = false;  // tied heads end with different lengths only when the ties are split between heads
  for (index_t h = 1; h < H; ++h) uneven = uneven || unsharded.cache.length(0, 0, h) != unsharded.cache.length(0, 0, 0);
  BOOST_TEST(uneven, "the layer's threshold ties no candidates across heads, so the test proves little");
  for (const int ranks : {2, 4})
    for (const bool by_layer : {false, true}) {
      const std::string difference = first_difference<state_bytes>(run_shards(policy, full, w, ranks, true, by_layer), unsharded);
      BOOST_TEST(difference.empty(), "ranks " << ranks << (by_layer ? " layer by layer: " : ": ") << difference);
    }
}

BOOST_AUTO_TEST_CASE(adakv_layer_by_layer_shards_keep_what_one_session_keeps) {
  const auto policy = pol::adakv(12, 4);
  constexpr std::size_t state_bytes = sizeof(typename kc::cuda::session<decltype(policy), T, layout_type>::state_type);
  kvtest::fill_options fill;
  fill.min_length = 14;
  const auto full = kvtest::convert_cache<T>([&] {
    auto exact = kvtest::make_random_cache<float>({S, L, H, CAP, D}, fill, 8);
    kvtest::round_to_exact_values(exact);
    return exact;
  }());
  auto w = kvtest::make_random_window(S, L, H * G, ROWS, D, {CAP - 1, CAP - 1}, 1.5, 9);
  kvtest::round_to_exact_values(w);
  const shard_result unsharded = run_shards(policy, full, w, 1, false).front();
  for (const int ranks : {2, 4}) {
    const std::string difference = first_difference<state_bytes>(run_shards(policy, full, w, ranks, true, true), unsharded);
    BOOST_TEST(difference.empty(), "ranks " << ranks << ": " << difference);
  }
}

// WindowKV: a window's score averages every query head of the layer, over every rank's heads (here 2
// layers of one group: layer 1 follows layer 0's windows), in both task modes; slots out of position
// order, so the windows follow each head's slot order.
BOOST_AUTO_TEST_CASE(windowkv_shards_keep_the_same_windows) {
  kvtest::fill_options fill = shard_fill(true);  // WindowKV's heads hold the same positions
  fill.min_length = 24;
  fill.shuffle_slots = true;
  check_shards("windowkv localization", pol::windowkv(12, 2, kc::selectors::task_type::localization, 4, ROWS), 0, fill, {5u});
  check_shards("windowkv aggregation", pol::windowkv(12, 2, kc::selectors::task_type::aggregation, 4, ROWS), 0, fill, {6u});
}

// Scores shared across the KV heads of a layer: every query head of the model adds to a slot's score,
// at prefill and in each decode step's state update.
BOOST_AUTO_TEST_CASE(shared_scores_keep_what_one_session_keeps_over_decode) {
  constexpr index_t steps = 3;  // attend, observe, attend
  check_shards("tova", pol::tova(12), steps);
  check_shards("prefixkv", pol::prefixkv(kc::budgets::layer_table::fractions(std::vector<double>{0.4, 0.5})), steps);
  check_shards("elastic_cache", pol::elastic_cache(0.5), steps);
}

/// A layer-scope cooperative selector that is no kvcompact::rank_summing_selector: WindowKV's windows
/// with the stage that sums them over the ranks hidden.
struct windows_without_rank_sums : kc::selectors::windows<kc::budgets::group_pyramid> {
  /// Hides the rank-summing stage.
  template <class Ctx>
  index_t rank_sum_count(const Ctx&) const = delete;
};

BOOST_AUTO_TEST_CASE(bad_groups_and_unreduced_policies_are_refused) {
  kvtest::fill_options fill;
  fill.min_length = 14;
  fill.aligned_heads = true;  // shared scores need slot-aligned heads
  const auto full = kvtest::make_random_cache<T>({S, L, H, CAP, D}, fill, 7);
  const kvtest::device_cache<T, layout_type> device(kvtest::copy_into(full, full.layout));
  const kc::attention_shape shape{H * G};
  turn_taking_ranks two(2);
  const auto refuses = [&](const auto& policy, const char* what) {
    using session_type = kc::cuda::session<std::remove_cvref_t<decltype(policy)>, T, layout_type>;
    kvtest::device_session_storage<session_type> storage(device.layout.layout, shape, ROWS);
    session_type session(policy, device.view(), shape, storage.state.bytes(), storage.workspace.bytes(), nullptr, ROWS);
    kvtest::expect_error([&] { session.set_rank_group(two.group(1)); }, "policy", what);
    session.set_rank_group(kc::cuda::device_rank_group{});  // one rank: accepted
  };
  refuses(pol::adakv({.budget = 12, .window = 4, .strict = true}), "exact-total repair");
  const auto windows = pol::windowkv(12, 2).selector;
  refuses(kc::policy<kc::scorers::last_query, windows_without_rank_sums>{{}, {windows}, {}}, "layer-scope cooperative");

  using session_type = kc::cuda::session<decltype(pol::snapkv(12, 4)), T, layout_type>;
  kvtest::device_session_storage<session_type> storage(device.layout.layout, shape, ROWS);
  session_type session(pol::snapkv(12, 4), device.view(), shape, storage.state.bytes(), storage.workspace.bytes(), nullptr, ROWS);
  kvtest::expect_error([&] { session.set_rank_group({0, 0, nullptr, nullptr}); }, "group.ranks", "at least 1");
  kvtest::expect_error([&] { session.set_rank_group({2, 2, nullptr, two.group(0).all_reduce_sum}); }, "group.rank", "outside [0, 2)");
  kvtest::expect_error([&] { session.set_rank_group({2, 1, nullptr, nullptr}); }, "group.all_reduce_sum", "null pointer");
  session.set_rank_group(two.group(1));  // a policy with head-scope decisions: accepted
}

#include "support/gpu_main.hpp"
