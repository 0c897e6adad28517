// SPDX-License-Identifier: Apache-2.0
// The CPU emulator (support/cuda_emulator.hpp) keeps CUDA's semantics: barriers and warp
// collectives, per-block __shared__ storage that starts fresh in every block, exact-size dynamic
// shared memory, blocks that interleave (deterministically for a seed), device atomics, spin-waits
// on flags published by other blocks, and the launch checks a GPU makes. Its detectors are tested
// by seeded_bugs.cpp.
#include <boost/test/unit_test.hpp>

#include <kvcompact/cuda/detail/execution.cuh>
#include <kvcompact/cuda/detail/grid_sync.cuh>

#include "support/device_cache.hpp"

#include <algorithm>
#include <cstdint>
#include <numeric>
#include <vector>

namespace {

namespace kcd = kvcompact::cuda::detail;


template <class... Params, class... Args>
void launch(void (*kernel)(Params...), dim3 grid, dim3 block, std::size_t shared_bytes, Args&&... args) {
  kcd::launch(kernel, grid, block, shared_bytes, nullptr, std::forward<Args>(args)...);
  BOOST_REQUIRE_EQUAL(cudaGetLastError(), cudaSuccess);
}

// --- barriers and warp collectives ---------------------------------------------------------------

__global__ void tree_sum_kernel(const int* in, int* out) {
  __shared__ int partial[256];
  const unsigned t = threadIdx.x;
  partial[t] = in[blockIdx.x * 256 + t];
  __syncthreads();
  for (unsigned stride = 128; stride > 0; stride /= 2) {
    if (t < stride) partial[t] += partial[t + stride];
    __syncthreads();
  }
  if (t == 0) out[blockIdx.x] = partial[0];
}

__global__ void barrier_vote_kernel(int* out) {
  const int t = static_cast<int>(threadIdx.x);
  const int count = __syncthreads_count(t % 3 == 0);
  const int all = __syncthreads_and(t < 1000);
  const int any = __syncthreads_or(t == 77);
  const int none = __syncthreads_or(0);
  if (t == 0) {
    out[0] = count;
    out[1] = all;
    out[2] = any;
    out[3] = none;
  }
}

__global__ void warp_kernel(int* out) {
  const int t = static_cast<int>(threadIdx.x), lane = t % 32;
  int* o = out + t * 9;
  o[0] = __shfl_sync(0xffffffffu, lane * 10, 5);          // everyone reads lane 5
  o[1] = __shfl_up_sync(0xffffffffu, lane, 3);            // lanes < 3 keep their own
  o[2] = __shfl_down_sync(0xffffffffu, lane, 2, 16);      // within halves of 16
  o[3] = __shfl_xor_sync(0xffffffffu, lane, 1);
  o[4] = static_cast<int>(__ballot_sync(0xffffffffu, lane % 2 == 0));
  o[5] = __all_sync(0xffffffffu, lane < 32) + 2 * __any_sync(0xffffffffu, lane == 31) + 4 * __all_sync(0xffffffffu, lane < 31);
  o[6] = static_cast<int>(__match_any_sync(0xffffffffu, static_cast<unsigned>(lane / 8)));
  const auto all = kvemu::warp_all_gather(static_cast<double>(lane) + 0.5);
  double sum = 0;
  for (int l = 0; l < 32; ++l)
    if (all.live >> l & 1u) sum += all.lane[l];
  o[7] = static_cast<int>(sum * 2.0);
  o[8] = __shfl_xor_sync(0xffffffffu, lane, 16, 16);  // groups of 16 read earlier groups only
}

BOOST_AUTO_TEST_CASE(barriers_and_warp_collectives) {
  constexpr int blocks = 6;
  std::vector<int> host(blocks * 256);
  std::iota(host.begin(), host.end(), -300);
  kvtest::device_array<int> in(host), sums{std::vector<int>(blocks)};
  launch(tree_sum_kernel, dim3(blocks), dim3(256), 0, in.data(), sums.data());
  const auto got = sums.download();
  for (int b = 0; b < blocks; ++b) BOOST_TEST(got[b] == std::accumulate(host.begin() + b * 256, host.begin() + (b + 1) * 256, 0));

  kvtest::device_array<int> votes{std::vector<int>(4)};
  launch(barrier_vote_kernel, dim3(1), dim3(100), 0, votes.data());
  BOOST_TEST(votes.download() == (std::vector<int>{34, 1, 1, 0}), boost::test_tools::per_element());

  kvtest::device_array<int> warp{std::vector<int>(64 * 9)};
  launch(warp_kernel, dim3(1), dim3(64), 0, warp.data());
  const auto w = warp.download();
  for (int t = 0; t < 64; ++t) {
    const int lane = t % 32;
    const int* o = w.data() + t * 9;
    BOOST_TEST_CONTEXT("thread " << t) {
      BOOST_TEST(o[0] == 50);
      BOOST_TEST(o[1] == (lane < 3 ? lane : lane - 3));
      BOOST_TEST(o[2] == (lane % 16 < 14 ? lane + 2 : lane));
      BOOST_TEST(o[3] == (lane ^ 1));
      BOOST_TEST(static_cast<unsigned>(o[4]) == 0x55555555u);
      BOOST_TEST(o[5] == 1 + 2);
      BOOST_TEST(static_cast<unsigned>(o[6]) == 0xffu << (lane / 8 * 8));
      BOOST_TEST(o[7] == 2 * (496 + 16));
      BOOST_TEST(o[8] == (lane < 16 ? lane : lane - 16));
    }
  }
}

// --- shared memory ----------------------------------------------------------------------------

__global__ void shared_privacy_kernel(int* first_seen, int* mixed) {
  __shared__ int visits;
  __shared__ int owner[128];
  const int t = static_cast<int>(threadIdx.x), b = static_cast<int>(blockIdx.x);
  if (t == 0) {
    first_seen[b] = visits;  // no block sees what another block left
    visits = b + 1;
  }
  owner[t] = b;
  for (int i = 0; i < 4; ++i) kvemu::yield();  // let the other resident blocks run in between
  __syncthreads();
  int wrong = 0;
  for (int i = 0; i < 128; ++i) wrong += owner[i] != b;
  if (t == 0) mixed[b] = wrong + (visits != b + 1);
}

__global__ void dynamic_shared_kernel(std::uintptr_t* address, unsigned* first_word) {
  KVCOMPACT_DYNAMIC_SHARED(unsigned, shared);
  if (threadIdx.x == 0) {
    address[blockIdx.x] = reinterpret_cast<std::uintptr_t>(shared);
    first_word[blockIdx.x] = shared[0];
    shared[0] = 7;
  }
}

BOOST_AUTO_TEST_CASE(shared_memory_is_private_to_each_block_and_fresh) {
  constexpr int blocks = 24;
  kvtest::device_array<int> first_seen{std::vector<int>(blocks, 0x7f7f7f7f)}, mixed{std::vector<int>(blocks, 0x7f7f7f7f)};
  launch(shared_privacy_kernel, dim3(blocks), dim3(128), 0, first_seen.data(), mixed.data());
  BOOST_TEST(first_seen.download() == std::vector<int>(blocks, 0), boost::test_tools::per_element());
  BOOST_TEST(mixed.download() == std::vector<int>(blocks, 0), boost::test_tools::per_element());

  kvtest::device_array<std::uintptr_t> address{std::vector<std::uintptr_t>(blocks)};
  kvtest::device_array<unsigned> first_word{std::vector<unsigned>(blocks)};
  launch(dynamic_shared_kernel, dim3(blocks), dim3(32), 100, address.data(), first_word.data());
  for (std::uintptr_t a : address.download()) BOOST_TEST(a % 128 == 0);
  BOOST_TEST(first_word.download() == std::vector<unsigned>(blocks, 0xcdcdcdcdu), boost::test_tools::per_element());
}

// --- blocks interleave, deterministically for a seed ------------------------------------------

__global__ void interleaving_kernel(int* clock, int* start, int* end) {
  const int b = static_cast<int>(blockIdx.x);
  if (threadIdx.x == 0) start[b] = atomicAdd(clock, 1);
  for (int i = 0; i < 3; ++i) __syncthreads();
  if (threadIdx.x == 0) end[b] = atomicAdd(clock, 1);
}

std::vector<int> event_order() {
  constexpr int blocks = 16;
  kvtest::device_array<int> clock{std::vector<int>(1)}, start{std::vector<int>(blocks)}, end{std::vector<int>(blocks)};
  launch(interleaving_kernel, dim3(blocks), dim3(64), 0, clock.data(), start.data(), end.data());
  std::vector<int> order = start.download();
  const auto e = end.download();
  order.insert(order.end(), e.begin(), e.end());
  return order;
}

BOOST_AUTO_TEST_CASE(blocks_interleave) {
  const std::vector<int> order = event_order();
  constexpr int blocks = 16;
  int overlapping = 0;  // block pairs where one starts before the other ends and ends after it starts
  for (int a = 0; a < blocks; ++a)
    for (int b = a + 1; b < blocks; ++b) overlapping += order[a] < order[blocks + b] && order[b] < order[blocks + a];
  if (kvemu::config().resident > 1) BOOST_TEST(overlapping > 0);
  std::vector<int> sorted = order;
  std::sort(sorted.begin(), sorted.end());
  std::vector<int> expected(2 * blocks);
  std::iota(expected.begin(), expected.end(), 0);
  BOOST_TEST(sorted == expected, boost::test_tools::per_element());
}

// --- device atomics --------------------------------------------------------------------------

struct atomic_counters {
  int add;
  unsigned sub;
  int max, min;
  unsigned long long cas_sum;
  unsigned wrap;
  unsigned bits_or, bits_and, bits_xor;
  float float_sum;
  int exchanged;
};

__global__ void atomics_kernel(atomic_counters* c, int* tickets) {
  const int i = static_cast<int>(blockIdx.x * blockDim.x + threadIdx.x);
  tickets[i] = atomicAdd(&c->add, 1);
  atomicSub(&c->sub, 2u);
  atomicMax(&c->max, (i * 37) % 1001);
  atomicMin(&c->min, 500 - (i * 37) % 1001);
  unsigned long long seen = atomicCAS(&c->cas_sum, 0ull, 0ull), assumed = 0;  // an atomic read
  do {
    assumed = seen;
    seen = atomicCAS(&c->cas_sum, assumed, assumed + static_cast<unsigned long long>(i));
  } while (seen != assumed);
  atomicInc(&c->wrap, 9u);
  atomicOr(&c->bits_or, 1u << (i % 32));
  atomicAnd(&c->bits_and, ~(1u << (i % 16)));
  atomicXor(&c->bits_xor, 1u << (i % 8));
  atomicAdd(&c->float_sum, 0.25f);
  atomicExch(&c->exchanged, i);
}

BOOST_AUTO_TEST_CASE(device_atomics) {
  constexpr int blocks = 8, threads = 96, n = blocks * threads;
  atomic_counters initial{0, 10000u, -1, 1000, 0, 0, 0, 0xffffffffu, 0, 0.0f, -1};
  kvtest::device_array<atomic_counters> c{std::vector<atomic_counters>{initial}};
  kvtest::device_array<int> tickets{std::vector<int>(n)};
  launch(atomics_kernel, dim3(blocks), dim3(threads), 0, c.data(), tickets.data());
  const atomic_counters got = c.download()[0];
  BOOST_TEST(got.add == n);
  std::vector<int> t = tickets.download();
  std::sort(t.begin(), t.end());
  std::vector<int> expected(n);
  std::iota(expected.begin(), expected.end(), 0);
  BOOST_TEST(t == expected, boost::test_tools::per_element());  // every old value returned once
  BOOST_TEST(got.sub == 10000u - 2u * n);
  int max = -1, min = 1000;
  for (int i = 0; i < n; ++i) max = std::max(max, (i * 37) % 1001), min = std::min(min, 500 - (i * 37) % 1001);
  BOOST_TEST(got.max == max);
  BOOST_TEST(got.min == min);
  BOOST_TEST(got.cas_sum == static_cast<unsigned long long>(n) * (n - 1) / 2);
  BOOST_TEST(got.wrap == static_cast<unsigned>(n % 10));
  BOOST_TEST(got.bits_or == 0xffffffffu);
  BOOST_TEST(got.bits_and == 0xffff0000u);
  BOOST_TEST(got.bits_xor == 0u);  // each bit flipped n / 8 times, an even number
  BOOST_TEST(got.float_sum == 0.25f * n);
  BOOST_TEST(got.exchanged >= 0);
  BOOST_TEST(got.exchanged < n);
}

// --- spin-waits on flags of other blocks (decoupled look-back) --------------------------------

// Block b waits until block b - 1 published its inclusive prefix, then publishes its own.
__global__ void chained_prefix_kernel(const int* values, int* prefix, int* ready) {
  const int b = static_cast<int>(blockIdx.x);
  __shared__ int before;
  if (threadIdx.x == 0) {
    if (b > 0)
      while (kcd::load_acquire(&ready[b - 1]) == 0) {
      }
    before = b > 0 ? prefix[b - 1] : 0;
    prefix[b] = before + values[b];
    kcd::store_release(&ready[b], 1);
  }
  __syncthreads();
}

BOOST_AUTO_TEST_CASE(spin_waits_on_other_blocks_make_progress) {
  constexpr int blocks = 40;
  std::vector<int> host(blocks);
  for (int b = 0; b < blocks; ++b) host[b] = (b * 7) % 11 - 3;
  kvtest::device_array<int> values(host), prefix{std::vector<int>(blocks)}, ready{std::vector<int>(blocks)};
  launch(chained_prefix_kernel, dim3(blocks), dim3(32), 0, values.data(), prefix.data(), ready.data());
  std::vector<int> expected(blocks);
  std::partial_sum(host.begin(), host.end(), expected.begin());
  BOOST_TEST(prefix.download() == expected, boost::test_tools::per_element());
}

// --- launch checks --------------------------------------------------------------------------

__global__ void empty_kernel() {}

BOOST_AUTO_TEST_CASE(launches_a_gpu_refuses_are_refused) {
  kcd::launch(empty_kernel, dim3(1), dim3(1025), 0, nullptr);
  BOOST_TEST(cudaGetLastError() == cudaErrorInvalidConfiguration);
  kcd::launch(empty_kernel, dim3(1), dim3(32), 64 * 1024, nullptr);  // over 48 KiB without the attribute
  BOOST_TEST(cudaGetLastError() == cudaErrorInvalidValue);
  BOOST_TEST(cudaFuncSetAttribute(empty_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, 64 * 1024) == cudaSuccess);
  kcd::launch(empty_kernel, dim3(1), dim3(32), 64 * 1024, nullptr);
  BOOST_TEST(cudaGetLastError() == cudaSuccess);
  BOOST_TEST(cudaFuncSetAttribute(empty_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, 228 * 1024) == cudaErrorInvalidValue);
}

}  // namespace
