// SPDX-License-Identifier: Apache-2.0
// CUDA consumer of the installed kvcompact package: compiled by nvcc as C++20, never launched
// (CI machines may have no GPU).
#include <kvcompact/config.hpp>
#include <kvcompact/version.hpp>
#if __has_include(<kvcompact/cuda.cuh>)
#include <kvcompact/cuda.cuh>
#endif

#include <cstdio>

static_assert(__cplusplus >= 202002L, "nvcc must compile kvcompact code as C++20");
static_assert(KVCOMPACT_VERSION_MAJOR == EXPECTED_MAJOR && KVCOMPACT_VERSION_MINOR == EXPECTED_MINOR,
              "installed version differs from the project");

template <class T>
concept arithmetic = requires(T a) { a + a; };

template <arithmetic T>
__global__ void consumer_kernel(T* out) { out[threadIdx.x] = T{1} + T{1}; }

template __global__ void consumer_kernel<float>(float*);

int main() {
  std::printf("kvcompact %d.%d.%d found (CUDA consumer)\n", KVCOMPACT_VERSION_MAJOR,
              KVCOMPACT_VERSION_MINOR, KVCOMPACT_VERSION_PATCH);
  return 0;
}
