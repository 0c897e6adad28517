// SPDX-License-Identifier: Apache-2.0
/// @file
/// @brief Flags that the blocks of one grid publish and wait for, with device-scope release/acquire
/// ordering (decoupled look-back and similar protocols). Under the CPU emulator each function
/// forwards to the emulator's hook of the same name: a wait yields, so the block it waits for runs,
/// and the race detector sees the release/acquire pair. Spin on load_acquire, never on a `volatile`
/// read (the emulator cannot interleave one).
#pragma once

#include <kvcompact/cuda/detail/execution.cuh>

#if !defined(KVCOMPACT_CUDA_EMULATION)
#include <cuda/atomic>
#endif

KVCOMPACT_NAMESPACE_BEGIN
namespace cuda::detail {

/// Stores @p value to @p flag with release semantics at device scope: what the calling thread wrote
/// before, and what a block barrier ordered before that, is visible to any thread whose
/// load_acquire() returns the value.
template <class T>
__device__ inline void store_release(T* flag, T value) {
#if defined(KVCOMPACT_CUDA_EMULATION)
  ::kvemu::store_release(flag, value);
#else
  ::cuda::atomic_ref<T, ::cuda::thread_scope_device>(*flag).store(value, ::cuda::memory_order_release);
#endif
}

/// Loads @p flag with acquire semantics at device scope (see store_release()); a spin-wait is
/// `while (load_acquire(flag) != ready) {}`.
template <class T>
__device__ inline T load_acquire(const T* flag) {
#if defined(KVCOMPACT_CUDA_EMULATION)
  return ::kvemu::load_acquire(flag);
#else
  return ::cuda::atomic_ref<T, ::cuda::thread_scope_device>(*const_cast<T*>(flag)).load(::cuda::memory_order_acquire);
#endif
}

}  // namespace cuda::detail
KVCOMPACT_NAMESPACE_END
