// SPDX-License-Identifier: Apache-2.0
// GPU test: key-channel pruning (ThinK) of kvcompact::cuda::key_pruning against the CPU backend
// (cpu::prune_key_channels / append_pruned / attend_pruned) and the double-precision reference:
//  - the same kept channels, thin lengths and bit-identical thin and tail rows (fp32, fp16, bf16; GQA;
//    head_dim 64 and 128; ratios 0.4 and 0.5; heads of different lengths, some shorter than the tail);
//  - ThinK after SnapKV (cuda::session, then key_pruning) keeps the CPU backend's slots and channels;
//  - a decode loop (append, attend) gives the CPU backend's cache and, within fp32 summation error,
//    its outputs and the reference's;
//  - a length outside the layer, a store too small and a full tail are raised by check() naming them.
#define BOOST_TEST_NO_MAIN
#define BOOST_TEST_ALTERNATIVE_INIT_API
#include <boost/test/unit_test.hpp>

#include <kvcompact/cuda.cuh>

#include "support/device_cache.hpp"
#include "support/expect_error.hpp"
#include "support/pruned_reference.hpp"

#include <cmath>
#include <random>
#include <vector>

namespace kc = kvcompact;
using kc::index_t;

namespace {

/// A pruned store in device memory, shaped like @p host.
template <class T>
struct device_pruned {
  kvtest::device_array<T> thin, tail;
  kvtest::device_array<std::uint16_t> channels;
  kvtest::device_array<std::int32_t> thin_lengths;
  kc::pruned_keys<T> view;
  explicit device_pruned(const kvtest::owned_pruned<T>& host)
      : thin(host.thin), tail(host.tail), channels(host.channels), thin_lengths(host.thin_lengths), view(host.view) {
    view.thin = thin.data(), view.tail = tail.data(), view.channels = channels.data(), view.thin_lengths = thin_lengths.data();
  }
};

template <class T>
std::vector<std::uint16_t> bits_of(const std::vector<T>& v) {
  std::vector<std::uint16_t> out;
  for (const T& x : v) {
    if constexpr (std::is_same_v<T, float>) {
      const auto b = std::bit_cast<std::uint32_t>(x);
      out.push_back(static_cast<std::uint16_t>(b)), out.push_back(static_cast<std::uint16_t>(b >> 16));
    } else {
      out.push_back(x.bits);
    }
  }
  return out;
}

template <class T>
void check_against_cpu(float ratio, index_t head_dim, index_t tail, std::uint32_t seed) {
  constexpr index_t S = 2, L = 2, H = 2, G = 3, CAP = 56, ROWS = 8, STEPS = 4;
  kvtest::fill_options fill;
  fill.min_length = 2;
  fill.max_length = 40;
  auto host = kvtest::make_random_cache<T>({S, L, H, CAP, head_dim}, fill, seed);
  const auto window = kvtest::make_random_window(S, L, H * G, ROWS, head_dim, {45, 45}, 1.0, seed + 1);
  const kc::channels::think think{ratio, tail};
  const kc::attention_shape shape{H * G};
  kvtest::owned_pruned<T> cpu(host.shape, think.kept_channels(head_dim), 40, tail + STEPS);
  kvtest::device_cache<T, kc::layouts::strided> device(kvtest::copy_into(host, host.layout));
  device_pruned<T> gpu(cpu);
  kvtest::device_array<std::byte> workspace(kc::cuda::key_pruning<T, kc::layouts::strided>::workspace_bytes(host.layout, shape));
  kc::cuda::key_pruning<T, kc::layouts::strided> pruning(device.view(), gpu.view, shape, workspace.bytes());
  const kvtest::device_window device_window(window);
  pruning.prune(think, device_window.view());
  pruning.check();
  kc::cpu::prune_key_channels(think, host.view(), shape, window.view(), cpu.view);
  BOOST_TEST(gpu.channels.download() == cpu.channels);
  BOOST_TEST(gpu.thin_lengths.download() == cpu.thin_lengths);
  BOOST_TEST(bits_of(gpu.thin.download()) == bits_of(cpu.thin));
  BOOST_TEST(bits_of(gpu.tail.download()) == bits_of(cpu.tail));
  std::mt19937 rng(seed + 2);
  const double scale = 1.0 / std::sqrt(static_cast<double>(head_dim));
  for (index_t step = 0; step <= STEPS; ++step)
    for (index_t l = 0; l < L; ++l) {
      const std::vector<std::int32_t> positions{static_cast<std::int32_t>(step == 0 ? 20 : 60 + step), static_cast<std::int32_t>(60 + step)};
      const kvtest::device_array<std::int32_t> device_positions(positions);
      if (step > 0) {
        std::vector<T> keys, values;
        for (float x : kvtest::random_vector(S * H * head_dim, 1.0, rng)) keys.push_back(kc::from_float<T>(x));
        for (float x : kvtest::random_vector(S * H * head_dim, 1.0, rng)) values.push_back(kc::from_float<T>(x));
        const kvtest::device_array<T> device_keys(keys), device_values(values);
        pruning.append(l, device_keys.data(), device_values.data(), device_positions.data());
        for (index_t s = 0; s < S; ++s) {
          kc::cpu::append_pruned(host.view(), cpu.view, s, l, keys.data() + s * H * head_dim, values.data() + s * H * head_dim, positions[s]);
          for (index_t h = 0; h < H; ++h)  // the reference reads full keys from the host cache
            for (index_t d = 0; d < head_dim; ++d)
              host.keys[static_cast<std::size_t>(host.element(s, l, h, host.length(s, l, h) - 1, d))] = keys[static_cast<std::size_t>((s * H + h) * head_dim + d)];
        }
      }
      const auto queries = kvtest::random_vector(S * H * G * head_dim, 1.0, rng);
      const kvtest::device_array<float> device_queries(queries);
      kvtest::device_array<float> device_output(queries.size());
      pruning.attend(l, device_queries.data(), device_positions.data(), device_output.data());
      pruning.check();
      const auto output = device_output.download();
      for (index_t s = 0; s < S; ++s) {
        std::vector<float> expected(static_cast<std::size_t>(H * G * head_dim));
        kc::cpu::attend_pruned(host.view(), cpu.view, shape, s, l, queries.data() + s * H * G * head_dim, positions[s], expected.data());
        for (index_t qh = 0; qh < H * G; ++qh) {
          const index_t h = qh / G, head = host.head_index(s, l, h);
          std::vector<index_t> channels(cpu.view.channel_list(head), cpu.view.channel_list(head) + cpu.view.kept);
          const auto reference = kvtest::reference_pruned_attention(host, s, l, h, queries.data() + (s * H * G + qh) * head_dim, positions[s], channels,
                                                                    cpu.thin_lengths[head], scale);
          for (index_t d = 0; d < head_dim; ++d) {
            const std::size_t i = static_cast<std::size_t>((s * H * G + qh) * head_dim + d);
            BOOST_TEST(std::abs(output[i] - expected[i - static_cast<std::size_t>(s * H * G * head_dim)]) <= 1e-5);
            BOOST_TEST(std::abs(output[i] - reference[static_cast<std::size_t>(d)]) <= 1e-5);
          }
        }
      }
    }
  BOOST_TEST(device.lengths.download() == host.lengths);
  BOOST_TEST(device.positions.download() == host.positions);
  BOOST_TEST(bits_of(gpu.tail.download()) == bits_of(cpu.tail));
  BOOST_TEST(bits_of(device.values.download()) == bits_of(host.values));
}

}  // namespace

