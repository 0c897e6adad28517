// SPDX-License-Identifier: Apache-2.0
// GPU test: the multi-block in-place compaction (cuda/detail/compaction.cuh, launch_compaction)
// against a plain host reference, for every layout kind: BHSD and BSHD strided, paged (NHD and HND,
// device page table), layer-condensed, dimensions interleaved across heads (dim_stride > 1), a user
// layout whose padded rows are mostly not 16-byte aligned, rows that are not a whole number of
// 16-byte chunks, and rows so long that a tile holds 16 slots. Keep patterns per head cover random
// shares, everything, nothing, kept prefixes (tiles that stay in place), runs of whole tiles that
// move, and a single survivor; heads span several tiles. Checked: kept K and V rows bit-identical
// and in slot order, positions moved, decode states and budgets written, new lengths, a faulted
// layer left as it was, and not one element, position or state written outside the new rows.
#define BOOST_TEST_NO_MAIN
#define BOOST_TEST_ALTERNATIVE_INIT_API
#include <boost/test/unit_test.hpp>

#include <kvcompact/cuda/detail/compaction.cuh>
#include <kvcompact/layouts/layer_condensed.hpp>
#include <kvcompact/policies.hpp>

#include "support/device_cache.hpp"

#include <cstdint>
#include <random>
#include <string>
#include <type_traits>
#include <vector>

namespace kc = kvcompact;
namespace kd = kvcompact::cuda::detail;
using kc::index_t;

