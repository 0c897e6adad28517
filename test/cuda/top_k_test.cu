// SPDX-License-Identifier: Apache-2.0
// GPU test: the grid-wide top-k (cuda/detail/top_k.cuh, launch_top_k) against a plain host
// reference that sorts each scope's eligible items by (key descending, segment, index) and keeps
// the first k. Random keys with many exact ties at the threshold (ranked across tiles), k = 0,
// negative and above the candidates, a key floor, candidate flags, a flag index, NaN keys,
// segments of different lengths over several 2,048-item tiles, unaligned key rows, and a layer
// scope ranking several segments jointly with per-segment counts. Also the decoupled look-back
// (cuda/detail/look_back.cuh) on hand-built tile statuses; under the emulator, with statuses that
// another "block" publishes only while the look-back waits.
#define BOOST_TEST_NO_MAIN
#define BOOST_TEST_ALTERNATIVE_INIT_API
#include <boost/test/unit_test.hpp>

#include <kvcompact/cuda/detail/top_k.cuh>

#include "support/device_cache.hpp"

#include <atomic>
#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <string>
#include <vector>

namespace kc = kvcompact;
namespace kd = kvcompact::cuda::detail;
using kc::index_t;

namespace {

/// A top-k request held on the host.
struct top_k_case {
  index_t segments = 1, per_scope = 1, max_items = 0, stride = 0;
  std::vector<float> keys;                 // [segments][stride]
  std::vector<std::int32_t> counts;        // [segments]
  std::vector<std::int32_t> k;             // [scopes]
  float floor = -std::numeric_limits<float>::infinity();
  std::vector<std::uint8_t> candidates;    // empty or [segments][stride]
  std::vector<std::int32_t> flag_index;    // empty or [segments][stride] (a permutation of each segment's [0, stride))
  std::vector<std::uint8_t> initial_flags; // [segments][stride]
  index_t layers = 1, heads = 1;           // naming of NaN faults
  index_t key_offset = 0;                  // keys start this many floats into their buffer (misaligns the rows)
};

struct top_k_result {
  std::vector<std::uint8_t> flags;  // [segments][stride]
  std::vector<std::int32_t> kept;   // [segments]
  kd::device_status status{};
};

std::size_t at(index_t segment, index_t stride, index_t i) { return static_cast<std::size_t>(segment * stride + i); }

/// Plain reference: per scope, the eligible items sorted best first, the first k kept.
top_k_result reference(const top_k_case& c) {
  top_k_result r;
  r.flags = c.initial_flags;
  r.kept.assign(static_cast<std::size_t>(c.segments), 0);
  struct item {
    float key;
    index_t segment, index;
  };
  for (index_t scope = 0; scope < c.segments / c.per_scope; ++scope) {
    std::vector<item> items;
    for (index_t s = scope * c.per_scope; s < (scope + 1) * c.per_scope; ++s)
      for (index_t i = 0; i < std::min<index_t>(c.counts[static_cast<std::size_t>(s)], c.max_items); ++i) {
        const float key = c.keys[at(s, c.stride, i)];
        const bool candidate = c.candidates.empty() || c.candidates[at(s, c.stride, i)] != 0;
        if (candidate && !std::isnan(key) && key >= c.floor) items.push_back({key, s, i});
      }
    std::sort(items.begin(), items.end(), [](const item& a, const item& b) {
      if (a.key != b.key) return a.key > b.key;  // -0 == +0
      return a.segment != b.segment ? a.segment < b.segment : a.index < b.index;
    });
    const index_t k = std::max<index_t>(0, c.k[static_cast<std::size_t>(scope)]);
    for (index_t n = 0; n < std::min<index_t>(k, static_cast<index_t>(items.size())); ++n) {
      const item& it = items[static_cast<std::size_t>(n)];
      const index_t where = c.flag_index.empty() ? it.index : c.flag_index[at(it.segment, c.stride, it.index)];
      r.flags[at(it.segment, c.stride, where)] = 1;
      ++r.kept[static_cast<std::size_t>(it.segment)];
    }
  }
  return r;
}

/// Runs launch_top_k on the device (or the emulator).
top_k_result run(const top_k_case& c) {
  std::vector<float> padded(static_cast<std::size_t>(c.key_offset), 0.0f);
  padded.insert(padded.end(), c.keys.begin(), c.keys.end());
  kvtest::device_array<float> keys(padded);
  kvtest::device_array<std::int32_t> counts(c.counts), k(c.k);
  kvtest::device_array<std::uint8_t> candidates(c.candidates), flags(c.initial_flags);
  kvtest::device_array<std::int32_t> flag_index(c.flag_index);
  kvtest::device_array<std::int32_t> kept(std::vector<std::int32_t>(static_cast<std::size_t>(c.segments), -5));  // garbage: must be overwritten
  kvtest::device_array<kd::device_status> status(std::vector<kd::device_status>(1, kd::device_status{}));
  kvtest::device_array<std::byte> workspace(kd::top_k_workspace_bytes(c.segments, c.per_scope, c.max_items));
  kd::top_k_problem p;
  p.keys = {keys.data() + c.key_offset, c.stride};
  p.counts = counts.data();
  p.segments = c.segments;
  p.segments_per_scope = c.per_scope;
  p.max_items = c.max_items;
  p.k = k.data();
  p.floor = c.floor;
  if (!c.candidates.empty()) p.candidates = {candidates.data(), c.stride};
  p.flags = {flags.data(), c.stride};
  if (!c.flag_index.empty()) p.flag_index = {flag_index.data(), c.stride};
  p.kept = kept.data();
  p.status = status.data();
  p.segment_layers = c.layers;
  p.segment_heads = c.heads;
  kd::launch_top_k(p, workspace.bytes(), nullptr, "top_k_test");
  KVCOMPACT_CUDA_CHECK(cudaDeviceSynchronize());
  return {flags.download(), kept.download(), status.download()[0]};
}

/// Compares device and reference; names the first differing item.
void check_matches(const std::string& name, const top_k_case& c) {
  const top_k_result want = reference(c), got = run(c);
  BOOST_TEST_CONTEXT(name) {
    std::size_t wrong = 0, first = 0;
    for (std::size_t i = 0; i < want.flags.size(); ++i)
      if (want.flags[i] != got.flags[i] && wrong++ == 0) first = i;
    BOOST_TEST(wrong == 0u, wrong << " flags differ, first at segment " << first / static_cast<std::size_t>(c.stride) << " slot "
                                  << first % static_cast<std::size_t>(c.stride) << ": device " << int(got.flags[first]) << ", reference "
                                  << int(want.flags[first]));
    BOOST_TEST(got.kept == want.kept, "kept counts per segment differ");
  }
}

/// A case with @p segments segments of the given counts and random keys from @p draw.
template <class Draw>
top_k_case make_case(const std::vector<std::int32_t>& counts, index_t per_scope, index_t stride, std::mt19937& rng, Draw&& draw) {
  top_k_case c;
  c.segments = static_cast<index_t>(counts.size());
  c.per_scope = per_scope;
  c.counts = counts;
  c.max_items = *std::max_element(counts.begin(), counts.end());
  c.stride = stride;
  c.keys.resize(static_cast<std::size_t>(c.segments * stride));
  for (float& key : c.keys) key = draw(rng);
  c.initial_flags.assign(c.keys.size(), 0);
  c.k.assign(static_cast<std::size_t>(c.segments / per_scope), 0);
  return c;
}

/// Keys in [-1, 1) from 2^24 levels: ties are rare.
float distinct_key(std::mt19937& rng) { return static_cast<float>(kvtest::uniform_int(rng, 0, (1 << 24) - 1)) / 8388608.0f - 1.0f; }
/// Keys from eight values (signed zeros and infinities included): almost every threshold is a tie.
float tied_key(std::mt19937& rng) {
  static const float values[] = {-1.0f, -0.0f, 0.0f, 0.5f, 1.0f, 2.0f, std::numeric_limits<float>::infinity(), -std::numeric_limits<float>::infinity()};
  return values[kvtest::uniform_int(rng, 0, 7)];
}

const std::vector<std::int32_t> ragged_counts = {0, 1, 2047, 2048, 4100, 5000, 3000};

}  // namespace

