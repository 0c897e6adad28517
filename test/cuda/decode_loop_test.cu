// SPDX-License-Identifier: Apache-2.0
// GPU test: decode loops with eviction through kvcompact::cuda::session against kvcompact::cpu::session
// (attend() against the double reference and observe(): decode_test.cu).
//  - every preset that evicts during decode, plus SnapKV which appends, gives the CPU backend's
//    outputs and, step by step, its eviction victims, on BHSD, paged and layer-condensed (LCKV)
//    caches, in bf16, fp16 and fp32, including a budget lowered mid-run (excess above one: the
//    general eviction path);
//  - MixAttention's ring-buffer layers (layer_condensed<ragged_layers>) and the bounded slot memory
//    (nearest-key merge at every step) give the CPU backend's outputs and cache.
// Split counts: the emulator's GPU has 4 multiprocessors running 4 decode blocks each (16 blocks),
// so the 2 sequences x 2 KV heads split every head 2 or more ways (at most one split per tile).
// Tolerances: outputs within the rounding of T plus fp32 summation error (kvtest::output_tolerance),
// decode states of a tied victim within 1e-4 relative.
#define BOOST_TEST_NO_MAIN
#define BOOST_TEST_ALTERNATIVE_INIT_API
#include <boost/test/unit_test.hpp>

#include <kvcompact/cuda.cuh>

#include "support/backend_comparison.hpp"
#include "support/decode_values.hpp"

#include <algorithm>
#include <iterator>
#include <random>
#include <set>
#include <string>
#include <vector>

namespace kc = kvcompact;
using kc::index_t;
using kvtest::full_or_race_run;
using kvtest::output_tolerance;
using kvtest::rounded_values;

