// SPDX-License-Identifier: Apache-2.0
// GPU test: attend() and observe() of kvcompact::cuda::session (its decode loops with eviction:
// decode_loop_test.cu).
//  - attend() output against the double-precision reference of support/reference.hpp for every
//    element type, the compiled head dimensions (64, 128, 256) and group sizes (1, 2, 4, 8) and
//    generic ones (head_dim 40, 36 and 96; groups 3, 5 and 16), on BHSD, paged (NHD and HND, device
//    page table) and two user layouts (16-byte rows at odd offsets; an interleaved head dimension),
//    a batch whose sequences have different lengths, one that sees only part of its cache and one
//    skipped by a negative position, with and without fused scoring;
//  - observe() leaves the scorers' per-slot states of kvcompact::cpu::session (H2O, TOVA, CORM),
//    also for a group split over two blocks (16 query heads per KV head);
//  - NaN or Inf in a query, a key or a value is reported by check().
//  - the split-count model (wave efficiency) picks its documented counts and never models slower than
//    one split per head or the largest count one wave holds.
// Split counts: the emulator's GPU has 4 multiprocessors running 4 decode blocks each (16 blocks),
// so 1 to 3 sequences x 1 to 2 KV heads split every head 2 or more ways (at most one split per tile).
// Tolerances: queries and outputs are stored in T, so the reference uses the T-rounded queries and an
// output may differ from it by the rounding of T (2^-8 relative for bf16, 2^-11 for fp16, fp32 has
// only summation error) plus fp32 summation error (kvtest::output_tolerance); states agree within
// 1e-4 relative (fp32 probabilities, different summation order).
#define BOOST_TEST_NO_MAIN
#define BOOST_TEST_ALTERNATIVE_INIT_API
#include <boost/test/unit_test.hpp>

#include <kvcompact/cuda.cuh>

#include "support/backend_comparison.hpp"
#include "support/decode_values.hpp"

#include <algorithm>
#include <limits>
#include <random>
#include <string>
#include <type_traits>
#include <vector>

namespace kc = kvcompact;
using kc::index_t;
using kvtest::full_or_race_run;
using kvtest::output_tolerance;
using kvtest::rounded_values;

