// SPDX-License-Identifier: Apache-2.0
/// @file
/// @brief Emulation of the warp-collective tensor-core instruction `mma.sync` for
/// support/cuda_emulator.hpp (included at its end), written from the PTX ISA's fragment tables:
///  - m16n8k16 .bf16 / .f16 (A: a0..a7 in four registers, row g for a0, a1, a4, a5 and g + 8
///    otherwise, column 2t + (i & 1), plus 8 for i >= 4; B: b0..b3 in two registers, row
///    2t + (i & 1), plus 8 for i >= 2, column g);
///  - m16n8k8 .tf32 (A: a0..a3, row g for a0, a2 and g + 8 for a1, a3, column t for a0, a1 and
///    t + 4 for a2, a3; B: b0, b1, row t and t + 4, column g; the low 13 mantissa bits are ignored);
///  - C/D, four floats: c0, c1 row g and c2, c3 row g + 8, column 2t + (i & 1);
/// with g = lane / 4 and t = lane % 4. Products are exact in fp32 and summed in k order.
///
/// Model: every lane contributes its A and B fragments to kvemu::warp_all_gather (the emulator's
/// warp collective; not a memory fence, as mma.sync is none) and computes its own four results from
/// the warp's operands (decoding only the two rows of A and two columns of B they need). A warp
/// whose lanes do not all take part is reported.
#pragma once

#include <cstdint>
#include <cstring>
#include <type_traits>

namespace kvemu {

/// Element @p i of a 16-bit-element fragment register set (low half first), as float.
template <class T>
float mma_element16(const std::uint32_t* registers, int i) {
  const std::uint32_t word = registers[i / 2];
  return to_float(T{static_cast<std::uint16_t>(i % 2 ? word >> 16 : word & 0xffffu)});
}

/// A tf32 register as the tensor cores read it (low 13 mantissa bits dropped).
inline float mma_tf32(std::uint32_t bits) {
  bits &= 0xffffe000u;
  float x = 0.0f;
  std::memcpy(&x, &bits, 4);
  return x;
}

/// `mma.sync.aligned.{m16n8k16 bf16/f16, m16n8k8 tf32}.row.col.f32`: D = A * B + C for the calling
/// lane's fragment registers (T = kvcompact bfloat16_t, half_t or float). Every lane of the warp calls it.
template <class T>
void mma_sync(float (&c)[4], const std::uint32_t (&a)[4], const std::uint32_t (&b)[2]) {
  struct operands {
    std::uint32_t a[4], b[2];
  };
  const auto all = warp_all_gather(operands{{a[0], a[1], a[2], a[3]}, {b[0], b[1]}});
  if (all.live != 0xffffffffu) fail("mma.sync needs all 32 lanes of the warp");
  constexpr bool tf32 = std::is_same_v<T, float>;
  constexpr int k_extent = tf32 ? 8 : 16;
  // The calling lane's results need rows g and g + 8 of A (held by lanes 4g .. 4g + 3) and columns
  // 2t and 2t + 1 of B (lanes 8t .. 8t + 7); only those are decoded.
  const int lane = lane_id(), g = lane / 4, t = lane % 4;
  float A[2][16] = {}, B[16][2] = {};  // A[row is g + 8][k], B[k][column is 2t + 1]
  for (int l = 4 * g; l < 4 * g + 4; ++l) {
    const int tl = l % 4;
    if constexpr (tf32) {
      for (int i = 0; i < 4; ++i) A[i % 2][tl + (i >= 2 ? 4 : 0)] = mma_tf32(all.lane[l].a[i]);
    } else {
      for (int i = 0; i < 8; ++i) {
        const bool low_row = i < 2 || (i >= 4 && i < 6);
        A[low_row ? 0 : 1][2 * tl + (i & 1) + (i >= 4 ? 8 : 0)] = mma_element16<T>(all.lane[l].a, i);
      }
    }
  }
  for (int l = 8 * t; l < 8 * t + 8; ++l) {
    const int tl = l % 4, column = (l / 4) % 2;
    if constexpr (tf32) {
      for (int i = 0; i < 2; ++i) B[tl + 4 * i][column] = mma_tf32(all.lane[l].b[i]);
    } else {
      for (int i = 0; i < 4; ++i) B[2 * tl + (i & 1) + (i >= 2 ? 8 : 0)][column] = mma_element16<T>(all.lane[l].b, i);
    }
  }
  for (int i = 0; i < 4; ++i) {
    const int row = i >= 2 ? 1 : 0, column = i & 1;
    float sum = c[i];
    for (int k = 0; k < k_extent; ++k) sum += A[row][k] * B[k][column];
    c[i] = sum;
  }
}

}  // namespace kvemu
