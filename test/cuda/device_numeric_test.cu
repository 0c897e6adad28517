// GPU test: storage conversions and layout offsets computed by device code equal the host's.
#define BOOST_TEST_NO_MAIN
#define BOOST_TEST_ALTERNATIVE_INIT_API
#include <boost/test/unit_test.hpp>

#include <kvcompact/cuda.cuh>
#include <kvcompact/cuda/detail/launch.cuh>

#include <random>
#include <vector>

namespace kc = kvcompact;

namespace {

template <class T>
__global__ void round_trip(const float* in, float* out, int n) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) out[i] = kc::to_float(kc::from_float<T>(in[i]));
}

template <class Layout>
__global__ void offsets(Layout layout, kc::index_t* out) {
  const int i = threadIdx.x;
  out[i] = layout.offset(0, i % layout.num_layers(), i % layout.num_kv_heads(), i % layout.capacity());
}

template <class T>
void check_round_trip() {
  const int n = 1 << 16;
  std::vector<float> in(n), out(n);
  std::mt19937 gen(7);
  std::normal_distribution<float> normal(0.0f, 100.0f);
  for (float& x : in) x = normal(gen);
  float *d_in = nullptr, *d_out = nullptr;
  KVCOMPACT_CUDA_CHECK(cudaMalloc(&d_in, n * sizeof(float)));
  KVCOMPACT_CUDA_CHECK(cudaMalloc(&d_out, n * sizeof(float)));
  KVCOMPACT_CUDA_CHECK(cudaMemcpy(d_in, in.data(), n * sizeof(float), cudaMemcpyHostToDevice));
  kc::cuda::detail::launch(&round_trip<T>, dim3(n / 256), dim3(256), 0, nullptr, d_in, d_out, n);
  KVCOMPACT_CUDA_CHECK(cudaGetLastError());
  KVCOMPACT_CUDA_CHECK(cudaMemcpy(out.data(), d_out, n * sizeof(float), cudaMemcpyDeviceToHost));
  KVCOMPACT_CUDA_CHECK(cudaFree(d_in));
  KVCOMPACT_CUDA_CHECK(cudaFree(d_out));
  for (int i = 0; i < n; ++i) BOOST_TEST(out[i] == kc::to_float(kc::from_float<T>(in[i])));
}

}  // namespace

BOOST_AUTO_TEST_CASE(device_conversions_match_host) {
  check_round_trip<kc::half_t>();
  check_round_trip<kc::bfloat16_t>();
}

BOOST_AUTO_TEST_CASE(device_offsets_match_host) {
  const auto layout = kc::layouts::bshd(2, 3, 4, 16, 8);
  kc::index_t* d_out = nullptr;
  KVCOMPACT_CUDA_CHECK(cudaMalloc(&d_out, 32 * sizeof(kc::index_t)));
  kc::cuda::detail::launch(&offsets<kc::layouts::strided>, dim3(1), dim3(32), 0, nullptr, layout, d_out);
  KVCOMPACT_CUDA_CHECK(cudaGetLastError());
  std::vector<kc::index_t> out(32);
  KVCOMPACT_CUDA_CHECK(cudaMemcpy(out.data(), d_out, 32 * sizeof(kc::index_t), cudaMemcpyDeviceToHost));
  KVCOMPACT_CUDA_CHECK(cudaFree(d_out));
  for (int i = 0; i < 32; ++i) BOOST_TEST(out[i] == layout.offset(0, i % 3, i % 4, i % 16));
}

#include "support/gpu_main.hpp"
