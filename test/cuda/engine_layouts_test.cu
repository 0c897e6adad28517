// SPDX-License-Identifier: Apache-2.0
// GPU test: kvcompact::cuda::session over the paged KV caches of vLLM and FlashInfer
// (layouts::vllm_paged, layouts::flashinfer_paged; memory as support/engine_layouts.hpp builds it,
// block tables, page tables and layer offsets in device memory), bf16, three sequences of different
// lengths (FlashInfer requests owning different numbers of pages):
//  - compress_prefill leaves what kvcompact::cpu::session leaves (support/backend_comparison.hpp's
//    rules), for SnapKV, Ada-KV (per-head lengths) and H2O;
//  - a decode loop (batched append + attend) gives bit-identical attention outputs and caches in the
//    engine layouts and in the contiguous (BHSD) cache: the kernels read the same slots in the same order.
#define BOOST_TEST_NO_MAIN
#define BOOST_TEST_ALTERNATIVE_INIT_API
#include <boost/test/unit_test.hpp>

#include <kvcompact/cuda.cuh>

#include "support/backend_comparison.hpp"
#include "support/engine_layouts.hpp"

#include <random>
#include <string>
#include <vector>

namespace kc = kvcompact;
using kc::index_t;
using element = kc::bfloat16_t;

namespace {

constexpr index_t S = 3, L = 2, H = 2, G = 4, CAP = 64, D = 32, PAGE = 16, ROWS = 8;
const std::vector<index_t> prompts{64, 41, 23};

kvtest::random_cache<element> prompt_cache(std::uint32_t seed) {
  kvtest::fill_options fill;
  fill.min_length = fill.max_length = CAP;
  auto c = kvtest::make_random_cache<float>({S, L, H, CAP, D}, fill, seed);
  kvtest::round_to_exact_values(c);
  kvtest::set_prompt_lengths(c, prompts);
  return kvtest::convert_cache<element>(c);
}

kvtest::random_window prompt_window(std::uint32_t seed) {
  return kvtest::make_random_window(S, L, H * G, ROWS, D, {prompts[0] - 1, prompts[1] - 1, prompts[2] - 1}, 2.0, seed);
}

// Attention outputs of every decode step and the cache left, on the device.
struct gpu_run {
  std::vector<element> outputs;
  kvtest::snapshot cache;
};

// compress_prefill, then `steps` batched decode steps (append + attend per layer) with fixed-seed tokens.
template <class Policy, class Layout>
gpu_run run_on_gpu(const Policy& policy, const kvtest::layout_cache<element, Layout>& host, const kvtest::random_window& window, index_t steps) {
  const kc::attention_shape shape{H * G};
  kvtest::prefilled_device_session<kc::cuda::session<Policy, element, Layout>, element, Layout> prefilled(policy, host, window, shape);
  auto& session = prefilled.session;
  gpu_run out;
  std::mt19937 rng(5);
  std::vector<std::int32_t> positions(prompts.begin(), prompts.end());
  for (index_t t = 0; t < steps; ++t) {
    kvtest::device_array<std::int32_t> d_positions(positions);
    for (index_t l = 0; l < L; ++l) {
      std::vector<element> k, v, q;
      for (float x : kvtest::random_vector(S * H * D, 1.0, rng)) k.push_back(kc::from_float<element>(x));
      for (float x : kvtest::random_vector(S * H * D, 1.0, rng)) v.push_back(kc::from_float<element>(x));
      for (float x : kvtest::random_vector(S * H * G * D, 2.0, rng)) q.push_back(kc::from_float<element>(x));
      kvtest::device_array<element> d_k(k), d_v(v), d_q(q), d_out(q.size());
      session.append(l, d_k.data(), d_v.data(), d_positions.data());
      session.attend(l, d_q.data(), d_positions.data(), d_out.data());
      const std::vector<element> o = d_out.download();
      out.outputs.insert(out.outputs.end(), o.begin(), o.end());
    }
    for (auto& p : positions) ++p;
  }
  session.check("decode loop");
  auto result = prefilled.cache.download(host);
  out.cache = kvtest::take_snapshot(result.view());
  return out;
}

bool same_bits(const std::vector<element>& a, const std::vector<element>& b) {
  if (a.size() != b.size()) return false;
  for (std::size_t i = 0; i < a.size(); ++i)
    if (a[i].bits != b[i].bits) return false;
  return true;
}

}  // namespace

BOOST_AUTO_TEST_CASE(prefill_in_engine_caches_matches_the_cpu_backend) {
  const auto source = prompt_cache(91);
  const auto window = prompt_window(92);
  const kvtest::engine_layout_set layouts({S, L, H, CAP, D}, prompts, 0, PAGE, 81);
  namespace p = kc::policies;
  layouts.for_each([&](const auto& layout, const char* which) {
    const auto cache = kvtest::copy_into(source, layout);
    kvtest::check_prefill_matches(std::string("snapkv, ") + which, p::snapkv(20, 8), cache, window, H * G);
    kvtest::check_prefill_matches(std::string("adakv, ") + which, p::adakv(20, 8), cache, window, H * G);
    kvtest::check_prefill_matches(std::string("h2o, ") + which, p::h2o(20, 8), cache, window, H * G);
  });
}

BOOST_AUTO_TEST_CASE(decoding_in_engine_caches_gives_the_contiguous_outputs) {
  const auto source = prompt_cache(101);
  const auto window = prompt_window(102);
  constexpr index_t steps = 5;
  const kvtest::engine_layout_set layouts({S, L, H, CAP, D}, prompts, steps, PAGE, 101);
  namespace p = kc::policies;
  const auto check = [&](const std::string& name, const auto& policy) {
    const gpu_run reference = run_on_gpu(policy, kvtest::copy_into(source, source.layout), window, steps);
    layouts.for_each([&](const auto& layout, const char* which) {
      const gpu_run got = run_on_gpu(policy, kvtest::copy_into(source, layout), window, steps);
      BOOST_TEST(same_bits(got.outputs, reference.outputs), name << ", " << which << ": attention outputs differ from the contiguous cache");
      BOOST_TEST((got.cache == reference.cache), name << ", " << which << ": the cache differs from the contiguous cache");
    });
  };
  check("h2o (evicts)", p::h2o(20, 4));
  check("snapkv (appends)", p::snapkv(20, 8));
}

#include "support/gpu_main.hpp"
