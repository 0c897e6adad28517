// SPDX-License-Identifier: Apache-2.0
// CUDA consumer of the Conan package (kvcompact::cuda, kvcompact_target_cuda_cxx20): instantiates an
// fp32 KNorm kvcompact::cuda::session. Runs it when a GPU is present; otherwise reports the build.
#include <kvcompact/cuda.cuh>

#include <cstddef>
#include <cstdint>
#include <cstdio>

static_assert(__cplusplus >= 202002L, "nvcc must compile kvcompact code as C++20");

int main() {
  namespace kc = kvcompact;
  const auto layout = kc::layouts::bhsd(1, 1, 2, 16, 8);
  const auto policy = kc::policies::knorm(5);
  using session_t = kc::cuda::session<decltype(policy), float, kc::layouts::strided>;
  const kc::attention_shape shape{2};
  if (kc::cuda::device_count() == 0) {
    std::printf("kvcompact %d.%d.%d: Conan CUDA consumer built (no GPU to run it)\n", KVCOMPACT_VERSION_MAJOR, KVCOMPACT_VERSION_MINOR,
                KVCOMPACT_VERSION_PATCH);
    return 0;
  }
  float *keys = nullptr, *values = nullptr;
  std::int32_t *lengths = nullptr, *positions = nullptr;
  std::byte *state = nullptr, *workspace = nullptr;
  const std::size_t state_size = session_t::state_bytes(layout), workspace_size = session_t::workspace_bytes(layout, shape, 1);
  KVCOMPACT_CUDA_CHECK(cudaMalloc(&keys, 2 * 16 * 8 * sizeof(float)));
  KVCOMPACT_CUDA_CHECK(cudaMalloc(&values, 2 * 16 * 8 * sizeof(float)));
  KVCOMPACT_CUDA_CHECK(cudaMalloc(&lengths, 2 * sizeof(std::int32_t)));
  KVCOMPACT_CUDA_CHECK(cudaMalloc(&positions, 2 * 16 * sizeof(std::int32_t)));
  KVCOMPACT_CUDA_CHECK(cudaMalloc(&state, state_size));
  KVCOMPACT_CUDA_CHECK(cudaMalloc(&workspace, workspace_size));
  KVCOMPACT_CUDA_CHECK(cudaMemset(keys, 0, 2 * 16 * 8 * sizeof(float)));
  KVCOMPACT_CUDA_CHECK(cudaMemset(values, 0, 2 * 16 * 8 * sizeof(float)));
  KVCOMPACT_CUDA_CHECK(cudaMemset(lengths, 0, 2 * sizeof(std::int32_t)));  // empty heads: nothing to compress
  {
    session_t session(policy, {layout, keys, values, lengths, positions}, shape, {state, state_size}, {workspace, workspace_size}, nullptr, 1);
    session.compress_prefill();
    session.check();
  }
  for (void* p : {static_cast<void*>(keys), static_cast<void*>(values), static_cast<void*>(lengths), static_cast<void*>(positions),
                  static_cast<void*>(state), static_cast<void*>(workspace)})
    KVCOMPACT_CUDA_CHECK(cudaFree(p));
  std::printf("kvcompact %d.%d.%d: Conan CUDA consumer ran on the GPU\n", KVCOMPACT_VERSION_MAJOR, KVCOMPACT_VERSION_MINOR,
              KVCOMPACT_VERSION_PATCH);
  return 0;
}