namespace {

const auto policy = kc::policies::h2o(/*budget*/ 40, /*recent*/ 4);
using state_type = float;

/// Keep flags of one head by pattern: see the file comment.
std::vector<std::uint8_t> keep_pattern(int pattern, index_t capacity, index_t tile_slots, std::mt19937& rng) {
  std::vector<std::uint8_t> keep(static_cast<std::size_t>(capacity), 0);
  for (index_t j = 0; j < capacity; ++j) {
    bool kept = false;
    switch (pattern) {
      case 0: kept = kvtest::uniform_int(rng, 0, 3) == 0; break;                                         // 25 %
      case 1: kept = true; break;                                                                         // all
      case 2: kept = false; break;                                                                        // none
      case 3: kept = j < capacity * 3 / 5 || kvtest::uniform_int(rng, 0, 9) < 3; break;                   // prefix stays
      case 4: kept = kvtest::uniform_int(rng, 0, 9) != 0; break;                                         // 90 %
      case 5: kept = (j / tile_slots) % 2 == 0 || (j % tile_slots) < tile_slots / 2; break;              // whole tiles move
      default: kept = j == capacity - 1; break;                                                           // one survivor
    }
    keep[static_cast<std::size_t>(j)] = kept ? 1 : 0;
  }
  return keep;
}

/// Compacts @p host on the device and checks the result against the reference. The layer
/// (sequence num_sequences - 1, layer 0) is marked faulted and must stay as it was; the others move.
template <class T, class Layout>
void check_compaction(const std::string& name, const kvtest::layout_cache<T, Layout>& host, std::uint32_t seed) {
  const Layout& layout = host.layout;
  const index_t S = layout.num_sequences(), L = layout.num_layers(), H = layout.num_kv_heads(), cap = layout.capacity(), D = layout.head_dim();
  const index_t heads = S * L * H;
  const index_t tile_slots = kd::compaction_tile_slots(D, sizeof(T));
  std::mt19937 rng(seed);
  std::vector<std::uint8_t> keep;
  for (index_t head = 0; head < heads; ++head) {
    const auto flags = keep_pattern(static_cast<int>(head % 7), cap, tile_slots, rng);
    keep.insert(keep.end(), flags.begin(), flags.end());
  }
  std::vector<float> scores(static_cast<std::size_t>(heads * cap));
  for (float& x : scores) x = static_cast<float>(kvtest::uniform_pm1(rng));
  std::vector<std::int32_t> step(static_cast<std::size_t>(S * L)), faults(static_cast<std::size_t>(S * L), 0);
  for (auto& x : step) x = static_cast<std::int32_t>(kvtest::uniform_int(rng, 0, 5000));
  BOOST_REQUIRE_MESSAGE(S * L >= 2, name << ": needs two (sequence, layer) pairs, one of them faulted");
  faults[static_cast<std::size_t>((S - 1) * L)] = 1;
  constexpr state_type untouched_state = -7.5f;
  constexpr std::int32_t untouched_budget = -1;

  kvtest::device_cache<T, Layout> device(host);
  kvtest::device_array<std::uint8_t> keep_d(keep);
  kvtest::device_array<float> scores_d(scores);
  kvtest::device_array<std::int32_t> step_d(step), faults_d(faults);
  kvtest::device_array<state_type> states_d(std::vector<state_type>(static_cast<std::size_t>(heads * cap), untouched_state));
  kvtest::device_array<std::int32_t> budgets_d(std::vector<std::int32_t>(static_cast<std::size_t>(heads), untouched_budget));
  kvtest::device_array<kd::device_status> status_d(std::vector<kd::device_status>(1, kd::device_status{}));
  kvtest::device_array<std::byte> scratch(kd::compaction_workspace_bytes(heads, cap, tile_slots));
  kd::prefill_problem<T, Layout, state_type> p{};
  p.cache = device.view();
  p.keep = keep_d.data();
  p.scores = scores_d.data();
  p.step = step_d.data();
  p.layer_faults = faults_d.data();
  p.states = states_d.data();
  p.budgets = budgets_d.data();
  p.status = status_d.data();
  p.first_layer = 0;  // every layer in one call
  p.grid_layers = device.layout.layout.num_layers();
  kd::launch_compaction(p, policy, scratch.bytes(), nullptr, "compaction_test");
  KVCOMPACT_CUDA_CHECK(cudaDeviceSynchronize());
  const auto after = device.download(host);
  const std::vector<state_type> states = states_d.download();
  const std::vector<std::int32_t> budgets = budgets_d.download();

  BOOST_TEST_CONTEXT(name) {
    BOOST_TEST(status_d.download()[0].fault == 0);
    std::vector<std::uint8_t> written_key(host.keys.size(), 0);
    std::size_t wrong_rows = 0, wrong_positions = 0, wrong_states = 0, stray = 0;
    for (index_t s = 0; s < S; ++s)
      for (index_t l = 0; l < L; ++l)
        for (index_t h = 0; h < H; ++h) {
          const index_t head = host.head_index(s, l, h);
          const auto slot_at = [&](index_t j) { return static_cast<std::size_t>(head * cap + j); };
          const index_t n = host.lengths[static_cast<std::size_t>(head)];
          const bool faulted = faults[static_cast<std::size_t>(s * L + l)] != 0;
          std::vector<index_t> kept;
          for (index_t j = 0; j < n; ++j)
            if (keep[slot_at(j)] != 0) kept.push_back(j);
          const index_t length = faulted ? n : static_cast<index_t>(kept.size());
          BOOST_TEST(after.lengths[static_cast<std::size_t>(head)] == length, "head " << head);
          BOOST_TEST(budgets[static_cast<std::size_t>(head)] == (faulted ? untouched_budget : policy.selector.budget(l, L, n)), "head " << head);
          for (index_t i = 0; i < cap; ++i) {
            const bool moved = !faulted && i < length;
            const index_t from = moved ? kept[static_cast<std::size_t>(i)] : i;
            wrong_positions += after.positions[slot_at(i)] != host.positions[slot_at(from)];
            const state_type want = moved ? policy.scorer.state_from_prefill(scores[slot_at(from)], host.positions[slot_at(from)], step[static_cast<std::size_t>(s * L + l)])
                                          : untouched_state;
            wrong_states += states[slot_at(i)] != want;
            if (!moved) continue;
            for (index_t d = 0; d < D; ++d) {
              const auto to_e = static_cast<std::size_t>(after.element(s, l, h, i, d)), from_e = static_cast<std::size_t>(host.element(s, l, h, from, d));
              wrong_rows += kvtest::element_bits(after.keys[to_e]) != kvtest::element_bits(host.keys[from_e]) ||
                            kvtest::element_bits(after.values[to_e]) != kvtest::element_bits(host.values[from_e]);
              written_key[to_e] = 1;
            }
          }
        }
    for (std::size_t e = 0; e < host.keys.size(); ++e)
      if (!written_key[e])
        stray += kvtest::element_bits(after.keys[e]) != kvtest::element_bits(host.keys[e]) ||
                 kvtest::element_bits(after.values[e]) != kvtest::element_bits(host.values[e]);
    BOOST_TEST(wrong_rows == 0u, "kept K/V elements that differ from their source");
    BOOST_TEST(wrong_positions == 0u, "positions not moved with their rows, or written outside the new length");
    BOOST_TEST(wrong_states == 0u, "decode states wrong, or written outside the new length");
    BOOST_TEST(stray == 0u, "K/V elements written outside the new rows");
  }
}

/// A random float cache of @p shape, stored as @p T and copied into @p layout.
template <class T, class Layout>
kvtest::layout_cache<T, Layout> filled_cache(const kvtest::cache_shape& shape, const Layout& layout, std::uint32_t seed) {
  kvtest::fill_options fill;
  fill.min_length = 0;
  fill.max_length = shape.capacity;
  auto source = kvtest::make_random_cache<float>(shape, fill, seed);
  for (index_t head = 0; head < shape.sequences * shape.layers * shape.kv_heads; head += 3)
    source.lengths[static_cast<std::size_t>(head)] = static_cast<std::int32_t>(shape.capacity);  // some full heads
  if constexpr (std::is_same_v<T, float>) return kvtest::copy_into(source, layout);
  else return kvtest::copy_into(kvtest::convert_cache<T>(source), layout);
}

}  // namespace

