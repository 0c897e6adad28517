// SPDX-License-Identifier: Apache-2.0
// CUDA consumer of the installed kvcompact package: includes the CUDA umbrella header from the install
// tree (no fallback) and instantiates kvcompact::cuda::session, so every kernel is compiled by nvcc
// from the installed headers. With a GPU it compresses a small cache and checks the lengths; without
// one it says so and exits 0 (the build is what this consumer proves on GPU-less CI machines).
#include <kvcompact/cuda.cuh>
#include <kvcompact/version.hpp>

#include <cstdint>
#include <cstdio>
#include <vector>

static_assert(__cplusplus >= 202002L, "nvcc must compile kvcompact code as C++20");
static_assert(KVCOMPACT_VERSION_MAJOR == EXPECTED_MAJOR && KVCOMPACT_VERSION_MINOR == EXPECTED_MINOR,
              "installed version differs from the project");

int main() {
  namespace kc = kvcompact;
  constexpr int layers = 2, heads = 2, capacity = 16, dims = 8, prompt = 12, budget = 6;
  const auto layout = kc::layouts::bhsd(1, layers, heads, capacity, dims);
  const auto policy = kc::policies::snapkv(budget, 2);
  using session_t = kc::cuda::session<decltype(policy), kc::bfloat16_t, kc::layouts::strided>;
  const kc::attention_shape shape{4};
  if (kc::cuda::device_count() == 0) {
    std::printf("kvcompact %d.%d.%d found (CUDA consumer built; no GPU to run it)\n", KVCOMPACT_VERSION_MAJOR, KVCOMPACT_VERSION_MINOR,
                KVCOMPACT_VERSION_PATCH);
    return 0;
  }
  std::vector<kc::bfloat16_t> host(static_cast<std::size_t>(layers * heads * capacity * dims));
  for (std::size_t i = 0; i < host.size(); ++i) host[i] = kc::from_float<kc::bfloat16_t>(static_cast<float>((i * 7) % 11) / 11.0f);
  std::vector<std::int32_t> lengths(layers * heads, prompt), positions(static_cast<std::size_t>(layers * heads * capacity));
  for (std::size_t i = 0; i < positions.size(); ++i) positions[i] = static_cast<std::int32_t>(i % capacity);
  std::vector<float> queries(static_cast<std::size_t>(layers * 4 * 2 * dims), 0.25f);
  const std::vector<std::int32_t> rows{prompt - 2, prompt - 1};
  kc::bfloat16_t *keys = nullptr, *values = nullptr;
  std::int32_t *d_lengths = nullptr, *d_positions = nullptr, *d_rows = nullptr;
  float* d_queries = nullptr;
  std::byte *state = nullptr, *workspace = nullptr;
  const std::size_t state_size = session_t::state_bytes(layout), workspace_size = session_t::workspace_bytes(layout, shape, 2);
  KVCOMPACT_CUDA_CHECK(cudaMalloc(&keys, host.size() * sizeof(host[0])));
  KVCOMPACT_CUDA_CHECK(cudaMalloc(&values, host.size() * sizeof(host[0])));
  KVCOMPACT_CUDA_CHECK(cudaMalloc(&d_lengths, lengths.size() * 4));
  KVCOMPACT_CUDA_CHECK(cudaMalloc(&d_positions, positions.size() * 4));
  KVCOMPACT_CUDA_CHECK(cudaMalloc(&d_rows, rows.size() * 4));
  KVCOMPACT_CUDA_CHECK(cudaMalloc(&d_queries, queries.size() * 4));
  KVCOMPACT_CUDA_CHECK(cudaMalloc(&state, state_size));
  KVCOMPACT_CUDA_CHECK(cudaMalloc(&workspace, workspace_size));
  KVCOMPACT_CUDA_CHECK(cudaMemcpy(keys, host.data(), host.size() * sizeof(host[0]), cudaMemcpyHostToDevice));
  KVCOMPACT_CUDA_CHECK(cudaMemcpy(values, host.data(), host.size() * sizeof(host[0]), cudaMemcpyHostToDevice));
  KVCOMPACT_CUDA_CHECK(cudaMemcpy(d_lengths, lengths.data(), lengths.size() * 4, cudaMemcpyHostToDevice));
  KVCOMPACT_CUDA_CHECK(cudaMemcpy(d_positions, positions.data(), positions.size() * 4, cudaMemcpyHostToDevice));
  KVCOMPACT_CUDA_CHECK(cudaMemcpy(d_rows, rows.data(), rows.size() * 4, cudaMemcpyHostToDevice));
  KVCOMPACT_CUDA_CHECK(cudaMemcpy(d_queries, queries.data(), queries.size() * 4, cudaMemcpyHostToDevice));
  {
    session_t session(policy, {layout, keys, values, d_lengths, d_positions}, shape, {state, state_size}, {workspace, workspace_size}, nullptr, 2);
    session.compress_prefill({d_queries, d_rows, 2});
    session.check();
  }
  KVCOMPACT_CUDA_CHECK(cudaMemcpy(lengths.data(), d_lengths, lengths.size() * 4, cudaMemcpyDeviceToHost));
  for (void* p : {static_cast<void*>(keys), static_cast<void*>(values), static_cast<void*>(d_lengths), static_cast<void*>(d_positions),
                  static_cast<void*>(d_rows), static_cast<void*>(d_queries), static_cast<void*>(state), static_cast<void*>(workspace)})
    KVCOMPACT_CUDA_CHECK(cudaFree(p));
  for (std::int32_t n : lengths)
    if (n != budget) {
      std::printf("unexpected length %d after compression on the GPU (budget %d)\n", n, budget);
      return 1;
    }
  std::printf("kvcompact %d.%d.%d found (CUDA consumer: compressed on the GPU)\n", KVCOMPACT_VERSION_MAJOR, KVCOMPACT_VERSION_MINOR,
              KVCOMPACT_VERSION_PATCH);
  return 0;
}