BOOST_AUTO_TEST_CASE(distinct_keys_per_head_over_several_tiles) {
  std::mt19937 rng(101);
  for (int trial = 0; trial < 3; ++trial) {
    top_k_case c = make_case(ragged_counts, 1, 5000, rng, distinct_key);
    for (std::size_t s = 0; s < c.k.size(); ++s) c.k[s] = static_cast<std::int32_t>(kvtest::uniform_int(rng, 0, c.counts[s]));
    check_matches("distinct keys, trial " + std::to_string(trial), c);
  }
}

BOOST_AUTO_TEST_CASE(exact_ties_at_the_threshold_are_ranked_by_position_across_tiles) {
  std::mt19937 rng(202);
  for (int trial = 0; trial < 4; ++trial) {
    top_k_case c = make_case(ragged_counts, 1, 5000, rng, tied_key);
    for (std::size_t s = 0; s < c.k.size(); ++s) c.k[s] = static_cast<std::int32_t>(kvtest::uniform_int(rng, 0, c.counts[s]));
    check_matches("tied keys, trial " + std::to_string(trial), c);
  }
  // Every key equal: the whole ranking is by position.
  top_k_case c = make_case({4500, 4500}, 1, 4500, rng, [](std::mt19937&) { return 0.25f; });
  c.k = {1, 4321};
  check_matches("all keys equal", c);
}