namespace {

template <class T>
const char* type_name() {
  if constexpr (std::is_same_v<T, kc::bfloat16_t>) return "bf16";
  else if constexpr (std::is_same_v<T, kc::half_t>) return "fp16";
  else return "fp32";
}


/// Layouts the attention test runs on.
enum class layout_kind { bhsd, paged_nhd, paged_hnd, padded_rows, interleaved_dims };

const char* layout_name(layout_kind kind) {
  switch (kind) {
    case layout_kind::bhsd: return "bhsd";
    case layout_kind::paged_nhd: return "paged nhd";
    case layout_kind::paged_hnd: return "paged hnd";
    case layout_kind::padded_rows: return "padded rows";
    case layout_kind::interleaved_dims: return "interleaved dims";
  }
  return "?";
}

/// attend() of every sequence and layer of a cache in @p layout against the double reference, with a
/// policy without scoring (StreamingLLM) and one with fused scoring (H2O).
template <class T, class Layout>
void check_attention_in_layout(const std::string& name, const kvtest::random_cache<T>& host, const Layout& layout, index_t group,
                               const std::vector<std::int32_t>& positions) {
  const index_t S = host.shape.sequences, L = host.shape.layers, H = host.shape.kv_heads, D = host.shape.head_dim, CAP = host.shape.capacity;
  const auto cache = kvtest::copy_into(host, layout);
  kvtest::device_cache<T, Layout> device(cache);
  std::mt19937 rng(7 + static_cast<std::uint32_t>(D * group));
  const rounded_values<T> queries(S * H * group * D, 1.0, rng);
  kvtest::device_array<T> d_queries(queries.stored);
  kvtest::device_array<std::int32_t> d_positions(positions);
  const T sentinel = kc::from_float<T>(123.0f);
  auto run = [&](const auto& policy, const char* policy_name) {
    BOOST_TEST_CONTEXT(name << ", " << policy_name) {
      using policy_type = std::decay_t<decltype(policy)>;
      using session_type = kc::cuda::session<policy_type, T, Layout>;
      const kc::attention_shape shape{H * group};
      kvtest::device_session_storage<session_type> storage(device.layout.layout, shape, 8);
      session_type session(policy, device.view(), shape, storage.state.bytes(), storage.workspace.bytes(), nullptr, 8);
      for (index_t l = 0; l < L; ++l) {
        kvtest::device_array<T> output(std::vector<T>(static_cast<std::size_t>(S * H * group * D), sentinel));
        session.attend(l, d_queries.data(), d_positions.data(), output.data());
        session.check("attend");
        const std::vector<T> out = output.download();
        index_t bad = 0, untouched = 0, skipped = 0;
        for (index_t s = 0; s < S; ++s)
          for (index_t g = 0; g < H * group; ++g) {
            const std::int32_t position = positions[static_cast<std::size_t>(s)];
            const float* q = queries.exact.data() + (s * H * group + g) * D;
            const std::vector<double> ref =
                position < 0 ? std::vector<double>() : kvtest::attention_output(host, s, l, g / group, q, position, kvtest::default_scale(D));
            skipped += position < 0 ? D : 0;
            for (index_t d = 0; d < D; ++d) {
              const double got = kvtest::to_double(out[static_cast<std::size_t>((s * H * group + g) * D + d)]);
              if (ref.empty()) untouched += got == 123.0;
              else bad += !kvtest::close(got, ref[static_cast<std::size_t>(d)], output_tolerance<T>(), 1e-4);
            }
          }
        BOOST_TEST(bad == 0);
        BOOST_TEST(untouched == skipped);
      }
      (void)CAP;
    }
  };
  run(kc::policies::streaming_llm(CAP), "no scoring");
  run(kc::policies::h2o(CAP, 8), "fused H2O scoring");
}

/// Three sequences of different lengths (one sees only positions <= 10, one is skipped) through
/// @p kind, head dimension @p head_dim, @p group query heads per KV head.
template <class T>
void check_attention(layout_kind kind, index_t head_dim, index_t group) {
  constexpr index_t S = 3, L = full_or_race_run(2, 1), H = 2, CAP = 96, PAGE = 16;
  kvtest::fill_options fill;
  fill.min_length = 20;
  fill.max_length = CAP;
  fill.shuffle_slots = true;
  const auto host = kvtest::make_random_cache<T>({S, L, H, CAP, head_dim}, fill, 101 + static_cast<std::uint32_t>(head_dim * group));
  const std::vector<std::int32_t> positions{CAP + 5, 10, -1};
  const std::string name = std::string(type_name<T>()) + " " + layout_name(kind) + " head_dim " + std::to_string(head_dim) + " group " +
                           std::to_string(group);
  switch (kind) {
    case layout_kind::bhsd: check_attention_in_layout(name, host, host.layout, group, positions); break;
    case layout_kind::paged_nhd:
    case layout_kind::paged_hnd: {
      kvtest::random_paging paging;
      const auto format = kind == layout_kind::paged_nhd ? kc::layouts::page_format::nhd : kc::layouts::page_format::hnd;
      kvtest::make_random_paging(paging, host.shape, PAGE, format, 3, 11);
      check_attention_in_layout(name, host, paging.layout, group, positions);
      break;
    }
    case layout_kind::padded_rows: check_attention_in_layout(name, host, head_major_padded{S, L, H, CAP, head_dim}, group, positions); break;
    case layout_kind::interleaved_dims: check_attention_in_layout(name, host, interleaved_dims{S, L, H, CAP, head_dim}, group, positions); break;
  }
}

}  // namespace

BOOST_AUTO_TEST_CASE(attention_output_matches_the_double_reference) {
  check_attention<kc::bfloat16_t>(layout_kind::bhsd, 128, 4);
  check_attention<kc::half_t>(layout_kind::paged_nhd, 64, 1);
  check_attention<float>(layout_kind::paged_hnd, 256, 8);
  check_attention<kc::half_t>(layout_kind::paged_nhd, 256, 2);
  check_attention<float>(layout_kind::paged_nhd, 64, 4);
  check_attention<kc::half_t>(layout_kind::bhsd, 128, 8);
  // with those above, every compiled (head dimension, group) variant
  check_attention<kc::bfloat16_t>(layout_kind::bhsd, 64, 2);
  check_attention<kc::half_t>(layout_kind::paged_hnd, 128, 1);
  check_attention<float>(layout_kind::paged_nhd, 128, 2);
  check_attention<kc::half_t>(layout_kind::bhsd, 256, 1);
  check_attention<kc::bfloat16_t>(layout_kind::bhsd, 256, 4);
  check_attention<kc::bfloat16_t>(layout_kind::bhsd, 64, 8);
  // Generic head dimensions and groups: zero-padded to the next compiled ones, a group of 16 in two blocks.
  check_attention<kc::bfloat16_t>(layout_kind::padded_rows, 96, 3);
  check_attention<kc::half_t>(layout_kind::bhsd, 40, 16);
  check_attention<float>(layout_kind::interleaved_dims, 36, 5);
  check_attention<kc::bfloat16_t>(layout_kind::bhsd, 36, 1);
}

