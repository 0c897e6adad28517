// SPDX-License-Identifier: Apache-2.0
// GPU test: the decode path of kvcompact::cuda::session.
//  - attend() output against the double-precision reference of support/reference.hpp (fp16 and bf16,
//    head_dim 64 and 128, GQA, a batch with different lengths, a query that sees only part of the
//    cache, a sequence skipped by a negative position), with and without fused scoring;
//  - observe() leaves the scorers' per-slot states of kvcompact::cpu::session (H2O, TOVA, CORM);
//  - a decode loop with eviction (every preset that evicts during decode, plus SnapKV which appends)
//    gives the CPU backend's outputs and cache, on a BHSD and on a layer-condensed (LCKV) cache;
//  - MixAttention's ring-buffer layers (layer_condensed<ragged_layers>) and the bounded slot memory
//    (nearest-key merge at every step) give the CPU backend's outputs and cache.
// Tolerances: queries and outputs are stored in T, so the reference uses the T-rounded queries and an
// output may differ from it by the rounding of T (2^-8 relative for bf16, 2^-11 for fp16) plus fp32
// summation error; states agree within 1e-4 relative (fp32 probabilities, different summation order).
#define BOOST_TEST_NO_MAIN
#define BOOST_TEST_ALTERNATIVE_INIT_API
#include <boost/test/unit_test.hpp>

#include <kvcompact/cuda.cuh>

#include "support/backend_comparison.hpp"

#include <cmath>
#include <random>
#include <string>
#include <vector>

namespace kc = kvcompact;
using kc::index_t;

namespace {

template <class T>
double output_tolerance() {
  return std::is_same_v<T, kc::bfloat16_t> ? 1.0 / 128.0 : 1.0 / 1024.0;
}

/// Random values rounded to T, returned both as T (for the device) and as float (for the references).
template <class T>
struct rounded_values {
  std::vector<T> stored;
  std::vector<float> exact;
  rounded_values(index_t count, double scale, std::mt19937& rng) {
    for (float x : kvtest::random_vector(count, scale, rng)) {
      stored.push_back(kc::from_float<T>(x));
      exact.push_back(kc::to_float(stored.back()));
    }
  }
};

template <class T>
void check_attention_against_reference(index_t head_dim) {
  constexpr index_t S = 3, L = 2, H = 2, G = 4, CAP = 200;
  kvtest::fill_options fill;
  fill.min_length = 20;
  fill.max_length = CAP;
  fill.shuffle_slots = true;
  const auto host = kvtest::make_random_cache<T>({S, L, H, CAP, head_dim}, fill, 101 + static_cast<std::uint32_t>(head_dim));
  const auto cache = kvtest::copy_into(host, host.layout);
  kvtest::device_cache<T, kc::layouts::strided> device(cache);
  std::mt19937 rng(7);
  const rounded_values<T> queries(S * H * G * head_dim, 1.0, rng);
  // Sequence 0 attends everything, sequence 1 only positions <= 10, sequence 2 is skipped.
  const std::vector<std::int32_t> positions{CAP + 5, 10, -1};
  kvtest::device_array<T> d_queries(queries.stored);
  kvtest::device_array<std::int32_t> d_positions(positions);
  const T sentinel = kc::from_float<T>(123.0f);
  auto run = [&](const auto& policy, const char* name) {
    BOOST_TEST_CONTEXT(name << " head_dim " << head_dim) {
      using policy_type = std::decay_t<decltype(policy)>;
      using session_type = kc::cuda::session<policy_type, T, kc::layouts::strided>;
      const kc::attention_shape shape{H * G};
      kvtest::device_session_storage<session_type> storage(device.layout.layout, shape, 8);
      session_type session(policy, device.view(), shape, storage.state.bytes(), storage.workspace.bytes(), nullptr, 8);
      for (index_t l = 0; l < L; ++l) {
        kvtest::device_array<T> output(std::vector<T>(static_cast<std::size_t>(S * H * G * head_dim), sentinel));
        session.attend(l, d_queries.data(), d_positions.data(), output.data());
        session.check("attend");
        const std::vector<T> out = output.download();
        index_t bad = 0, untouched = 0;
        for (index_t s = 0; s < S; ++s)
          for (index_t g = 0; g < H * G; ++g) {
            const float* q = queries.exact.data() + (s * H * G + g) * head_dim;
            const std::vector<double> ref = positions[static_cast<std::size_t>(s)] < 0
                                                ? std::vector<double>()
                                                : kvtest::attention_output(host, s, l, g / G, q, positions[static_cast<std::size_t>(s)],
                                                                           kvtest::default_scale(head_dim));
            for (index_t d = 0; d < head_dim; ++d) {
              const double got = kvtest::to_double(out[static_cast<std::size_t>((s * H * G + g) * head_dim + d)]);
              if (ref.empty()) untouched += got == 123.0;
              else bad += !kvtest::close(got, ref[static_cast<std::size_t>(d)], output_tolerance<T>(), 1e-4);
            }
          }
        BOOST_TEST(bad == 0);
        BOOST_TEST(untouched == H * G * head_dim);
      }
    }
  };
  run(kc::policies::streaming_llm(CAP), "no scoring");
  run(kc::policies::h2o(CAP, 8), "fused H2O scoring");
}

}  // namespace