BOOST_AUTO_TEST_CASE(k_of_zero_negative_all_and_beyond_the_candidates) {
  std::mt19937 rng(303);
  top_k_case c = make_case({3000, 3000, 3000, 3000, 3000, 0}, 1, 3000, rng, tied_key);
  c.k = {0, -3, 3000, 3001, std::numeric_limits<std::int32_t>::max(), 5};
  check_matches("k extremes, tied keys", c);
  top_k_case d = make_case({3000, 3000, 3000, 3000, 3000, 0}, 1, 3000, rng, distinct_key);
  d.k = {0, -3, 3000, 3001, std::numeric_limits<std::int32_t>::max(), 5};
  check_matches("k extremes, distinct keys", d);
}

BOOST_AUTO_TEST_CASE(floor_candidates_and_flag_index_select_only_eligible_items_and_touch_only_their_flags) {
  std::mt19937 rng(404);
  top_k_case c = make_case({2500, 4096, 1000}, 1, 4096, rng, tied_key);
  c.floor = 0.25f;
  c.candidates.resize(c.keys.size());
  for (auto& flag : c.candidates) flag = kvtest::uniform_int(rng, 0, 9) < 7 ? 1 : 0;
  c.flag_index.resize(c.keys.size());
  for (index_t s = 0; s < c.segments; ++s) {
    std::vector<std::int32_t> perm(static_cast<std::size_t>(c.stride));
    for (std::size_t i = 0; i < perm.size(); ++i) perm[i] = static_cast<std::int32_t>(i);
    kvtest::shuffle_portable(perm, rng);
    std::copy(perm.begin(), perm.end(), c.flag_index.begin() + s * c.stride);
  }
  for (auto& flag : c.initial_flags) flag = kvtest::uniform_int(rng, 0, 3) == 0 ? 7 : 0;  // flags already set stay
  c.k = {900, 1200, 1000};
  check_matches("floor, candidates, flag index", c);
}