namespace {

/// Prefill, then `steps` decode steps through both backends: outputs compared at every step, and the
/// keep-sets after every insertion: each head must hold the CPU backend's positions, except for ties
/// within rounding (the victim's and the CPU's victim's decode scores within 1e-4 relative), after
/// which that head is no longer compared; at most one head in 16 may tie. At step `lower_at` the
/// budget of every sequence drops by 3 (an excess of 4: the general eviction path).
template <class Policy, class T, class Layout>
void check_decode_loop(const std::string& name, const Policy& policy, const kvtest::layout_cache<T, Layout>& host, const kvtest::random_window& window,
                       index_t query_heads, index_t model_layers, index_t steps, index_t lower_at = -1) {
  BOOST_TEST_CONTEXT(name) {
    const Layout& layout = host.layout;
    const index_t S = layout.num_sequences(), H = layout.num_kv_heads(), D = layout.head_dim(), CAP = layout.capacity();
    const kc::attention_shape shape{query_heads};
    auto cpu = host;
    kvtest::session_storage<Policy, T, Layout> cpu_storage(cpu.layout, shape);
    kc::cpu::session<Policy, T, Layout> reference(policy, cpu.view(), shape, cpu_storage.state_span(), cpu_storage.workspace_span());
    reference.compress_prefill(window.view());
    kvtest::prefilled_device_session<kc::cuda::session<Policy, T, Layout>, T, Layout> prefilled(policy, host, window, shape);
    auto& gpu = prefilled.session;
    const auto& device = prefilled.cache;
    std::mt19937 rng(99);
    index_t bad_outputs = 0, bad_victims = 0, tied_heads = 0;
    std::vector<bool> diverged(cpu.lengths.size(), false);
    std::vector<std::int32_t> positions(static_cast<std::size_t>(S));
    for (index_t s = 0; s < S; ++s) positions[static_cast<std::size_t>(s)] = window.positions[static_cast<std::size_t>(s * window.rows + window.rows - 1)] + 1;
    for (index_t step = 0; step < steps; ++step) {
      if (step == lower_at)
        for (index_t s = 0; s < S; ++s) {
          const index_t budget = reference.budget(s, 0, 0) - 3;
          reference.set_budget(s, budget);
          gpu.set_budget(s, budget);
        }
      // Sequence 1 sits out step 2 (a negative position): its cache and state stay as they are.
      std::vector<std::int32_t> step_positions = positions;
      if (S > 1 && step == 2) step_positions[1] = -1;
      kvtest::device_array<std::int32_t> d_positions(step_positions);
      for (index_t model_layer = 0; model_layer < model_layers; ++model_layer) {
        const index_t storage_layer = kc::detail::storage_layer_of(layout, model_layer);
        const bool writes = [&] {
          if constexpr (kc::layer_mapped_layout<Layout>) return layout.map.computes_kv(static_cast<int>(model_layer));
          else return true;
        }();
        if (writes) {
          const rounded_values<T> keys(S * H * D, 1.0, rng), values(S * H * D, 1.0, rng);
          kvtest::device_array<T> d_keys(keys.stored), d_values(values.stored);
          gpu.append(storage_layer, d_keys.data(), d_values.data(), d_positions.data());
          for (index_t s = 0; s < S; ++s)
            if (step_positions[static_cast<std::size_t>(s)] >= 0)
              reference.append(s, storage_layer, keys.stored.data() + s * H * D, values.stored.data() + s * H * D, step_positions[static_cast<std::size_t>(s)]);
          // Victims: every head of this layer holds the CPU's positions (or tied within rounding before).
          const std::vector<std::int32_t> gpu_positions = device.positions.download(), gpu_lengths = device.lengths.download();
          std::vector<float> gpu_states(cpu.positions.size());
          KVCOMPACT_CUDA_CHECK(cudaMemcpy(gpu_states.data(), gpu.slot_states(), gpu_states.size() * sizeof(float), cudaMemcpyDeviceToHost));
          for (index_t s = 0; s < S; ++s)
            for (index_t h = 0; h < H; ++h) {
              const index_t head = cpu.head_index(s, storage_layer, h);
              if (diverged[static_cast<std::size_t>(head)]) continue;
              const auto first = static_cast<std::ptrdiff_t>(head * CAP);
              const std::set<std::int32_t> want(cpu.positions.begin() + first, cpu.positions.begin() + first + cpu.lengths[static_cast<std::size_t>(head)]);
              const std::set<std::int32_t> got(gpu_positions.begin() + first, gpu_positions.begin() + first + gpu_lengths[static_cast<std::size_t>(head)]);
              if (want == got) continue;
              // A tie within rounding: one victim each, whose decode scores (the states, for these
              // scorers) agree within rounding. Each backend still holds the other's victim.
              std::vector<std::int32_t> cpu_victim, gpu_victim;
              std::set_difference(got.begin(), got.end(), want.begin(), want.end(), std::back_inserter(cpu_victim));
              std::set_difference(want.begin(), want.end(), got.begin(), got.end(), std::back_inserter(gpu_victim));
              bool tie = cpu_victim.size() == 1 && gpu_victim.size() == 1;
              if (tie) {
                auto slot_of = [&](const std::vector<std::int32_t>& pos, index_t n, std::int32_t position) {
                  for (index_t j = 0; j < n; ++j)
                    if (pos[static_cast<std::size_t>(first + j)] == position) return j;
                  return index_t{-1};
                };
                const index_t on_gpu = slot_of(gpu_positions, gpu_lengths[static_cast<std::size_t>(head)], cpu_victim[0]);
                const index_t on_cpu = slot_of(cpu.positions, cpu.lengths[static_cast<std::size_t>(head)], gpu_victim[0]);
                tie = kvtest::close(gpu_states[static_cast<std::size_t>(first + on_gpu)], reference.slot_state(s, storage_layer, h, on_cpu), 1e-4, 1e-6);
              }
              diverged[static_cast<std::size_t>(head)] = true;
              if (tie) ++tied_heads;
              else ++bad_victims;
            }
        }
        const rounded_values<T> queries(S * query_heads * D, 1.0, rng);
        kvtest::device_array<T> d_queries(queries.stored), d_output(static_cast<std::size_t>(S * query_heads * D));
        gpu.attend(model_layer, d_queries.data(), d_positions.data(), d_output.data());
        const std::vector<T> out = d_output.download();
        std::vector<float> expected(static_cast<std::size_t>(query_heads * D));
        for (index_t s = 0; s < S; ++s) {
          if (step_positions[static_cast<std::size_t>(s)] < 0) continue;
          reference.attend(s, model_layer, queries.exact.data() + s * query_heads * D, step_positions[static_cast<std::size_t>(s)], expected.data());
          for (index_t e = 0; e < query_heads * D; ++e)
            if (!diverged[static_cast<std::size_t>(cpu.head_index(s, storage_layer, e / D / (query_heads / H)))])
              bad_outputs += !kvtest::close(kvtest::to_double(out[static_cast<std::size_t>(s * query_heads * D + e)]),
                                            expected[static_cast<std::size_t>(e)], output_tolerance<T>(), 1e-4);
        }
      }
      for (std::size_t s = 0; s < positions.size(); ++s)
        if (step_positions[s] >= 0) ++positions[s];
    }
    gpu.check("decode loop");
    BOOST_TEST(bad_outputs == 0);
    BOOST_TEST(bad_victims == 0);
    BOOST_TEST(tied_heads <= std::max<index_t>(1, static_cast<index_t>(cpu.lengths.size()) / 16));
    kvtest::layout_cache<T, Layout> result = device.download(host);
    std::vector<bool> matches;
    const double tolerance = kvtest::score_tolerance(kvtest::logit_error_bound(host, window, query_heads, kvtest::shape_scale(host)));
    const auto diff = kvtest::compare_snapshots<T>(kvtest::take_snapshot(cpu.view()), kvtest::take_snapshot(result.view()), Policy::merges, matches,
                                                   2.0 * tolerance);  // merged values: backend_comparison.hpp's rule
    BOOST_TEST(diff.acceptable, diff.first);
  }
}

}  // namespace

