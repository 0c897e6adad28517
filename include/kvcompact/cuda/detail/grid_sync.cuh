// SPDX-License-Identifier: Apache-2.0
/// @file
/// @brief Coordination between the blocks of one launch: device-scope acquire loads, release stores
/// relaxed atomic words and acquire-release counters (libcu++'s `cuda::atomic_ref`). Every spin-wait of the backend reads
/// through load_acquire(): under `KVCOMPACT_CUDA_EMULATION` these functions forward to the
/// emulator's `kvemu::` functions of the same names, whose load lets other threads and blocks run
/// while one waits. This is the only header that spells them out.
#pragma once

#include <kvcompact/cuda/detail/execution.cuh>

#if !defined(KVCOMPACT_CUDA_EMULATION)
#include <cuda/atomic>
#endif

KVCOMPACT_NAMESPACE_BEGIN
namespace cuda::detail {

/// Reads @p address with acquire semantics at device scope: what the block that released the value
/// wrote before its release is visible after this load. Spin-waits call it in their loop.
template <class Value>
__device__ inline Value load_acquire(const Value* address) {
#if defined(KVCOMPACT_CUDA_EMULATION)
  return ::kvemu::load_acquire(address);
#else
  return ::cuda::atomic_ref<Value, ::cuda::thread_scope_device>(*const_cast<Value*>(address)).load(::cuda::memory_order_acquire);
#endif
}

/// Writes @p value to @p address with release semantics at device scope: everything the calling
/// thread (and, through a preceding `__syncthreads()`, its block) read or wrote before is ordered
/// before it for whoever acquires the value.
template <class Value>
__device__ inline void store_release(Value* address, Value value) {
#if defined(KVCOMPACT_CUDA_EMULATION)
  ::kvemu::store_release(address, value);
#else
  ::cuda::atomic_ref<Value, ::cuda::thread_scope_device>(*address).store(value, ::cuda::memory_order_release);
#endif
}

/// Reads @p address atomically at device scope, without ordering (`ld.relaxed.gpu`): for a word that
/// another block of the same launch may overwrite while this one reads it, where either value leads
/// to the same decision.
template <class Value>
__device__ inline Value load_relaxed(const Value* address) {
#if defined(KVCOMPACT_CUDA_EMULATION)
  return ::kvemu::load_relaxed(address);
#else
  return ::cuda::atomic_ref<Value, ::cuda::thread_scope_device>(*const_cast<Value*>(address)).load(::cuda::memory_order_relaxed);
#endif
}

/// Writes @p value to @p address atomically at device scope, without ordering (`st.relaxed.gpu`):
/// the writing side of load_relaxed().
template <class Value>
__device__ inline void store_relaxed(Value* address, Value value) {
#if defined(KVCOMPACT_CUDA_EMULATION)
  ::kvemu::store_relaxed(address, value);
#else
  ::cuda::atomic_ref<Value, ::cuda::thread_scope_device>(*address).store(value, ::cuda::memory_order_relaxed);
#endif
}

/// Adds @p value to @p address with acquire-release semantics at device scope and returns the old
/// value: the arrival counter of "the last block to arrive finishes the work".
template <class Value>
__device__ inline Value fetch_add_acq_rel(Value* address, Value value) {
#if defined(KVCOMPACT_CUDA_EMULATION)
  return ::kvemu::fetch_add_acq_rel(address, value);
#else
  return ::cuda::atomic_ref<Value, ::cuda::thread_scope_device>(*address).fetch_add(value, ::cuda::memory_order_acq_rel);
#endif
}

}  // namespace cuda::detail
KVCOMPACT_NAMESPACE_END