BOOST_AUTO_TEST_CASE(pruning_and_decode_match_the_cpu_backend) {
  check_against_cpu<float>(0.4f, 64, 8, 101);
  check_against_cpu<kc::half_t>(0.5f, 128, 4, 102);
  check_against_cpu<kc::bfloat16_t>(0.4f, 64, 0, 103);
}

BOOST_AUTO_TEST_CASE(device_faults_are_raised_by_check) {
  constexpr index_t D = 32, CAP = 24;
  auto host = kvtest::make_random_cache<float>({1, 1, 2, CAP, D}, {10, 10}, 201);
  const auto window = kvtest::make_random_window(1, 1, 2, 4, D, {12}, 1.0, 202);
  const kc::attention_shape shape{2};
  const kc::channels::think think{0.5f, 4};
  kvtest::owned_pruned<float> host_store(host.shape, think.kept_channels(D), 4, 4);  // 6 thin slots do not fit 4
  kvtest::device_cache<float, kc::layouts::strided> device(kvtest::copy_into(host, host.layout));
  device_pruned<float> store(host_store);
  kvtest::device_array<std::byte> workspace(kc::cuda::key_pruning<float, kc::layouts::strided>::workspace_bytes(host.layout, shape));
  kc::cuda::key_pruning<float, kc::layouts::strided> pruning(device.view(), store.view, shape, workspace.bytes());
  const kvtest::device_window device_window(window);
  pruning.prune(think, device_window.view());
  kvtest::expect_error([&] { pruning.check(); }, "pruned", "does not fit the pruned key store");
  host.lengths[0] = 3;  // fits the store; head 1's length lies outside the layer
  host.lengths[1] = CAP + 1;
  device.lengths.upload(host.lengths);
  pruning.prune(think, device_window.view());
  kvtest::expect_error([&] { pruning.check(); }, "cache.lengths");
  kvtest::expect_error([&] { pruning.prune(kc::channels::think{1.0f, 4}, device_window.view()); }, "think.pruning_ratio");
  kvtest::expect_error([&] { pruning.prune(kc::channels::think{0.25f, 4}, device_window.view()); }, "pruned.kept");
}

