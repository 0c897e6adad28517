// SPDX-License-Identifier: Apache-2.0
/// @file
/// @brief The CUDA runtime the backend is built on, kernel launches, and the two device-code
/// spellings that differ between compilers (dynamic shared memory, unrolling).
///
/// Defining `KVCOMPACT_CUDA_EMULATION` as an include path (for example
/// `<support/cuda_emulator.hpp>`) builds the backend with a host compiler against that header
/// instead of the CUDA runtime: kvcompact's tests use it to run the kernels' logic on machines
/// without a GPU. Nothing else changes.
#pragma once

#include <kvcompact/config.hpp>

#if defined(KVCOMPACT_CUDA_EMULATION)
#include KVCOMPACT_CUDA_EMULATION
#else
#include <cuda_runtime.h>
#endif

#include <cstddef>
#include <utility>

#if defined(KVCOMPACT_CUDA_EMULATION)
#define KVCOMPACT_DYNAMIC_SHARED(type, name) type* name = reinterpret_cast<type*>(::kvemu::dynamic_shared())
#define KVCOMPACT_UNROLL
#else
/// Declares `type* name` pointing at the kernel's dynamic shared memory (128-byte aligned).
#define KVCOMPACT_DYNAMIC_SHARED(type, name)                                                                      \
  extern __shared__ __align__(128) unsigned char kvcompact_dynamic_shared[];                                        \
  type* name = reinterpret_cast<type*>(kvcompact_dynamic_shared)
/// Asks nvcc to unroll the following loop.
#define KVCOMPACT_UNROLL _Pragma("unroll")
#endif

KVCOMPACT_NAMESPACE_BEGIN
namespace cuda::detail {

/// Launches @p kernel on @p stream (through the emulator when the backend is emulated).
template <class... Params, class... Args>
void launch(void (*kernel)(Params...), dim3 grid, dim3 block, std::size_t shared_bytes, cudaStream_t stream, Args&&... args) {
#if defined(KVCOMPACT_CUDA_EMULATION)
  ::kvemu::launch(kernel, grid, block, shared_bytes, stream, std::forward<Args>(args)...);
#else
  kernel<<<grid, block, shared_bytes, stream>>>(std::forward<Args>(args)...);
#endif
}

}  // namespace cuda::detail
KVCOMPACT_NAMESPACE_END
