// SPDX-License-Identifier: Apache-2.0
/// @file
/// @brief A CPU emulator of the CUDA execution model, enough to run kvcompact's kernels (and the GPU
/// tests) with a host compiler on machines without a GPU. Included by the library in place of
/// <cuda_runtime.h> when KVCOMPACT_CUDA_EMULATION names this header.
///
/// Model: blocks of a grid run one after another; the threads of a block are fibers (ucontext) that
/// run until they reach a barrier. `__syncthreads*` releases when every live thread of the block
/// waits there; warp operations (`__shfl_xor_sync`, `__ballot_sync`, `__syncwarp`) release when every
/// live lane of the warp waits at the same operation, and compute their results before any lane
/// resumes. Between barriers the runnable threads are resumed in a shuffled order (seed
/// KVEMU_SEED, default 1), so code that relies on an ordering without a barrier shows up as wrong
/// results. A barrier that can never release (a `__syncthreads` in divergent code, lanes of a warp
/// at different warp operations) aborts with a message. Exited threads count as arrived. Dynamic
/// shared memory is filled with a garbage pattern at the start of every block; memory from
/// cudaMalloc likewise. Streams are ignored: every call completes before it returns.
///
/// Not emulated: concurrency between blocks (blocks never overlap), the memory model, timing.
#pragma once

#include <ucontext.h>

#include <math.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <random>
#include <tuple>
#include <type_traits>
#include <vector>

// ---------------------------------------------------------------------------------------------
// Keywords and types
// ---------------------------------------------------------------------------------------------

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static

/// Four 32-bit words, 16-byte aligned (the vector type of 16-byte loads).
struct alignas(16) uint4 {
  unsigned x, y, z, w;
};

