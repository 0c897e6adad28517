// SPDX-License-Identifier: Apache-2.0
// GPU test of cuda/detail/ptx_mma.cuh: one warp multiplies random 16 x K and K x 8 matrices (bf16,
// fp16, tf32) through mma_accumulate() (tensor cores, or the emulator's mma.sync) and through
// software_mma() (the pre-sm_80 path), with fragments filled here from the PTX ISA's fragment tables;
// both must match a double-precision product to fp32 accumulation accuracy.
#define BOOST_TEST_NO_MAIN
#define BOOST_TEST_ALTERNATIVE_INIT_API
#include <boost/test/unit_test.hpp>

#include <kvcompact/cuda.cuh>
#include <kvcompact/cuda/detail/ptx_mma.cuh>

#include "support/device_cache.hpp"
#include "support/reference.hpp"

#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

namespace kc = kvcompact;
namespace kd = kvcompact::cuda::detail;

/// Reads the 16-bit elements (or tf32 words) of A [16][K] and B [K][8] (row-major bit patterns) into
/// each lane's fragments as the PTX ISA lays them out, runs both products, writes C [16][8] twice.
template <class T>
__global__ void mma_kernel(const std::uint32_t* a, const std::uint32_t* b, float* tensor, float* software) {
  constexpr bool tf32 = std::is_same_v<T, float>;
  constexpr int k = tf32 ? 8 : 16;
  const int lane = static_cast<int>(threadIdx.x), g = lane / 4, t = lane % 4;
  kd::mma_a fa{};
  kd::mma_b fb{};
  if constexpr (tf32) {
    for (int i = 0; i < 4; ++i) fa.r[i] = a[(g + (i % 2) * 8) * k + t + (i / 2) * 4];  // a0 (g, t), a1 (g+8, t), a2 (g, t+4), a3 (g+8, t+4)
    for (int i = 0; i < 2; ++i) fb.r[i] = b[(t + 4 * i) * 8 + g];                     // b0 (t, g), b1 (t+4, g)
  } else {
    for (int i = 0; i < 8; ++i) {  // a_i: row g for i in {0,1,4,5}, else g+8; column 2t + (i&1) (+8 for i >= 4)
      const int row = g + ((i < 2 || (i >= 4 && i < 6)) ? 0 : 8), col = 2 * t + (i & 1) + (i >= 4 ? 8 : 0);
      fa.r[i / 2] |= (a[row * k + col] & 0xffffu) << (16 * (i % 2));
    }
    for (int i = 0; i < 4; ++i) {  // b_i: row 2t + (i&1) (+8 for i >= 2), column g
      const int row = 2 * t + (i & 1) + (i >= 2 ? 8 : 0);
      fb.r[i / 2] |= (b[row * 8 + g] & 0xffffu) << (16 * (i % 2));
    }
  }
  kd::mma_c c1{{0.5f, -0.25f, 1.0f, 0.0f}}, c2 = c1;
  kd::mma_accumulate<T>(c1, fa, fb);
  kd::software_mma<T>(c2, fa, fb);
  for (int i = 0; i < 4; ++i) {  // c_i: row g (+8 for i >= 2), column 2t + (i&1)
    const int at = (g + (i >= 2 ? 8 : 0)) * 8 + 2 * t + (i & 1);
    tensor[at] = c1.r[i];
    software[at] = c2.r[i];
  }
}

namespace {

template <class T>
std::uint32_t bits_of(float x) {
  if constexpr (std::is_same_v<T, float>) return kd::round_to_tf32(std::bit_cast<std::uint32_t>(x));
  else return kc::from_float<T>(x).bits;
}
template <class T>
double value_of(std::uint32_t bits) {
  if constexpr (std::is_same_v<T, float>) return static_cast<double>(std::bit_cast<float>(bits));
  else return kvtest::to_double(T{static_cast<std::uint16_t>(bits)});
}

template <class T>
void check_product(std::uint32_t seed) {
  constexpr int k = std::is_same_v<T, float> ? 8 : 16;
  std::mt19937 rng(seed);
  std::vector<std::uint32_t> a(16 * k), b(k * 8);
  for (auto& x : a) x = bits_of<T>(static_cast<float>(2.0 * kvtest::uniform_pm1(rng)));
  for (auto& x : b) x = bits_of<T>(static_cast<float>(2.0 * kvtest::uniform_pm1(rng)));
  kvtest::device_array<std::uint32_t> da(a), db(b);
  kvtest::device_array<float> tensor(16 * 8), software(16 * 8);
  kd::launch(&mma_kernel<T>, dim3(1), dim3(32), 0, nullptr, da.data(), db.data(), tensor.data(), software.data());
  KVCOMPACT_CUDA_CHECK(cudaGetLastError());
  KVCOMPACT_CUDA_CHECK(cudaDeviceSynchronize());
  const std::vector<float> got = tensor.download(), soft = software.download();
  const double initial[4] = {0.5, -0.25, 1.0, 0.0};
  for (int m = 0; m < 16; ++m)
    for (int n = 0; n < 8; ++n) {
      double want = initial[(m >= 8 ? 2 : 0) + n % 2], magnitude = std::abs(want);
      for (int kk = 0; kk < k; ++kk) {
        const double product = value_of<T>(a[m * k + kk]) * value_of<T>(b[kk * 8 + n]);
        want += product;
        magnitude += std::abs(product);
      }
      const double tolerance = 1e-6 * magnitude;  // fp32 accumulation of exact products
      BOOST_TEST(std::abs(got[m * 8 + n] - want) <= tolerance, "tensor C[" << m << "][" << n << "] " << got[m * 8 + n] << " vs " << want);
      BOOST_TEST(std::abs(soft[m * 8 + n] - want) <= tolerance, "software C[" << m << "][" << n << "] " << soft[m * 8 + n] << " vs " << want);
    }
}

}  // namespace

BOOST_AUTO_TEST_CASE(bf16_product_matches_double) { check_product<kc::bfloat16_t>(1); }
BOOST_AUTO_TEST_CASE(fp16_product_matches_double) { check_product<kc::half_t>(2); }
BOOST_AUTO_TEST_CASE(tf32_product_matches_double) { check_product<float>(3); }

#include "support/gpu_main.hpp"
