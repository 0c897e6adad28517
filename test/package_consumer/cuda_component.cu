// SPDX-License-Identifier: Apache-2.0
// Small CUDA consumer of an installed kvcompact package (kvcompact::cuda, kvcompact_target_cuda_cxx20):
// includes the CUDA umbrella header from the install tree and instantiates an fp32 KNorm
// kvcompact::cuda::session. With a GPU it compresses a small cache and checks the lengths; without one
// it says so and exits 0 (the build is what this consumer proves on GPU-less CI machines).
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
  constexpr int heads = 2, capacity = 16, dims = 8, prompt = 12, budget = 5;
  const auto layout = kc::layouts::bhsd(1, 1, heads, capacity, dims);
  const auto policy = kc::policies::knorm(budget);
  using session_t = kc::cuda::session<decltype(policy), float, kc::layouts::strided>;
  const kc::attention_shape shape{heads};
  if (kc::cuda::device_count() == 0) {
    std::printf("kvcompact %d.%d.%d: CUDA component consumer built (no GPU to run it)\n", KVCOMPACT_VERSION_MAJOR, KVCOMPACT_VERSION_MINOR,
                KVCOMPACT_VERSION_PATCH);
    return 0;
  }
  std::vector<float> host(static_cast<std::size_t>(heads * capacity * dims));
  for (std::size_t i = 0; i < host.size(); ++i) host[i] = static_cast<float>((i * 7) % 11) / 11.0f;
  std::vector<std::int32_t> lengths(heads, prompt), positions(static_cast<std::size_t>(heads * capacity));
  for (std::size_t i = 0; i < positions.size(); ++i) positions[i] = static_cast<std::int32_t>(i % capacity);
  float *keys = nullptr, *values = nullptr;
  std::int32_t *d_lengths = nullptr, *d_positions = nullptr;
  std::byte *state = nullptr, *workspace = nullptr;
  const std::size_t state_size = session_t::state_bytes(layout), workspace_size = session_t::workspace_bytes(layout, shape, 1);
  KVCOMPACT_CUDA_CHECK(cudaMalloc(&keys, host.size() * sizeof(float)));
  KVCOMPACT_CUDA_CHECK(cudaMalloc(&values, host.size() * sizeof(float)));
  KVCOMPACT_CUDA_CHECK(cudaMalloc(&d_lengths, lengths.size() * 4));
  KVCOMPACT_CUDA_CHECK(cudaMalloc(&d_positions, positions.size() * 4));
  KVCOMPACT_CUDA_CHECK(cudaMalloc(&state, state_size));
  KVCOMPACT_CUDA_CHECK(cudaMalloc(&workspace, workspace_size));
  KVCOMPACT_CUDA_CHECK(cudaMemcpy(keys, host.data(), host.size() * sizeof(float), cudaMemcpyHostToDevice));
  KVCOMPACT_CUDA_CHECK(cudaMemcpy(values, host.data(), host.size() * sizeof(float), cudaMemcpyHostToDevice));
  KVCOMPACT_CUDA_CHECK(cudaMemcpy(d_lengths, lengths.data(), lengths.size() * 4, cudaMemcpyHostToDevice));
  KVCOMPACT_CUDA_CHECK(cudaMemcpy(d_positions, positions.data(), positions.size() * 4, cudaMemcpyHostToDevice));
  {
    session_t session(policy, {layout, keys, values, d_lengths, d_positions}, shape, {state, state_size}, {workspace, workspace_size}, nullptr, 1);
    session.compress_prefill();
    session.check();
  }
  KVCOMPACT_CUDA_CHECK(cudaMemcpy(lengths.data(), d_lengths, lengths.size() * 4, cudaMemcpyDeviceToHost));
  for (void* p : {static_cast<void*>(keys), static_cast<void*>(values), static_cast<void*>(d_lengths), static_cast<void*>(d_positions),
                  static_cast<void*>(state), static_cast<void*>(workspace)})
    KVCOMPACT_CUDA_CHECK(cudaFree(p));
  for (std::int32_t n : lengths)
    if (n != budget) {
      std::printf("unexpected length %d after compression on the GPU (budget %d)\n", n, budget);
      return 1;
    }
  std::printf("kvcompact %d.%d.%d: CUDA component consumer compressed on the GPU\n", KVCOMPACT_VERSION_MAJOR, KVCOMPACT_VERSION_MINOR,
              KVCOMPACT_VERSION_PATCH);
  return 0;
}