namespace {

/// observe() through both backends leaves the same per-slot scorer states.
template <class T, class Layout>
void check_observed_states(const std::string& name, const kvtest::random_cache<T>& host, const Layout& layout, index_t group) {
  const index_t S = host.shape.sequences, L = host.shape.layers, H = host.shape.kv_heads, D = host.shape.head_dim, CAP = host.shape.capacity;
  std::mt19937 rng(8);
  const rounded_values<T> queries(S * H * group * D, 2.0, rng);
  const std::vector<std::int32_t> positions(static_cast<std::size_t>(S), static_cast<std::int32_t>(CAP + 1));
  auto run = [&](const auto& policy, const char* policy_name) {
    BOOST_TEST_CONTEXT(name << ", " << policy_name) {
      using policy_type = std::decay_t<decltype(policy)>;
      const kc::attention_shape shape{H * group};
      auto cpu = kvtest::copy_into(host, layout);
      kvtest::session_storage<policy_type, T, Layout> cpu_storage(cpu.layout, shape);
      kc::cpu::session<policy_type, T, Layout> reference(policy, cpu.view(), shape, cpu_storage.state_span(), cpu_storage.workspace_span());
      kvtest::device_cache<T, Layout> device(cpu);
      using session_type = kc::cuda::session<policy_type, T, Layout>;
      kvtest::device_session_storage<session_type> storage(device.layout.layout, shape, 8);
      session_type gpu(policy, device.view(), shape, storage.state.bytes(), storage.workspace.bytes(), nullptr, 8);
      kvtest::device_array<T> d_queries(queries.stored);
      kvtest::device_array<std::int32_t> d_positions(positions);
      for (int repeat = 0; repeat < 2; ++repeat)
        for (index_t l = 0; l < L; ++l) {
          gpu.observe(l, d_queries.data(), d_positions.data());
          for (index_t s = 0; s < S; ++s) reference.observe(s, l, queries.exact.data() + s * H * group * D, positions[static_cast<std::size_t>(s)]);
        }
      gpu.check("observe");
      std::vector<float> states(static_cast<std::size_t>(S * L * H * CAP));
      KVCOMPACT_CUDA_CHECK(cudaMemcpy(states.data(), gpu.slot_states(), states.size() * sizeof(float), cudaMemcpyDeviceToHost));
      index_t bad = 0, checked = 0;
      for (index_t s = 0; s < S; ++s)
        for (index_t l = 0; l < L; ++l)
          for (index_t h = 0; h < H; ++h)
            for (index_t j = 0; j < host.length(s, l, h); ++j, ++checked)
              bad += !kvtest::close(reference.slot_state(s, l, h, j), states[static_cast<std::size_t>(host.slot_index(s, l, h, j))], 1e-4, 1e-6);
      BOOST_TEST(checked > 0);
      BOOST_TEST(bad == 0);
    }
  };
  run(kc::policies::h2o(CAP, 8), "h2o");
  run(kc::policies::tova(CAP), "tova");
  run(kc::policies::corm(16, 16), "corm");
  run(kc::policies::corm_budgeted(CAP, 16), "corm_budgeted");
}

}  // namespace

BOOST_AUTO_TEST_CASE(split_count_fills_the_waves_it_starts) {
  namespace d = kc::cuda::detail;
  // The documented examples: an H200 (132 multiprocessors x 3 blocks), 32k bf16 rows of 128 (1024 tiles).
  BOOST_TEST(d::decode_split_count(8, 396, 1024, 64) == 49);
  BOOST_TEST(d::decode_split_count(64, 396, 1024, 64) == 6);
  BOOST_TEST(d::decode_split_count(256, 396, 1024, 64) == 3);
  for (index_t heads : {1, 2, 3, 7, 8, 16, 33, 64, 100, 256, 1000})
    for (index_t slots : {16, 108, 264, 396})
      for (index_t tiles : {1, 3, 40, 1024, 4096})
        for (index_t most : {1, 5, 64}) {
          const index_t bound = std::min(tiles, most);
          const index_t chosen = d::decode_split_count(heads, slots, tiles, bound);
          BOOST_TEST_CONTEXT("heads " << heads << ", slots " << slots << ", tiles " << tiles << ", most " << most) {
            BOOST_TEST((chosen >= 1 && chosen <= bound));
            // never slower (in the model) than one split per head, nor than the largest count one wave holds
            const index_t one_wave = std::clamp<index_t>(slots / heads, 1, bound);
            BOOST_TEST(d::decode_split_cost(heads, slots, tiles, chosen) <= d::decode_split_cost(heads, slots, tiles, 1));
            BOOST_TEST(d::decode_split_cost(heads, slots, tiles, chosen) <= d::decode_split_cost(heads, slots, tiles, one_wave));
            // when every allowed count fits one wave, the chosen one streams as few tiles per block as the largest
            if (heads * bound <= slots) BOOST_TEST((tiles + chosen - 1) / chosen == (tiles + bound - 1) / bound);
          }
        }
}