BOOST_AUTO_TEST_CASE(a_layer_scope_ranks_its_segments_jointly) {
  std::mt19937 rng(505);
  for (int trial = 0; trial < 3; ++trial) {
    top_k_case c = make_case({1500, 2049, 0, 700, 2600, 2600}, 3, 2600, rng, trial == 0 ? distinct_key : tied_key);
    c.k = {static_cast<std::int32_t>(kvtest::uniform_int(rng, 0, 3549)), static_cast<std::int32_t>(kvtest::uniform_int(rng, 0, 5900))};
    check_matches("layer scope, trial " + std::to_string(trial), c);
  }
}

BOOST_AUTO_TEST_CASE(unaligned_key_rows_take_scalar_loads) {
  std::mt19937 rng(606);
  top_k_case c = make_case({2100, 2301, 2222}, 1, 2301, rng, tied_key);  // odd stride: rows start off 16 bytes
  c.key_offset = 1;
  c.k = {700, 2000, 1};
  check_matches("unaligned rows", c);
}

BOOST_AUTO_TEST_CASE(nan_keys_are_reported_and_never_kept) {
  std::mt19937 rng(707);
  top_k_case c = make_case({2500, 2500, 2500, 2500}, 1, 2500, rng, distinct_key);
  c.layers = 2;
  c.heads = 2;  // segment 3 = sequence 0, layer 1, head 1
  const std::size_t nan_at = at(3, c.stride, 1234);
  c.keys[nan_at] = std::numeric_limits<float>::quiet_NaN();
  c.k = {100, 2500, 2500, 2500};
  check_matches("NaN key", c);
  const top_k_result got = run(c);
  BOOST_TEST(got.status.fault == static_cast<std::int32_t>(kd::device_fault::nan_score));
  BOOST_TEST(got.status.sequence == 0);
  BOOST_TEST(got.status.layer == 1);
  BOOST_TEST(got.status.head == 1);
  BOOST_TEST(got.status.slot == 1234);
  BOOST_TEST(got.kept[3] == 2499);
}

BOOST_AUTO_TEST_CASE(bad_arguments_are_refused_on_the_host) {
  kd::top_k_problem p;
  std::vector<std::byte> scratch(1 << 16);
  BOOST_CHECK_THROW(kd::launch_top_k(p, scratch, nullptr), kc::error);
}

// ---------------------------------------------------------------------------------------------
// The decoupled look-back on hand-built statuses.
// ---------------------------------------------------------------------------------------------

namespace {
/// Grid (tiles), one warp each: look_back of every tile t > 0 into out[t].
__global__ void look_back_kernel(const kd::tile_status* statuses, unsigned full_count, unsigned* out) {
  const unsigned exclusive = kd::look_back(statuses, blockIdx.x + 1, full_count);
  if (threadIdx.x == 0) out[blockIdx.x + 1] = exclusive;
}

std::vector<unsigned> run_look_back(const std::vector<kd::tile_status>& statuses, unsigned full_count) {
  kvtest::device_array<kd::tile_status> words(statuses);
  kvtest::device_array<unsigned> out(std::vector<unsigned>(statuses.size(), 0u));
  kd::launch(&look_back_kernel, dim3(static_cast<unsigned>(statuses.size() - 1)), 32, 0, nullptr, words.data(), full_count, out.data());
  KVCOMPACT_CUDA_CHECK(cudaDeviceSynchronize());
  return out.download();
}
}  // namespace

