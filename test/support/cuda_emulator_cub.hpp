// SPDX-License-Identifier: Apache-2.0
/// @file
/// @brief Stand-ins for the CUB collectives kvcompact's kernels use (`cub::BlockScan`,
/// `cub::BlockReduce`, `cub::WarpReduce`, default algorithms), for the CPU emulator: CUB's own headers
/// need the CUDA runtime's declarations, which the emulator replaces. Same interface and contract as
/// CUB's: every thread of the block (or lane of the warp) calls; what CUB leaves undefined (a
/// reduction's result outside thread or lane 0) is garbage here; and no barrier follows the call, so
/// reusing a TempStorage without a `__syncthreads()` in between shows up as wrong results, as it can
/// on a GPU. Included by cuda_emulator.hpp.
#pragma once

#include <cstring>
#include <type_traits>

namespace cub {
namespace emulator_detail {
/// What an emulated collective returns where CUB's result is undefined.
template <class T>
T garbage() {
  static_assert(std::is_trivially_copyable_v<T>, "kvemu: cub stand-ins hold trivially copyable values");
  T value;
  std::memset(&value, 0xcd, sizeof(T));
  return value;
}
/// What the block collectives share: one slot per thread in shared memory, gathered at a barrier.
template <class T, int BlockDimX>
class block_collective {
 public:
  /// Shared memory of the collective.
  struct TempStorage {
    T values[BlockDimX];  ///< every thread's input
  };

 protected:
  /// Binds the collective to its storage; the block must be one-dimensional of BlockDimX threads.
  explicit block_collective(TempStorage& storage) : storage_(storage) {
    if (blockDim.x != static_cast<unsigned>(BlockDimX) || blockDim.y != 1 || blockDim.z != 1)
      ::kvemu::fail("cub stand-in: the block's shape differs from the collective's BLOCK_DIM_X");
  }
  /// Publishes this thread's input, then waits for every thread's.
  void gather(T input) {
    storage_.values[threadIdx.x] = input;
    __syncthreads();
  }
  TempStorage& storage_;  ///< the shared slots
};
}  // namespace emulator_detail

/// Block-wide prefix sums (exclusive) of one item per thread, in thread order.
template <class T, int BlockDimX>
class BlockScan : public emulator_detail::block_collective<T, BlockDimX> {
  using base = emulator_detail::block_collective<T, BlockDimX>;

 public:
  using typename base::TempStorage;
  /// Binds the collective to its storage.
  explicit BlockScan(TempStorage& storage) : base(storage) {}
  /// The sum of the inputs of lower threads (0 in thread 0).
  void ExclusiveSum(T input, T& output) {
    T aggregate;
    ExclusiveSum(input, output, aggregate);
  }
  /// The sum of the inputs of lower threads, and the sum of all inputs (to every thread).
  void ExclusiveSum(T input, T& output, T& block_aggregate) {
    this->gather(input);
    const int self = static_cast<int>(threadIdx.x);
    T total{};
    for (int t = 0; t < BlockDimX; ++t) {
      if (t == self) output = total;
      total = static_cast<T>(total + this->storage_.values[t]);
    }
    block_aggregate = total;
  }
};

/// Block-wide sum; the result is valid in thread 0 only.
template <class T, int BlockDimX>
class BlockReduce : public emulator_detail::block_collective<T, BlockDimX> {
  using base = emulator_detail::block_collective<T, BlockDimX>;

 public:
  using typename base::TempStorage;
  /// Binds the collective to its storage.
  explicit BlockReduce(TempStorage& storage) : base(storage) {}
  /// The sum of every thread's input, in thread 0 (garbage elsewhere).
  T Sum(T input) {
    this->gather(input);
    if (threadIdx.x != 0) return emulator_detail::garbage<T>();
    T total{};
    for (int t = 0; t < BlockDimX; ++t) total = static_cast<T>(total + this->storage_.values[t]);
    return total;
  }
};

/// Warp-wide sum of 32-bit integers over the 32 lanes of a warp; valid in lane 0 only.
template <class T, int LogicalWarpThreads = 32>
class WarpReduce {
  static_assert(LogicalWarpThreads == 32, "kvemu: only whole-warp WarpReduce is emulated");
  static_assert(std::is_integral_v<T> && sizeof(T) == 4, "kvemu: WarpReduce is emulated for 32-bit integers");

 public:
  /// Shared memory of the collective (CUB's shuffle-based reduction needs none).
  struct TempStorage {};
  /// Binds the collective to its storage.
  explicit WarpReduce(TempStorage&) {}
  /// The sum of every lane's input, in lane 0 (garbage elsewhere).
  T Sum(T input) {
    unsigned sum = static_cast<unsigned>(input);
    for (int mask = 16; mask >= 1; mask /= 2) sum += static_cast<unsigned>(__shfl_xor_sync(0xffffffffu, static_cast<int>(sum), mask));
    return threadIdx.x % 32 == 0 ? static_cast<T>(sum) : emulator_detail::garbage<T>();
  }
};
}  // namespace cub
