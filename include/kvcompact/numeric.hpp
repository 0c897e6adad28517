// SPDX-License-Identifier: Apache-2.0
/// @file
/// @brief Storage element types (fp32, fp16, bf16) and their conversions to and from fp32.
#pragma once

#include <kvcompact/config.hpp>

#include <bit>
#include <concepts>
#include <cstdint>
#include <type_traits>

KVCOMPACT_NAMESPACE_BEGIN

/// @brief IEEE 754 binary16 storage, bit-compatible with CUDA's __half.
struct half_t {
  std::uint16_t bits;  ///< raw binary16 bits
};

/// @brief bfloat16 storage (the upper half of a binary32), bit-compatible with __nv_bfloat16.
struct bfloat16_t {
  std::uint16_t bits;  ///< raw bfloat16 bits
};

/// @brief The element types a cache may store: float, kvcompact::half_t or kvcompact::bfloat16_t.
template <class T>
concept storage_element = std::same_as<T, float> || std::same_as<T, half_t> || std::same_as<T, bfloat16_t>;

namespace detail {
KVCOMPACT_HOST_DEVICE inline std::uint32_t float_bits(float x) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(x);
#else
  return std::bit_cast<std::uint32_t>(x);
#endif
}
KVCOMPACT_HOST_DEVICE inline float bits_float(std::uint32_t b) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(b);
#else
  return std::bit_cast<float>(b);
#endif
}
}  // namespace detail

/// @brief Identity conversion.
/// @param x a float
/// @return @p x
KVCOMPACT_HOST_DEVICE inline float to_float(float x) { return x; }

/// @brief Exact widening of a binary16 value (subnormals, infinities and NaN included).
/// @param h a half value
/// @return the same value as float
KVCOMPACT_HOST_DEVICE inline float to_float(half_t h) {
  const std::uint32_t sign = static_cast<std::uint32_t>(h.bits & 0x8000u) << 16;
  const std::uint32_t exponent = (h.bits >> 10) & 0x1fu;
  std::uint32_t mantissa = h.bits & 0x3ffu;
  if (exponent == 0x1fu) return detail::bits_float(sign | 0x7f800000u | (mantissa << 13));
  if (exponent != 0) return detail::bits_float(sign | ((exponent + 112u) << 23) | (mantissa << 13));
  if (mantissa == 0) return detail::bits_float(sign);
  int shift = 0;  // normalise a subnormal
  while ((mantissa & 0x400u) == 0) {
    mantissa <<= 1;
    ++shift;
  }
  mantissa &= 0x3ffu;
  return detail::bits_float(sign | (static_cast<std::uint32_t>(113 - shift) << 23) | (mantissa << 13));
}

/// @brief Exact widening of a bfloat16 value.
/// @param b a bfloat16 value
/// @return the same value as float
KVCOMPACT_HOST_DEVICE inline float to_float(bfloat16_t b) { return detail::bits_float(static_cast<std::uint32_t>(b.bits) << 16); }

/// @brief Converts a float to a storage element, rounding to nearest even.
/// @tparam T the storage element type
/// @param x the value
/// @return @p x in type @p T
template <storage_element T>
KVCOMPACT_HOST_DEVICE inline T from_float(float x) {
  if constexpr (std::same_as<T, float>) {
    return x;
  } else if constexpr (std::same_as<T, bfloat16_t>) {
    const std::uint32_t u = detail::float_bits(x);
    if ((u & 0x7fffffffu) > 0x7f800000u) return bfloat16_t{static_cast<std::uint16_t>((u >> 16) | 0x40u)};
    const std::uint32_t rounded = u + 0x7fffu + ((u >> 16) & 1u);
    return bfloat16_t{static_cast<std::uint16_t>(rounded >> 16)};
  } else {
    const std::uint32_t u = detail::float_bits(x);
    const std::uint16_t sign = static_cast<std::uint16_t>((u >> 16) & 0x8000u);
    const std::uint32_t magnitude = u & 0x7fffffffu;
    if (magnitude > 0x7f800000u) return half_t{static_cast<std::uint16_t>(sign | 0x7e00u)};
    if (magnitude >= 0x477ff000u) return half_t{static_cast<std::uint16_t>(sign | 0x7c00u)};  // rounds to inf
    if (magnitude < 0x38800000u) {                                                        // subnormal or zero
      if (magnitude < 0x33000000u) return half_t{sign};
      const std::uint32_t exponent = magnitude >> 23;
      const std::uint32_t mantissa = (magnitude & 0x7fffffu) | 0x800000u;
      const std::uint32_t shift = 126u - exponent;  // 14 + (113 - exponent) - 1
      std::uint32_t half_mantissa = mantissa >> shift;
      const std::uint32_t rest = mantissa & ((1u << shift) - 1u);
      const std::uint32_t halfway = 1u << (shift - 1u);
      if (rest > halfway || (rest == halfway && (half_mantissa & 1u))) ++half_mantissa;
      return half_t{static_cast<std::uint16_t>(sign | half_mantissa)};
    }
    std::uint32_t h = ((magnitude >> 13) - (112u << 10));
    const std::uint32_t rest = magnitude & 0x1fffu;
    if (rest > 0x1000u || (rest == 0x1000u && (h & 1u))) ++h;
    return half_t{static_cast<std::uint16_t>(sign | h)};
  }
}

KVCOMPACT_NAMESPACE_END
