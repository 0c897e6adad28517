// SPDX-License-Identifier: Apache-2.0
/// @file
/// @brief The CUDA backend's execution group (kvcompact::execution_group): the threads of one block.
/// Reductions, scans, a radix select and a stable radix sort on shared memory and warp votes.
///
/// These are written here rather than taken from CUB: CUB's block primitives include the CUDA
/// runtime headers and inline PTX, which the host compiler cannot build against the CPU emulator
/// (test/support/cuda_emulator.hpp) that runs the emulated tests; the primitives below use only
/// `__syncthreads`, `__ballot_sync`/`__match_any_sync`, `__popc` and shared-memory atomics, which the
/// emulator provides. The native GPU tests run the same code.
#pragma once

#include <kvcompact/cuda/detail/block_primitives.cuh>
#include <kvcompact/cuda/detail/execution.cuh>
#include <kvcompact/execution_group.hpp>

#include <cstdint>

KVCOMPACT_NAMESPACE_BEGIN
namespace cuda::detail {

/// The threads of a block of exactly @p Threads threads (a power of two, at least 32) as one
/// execution group. Every thread of the block must take part in every collective.
template <int Threads>
class block_group {
  static_assert(Threads >= 32 && (Threads & (Threads - 1)) == 0, "kvcompact: block_group needs a power-of-two block of at least one warp");
  static constexpr int warps = Threads / 32;
  static constexpr int scan_items = 8;  // consecutive elements per thread and scan tile

 public:
  /// Threads.
  __device__ int size() const { return Threads; }
  /// This thread.
  __device__ int rank() const { return static_cast<int>(threadIdx.x); }
  /// Block barrier.
  __device__ void sync() const { __syncthreads(); }

  /// f(i) for i in [0, n), strided over the threads, then a barrier.
  template <class F>
  __device__ void for_each(index_t n, const F& f) const {
    for (index_t i = threadIdx.x; i < n; i += Threads) f(i);
    __syncthreads();
  }

  /// f() on thread 0, then a barrier.
  template <class F>
  __device__ void once(const F& f) const {
    if (threadIdx.x == 0) f();
    __syncthreads();
  }

  /// op over value_of(i), i in [0, n): per-thread partials in index order, then a tree over threads.
  template <class T, class ValueOf, class Op>
  __device__ T reduce(index_t n, const ValueOf& value_of, T identity, const Op& op) const {
    T acc = identity;
    for (index_t i = threadIdx.x; i < n; i += Threads) acc = op(acc, static_cast<T>(value_of(i)));
    return block_reduce<Threads>(acc, op);
  }

  /// Exclusive scan in tiles of `scan_items` consecutive elements per thread: each thread combines its
  /// own elements in order, a Hillis-Steele scan in shared memory combines the threads' totals, and a
  /// carry links the tiles.
  template <class T, class ValueOf, class Op, class Write>
  __device__ T exclusive_scan(index_t n, const ValueOf& value_of, T identity, const Op& op, const Write& write) const {
    __shared__ T totals[Threads];
    const int t = static_cast<int>(threadIdx.x);
    T carry = identity;
    for (index_t first = 0; first < n; first += Threads * scan_items) {
      const index_t mine = first + static_cast<index_t>(t) * scan_items;
      T values[scan_items];
      T total = identity;
      for (int k = 0; k < scan_items; ++k) {
        values[k] = mine + k < n ? static_cast<T>(value_of(mine + k)) : identity;
        total = op(total, values[k]);
      }
      totals[t] = total;
      __syncthreads();
      for (int offset = 1; offset < Threads; offset *= 2) {
        const T left = t >= offset ? totals[t - offset] : identity;
        __syncthreads();
        if (t >= offset) totals[t] = op(left, totals[t]);
        __syncthreads();
      }
      T prefix = t > 0 ? op(carry, totals[t - 1]) : carry;
      for (int k = 0; k < scan_items && mine + k < n; ++k) {
        write(mine + k, prefix, values[k]);
        prefix = op(prefix, values[k]);
      }
      carry = op(carry, totals[Threads - 1]);
      __syncthreads();
    }
    return carry;
  }

