// SPDX-License-Identifier: Apache-2.0
/// @file
/// @brief Programmatic dependent launch (sm_90 and later): a kernel launched right after another one
/// may start while the first is finishing (hiding its launch latency) and waits for it with
/// `griddepcontrol.wait` before reading what it wrote. On older GPUs both instructions are no-ops
/// and the launch is an ordinary one, so stream order holds.
#pragma once

#include <kvcompact/cuda/check.cuh>
#include <kvcompact/cuda/detail/execution.cuh>

#include <cstddef>
#include <utility>

KVCOMPACT_NAMESPACE_BEGIN
namespace cuda::detail {

/// Lets the kernel launched after this one (programmatically) start once every block of this grid
/// has called it or exited.
__device__ inline void allow_dependent_launch() {
#if defined(KVCOMPACT_CUDA_EMULATION)
  ::kvemu::griddepcontrol_launch_dependents();
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
#endif
}

/// Waits until the grids this one depends on have completed and their memory is visible (returns at
/// once for a grid launched without a programmatic dependency).
__device__ inline void wait_for_prerequisite_grids() {
#if defined(KVCOMPACT_CUDA_EMULATION)
  ::kvemu::griddepcontrol_wait();
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;\n" ::: "memory");
#endif
}

/// Whether the current device runs programmatic dependent launches (compute capability 9.0 or later).
inline bool programmatic_launch_supported() {
#if defined(KVCOMPACT_CUDA_EMULATION)
  return ::kvemu::programmatic_launch_supported();
#else
  int device = 0, major = 0;
  if (cudaGetDevice(&device) != cudaSuccess || cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) != cudaSuccess) {
    (void)cudaGetLastError();
    return false;
  }
  return major >= 9;
#endif
}

/// Launches @p kernel on @p stream; with @p programmatic, as a programmatic dependent of the kernel
/// launched before it on the stream (the kernel must call wait_for_prerequisite_grids() before it
/// reads that kernel's results, and before it exits).
/// @return the launch's error code
template <class... Params, class... Args>
cudaError_t launch_programmatic(bool programmatic, void (*kernel)(Params...), dim3 grid, dim3 block, std::size_t shared_bytes, cudaStream_t stream,
                                Args&&... args) {
#if defined(KVCOMPACT_CUDA_EMULATION)
  (void)programmatic;
  ::kvemu::launch(kernel, grid, block, shared_bytes, stream, std::forward<Args>(args)...);
  return cudaGetLastError();
#else
  cudaLaunchAttribute attribute{};
  attribute.id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attribute.val.programmaticStreamSerializationAllowed = 1;
  cudaLaunchConfig_t config{};
  config.gridDim = grid;
  config.blockDim = block;
  config.dynamicSmemBytes = shared_bytes;
  config.stream = stream;
  config.attrs = programmatic ? &attribute : nullptr;
  config.numAttrs = programmatic ? 1 : 0;
  return cudaLaunchKernelEx(&config, kernel, std::forward<Args>(args)...);
#endif
}

}  // namespace cuda::detail
KVCOMPACT_NAMESPACE_END