BOOST_AUTO_TEST_CASE(decode_loop_with_eviction_matches_the_cpu_backend) {
  constexpr index_t S = 2, L = 2, H = 2, G = 2, CAP = 64, D = 64, ROWS = 8, BUDGET = 40, STEPS = full_or_race_run(12, 7);  // lowered at <= 6
  kvtest::fill_options fill;
  fill.min_length = fill.max_length = 48;
  fill.aligned_heads = true;
  const auto source = kvtest::make_random_cache<kc::bfloat16_t>({S, L, H, CAP, D}, fill, 303);
  const auto host = kvtest::copy_into(source, source.layout);
  auto window = kvtest::make_random_window(S, L, H * G, ROWS, D, {47, 47}, 1.0, 304);
  kvtest::round_to_exact_values(window);  // both backends score the same logits: identical prefill keep-sets
  namespace p = kc::policies;
  check_decode_loop("streaming_llm", p::streaming_llm(BUDGET, 4), host, window, H * G, L, STEPS);
  check_decode_loop("h2o", p::h2o(BUDGET, 8), host, window, H * G, L, STEPS, 6);
  check_decode_loop("tova", p::tova(BUDGET), host, window, H * G, L, STEPS);
  check_decode_loop("knorm", p::knorm(BUDGET), host, window, H * G, L, STEPS, 4);
  check_decode_loop("corm", p::corm(8, 8), host, window, H * G, L, STEPS);
  check_decode_loop("corm_budgeted", p::corm_budgeted(BUDGET, 8), host, window, H * G, L, STEPS);
  check_decode_loop("cam", p::cam(BUDGET, 4), host, window, H * G, L, STEPS);
  check_decode_loop("elastic_cache", p::elastic_cache(0.5, 1, -10), host, window, H * G, L, STEPS);
  check_decode_loop("snapkv (appends)", p::snapkv(BUDGET, 8), host, window, H * G, L, STEPS);
}

BOOST_AUTO_TEST_CASE(paged_decode_loops_in_every_element_type_match_the_cpu_backend) {
  constexpr index_t S = 2, L = 1, H = 2, CAP = 64, ROWS = 8, BUDGET = 40, STEPS = full_or_race_run(10, 6);  // lowered at <= 5
  kvtest::fill_options fill;
  fill.min_length = fill.max_length = 48;
  fill.aligned_heads = true;
  namespace p = kc::policies;
  {
    constexpr index_t G = 4, D = 128;
    const auto source = kvtest::make_random_cache<kc::half_t>({S, L, H, CAP, D}, fill, 305);
    kvtest::random_paging paging;
    kvtest::make_random_paging(paging, source.shape, 16, kc::layouts::page_format::nhd, 2, 13);
    const auto host = kvtest::copy_into(source, paging.layout);
    auto window = kvtest::make_random_window(S, L, H * G, ROWS, D, {47, 47}, 1.0, 306);
    kvtest::round_to_exact_values(window);  // both backends score the same logits: identical prefill keep-sets
    check_decode_loop("fp16 paged h2o", p::h2o(BUDGET, 8), host, window, H * G, L, STEPS, 5);
    check_decode_loop("fp16 paged tova", p::tova(BUDGET), host, window, H * G, L, STEPS);
  }
  {
    constexpr index_t G = 1, D = 32;
    const auto source = kvtest::make_random_cache<float>({S, L, H, CAP, D}, fill, 307);
    kvtest::random_paging paging;
    kvtest::make_random_paging(paging, source.shape, 8, kc::layouts::page_format::hnd, 0, 14);
    const auto host = kvtest::copy_into(source, paging.layout);
    auto window = kvtest::make_random_window(S, L, H * G, ROWS, D, {47, 47}, 1.0, 308);
    kvtest::round_to_exact_values(window);  // both backends score the same logits: identical prefill keep-sets
    check_decode_loop("fp32 paged h2o", p::h2o(BUDGET, 8), host, window, H * G, L, STEPS);
    check_decode_loop("fp32 paged streaming_llm", p::streaming_llm(BUDGET, 4), host, window, H * G, L, STEPS, 3);
  }
}

