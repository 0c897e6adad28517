// SPDX-License-Identifier: Apache-2.0
/// @file
/// @brief Asynchronous global-to-shared copies (`cp.async`, sm_80 and later): 16-byte copies that
/// skip L1 and the registers, committed in groups and waited for in commit order. Each thread waits
/// only for its own copies: a block barrier must follow the wait before other threads read them.
#pragma once

#include <kvcompact/cuda/detail/execution.cuh>

#include <cstdint>

KVCOMPACT_NAMESPACE_BEGIN
namespace cuda::detail {

/// Starts copying 16 bytes from global memory at @p source to shared memory at @p destination
/// (both 16-byte aligned), as part of the calling thread's open group.
__device__ inline void cp_async_16(void* destination, const void* source) {
#if defined(KVCOMPACT_CUDA_EMULATION)
  ::kvemu::cp_async_16(destination, source);
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  const auto address = static_cast<std::uint32_t>(__cvta_generic_to_shared(destination));
  asm volatile("cp.async.cg.shared.global.L2::128B [%0], [%1], 16;\n" ::"r"(address), "l"(source) : "memory");
#else
  *static_cast<uint4*>(destination) = *static_cast<const uint4*>(source);  // no cp.async before sm_80: a plain copy
#endif
}

/// Closes the calling thread's open group of copies (an empty group is fine).
__device__ inline void cp_async_commit() {
#if defined(KVCOMPACT_CUDA_EMULATION)
  ::kvemu::cp_async_commit();
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.commit_group;\n" ::: "memory");
#endif
}

/// Waits until at most @p Pending of the calling thread's committed groups are still in flight.
template <int Pending>
__device__ inline void cp_async_wait() {
#if defined(KVCOMPACT_CUDA_EMULATION)
  ::kvemu::cp_async_wait(Pending);
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.wait_group %0;\n" ::"n"(Pending) : "memory");
#endif
}

}  // namespace cuda::detail
KVCOMPACT_NAMESPACE_END
