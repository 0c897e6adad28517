// SPDX-License-Identifier: Apache-2.0
// Seeded bugs for the emulator's detectors: each is a small kernel with one classic CUDA bug, and its
// fixed twin. `seeded_bugs NAME bug|fixed` runs one under the CPU emulator and prints the result
// (`bug-one-copy`: shared_state_across_blocks under the emulator's former shared-memory model).
// test/CMakeLists.txt registers, per bug, a test that passes only when the detector of the build
// reports the bug (ThreadSanitizer, AddressSanitizer, UndefinedBehaviorSanitizer, or the emulator's
// own barrier and progress checks), a test that the fixed twin runs clean with the right result,
// and, in the build without sanitizers, a test that the bug runs to the end unnoticed there: the
// detector, not luck, is what finds it.
#include <kvcompact/cuda/detail/execution.cuh>
#include <kvcompact/cuda/detail/grid_sync.cuh>

#include "support/device_cache.hpp"

#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

namespace {

namespace kcd = kvcompact::cuda::detail;

constexpr int threads = 64;


// Each thread publishes its value in shared memory and reads the value of the thread 32 places on,
// in the next warp. Bug: __syncwarp where __syncthreads is needed (it orders a warp's lanes, not
// warps). Under the emulator every warp reaches its __syncwarp before any is released, so the
// result is always right: only the race detector sees the missing block barrier.
template <bool Fixed>
__global__ void neighbour_kernel(int* out) {
  __shared__ int values[threads];
  const int t = static_cast<int>(threadIdx.x);
  values[t] = t + 1;
  if constexpr (Fixed) __syncthreads();
  else __syncwarp();
  out[t] = values[(t + 32) % threads];
}

// Every thread counts itself. Bug: a plain read-modify-write instead of atomicAdd.
template <bool Fixed>
__global__ void count_kernel(int* counter) {
  if constexpr (Fixed) atomicAdd(counter, 1);
  else *counter += 1;
}

// Block 0 writes a payload and raises a flag; block 1 waits for the flag and copies the payload.
// Bug: the flag is written and read with relaxed ordering, so nothing orders the payload's write
// before its read (a missing release/acquire pair, as in a broken decoupled look-back).
template <bool Fixed>
__global__ void handoff_kernel(int* payload, int* flag, int* out) {
  const int t = static_cast<int>(threadIdx.x);
  if (blockIdx.x == 0) {
    payload[t] = 100 + t;
    __syncthreads();
    if (t == 0) {
      if constexpr (Fixed) kcd::store_release(flag, 1);
      else kvemu::store_relaxed(flag, 1);
    }
  } else {
    if (t == 0) {
      if constexpr (Fixed) {
        while (kcd::load_acquire(flag) == 0) {
        }
      } else {
        while (kvemu::load_relaxed(flag) == 0) {
        }
      }
    }
    __syncthreads();
    out[t] = payload[t];
  }
}

// Half the block reduces in shared memory. Bug: the barrier sits inside the branch, so the two halves
// wait at two different __syncthreads.
template <bool Fixed>
__global__ void divergent_kernel(int* out) {
  __shared__ int values[threads];
  const int t = static_cast<int>(threadIdx.x);
  values[t] = t;
  if constexpr (Fixed) {
    __syncthreads();
    if (t < threads / 2) out[t] = values[t] + values[t + threads / 2];
  } else {
    if (t < threads / 2) {
      __syncthreads();
      out[t] = values[t] + values[t + threads / 2];
    } else {
      __syncthreads();
    }
  }
}

// Block 0 waits for a flag that block 1 raises. Bug: block 1 never raises it.
template <bool Fixed>
__global__ void waiting_kernel(int* flag, int* out) {
  if (blockIdx.x == 0) {
    while (kcd::load_acquire(flag) == 0) {
    }
    *out = 1;
  } else if (Fixed) {
    kcd::store_release(flag, 1);
  }
}

// Shifts a row of floats left by one in dynamic shared memory of exactly `threads` floats. Bug: the
// last thread reads one float past the end.
template <bool Fixed>
__global__ void shift_dynamic_kernel(float* out) {
  KVCOMPACT_DYNAMIC_SHARED(float, row);
  const int t = static_cast<int>(threadIdx.x);
  row[t] = static_cast<float>(t);
  __syncthreads();
  if (!Fixed || t + 1 < threads) out[t] = row[t + 1];
  else out[t] = 0.0f;
}

// The same with a static __shared__ array (row 0 of two, so the stray write stays inside the
// variable where no detector runs). Bug: the last thread writes one element past the end of row 0.
template <bool Fixed>
__global__ void shift_static_kernel(float* out) {
  __shared__ float rows[2][threads];
  const int t = static_cast<int>(threadIdx.x);
  if (!Fixed || t + 1 < threads) rows[0][t + 1] = static_cast<float>(t);
  if (t == 0) rows[0][0] = -1.0f;
  __syncthreads();
  out[t] = rows[0][t];
}

// Dynamic shared memory holds `odd` floats followed by 8-byte offsets, as decode kernels lay out
// statistics and row offsets. Bug: the offsets start right after the floats, at a 4-byte boundary.
template <bool Fixed>
__global__ void offsets_kernel(std::int64_t* out, int odd) {
  KVCOMPACT_DYNAMIC_SHARED(float, shared);
  const int t = static_cast<int>(threadIdx.x);
  if (t < odd) shared[t] = 1.0f;
  const int offset_floats = Fixed ? (odd + 1) / 2 * 2 : odd;
  auto* offsets = reinterpret_cast<std::int64_t*>(shared + offset_floats);
  offsets[t] = 1000 + t;
  __syncthreads();
  out[t] = offsets[(t + 1) % threads];
}

// Every block needs a lookup table in shared memory. Bug: only block 0 fills it, as if `__shared__`
// state outlived its block (on a GPU the next block on that multiprocessor finds whatever the last
// one left, or another kernel's data). The emulator gives every block its own fresh storage, so the
// blocks after the first read an empty table and the result is wrong in every build. The same
// kernel under the emulator's former model (`bug-one-copy`: one copy of each `__shared__` variable
// for the whole grid, blocks one after another) runs to the end with the right result.
#define KVEMU_SEEDED_TABLE_KERNEL(name)                                            \
  template <bool Fixed>                                                            \
  __global__ void name(const int* table, int* out) {                               \
    __shared__ int staged[threads];                                                \
    const int t = static_cast<int>(threadIdx.x);                                   \
    if (Fixed || blockIdx.x == 0) staged[t] = table[t];                            \
    __syncthreads();                                                               \
    out[static_cast<int>(blockIdx.x) * threads + t] = staged[(t + 1) % threads];   \
  }
KVEMU_SEEDED_TABLE_KERNEL(table_kernel)
#pragma push_macro("__shared__")
#undef __shared__
#define __shared__ static
KVEMU_SEEDED_TABLE_KERNEL(table_kernel_one_copy)
#pragma pop_macro("__shared__")
#undef KVEMU_SEEDED_TABLE_KERNEL

int check(const std::string& name, bool ok, const std::string& got) {
  std::printf("seeded %s: %s\n", name.c_str(), got.c_str());
  std::printf("%s\n", ok ? "seeded: ran to the end with the right result" : "seeded: WRONG RESULT");
  return ok ? 0 : 1;
}

template <bool Fixed>
int run(const std::string& name, bool one_copy) {
  const dim3 one(1), block(threads);
  if (name == "missing_barrier") {
    kvtest::device_array<int> out{std::vector<int>(threads)};
    kcd::launch(neighbour_kernel<Fixed>, one, block, 0, nullptr, out.data());
    const auto v = out.download();
    bool ok = true;
    for (int t = 0; t < threads; ++t) ok &= v[static_cast<std::size_t>(t)] == (t + 32) % threads + 1;
    return check(name, ok, "out[0] = " + std::to_string(v[0]));
  }
  if (name == "lost_update") {
    kvtest::device_array<int> counter{std::vector<int>(1)};
    kcd::launch(count_kernel<Fixed>, dim3(4), block, 0, nullptr, counter.data());
    const int got = counter.download()[0];
    return check(name, got == 4 * threads, "counter = " + std::to_string(got) + " (expected " + std::to_string(4 * threads) + ")");
  }
  if (name == "race_between_blocks") {
    kvtest::device_array<int> payload{std::vector<int>(threads)}, flag{std::vector<int>(1)}, out{std::vector<int>(threads)};
    kcd::launch(handoff_kernel<Fixed>, dim3(2), block, 0, nullptr, payload.data(), flag.data(), out.data());
    const auto v = out.download();
    bool ok = true;
    for (int t = 0; t < threads; ++t) ok &= v[static_cast<std::size_t>(t)] == 100 + t;
    return check(name, ok, "out[1] = " + std::to_string(v[1]));
  }
  if (name == "divergent_barrier") {
    kvtest::device_array<int> out{std::vector<int>(threads)};
    kcd::launch(divergent_kernel<Fixed>, one, block, 0, nullptr, out.data());
    const int got = out.download()[0];
    return check(name, got == threads / 2, "out[0] = " + std::to_string(got));
  }
  if (name == "spin_without_progress") {
    kvtest::device_array<int> flag{std::vector<int>(1)}, out{std::vector<int>(1)};
    kcd::launch(waiting_kernel<Fixed>, dim3(2), dim3(1), 0, nullptr, flag.data(), out.data());
    return check(name, out.download()[0] == 1, "out = " + std::to_string(out.download()[0]));
  }
  if (name == "dynamic_shared_out_of_bounds") {
    kvtest::device_array<float> out{std::vector<float>(threads)};
    kcd::launch(shift_dynamic_kernel<Fixed>, one, block, threads * sizeof(float), nullptr, out.data());
    const auto v = out.download();
    return check(name, v[0] == 1.0f && v[threads - 2] == threads - 1, "out[0] = " + std::to_string(v[0]));
  }
  if (name == "static_shared_out_of_bounds") {
    kvtest::device_array<float> out{std::vector<float>(threads)};
    kcd::launch(shift_static_kernel<Fixed>, one, block, 0, nullptr, out.data());
    const auto v = out.download();
    return check(name, v[0] == -1.0f && v[1] == 0.0f, "out[1] = " + std::to_string(v[1]));
  }
  if (name == "misaligned_shared") {
    constexpr int odd = 7;
    kvtest::device_array<std::int64_t> out{std::vector<std::int64_t>(threads)};
    kcd::launch(offsets_kernel<Fixed>, one, block, (odd + 1) * sizeof(float) + threads * sizeof(std::int64_t), nullptr, out.data(), odd);
    const auto v = out.download();
    return check(name, v[0] == 1001, "out[0] = " + std::to_string(v[0]));
  }
  if (name == "shared_state_across_blocks") {
    constexpr int blocks = 4;
    std::vector<int> table(threads);
    for (int t = 0; t < threads; ++t) table[static_cast<std::size_t>(t)] = 7 * t + 3;
    kvtest::device_array<int> in{table}, out{std::vector<int>(blocks * threads)};
    kcd::launch(one_copy ? table_kernel_one_copy<Fixed> : table_kernel<Fixed>, dim3(blocks), block, 0, nullptr, in.data(), out.data());
    const auto v = out.download();
    bool ok = true;
    for (int i = 0; i < blocks * threads; ++i) ok &= v[static_cast<std::size_t>(i)] == table[static_cast<std::size_t>((i % threads + 1) % threads)];
    return check(name, ok, "block 1: out[0] = " + std::to_string(v[threads]) + " (expected " + std::to_string(table[1]) + ")");
  }
  std::fprintf(stderr, "seeded_bugs: unknown bug '%s'\n", name.c_str());
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  const std::string mode = argc == 3 ? argv[2] : "";
  if (mode != "bug" && mode != "fixed" && mode != "bug-one-copy") {
    std::fprintf(stderr, "usage: seeded_bugs NAME bug|fixed|bug-one-copy\n");
    return 2;
  }
  const int status = mode == "fixed" ? run<true>(argv[1], false) : run<false>(argv[1], mode == "bug-one-copy");
  if (cudaGetLastError() != cudaSuccess) {
    std::fprintf(stderr, "seeded_bugs: a launch failed\n");
    return 1;
  }
  return status;
}