BOOST_AUTO_TEST_CASE(attention_output_matches_the_double_reference) {
  for (index_t d : {64, 128}) {
    check_attention_against_reference<kc::bfloat16_t>(d);
    check_attention_against_reference<kc::half_t>(d);
  }
}

BOOST_AUTO_TEST_CASE(observe_leaves_the_cpu_backends_scorer_states) {
  using T = kc::bfloat16_t;
  constexpr index_t S = 2, L = 2, H = 2, G = 3, CAP = 150, D = 64;
  kvtest::fill_options fill;
  fill.min_length = 60;
  fill.max_length = CAP;
  fill.aligned_heads = true;  // TOVA shares one score across KV heads
  const auto host = kvtest::make_random_cache<T>({S, L, H, CAP, D}, fill, 202);
  std::mt19937 rng(8);
  const rounded_values<T> queries(S * H * G * D, 2.0, rng);
  const std::vector<std::int32_t> positions{CAP + 1, CAP + 1};
  auto run = [&](const auto& policy, const char* name) {
    BOOST_TEST_CONTEXT(name) {
      using policy_type = std::decay_t<decltype(policy)>;
      const kc::attention_shape shape{H * G};
      auto cpu = kvtest::copy_into(host, host.layout);
      kvtest::session_storage<policy_type, T, kc::layouts::strided> cpu_storage(cpu.layout, shape);
      kc::cpu::session<policy_type, T, kc::layouts::strided> reference(policy, cpu.view(), shape, cpu_storage.state_span(),
                                                                       cpu_storage.workspace_span());
      kvtest::device_cache<T, kc::layouts::strided> device(cpu);
      using session_type = kc::cuda::session<policy_type, T, kc::layouts::strided>;
      kvtest::device_session_storage<session_type> storage(device.layout.layout, shape, 8);
      session_type gpu(policy, device.view(), shape, storage.state.bytes(), storage.workspace.bytes(), nullptr, 8);
      kvtest::device_array<T> d_queries(queries.stored);
      kvtest::device_array<std::int32_t> d_positions(positions);
      for (int repeat = 0; repeat < 2; ++repeat)
        for (index_t l = 0; l < L; ++l) {
          gpu.observe(l, d_queries.data(), d_positions.data());
          for (index_t s = 0; s < S; ++s) reference.observe(s, l, queries.exact.data() + s * H * G * D, positions[static_cast<std::size_t>(s)]);
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

namespace {

/// Prefill, then `steps` decode steps through both backends: outputs compared at every step, the
/// caches at the end (ties within rounding as in support/backend_comparison.hpp).
template <class Policy, class Layout>
void check_decode_loop(const std::string& name, const Policy& policy, const kvtest::layout_cache<kc::bfloat16_t, Layout>& host,
                       const kvtest::random_window& window, index_t query_heads, index_t model_layers, index_t steps) {
  using T = kc::bfloat16_t;
  BOOST_TEST_CONTEXT(name) {
    const Layout& layout = host.layout;
    const index_t S = layout.num_sequences(), H = layout.num_kv_heads(), D = layout.head_dim();
    const kc::attention_shape shape{query_heads};
    auto cpu = host;
    kvtest::session_storage<Policy, T, Layout> cpu_storage(cpu.layout, shape);
    kc::cpu::session<Policy, T, Layout> reference(policy, cpu.view(), shape, cpu_storage.state_span(), cpu_storage.workspace_span());
    reference.compress_prefill(window.view());
    kvtest::device_cache<T, Layout> device(host);
    const kvtest::device_window device_rows(window);
    using session_type = kc::cuda::session<Policy, T, Layout>;
    kvtest::device_session_storage<session_type> storage(device.layout.layout, shape, window.rows);
    session_type gpu(policy, device.view(), shape, storage.state.bytes(), storage.workspace.bytes(), nullptr, window.rows);
    gpu.compress_prefill(device_rows.view());
    std::mt19937 rng(99);
    index_t bad_outputs = 0;
    std::vector<std::int32_t> positions(static_cast<std::size_t>(S));
    for (index_t s = 0; s < S; ++s) positions[static_cast<std::size_t>(s)] = window.positions[static_cast<std::size_t>(s * window.rows + window.rows - 1)] + 1;
    for (index_t step = 0; step < steps; ++step) {
      kvtest::device_array<std::int32_t> d_positions(positions);
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
            reference.append(s, storage_layer, keys.stored.data() + s * H * D, values.stored.data() + s * H * D, positions[static_cast<std::size_t>(s)]);
        }
        const rounded_values<T> queries(S * query_heads * D, 1.0, rng);
        kvtest::device_array<T> d_queries(queries.stored), d_output(static_cast<std::size_t>(S * query_heads * D));
        gpu.attend(model_layer, d_queries.data(), d_positions.data(), d_output.data());
        const std::vector<T> out = d_output.download();
        std::vector<float> expected(static_cast<std::size_t>(query_heads * D));
        for (index_t s = 0; s < S; ++s) {
          reference.attend(s, model_layer, queries.exact.data() + s * query_heads * D, positions[static_cast<std::size_t>(s)], expected.data());
          for (index_t e = 0; e < query_heads * D; ++e)
            bad_outputs += !kvtest::close(kvtest::to_double(out[static_cast<std::size_t>(s * query_heads * D + e)]),
                                          expected[static_cast<std::size_t>(e)], output_tolerance<T>(), 1e-4);
        }
      }
      for (auto& p : positions) ++p;
    }
    gpu.check("decode loop");
    BOOST_TEST(bad_outputs == 0);
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
  constexpr index_t S = 2, L = 2, H = 2, G = 2, CAP = 64, D = 64, ROWS = 8, BUDGET = 40, STEPS = 12;
  kvtest::fill_options fill;
  fill.min_length = fill.max_length = 48;
  fill.aligned_heads = true;
  const auto source = kvtest::make_random_cache<kc::bfloat16_t>({S, L, H, CAP, D}, fill, 303);
  const auto host = kvtest::copy_into(source, source.layout);
  auto window = kvtest::make_random_window(S, L, H * G, ROWS, D, {47, 47}, 1.0, 304);
  kvtest::round_to_exact_values(window);  // both backends score the same logits: identical prefill keep-sets
  namespace p = kc::policies;
  check_decode_loop("streaming_llm", p::streaming_llm(BUDGET, 4), host, window, H * G, L, STEPS);
  check_decode_loop("h2o", p::h2o(BUDGET, 8), host, window, H * G, L, STEPS);
  check_decode_loop("tova", p::tova(BUDGET), host, window, H * G, L, STEPS);
  check_decode_loop("knorm", p::knorm(BUDGET), host, window, H * G, L, STEPS);
  check_decode_loop("corm", p::corm(8, 8), host, window, H * G, L, STEPS);
  check_decode_loop("corm_budgeted", p::corm_budgeted(BUDGET, 8), host, window, H * G, L, STEPS);
  check_decode_loop("cam", p::cam(BUDGET, 4), host, window, H * G, L, STEPS);
  check_decode_loop("elastic_cache", p::elastic_cache(0.5, 1, -10), host, window, H * G, L, STEPS);
  check_decode_loop("snapkv (appends)", p::snapkv(BUDGET, 8), host, window, H * G, L, STEPS);
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
  check_decode_loop("lckv streaming_llm", kc::policies::streaming_llm(24, 4), host, window, H * G, map.model_layers, 10);
  check_decode_loop("lckv h2o", kc::policies::h2o(24, 4), host, window, H * G, map.model_layers, 10);
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
  check_decode_loop("mixattention rings", kc::policies::mixattention(map, FULL), kvtest::copy_into(source, rings), window, H * G, map.model_layers, 16);
  // the bounded memory merges its victims into the nearest slot at prefill and at every step
  check_decode_loop("bounded_memory", kc::policies::bounded_memory(6, 2), kvtest::copy_into(source, source.layout), window, H * G, map.cache_layers, 8);
}

#include "support/gpu_main.hpp"
