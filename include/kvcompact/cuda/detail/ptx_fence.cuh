// SPDX-License-Identifier: Apache-2.0
/// @file
/// @brief The device-wide memory fence (`fence.acq_rel.gpu`, what `__threadfence()` emits) that
/// orders a block's global writes before the atomic announcing them, and a reader's loads after it.
#pragma once

#include <kvcompact/cuda/detail/execution.cuh>

KVCOMPACT_NAMESPACE_BEGIN
namespace cuda::detail {

/// Orders the calling thread's memory accesses before the fence against those after it, for every
/// thread of the device.
__device__ inline void fence_device() {
#if defined(KVCOMPACT_CUDA_EMULATION)
  ::kvemu::fence_device();
#else
  asm volatile("fence.acq_rel.gpu;\n" ::: "memory");
#endif
}

}  // namespace cuda::detail
KVCOMPACT_NAMESPACE_END