/// Grid and block extents.
struct dim3 {
  unsigned x, y, z;  ///< extents
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

/// Runtime error codes used by kvcompact.
enum cudaError_t : int {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorMemoryAllocation = 2,
  cudaErrorInvalidConfiguration = 9,
  cudaErrorInsufficientDriver = 35,
  cudaErrorNoDevice = 100,
};
struct CUstream_st;
using cudaStream_t = CUstream_st*;  ///< streams are accepted and ignored
enum cudaMemcpyKind { cudaMemcpyHostToHost = 0, cudaMemcpyHostToDevice = 1, cudaMemcpyDeviceToHost = 2, cudaMemcpyDeviceToDevice = 3, cudaMemcpyDefault = 4 };
enum cudaDeviceAttr { cudaDevAttrMultiProcessorCount = 16 };
enum cudaFuncAttribute { cudaFuncAttributeMaxDynamicSharedMemorySize = 8 };

namespace kvemu {

/// What a thread waits for.
enum class wait_kind { none, block_barrier, warp_op };
/// Which warp operation.
enum class warp_op { sync, shfl_xor_float, shfl_xor_int, ballot, match_any };

/// One emulated thread.
struct fiber {
  dim3 index;                     ///< threadIdx
  int linear = 0;                 ///< linear thread index in the block
  ucontext_t context{};           ///< saved registers
  std::vector<char> stack;        ///< its stack
  bool done = false;              ///< returned from the kernel
  wait_kind waiting = wait_kind::none;
  int predicate = 0;              ///< __syncthreads_and / __ballot_sync input
  warp_op op = warp_op::sync;     ///< pending warp operation
  std::uint32_t value = 0;        ///< shuffle input (bits)
  int lane_mask = 0;              ///< shuffle xor mask
  std::uint32_t result = 0;       ///< warp operation / barrier result
};

/// State of the block being run.
struct block_state {
  std::vector<fiber> threads;
  ucontext_t scheduler{};
  fiber* current = nullptr;
  dim3 block_index, block_dim, grid_dim;
  std::vector<unsigned char> dynamic_shared;
  std::function<void()> body;
  std::mt19937 order_rng{1};
  cudaError_t last_error = cudaSuccess;
};

inline block_state& state() {
  static block_state s;
  static bool seeded = false;
  if (!seeded) {
    seeded = true;
    if (const char* seed = std::getenv("KVEMU_SEED")) s.order_rng.seed(static_cast<unsigned>(std::strtoul(seed, nullptr, 10)));
  }
  return s;
}

[[noreturn]] inline void fail(const char* what) {
  std::fprintf(stderr, "kvemu: %s\n", what);
  std::abort();
}

inline void trampoline() {
  state().body();
  state().current->done = true;
  // returns to uc_link (the scheduler)
}

/// Suspends the current thread until the scheduler releases its wait.
inline void suspend(wait_kind kind) {
  block_state& s = state();
  fiber* f = s.current;
  f->waiting = kind;
  swapcontext(&f->context, &s.scheduler);
}

/// Releases the warp waits that are complete; returns true if one was released.
inline bool release_warps() {
  block_state& s = state();
  bool released = false;
  const int n = static_cast<int>(s.threads.size());
  for (int first = 0; first < n; first += 32) {
    const int last = std::min(n, first + 32);
    bool all = true, any = false;
    for (int t = first; t < last; ++t) {
      const fiber& f = s.threads[t];
      if (f.done) continue;
      if (f.waiting != wait_kind::warp_op) all = false;
      else any = true;
    }
    if (!all || !any) continue;
    warp_op op = warp_op::sync;
    bool first_live = true;
    std::uint32_t ballot = 0;
    for (int t = first; t < last; ++t) {
      const fiber& f = s.threads[t];
      if (f.done) continue;
      if (first_live) op = f.op, first_live = false;
      else if (f.op != op) fail("lanes of a warp wait at different warp operations");
      if (f.predicate) ballot |= 1u << (t - first);
    }
    for (int t = first; t < last; ++t) {
      fiber& f = s.threads[t];
      if (f.done) continue;
      if (op == warp_op::ballot) {
        f.result = ballot;
      } else if (op == warp_op::match_any) {
        std::uint32_t same = 0;
        for (int u = first; u < last; ++u)
          if (!s.threads[u].done && s.threads[u].value == f.value) same |= 1u << (u - first);
        f.result = same;
      } else if (op == warp_op::shfl_xor_float || op == warp_op::shfl_xor_int) {
        const int partner = first + ((t - first) ^ f.lane_mask);
        if (partner >= last || s.threads[partner].done) fail("__shfl_xor_sync reads an exited or missing lane");
        f.result = s.threads[partner].value;
      }
      f.waiting = wait_kind::none;
    }
    released = true;
  }
  return released;
}

/// Releases the block barrier when every live thread waits at it; returns true if released.
inline bool release_block() {
  block_state& s = state();
  bool any = false;
  int all_and = 1;
  for (const fiber& f : s.threads) {
    if (f.done) continue;
    if (f.waiting != wait_kind::block_barrier) return false;
    any = true;
    all_and &= f.predicate != 0;
  }
  if (!any) return false;
  for (fiber& f : s.threads)
    if (!f.done) {
      f.result = static_cast<std::uint32_t>(all_and);
      f.waiting = wait_kind::none;
    }
  return true;
}

/// Runs one block to completion.
inline void run_block() {
  block_state& s = state();
  constexpr std::size_t stack_bytes = 256 * 1024;
  const int n = static_cast<int>(s.block_dim.x * s.block_dim.y * s.block_dim.z);
  s.threads.resize(static_cast<std::size_t>(n));
  for (int t = 0; t < n; ++t) {
    fiber& f = s.threads[static_cast<std::size_t>(t)];
    f.index = dim3(static_cast<unsigned>(t) % s.block_dim.x, (static_cast<unsigned>(t) / s.block_dim.x) % s.block_dim.y,
                   static_cast<unsigned>(t) / (s.block_dim.x * s.block_dim.y));
    f.linear = t;
    f.done = false;
    f.waiting = wait_kind::none;
    f.stack.resize(stack_bytes);
    getcontext(&f.context);
    f.context.uc_stack.ss_sp = f.stack.data();
    f.context.uc_stack.ss_size = f.stack.size();
    f.context.uc_link = &s.scheduler;
    makecontext(&f.context, trampoline, 0);
  }
  std::fill(s.dynamic_shared.begin(), s.dynamic_shared.end(), static_cast<unsigned char>(0xcd));
  std::vector<int> order(static_cast<std::size_t>(n));
  for (;;) {
    for (int t = 0; t < n; ++t) order[static_cast<std::size_t>(t)] = t;
    std::shuffle(order.begin(), order.end(), s.order_rng);
    bool ran = false;
    for (int t : order) {
      fiber& f = s.threads[static_cast<std::size_t>(t)];
      if (f.done || f.waiting != wait_kind::none) continue;
      s.current = &f;
      swapcontext(&s.scheduler, &f.context);
      ran = true;
    }
    bool live = false;
    for (const fiber& f : s.threads) live |= !f.done;
    if (!live) break;
    if (ran) continue;
    if (release_warps()) continue;
    if (release_block()) continue;
    fail("deadlock: threads wait at barriers that cannot release (__syncthreads in divergent code?)");
  }
  s.current = nullptr;
}

/// Runs a kernel over a grid, block after block.
template <class... Params, class... Args>
void launch(void (*kernel)(Params...), dim3 grid, dim3 block, std::size_t shared_bytes, cudaStream_t, Args&&... args) {
  block_state& s = state();
  if (block.x * block.y * block.z == 0 || block.x * block.y * block.z > 1024 || grid.x == 0 || grid.y == 0 || grid.z == 0 ||
      grid.y > 65535 || grid.z > 65535) {
    s.last_error = cudaErrorInvalidConfiguration;
    return;
  }
  std::tuple<std::decay_t<Params>...> params(std::forward<Args>(args)...);
  s.block_dim = block;
  s.grid_dim = grid;
  s.dynamic_shared.assign(shared_bytes + 128, 0);
  s.body = [&] { std::apply(kernel, params); };
  for (unsigned z = 0; z < grid.z; ++z)
    for (unsigned y = 0; y < grid.y; ++y)
      for (unsigned x = 0; x < grid.x; ++x) {
        s.block_index = dim3(x, y, z);
        run_block();
      }
  s.body = nullptr;
}

/// The block's dynamic shared memory (128-byte aligned, as kvcompact declares it).
inline unsigned char* dynamic_shared() {
  unsigned char* p = state().dynamic_shared.data();
  return p + ((128 - reinterpret_cast<std::uintptr_t>(p) % 128) % 128);
}

inline std::uint32_t warp_exchange(warp_op op, std::uint32_t value, int lane_mask, int predicate) {
  fiber* f = state().current;
  f->op = op;
  f->value = value;
  f->lane_mask = lane_mask;
  f->predicate = predicate;
  suspend(wait_kind::warp_op);
  return f->result;
}

}  // namespace kvemu

#define threadIdx (::kvemu::state().current->index)
#define blockIdx (::kvemu::state().block_index)
#define blockDim (::kvemu::state().block_dim)
#define gridDim (::kvemu::state().grid_dim)

// ---------------------------------------------------------------------------------------------
// Device functions
// ---------------------------------------------------------------------------------------------

inline void __syncthreads() {
  ::kvemu::state().current->predicate = 1;
  ::kvemu::suspend(::kvemu::wait_kind::block_barrier);
}
inline int __syncthreads_and(int predicate) {
  ::kvemu::state().current->predicate = predicate != 0;
  ::kvemu::suspend(::kvemu::wait_kind::block_barrier);
  return static_cast<int>(::kvemu::state().current->result);
}
inline void __syncwarp(unsigned = 0xffffffffu) { ::kvemu::warp_exchange(::kvemu::warp_op::sync, 0, 0, 0); }
inline unsigned __ballot_sync(unsigned, int predicate) { return ::kvemu::warp_exchange(::kvemu::warp_op::ballot, 0, 0, predicate != 0); }
inline float __shfl_xor_sync(unsigned, float value, int lane_mask) {
  std::uint32_t bits = 0;
  std::memcpy(&bits, &value, 4);
  bits = ::kvemu::warp_exchange(::kvemu::warp_op::shfl_xor_float, bits, lane_mask, 0);
  std::memcpy(&value, &bits, 4);
  return value;
}
inline int __shfl_xor_sync(unsigned, int value, int lane_mask) {
  return static_cast<int>(::kvemu::warp_exchange(::kvemu::warp_op::shfl_xor_int, static_cast<std::uint32_t>(value), lane_mask, 0));
}
inline unsigned __match_any_sync(unsigned, unsigned value) { return ::kvemu::warp_exchange(::kvemu::warp_op::match_any, value, 0, 0); }
inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __ffs(unsigned x) { return __builtin_ffs(static_cast<int>(x)); }
inline unsigned __float_as_uint(float x) {
  unsigned u = 0;
  std::memcpy(&u, &x, 4);
  return u;
}
inline float __uint_as_float(unsigned u) {
  float x = 0;
  std::memcpy(&x, &u, 4);
  return x;
}
template <class T>
T atomicAdd(T* address, T value) {
  const T old = *address;
  *address = old + value;
  return old;
}
template <class T>
T atomicMax(T* address, T value) {
  const T old = *address;
  *address = old > value ? old : value;
  return old;
}
template <class T>
T atomicExch(T* address, T value) {
  const T old = *address;
  *address = value;
  return old;
}
template <class T>
T atomicCAS(T* address, T compare, T value) {
  const T old = *address;
  if (old == compare) *address = value;
  return old;
}

// ---------------------------------------------------------------------------------------------
// Runtime API (host memory stands in for device memory)
// ---------------------------------------------------------------------------------------------

inline cudaError_t cudaGetLastError() {
  const cudaError_t e = ::kvemu::state().last_error;
  ::kvemu::state().last_error = cudaSuccess;
  return e;
}
inline cudaError_t cudaPeekAtLastError() { return ::kvemu::state().last_error; }
inline const char* cudaGetErrorName(cudaError_t e) {
  switch (e) {
    case cudaSuccess: return "cudaSuccess";
    case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
    case cudaErrorMemoryAllocation: return "cudaErrorMemoryAllocation";
    case cudaErrorInvalidConfiguration: return "cudaErrorInvalidConfiguration";
    case cudaErrorInsufficientDriver: return "cudaErrorInsufficientDriver";
    case cudaErrorNoDevice: return "cudaErrorNoDevice";
  }
  return "cudaErrorUnknown";
}
inline const char* cudaGetErrorString(cudaError_t e) { return cudaGetErrorName(e); }
inline cudaError_t cudaGetDeviceCount(int* count) {
  *count = 1;
  return cudaSuccess;
}
inline cudaError_t cudaGetDevice(int* device) {
  *device = 0;
  return cudaSuccess;
}
inline cudaError_t cudaSetDevice(int) { return cudaSuccess; }
inline cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr, int) {
  *value = 4;  // a small "GPU": exercises the split decode path
  return cudaSuccess;
}
template <class Kernel>
cudaError_t cudaFuncSetAttribute(Kernel, cudaFuncAttribute, int) {
  return cudaSuccess;
}
template <class T>
cudaError_t cudaMalloc(T** pointer, std::size_t bytes) {
  void* p = std::aligned_alloc(256, (bytes + 255) / 256 * 256 + 256);
  if (!p) return cudaErrorMemoryAllocation;
  std::memset(p, 0xcd, (bytes + 255) / 256 * 256 + 256);
  *pointer = static_cast<T*>(p);
  return cudaSuccess;
}
inline cudaError_t cudaFree(void* p) {
  std::free(p);
  return cudaSuccess;
}
inline cudaError_t cudaMemcpy(void* to, const void* from, std::size_t bytes, cudaMemcpyKind) {
  if (bytes) std::memmove(to, from, bytes);
  return cudaSuccess;
}
inline cudaError_t cudaMemcpyAsync(void* to, const void* from, std::size_t bytes, cudaMemcpyKind kind, cudaStream_t = nullptr) {
  return cudaMemcpy(to, from, bytes, kind);
}
inline cudaError_t cudaMemset(void* p, int value, std::size_t bytes) {
  if (bytes) std::memset(p, value, bytes);
  return cudaSuccess;
}
inline cudaError_t cudaMemsetAsync(void* p, int value, std::size_t bytes, cudaStream_t = nullptr) { return cudaMemset(p, value, bytes); }
inline cudaError_t cudaStreamSynchronize(cudaStream_t) { return cudaSuccess; }
inline cudaError_t cudaDeviceSynchronize() { return cudaSuccess; }
inline cudaError_t cudaStreamCreate(cudaStream_t* stream) {
  *stream = nullptr;
  return cudaSuccess;
}
inline cudaError_t cudaStreamDestroy(cudaStream_t) { return cudaSuccess; }