BOOST_AUTO_TEST_CASE(look_back_sums_counts_down_to_the_nearest_inclusive_prefix) {
  std::mt19937 rng(808);
  constexpr unsigned full = 64;
  for (int trial = 0; trial < 4; ++trial) {
    const std::size_t tiles = 150;
    std::vector<unsigned> counts(tiles);
    for (auto& n : counts) n = static_cast<unsigned>(kvtest::uniform_int(rng, 0, full));
    std::vector<kd::tile_status> statuses(tiles);
    unsigned inclusive = 0;
    bool dropped_below = false;
    for (std::size_t t = 0; t < tiles; ++t) {
      inclusive += counts[t];
      const auto draw = kvtest::uniform_int(rng, 0, 9);
      if (t == 0 || draw < 2 + trial) statuses[t] = kd::tile_prefix_ready | inclusive;
      else statuses[t] = kd::tile_count_ready | counts[t] | (counts[t] == full && !dropped_below ? kd::tile_rows_unread : 0ull);  // unread rows that stay
      dropped_below |= counts[t] < full;
    }
    const std::vector<unsigned> got = run_look_back(statuses, full);
    unsigned before = 0;
    for (std::size_t t = 1; t < tiles; ++t) {
      before += counts[t - 1];
      BOOST_TEST(got[t] == before, "trial " << trial << " tile " << t);
    }
  }
}

#if defined(KVCOMPACT_CUDA_EMULATION)
// Under the emulator a waiting lane yields at every acquire load, and kvemu::spin_hook() runs there:
// it plays the block that publishes late.
BOOST_AUTO_TEST_CASE(look_back_waits_for_late_counts_and_for_unread_rows_that_move) {
  constexpr unsigned full = 8;
  // Tiles 0-3: prefix 8 | count 5 (dropped) | count 8, rows unread | count 8, rows unread. Tile 2's and
  // 3's rows move (tile 1 dropped), so tile 4 must wait until both publish their prefixes.
  std::vector<kd::tile_status> statuses = {kd::tile_prefix_ready | 8u, 0ull, kd::tile_count_ready | kd::tile_rows_unread | full,
                                           kd::tile_count_ready | kd::tile_rows_unread | full, 0ull};
  kvtest::device_array<kd::tile_status> words(statuses);
  kvtest::device_array<unsigned> out(std::vector<unsigned>(5, 0u));
  // The hook runs on every block's thread: the count is atomic and the words are published as a
  // block would publish them (release stores), so the race detector sees no race of the test's own.
  std::atomic<int> spins = 0;
  kvemu::spin_hook() = [&] {
    const int spin = ++spins;
    kd::tile_status* w = words.data();
    if (spin == 50) kvemu::store_release(w + 1, kd::tile_count_ready | 5u);     // tile 1's count arrives late
    if (spin == 400) kvemu::store_release(w + 2, kd::tile_prefix_ready | 21u);  // tiles 2 and 3 finish reading
    if (spin == 900) kvemu::store_release(w + 3, kd::tile_prefix_ready | 29u);
  };
  kd::launch(&look_back_kernel, dim3(4), 32, 0, nullptr, words.data(), full, out.data());
  kvemu::spin_hook() = nullptr;
  const std::vector<unsigned> got = out.download();
  BOOST_TEST(got[4] == 29u);
  BOOST_TEST(spins.load() >= 900, "the look-back of tile 4 returned before tile 3 published its prefix");
}

BOOST_AUTO_TEST_CASE(look_back_does_not_wait_for_unread_rows_that_stay) {
  constexpr unsigned full = 8;
  // Nothing below tiles 1-2 dropped a slot: their rows stay, tile 3 needs nothing from them.
  std::vector<kd::tile_status> statuses = {kd::tile_prefix_ready | 8u, kd::tile_count_ready | kd::tile_rows_unread | full,
                                           kd::tile_count_ready | kd::tile_rows_unread | full, 0ull};
  kvtest::device_array<kd::tile_status> words(statuses);
  kvtest::device_array<unsigned> out(std::vector<unsigned>(4, 0u));
  std::atomic<int> spins = 0;
  kvemu::spin_hook() = [&] {
    if (++spins > 100000) kvemu::fail("look_back waits for rows that stay in place");
  };
  kd::launch(&look_back_kernel, dim3(3), 32, 0, nullptr, words.data(), full, out.data());
  kvemu::spin_hook() = nullptr;
  BOOST_TEST(out.download()[3] == 24u);
}
#endif

#include "support/gpu_main.hpp"