BOOST_AUTO_TEST_CASE(strided_bhsd_bf16_rows_move_with_16_byte_accesses) {
  const kvtest::cache_shape shape{1, 2, 4, 300, 128};  // 64-slot tiles, five per head
  check_compaction("bhsd bf16 D128", filled_cache<kc::bfloat16_t>(shape, kc::layouts::bhsd(1, 2, 4, 300, 128), 11), 12);
}

BOOST_AUTO_TEST_CASE(strided_bshd_fp16) {
  const kvtest::cache_shape shape{2, 1, 3, 600, 32};  // 256-slot tiles
  check_compaction("bshd fp16 D32", filled_cache<kc::half_t>(shape, kc::layouts::bshd(2, 1, 3, 600, 32), 21), 22);
}

BOOST_AUTO_TEST_CASE(paged_fp32_with_a_device_page_table) {
  const kvtest::cache_shape shape{2, 2, 2, 512, 16};
  for (const auto format : {kc::layouts::page_format::nhd, kc::layouts::page_format::hnd}) {
    kvtest::random_paging paging;
    kvtest::make_random_paging(paging, shape, 16, format, 3, 31);
    check_compaction(format == kc::layouts::page_format::nhd ? "paged nhd fp32" : "paged hnd fp32", filled_cache<float>(shape, paging.layout, 32), 33);
  }
}

BOOST_AUTO_TEST_CASE(layer_condensed_bf16) {
  const auto map = kc::layouts::layer_map::lckv(5, 1, 1);
  const kvtest::cache_shape shape{2, map.cache_layers, 2, 200, 64};
  const kc::layouts::layer_condensed<kc::layouts::strided> layout{kc::layouts::bhsd(2, map.cache_layers, 2, 200, 64), map};
  check_compaction("layer condensed bf16 D64", filled_cache<kc::bfloat16_t>(shape, layout, 41), 42);
}

BOOST_AUTO_TEST_CASE(dimensions_interleaved_across_heads_copy_element_by_element) {
  const index_t S = 1, L = 2, H = 3, cap = 300, D = 16;
  // [sequence][layer][slot][dim][head]: dim_stride = H.
  const kc::layouts::strided layout{S, L, H, cap, D, L * cap * D * H, cap * D * H, 1, D * H, H};
  check_compaction("interleaved fp32", filled_cache<float>({S, L, H, cap, D}, layout, 51), 52);
}

BOOST_AUTO_TEST_CASE(a_user_layout_with_unaligned_rows) {
  const kvtest::cache_shape shape{2, 2, 2, 300, 32};
  check_compaction("head-major padded bf16", filled_cache<kc::bfloat16_t>(shape, head_major_padded{2, 2, 2, 300, 32}, 61), 62);
}

BOOST_AUTO_TEST_CASE(rows_that_are_not_whole_16_byte_chunks_and_rows_that_fill_a_tile_with_16_slots) {
  check_compaction("bhsd bf16 D36", filled_cache<kc::bfloat16_t>({1, 2, 4, 300, 36}, kc::layouts::bhsd(1, 2, 4, 300, 36), 71), 72);
  check_compaction("bhsd fp32 D256", filled_cache<float>({1, 2, 3, 100, 256}, kc::layouts::bhsd(1, 2, 3, 100, 256), 73), 74);
}

#include "support/gpu_main.hpp"
