// SPDX-License-Identifier: Apache-2.0
/// @file
/// @brief CUDA error checking and the device probe.
#pragma once

#include <kvcompact/error.hpp>

#include <kvcompact/cuda/detail/execution.cuh>

#include <string>

KVCOMPACT_NAMESPACE_BEGIN

namespace cuda {

/// @brief Thrown when a CUDA runtime call fails; carries the cudaError_t.
class cuda_error : public kvcompact::error {
 public:
  /// @brief Builds the message from the failing call and the runtime's error string.
  /// @param where the entry point @param call the CUDA call that failed @param code its result
  cuda_error(std::string_view where, std::string_view call, cudaError_t code)
      : kvcompact::error(where, call, std::string(cudaGetErrorName(code)) + ": " + cudaGetErrorString(code)), code_(code) {}
  /// @brief The CUDA error code. @return the code
  [[nodiscard]] cudaError_t code() const noexcept { return code_; }

 private:
  cudaError_t code_;
};

/// @brief Throws kvcompact::cuda::cuda_error unless @p code is cudaSuccess.
/// @param code result of a CUDA runtime call @param where the entry point @param call the call, as text
inline void check(cudaError_t code, std::string_view where, std::string_view call) {
  if (code != cudaSuccess) throw cuda_error(where, call, code);
}

/// @brief Number of usable CUDA devices; 0 when there is no driver or no device (any error counts as none).
/// @return the device count
inline int device_count() noexcept {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    (void)cudaGetLastError();  // clear the sticky "insufficient driver" state
    return 0;
  }
  return count;
}

}  // namespace cuda

KVCOMPACT_NAMESPACE_END

/// @brief Checks a CUDA runtime call, throwing kvcompact::cuda::cuda_error naming the call on failure.
#define KVCOMPACT_CUDA_CHECK(call) ::kvcompact::cuda::check((call), __func__, #call)