BOOST_AUTO_TEST_CASE(observe_leaves_the_cpu_backends_scorer_states) {
  kvtest::fill_options fill;
  fill.min_length = 60;
  fill.aligned_heads = true;  // TOVA shares one score across KV heads
  {
    fill.max_length = 150;
    const auto host = kvtest::make_random_cache<kc::bfloat16_t>({2, 2, 2, 150, 64}, fill, 202);
    check_observed_states("bf16 bhsd group 3", host, host.layout, 3);
  }
  {
    fill.max_length = 96;
    const auto host = kvtest::make_random_cache<float>({1, 1, 2, 96, 32}, fill, 203);
    kvtest::random_paging paging;
    kvtest::make_random_paging(paging, host.shape, 16, kc::layouts::page_format::nhd, 0, 12);
    check_observed_states("fp32 paged group 16", host, paging.layout, 16);
  }
}

BOOST_AUTO_TEST_CASE(non_finite_queries_keys_and_values_are_reported) {
  using T = kc::bfloat16_t;
  constexpr index_t S = 1, H = 2, G = 2, CAP = 64, D = 64;
  kvtest::fill_options fill;
  fill.min_length = fill.max_length = 40;
  const float nan = std::numeric_limits<float>::quiet_NaN(), inf = std::numeric_limits<float>::infinity();
  std::mt19937 rng(5);
  const rounded_values<T> queries(S * H * G * D, 1.0, rng);
  const std::vector<std::int32_t> positions{CAP};
  auto attend_once = [&](kvtest::random_cache<T> host, std::vector<T> q) {
    kvtest::device_cache<T, kc::layouts::strided> device(kvtest::copy_into(host, host.layout));
    const auto policy = kc::policies::h2o(CAP, 8);
    using session_type = kc::cuda::session<decltype(policy), T, kc::layouts::strided>;
    const kc::attention_shape shape{H * G};
    kvtest::device_session_storage<session_type> storage(device.layout.layout, shape, 8);
    session_type session(policy, device.view(), shape, storage.state.bytes(), storage.workspace.bytes(), nullptr, 8);
    kvtest::device_array<T> d_queries(q), output(q.size());
    kvtest::device_array<std::int32_t> d_positions(positions);
    session.attend(0, d_queries.data(), d_positions.data(), output.data());
    std::string message;
    try {
      session.check("attend");
    } catch (const kc::error& e) {
      message = e.what();
    }
    return message;
  };
  const auto clean = kvtest::make_random_cache<T>({S, 1, H, CAP, D}, fill, 9);
  BOOST_TEST(attend_once(clean, queries.stored).empty());
  std::vector<T> bad_query = queries.stored;
  bad_query[static_cast<std::size_t>(G * D + 5)] = kc::from_float<T>(nan);
  BOOST_TEST(attend_once(clean, bad_query).find("queries") != std::string::npos);
  auto bad_key = clean;
  bad_key.keys[static_cast<std::size_t>(bad_key.element(0, 0, 1, 17, 3))] = kc::from_float<T>(inf);
  const std::string key_message = attend_once(bad_key, queries.stored);
  BOOST_TEST(key_message.find("slot 17") != std::string::npos, key_message);
  auto bad_value = clean;
  bad_value.values[static_cast<std::size_t>(bad_value.element(0, 0, 0, 3, 9))] = kc::from_float<T>(nan);
  const std::string value_message = attend_once(bad_value, queries.stored);
  BOOST_TEST(value_message.find("slot -1") != std::string::npos, value_message);
}

#include "support/gpu_main.hpp"