// ---------------------------------------------------------------------------------------------
// WMMA: each lane holds whole 16 x 16 tiles (the API hides the fragment layout, so any layout is
// faithful); elements convert with an unqualified to_float (found by argument-dependent lookup).
// ---------------------------------------------------------------------------------------------

namespace nvcuda::wmma {
struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };

/// A 16 x 16 tile held by one lane.
template <class Use, int M, int N, int K, class T, class Layout = void>
struct fragment {
  static_assert(M == 16 && N == 16 && K == 16, "kvemu: only m16n16k16 fragments are emulated");
  float x[256];
};

namespace detail {
template <class T>
void check_operand(const T* p, unsigned ldm) {
  if (reinterpret_cast<std::uintptr_t>(p) % 32 != 0) ::kvemu::fail("wmma: a tile pointer is not 32-byte aligned");
  if ((ldm * sizeof(T)) % 16 != 0) ::kvemu::fail("wmma: ldm is not a multiple of 16 bytes");
}
template <class T>
float element(const T& e) {
  if constexpr (std::is_same_v<T, float>) return e;
  else return to_float(e);
}
}  // namespace detail

template <class Use, class T, class Layout>
void fill_fragment(fragment<Use, 16, 16, 16, T, Layout>& f, float value) {
  for (float& e : f.x) e = value;
}
template <class T, class Layout>
void load_matrix_sync(fragment<matrix_a, 16, 16, 16, T, Layout>& f, const T* p, unsigned ldm) {
  detail::check_operand(p, ldm);
  for (int r = 0; r < 16; ++r)
    for (int c = 0; c < 16; ++c) f.x[r * 16 + c] = detail::element(std::is_same_v<Layout, row_major> ? p[r * ldm + c] : p[c * ldm + r]);
}
template <class T, class Layout>
void load_matrix_sync(fragment<matrix_b, 16, 16, 16, T, Layout>& f, const T* p, unsigned ldm) {
  detail::check_operand(p, ldm);
  for (int k = 0; k < 16; ++k)
    for (int n = 0; n < 16; ++n) f.x[k * 16 + n] = detail::element(std::is_same_v<Layout, row_major> ? p[k * ldm + n] : p[n * ldm + k]);
}
template <class A, class B, class LA, class LB>
void mma_sync(fragment<accumulator, 16, 16, 16, float>& d, const fragment<matrix_a, 16, 16, 16, A, LA>& a,
              const fragment<matrix_b, 16, 16, 16, B, LB>& b, const fragment<accumulator, 16, 16, 16, float>& c) {
  float out[256];
  for (int m = 0; m < 16; ++m)
    for (int n = 0; n < 16; ++n) {
      float sum = c.x[m * 16 + n];
      for (int k = 0; k < 16; ++k) sum += a.x[m * 16 + k] * b.x[k * 16 + n];
      out[m * 16 + n] = sum;
    }
  std::memcpy(d.x, out, sizeof(out));
}
inline void store_matrix_sync(float* p, const fragment<accumulator, 16, 16, 16, float>& f, unsigned ldm, layout_t layout) {
  detail::check_operand(p, ldm);
  for (int m = 0; m < 16; ++m)
    for (int n = 0; n < 16; ++n) (layout == mem_row_major ? p[m * ldm + n] : p[n * ldm + m]) = f.x[m * 16 + n];
}
}  // namespace nvcuda::wmma
#include "support/cuda_emulator_mma.hpp"  // NOLINT: mma.sync emulation (prefill-score)
#include "support/cuda_emulator_cub.hpp"   // NOLINT: stand-ins for the CUB collectives kvcompact uses (device-select)
#include "support/cuda_emulator_sync.hpp"  // NOLINT: acquire loads, release stores and counters between blocks (device-select)
