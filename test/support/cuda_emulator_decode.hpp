// SPDX-License-Identifier: Apache-2.0
/// @file
/// @brief Emulation of the instructions the decode kernels use beyond support/cuda_emulator.hpp (whose
/// end includes this file): asynchronous copies (cp.async), the device fence, programmatic dependent
/// launch, the fp16 conversion and the occupancy query. Included by cuda_emulator.hpp only.
///
/// cp.async: each thread's copies are queued in groups and performed only when the thread waits for
/// them (cp_async_wait), so a kernel that reads shared memory before waiting sees the garbage the
/// emulator fills shared memory with, as a GPU may show it stale data.
#pragma once

#include <atomic>
#include <cstdint>
#include <cstring>

namespace kvemu {

/// The running thread's cp.async queue (kept in its fiber: an emulated thread's own state).
inline async_copy_queue& async_copies() { return this_thread().async_copies; }

/// cp.async.cg.shared.global [to], [from], 16.
inline void cp_async_16(void* to, const void* from) {
  if (reinterpret_cast<std::uintptr_t>(to) % 16 != 0 || reinterpret_cast<std::uintptr_t>(from) % 16 != 0)
    fail("cp.async: a 16-byte copy with a misaligned address");
  async_copies().open.push_back({to, from});
}

/// cp.async.commit_group.
inline void cp_async_commit() {
  async_copy_queue& q = async_copies();
  q.groups.push_back(std::move(q.open));
  q.open.clear();
}

/// cp.async.wait_group pending: performs the copies of all but the newest @p pending groups.
inline void cp_async_wait(int pending) {
  async_copy_queue& q = async_copies();
  while (static_cast<int>(q.groups.size()) > pending) {
    for (const async_copy& c : q.groups.front()) std::memcpy(c.to, c.from, 16);
    q.groups.pop_front();
  }
}

/// fence.acq_rel.gpu: a sequentially consistent read-modify-write of one grid-wide word (blocks run on
/// concurrent OS threads; every fence of every block orders through that word, which ThreadSanitizer
/// understands, whereas it cannot model std::atomic_thread_fence and GCC refuses it under -fsanitize=thread).
inline void fence_device() {
  static std::atomic<unsigned> fence_word{0};
  fence_word.fetch_add(1u, std::memory_order_seq_cst);
}

/// griddepcontrol.launch_dependents (kernels run one after another: nothing to release).
inline void griddepcontrol_launch_dependents() {}
/// griddepcontrol.wait (the previous kernel has completed when the next one starts).
inline void griddepcontrol_wait() {}
/// Programmatic launches run as ordinary ones.
inline bool programmatic_launch_supported() { return false; }

/// cvt.f32.f16: the binary16 value @p h as a float (exact: subnormals, infinities and NaN included).
inline float cvt_f32_f16(std::uint16_t h) {
  const std::uint32_t sign = static_cast<std::uint32_t>(h & 0x8000u) << 16;
  const std::uint32_t exponent = (h >> 10) & 0x1fu;
  std::uint32_t mantissa = h & 0x3ffu;
  std::uint32_t bits = 0;
  if (exponent == 0x1fu) {
    bits = sign | 0x7f800000u | (mantissa << 13);
  } else if (exponent != 0) {
    bits = sign | ((exponent + 112u) << 23) | (mantissa << 13);
  } else if (mantissa == 0) {
    bits = sign;
  } else {
    std::uint32_t e = 113;
    while ((mantissa & 0x400u) == 0) {
      mantissa <<= 1;
      --e;
    }
    bits = sign | (e << 23) | ((mantissa & 0x3ffu) << 13);
  }
  float value = 0.0f;
  std::memcpy(&value, &bits, 4);
  return value;
}

}  // namespace kvemu

/// cudaOccupancyMaxActiveBlocksPerMultiprocessor: the emulated "small GPU" (4 multiprocessors) runs
/// 4 blocks of any kernel per multiprocessor, so split-KV decoding splits small caches too.
template <class Kernel>
cudaError_t cudaOccupancyMaxActiveBlocksPerMultiprocessor(int* blocks, Kernel, int, std::size_t) {
  *blocks = 4;
  return cudaSuccess;
}
