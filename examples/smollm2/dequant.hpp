// SPDX-License-Identifier: Apache-2.0
/// @file dequant.hpp
/// @brief Conversion of GGUF tensor storage formats to fp32. Implements exactly
///        the formats used by SmolLM2-135M-Instruct.Q4_1.gguf: F32, Q4_1, Q8_0.
#pragma once

#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include "gguf.hpp"

namespace smollm2 {

/// Converts an IEEE-754 binary16 bit pattern to float (handles subnormals, inf, NaN).
inline float half_to_float(std::uint16_t h) {
    const std::uint32_t sign = static_cast<std::uint32_t>(h & 0x8000u) << 16;
    std::uint32_t exponent = (h >> 10) & 0x1fu;
    std::uint32_t mantissa = h & 0x3ffu;
    std::uint32_t bits;
    if (exponent == 0) {
        if (mantissa == 0) {
            bits = sign;
        } else {  // subnormal: renormalise
            int e = -1;
            do {
                ++e;
                mantissa <<= 1;
            } while ((mantissa & 0x400u) == 0);
            bits = sign | static_cast<std::uint32_t>(127 - 15 - e) << 23 | (mantissa & 0x3ffu) << 13;
        }
    } else if (exponent == 31) {
        bits = sign | 0x7f800000u | mantissa << 13;
    } else {
        bits = sign | (exponent + 127 - 15) << 23 | mantissa << 13;
    }
    return std::bit_cast<float>(bits);
}

namespace detail {

inline std::uint16_t load_u16(const std::byte* p) {
    std::uint16_t v;
    std::memcpy(&v, p, sizeof v);
    return v;
}

/// Q4_1: blocks of 32 weights = fp16 scale d, fp16 minimum m, 16 bytes of nibbles.
/// Element j (j < 16) is the low nibble of byte j, element j + 16 the high nibble.
inline void dequantize_q4_1(const std::byte* src, float* dst, std::size_t n) {
    constexpr std::size_t block = 32, block_bytes = 2 + 2 + 16;
    for (std::size_t b = 0; b < n / block; ++b, src += block_bytes, dst += block) {
        const float d = half_to_float(load_u16(src));
        const float m = half_to_float(load_u16(src + 2));
        const auto* q = reinterpret_cast<const std::uint8_t*>(src + 4);
        for (std::size_t j = 0; j < 16; ++j) {
            dst[j] = static_cast<float>(q[j] & 0x0f) * d + m;
            dst[j + 16] = static_cast<float>(q[j] >> 4) * d + m;
        }
    }
}

/// Q8_0: blocks of 32 weights = fp16 scale d followed by 32 signed bytes.
inline void dequantize_q8_0(const std::byte* src, float* dst, std::size_t n) {
    constexpr std::size_t block = 32, block_bytes = 2 + 32;
    for (std::size_t b = 0; b < n / block; ++b, src += block_bytes, dst += block) {
        const float d = half_to_float(load_u16(src));
        const auto* q = reinterpret_cast<const std::int8_t*>(src + 2);
        for (std::size_t j = 0; j < block; ++j) dst[j] = static_cast<float>(q[j]) * d;
    }
}

}  // namespace detail

/// Dequantises a whole tensor to a row-major fp32 vector (ne[0] contiguous).
/// @throws std::runtime_error for storage types this engine does not implement.
inline std::vector<float> dequantize(const gguf::tensor_info& t) {
    const std::size_t n = t.element_count();
    std::vector<float> out(n);
    switch (t.type) {
        case gguf::tensor_type::f32:
            std::memcpy(out.data(), t.data, n * sizeof(float));
            break;
        case gguf::tensor_type::q4_1:
            if (n % 32) throw std::runtime_error("dequantize: Q4_1 tensor " + t.name + " not a multiple of 32");
            detail::dequantize_q4_1(t.data, out.data(), n);
            break;
        case gguf::tensor_type::q8_0:
            if (n % 32) throw std::runtime_error("dequantize: Q8_0 tensor " + t.name + " not a multiple of 32");
            detail::dequantize_q8_0(t.data, out.data(), n);
            break;
        default:
            throw std::runtime_error("dequantize: tensor " + t.name + " has ggml type " +
                                     std::to_string(static_cast<std::uint32_t>(t.type)) +
                                     ", which this engine does not implement (supported: F32, Q4_1, Q8_0)");
    }
    return out;
}

}  // namespace smollm2
