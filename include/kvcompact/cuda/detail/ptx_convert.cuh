// SPDX-License-Identifier: Apache-2.0
/// @file
/// @brief Storage elements to fp32 in device hot loops: a 16-byte chunk of fp32, fp16 or bf16 values
/// unpacked into floats (fp16 through the hardware conversion `cvt.f32.f16`, bf16 by a shift).
#pragma once

#include <kvcompact/cuda/detail/execution.cuh>
#include <kvcompact/numeric.hpp>

#include <cstdint>
#include <type_traits>

KVCOMPACT_NAMESPACE_BEGIN
namespace cuda::detail {

/// The binary16 value in the low 16 bits of @p bits as a float (exact).
__device__ inline float half_bits_to_float(std::uint32_t bits) {
#if defined(KVCOMPACT_CUDA_EMULATION)
  return ::kvemu::cvt_f32_f16(static_cast<std::uint16_t>(bits));
#else
  float value;
  asm("{\n.reg .b16 h;\ncvt.u16.u32 h, %1;\ncvt.f32.f16 %0, h;\n}\n" : "=f"(value) : "r"(bits));
  return value;
#endif
}

/// Elements of type @p T in 16 bytes.
template <class T>
inline constexpr int elements_per_chunk = 16 / static_cast<int>(sizeof(T));

/// The elements of a 16-byte chunk of @p T values (lowest address first) as floats.
template <class T>
__device__ inline void unpack_chunk(const uint4& chunk, float (&out)[elements_per_chunk<T>]) {
  const std::uint32_t words[4] = {chunk.x, chunk.y, chunk.z, chunk.w};
KVCOMPACT_UNROLL
  for (int w = 0; w < 4; ++w) {
    if constexpr (std::is_same_v<T, float>) {
      out[w] = ::kvcompact::detail::bits_float(words[w]);
    } else if constexpr (std::is_same_v<T, bfloat16_t>) {
      out[2 * w] = ::kvcompact::detail::bits_float(words[w] << 16);
      out[2 * w + 1] = ::kvcompact::detail::bits_float(words[w] & 0xffff0000u);
    } else {
      out[2 * w] = half_bits_to_float(words[w]);
      out[2 * w + 1] = half_bits_to_float(words[w] >> 16);
    }
  }
}

/// One element as a float (fp16 through the hardware conversion).
template <class T>
__device__ inline float element_to_float(T value) {
  if constexpr (std::is_same_v<T, half_t>) return half_bits_to_float(value.bits);
  else return to_float(value);
}

}  // namespace cuda::detail
KVCOMPACT_NAMESPACE_END