BOOST_AUTO_TEST_CASE(think_after_snapkv_on_the_device_matches_the_cpu_backend) {
  // exact values: both backends score the same logits, so SnapKV keeps the same slots on both
  constexpr index_t S = 2, L = 2, H = 2, G = 3, CAP = 64, D = 64, PROMPT = 60, WINDOW = 8, BUDGET = 24;
  kvtest::fill_options fill;
  fill.min_length = fill.max_length = PROMPT;
  auto host = kvtest::make_random_cache<float>({S, L, H, CAP, D}, fill, 301);
  kvtest::round_to_exact_values(host);
  auto window = kvtest::make_random_window(S, L, H * G, WINDOW, D, {PROMPT - 1, PROMPT - 1}, 1.0, 302);
  kvtest::round_to_exact_values(window);
  const auto policy = kc::policies::think_snapkv(BUDGET, 0.4f, WINDOW);
  using token_policy = decltype(policy.tokens);
  const kc::attention_shape shape{H * G};
  kvtest::device_cache<float, kc::layouts::strided> device(kvtest::copy_into(host, host.layout));
  kvtest::owned_pruned<float> cpu_store(host.shape, policy.channels.kept_channels(D), BUDGET - WINDOW, WINDOW);
  device_pruned<float> gpu_store(cpu_store);

  using cpu_session = kc::cpu::session<token_policy, float, kc::layouts::strided>;
  std::vector<std::byte> state(cpu_session::state_bytes(host.layout)), cpu_workspace(cpu_session::workspace_bytes(host.layout, shape));
  cpu_session cpu(policy.tokens, host.view(), shape, state, cpu_workspace);
  cpu.compress_prefill(window.view());
  kc::cpu::prune_key_channels(policy.channels, host.view(), shape, window.view(), cpu_store.view);

  const kvtest::device_window device_rows(window);
  using gpu_session = kc::cuda::session<token_policy, float, kc::layouts::strided>;
  kvtest::device_session_storage<gpu_session> storage(device.layout.layout, shape, WINDOW);
  gpu_session gpu(policy.tokens, device.view(), shape, storage.state.bytes(), storage.workspace.bytes(), nullptr, WINDOW);
  gpu.compress_prefill(device_rows.view());
  gpu.check("compress_prefill");
  kvtest::device_array<std::byte> workspace(kc::cuda::key_pruning<float, kc::layouts::strided>::workspace_bytes(host.layout, shape));
  kc::cuda::key_pruning<float, kc::layouts::strided> pruning(device.view(), gpu_store.view, shape, workspace.bytes());
  pruning.prune(policy.channels, device_rows.view());
  pruning.check();

  BOOST_TEST(device.lengths.download() == host.lengths);
  BOOST_TEST(device.positions.download() == host.positions);
  BOOST_TEST(gpu_store.thin_lengths.download() == cpu_store.thin_lengths);
  BOOST_TEST(gpu_store.channels.download() == cpu_store.channels);
  BOOST_TEST(bits_of(gpu_store.thin.download()) == bits_of(cpu_store.thin));
  BOOST_TEST(bits_of(gpu_store.tail.download()) == bits_of(cpu_store.tail));
  for (auto thin : cpu_store.thin_lengths) BOOST_TEST(thin == BUDGET - WINDOW);
}

#include "support/gpu_main.hpp"