  /// The k-th largest nonzero key: the maximum for k = 1 (decode's usual single victim), else an
  /// MSB-first radix select in 8-bit digits that stops as soon as the chosen digit's bucket holds
  /// exactly the keys still wanted (their minimum is the answer).
  template <class KeyOf>
  __device__ std::uint64_t kth_largest(index_t n, index_t k, const KeyOf& key_of) const {
    if (k <= 0) return ~std::uint64_t{0};
    const index_t items = reduce(n, [&](index_t i) { return key_of(i) != 0 ? index_t{1} : index_t{0}; }, index_t{0}, sum{});
    if (k >= items) return 1;
    if (k == 1) return reduce(n, [&](index_t i) { return key_of(i); }, std::uint64_t{0}, largest{});
    __shared__ unsigned histogram[256];
    std::uint64_t prefix = 0, mask = 0;
    index_t remaining = k;
    for (int shift = 56; shift >= 0; shift -= 8) {
      for (int b = threadIdx.x; b < 256; b += Threads) histogram[b] = 0;
      __syncthreads();
      // Keys cluster, so most lanes of a warp often share a digit: one atomic per distinct digit.
      for (index_t first = 0; first < n; first += Threads) {
        const index_t i = first + threadIdx.x;
        const std::uint64_t key = i < n ? key_of(i) : 0;
        const bool counted = key != 0 && (key & mask) == prefix;
        const unsigned digit = counted ? static_cast<unsigned>((key >> shift) & 0xffu) : 256u;
        const unsigned same = __match_any_sync(0xffffffffu, digit);
        if (counted && static_cast<int>(threadIdx.x % 32) == __ffs(same) - 1) atomicAdd(&histogram[digit], static_cast<unsigned>(__popc(same)));
      }
      __syncthreads();
      index_t above = 0;
      int digit = 255;
      while (above + histogram[digit] < remaining) above += histogram[digit--];
      const index_t bucket = histogram[digit];
      prefix |= static_cast<std::uint64_t>(digit) << shift;
      mask |= std::uint64_t{0xff} << shift;
      remaining -= above;
      __syncthreads();  // every thread has read the histogram
      if (bucket == remaining)
        return reduce(n, [&](index_t i) {
          const std::uint64_t key = key_of(i);
          return key != 0 && (key & mask) == prefix ? key : ~std::uint64_t{0};
        }, ~std::uint64_t{0}, smallest{});
    }
    return prefix;
  }

  /// Stable LSD radix sort of ids by 32-bit keys in 8-bit digits (a digit shared by every id skips
  /// its pass); ranks within a tile by warp match, across warps by per-warp digit counts.
  template <class KeyOf>
  __device__ void sort(std::int32_t* items, index_t n, const KeyOf& key_of, std::int32_t* temp) const {
    __shared__ unsigned histogram[256];
    __shared__ unsigned base[256];
    __shared__ unsigned warp_counts[warps][256];
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    std::int32_t* source = items;
    std::int32_t* target = temp;
    for (int shift = 0; shift < 32; shift += 8) {
      auto digit_of = [&](std::int32_t id) { return (static_cast<unsigned>(key_of(id)) >> shift) & 0xffu; };
      for (int b = threadIdx.x; b < 256; b += Threads) histogram[b] = 0;
      __syncthreads();
      for (index_t i = threadIdx.x; i < n; i += Threads) atomicAdd(&histogram[digit_of(source[i])], 1u);
      __syncthreads();
      bool one_digit = false;
      for (int b = 0; b < 256; ++b) one_digit = one_digit || histogram[b] == static_cast<unsigned>(n);
      if (!one_digit) {
        if (threadIdx.x == 0) {
          unsigned running = 0;
          for (int b = 0; b < 256; ++b) {
            base[b] = running;
            running += histogram[b];
          }
        }
        for (index_t first = 0; first < n; first += Threads) {
          for (int e = threadIdx.x; e < warps * 256; e += Threads) warp_counts[e / 256][e % 256] = 0;
          __syncthreads();
          const index_t i = first + threadIdx.x;
          const std::int32_t id = i < n ? source[i] : 0;
          const unsigned digit = i < n ? digit_of(id) : 256u;
          const unsigned same = __match_any_sync(0xffffffffu, digit);
          if (i < n && lane == __ffs(same) - 1) warp_counts[warp][digit] = static_cast<unsigned>(__popc(same));
          __syncthreads();
          if (i < n) {
            unsigned offset = base[digit] + static_cast<unsigned>(__popc(same & ((1u << lane) - 1u)));
            for (int w = 0; w < warp; ++w) offset += warp_counts[w][digit];
            target[offset] = id;
          }
          __syncthreads();
          for (int b = threadIdx.x; b < 256; b += Threads)
            for (int w = 0; w < warps; ++w) base[b] += warp_counts[w][b];
          __syncthreads();
        }
        std::int32_t* sorted = target;
        target = source;
        source = sorted;
      }
      __syncthreads();
    }
    if (source != items) for_each(n, [&](index_t i) { items[i] = source[i]; });
  }

 private:
  struct sum {
    __device__ index_t operator()(index_t a, index_t b) const { return a + b; }
  };
  struct largest {
    __device__ std::uint64_t operator()(std::uint64_t a, std::uint64_t b) const { return a > b ? a : b; }
  };
  struct smallest {
    __device__ std::uint64_t operator()(std::uint64_t a, std::uint64_t b) const { return a < b ? a : b; }
  };
};

static_assert(execution_group<block_group<256>>);

}  // namespace cuda::detail
KVCOMPACT_NAMESPACE_END