BOOST_AUTO_TEST_CASE(layer_condensed_decode_matches_the_cpu_backend) {
  // LCKV: 5 model layers, warm-up 1 bottom + 1 top; layers 1..3 read cache layer of model layer 3,
  // layers 1 and 2 read ahead (they must not see the current token).
  const auto map = kc::layouts::layer_map::lckv(5, 1, 1);
  constexpr index_t S = 2, H = 2, G = 2, CAP = 64, D = 64, ROWS = 8;
  kvtest::fill_options fill;
  fill.min_length = fill.max_length = 30;
  const auto source = kvtest::make_random_cache<kc::bfloat16_t>({S, map.cache_layers, H, CAP, D}, fill, 404);
  const kc::layouts::layer_condensed<kc::layouts::strided> layout{source.layout, map};
  const auto host = kvtest::copy_into(source, layout);
  auto window = kvtest::make_random_window(S, map.cache_layers, H * G, ROWS, D, {29, 29}, 1.0, 405);
  kvtest::round_to_exact_values(window);  // both backends score the same logits: identical prefill keep-sets
  constexpr index_t STEPS = full_or_race_run(10, 4);
  check_decode_loop("lckv streaming_llm", kc::policies::streaming_llm(24, 4), host, window, H * G, map.model_layers, STEPS);
  check_decode_loop("lckv h2o", kc::policies::h2o(24, 4), host, window, H * G, map.model_layers, STEPS);
}
BOOST_AUTO_TEST_CASE(mixattention_rings_and_the_bounded_memory_decode_like_the_cpu_backend) {
  // Character.AI pattern of 7 layers, window 8 with 2 sinks: storage layers {0, 1, 3}, 1 and 3 are rings
  // of 10 slots in a ragged layout; 10-token prompts, 16 steps, so the rings wrap.
  const auto map = kc::layouts::layer_map::character_ai(7, 8, 2);
  constexpr index_t S = 2, H = 2, G = 2, FULL = 40, D = 64, ROWS = 4, PROMPT = 10;
  kvtest::fill_options fill;
  fill.min_length = fill.max_length = PROMPT;
  const auto source = kvtest::make_random_cache<kc::bfloat16_t>({S, map.cache_layers, H, FULL, D}, fill, 505);
  const kc::layouts::layer_condensed<kc::layouts::ragged_layers> rings{
      kc::layouts::ragged_layers::make(S, kc::policies::mixattention_capacities(map, FULL), H, D), map};
  auto window = kvtest::make_random_window(S, map.cache_layers, H * G, ROWS, D, {PROMPT - 1, PROMPT - 1}, 1.0, 506);
  kvtest::round_to_exact_values(window);
  check_decode_loop("mixattention rings", kc::policies::mixattention(map, FULL), kvtest::copy_into(source, rings), window, H * G, map.model_layers,
                    full_or_race_run(16, 10));  // 8 window slots per ring: 10 steps wrap them once and start again
  // the bounded memory merges its victims into the nearest slot at prefill and at every step
  check_decode_loop("bounded_memory", kc::policies::bounded_memory(6, 2), kvtest::copy_into(source, source.layout), window, H * G, map.cache_layers,
                    full_or_race_run(8, 4));
}


#include "support/gpu_main.hpp"
