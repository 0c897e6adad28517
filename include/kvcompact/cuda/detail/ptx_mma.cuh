// SPDX-License-Identifier: Apache-2.0
/// @file
/// @brief Warp-level matrix multiply-accumulate on tensor cores (`mma.sync`), the only inline PTX of
/// the scoring kernels, with a shuffle-and-FFMA implementation of the same fragment contract for
/// GPUs older than sm_80.
///
/// One call computes `C[16][8] += A[16][K] * B[K][8]` for a warp: K = 16 for bf16 and fp16
/// (`mma.sync.aligned.m16n8k16.row.col.f32.{bf16,f16}`), K = 8 for fp32 storage, which runs as
/// tf32 (`mma.sync.aligned.m16n8k8.row.col.f32.tf32`). Fragments follow the PTX ISA layouts
/// (groupID g = lane / 4, t = lane % 4):
///  - A (`mma_a`, four 32-bit registers): r[0] row g, r[1] row g + 8, r[2] row g, r[3] row g + 8;
///    r[0] and r[1] hold k = {2t, 2t+1} (bf16/fp16) or k = t (tf32), r[2] and r[3] hold
///    k = {2t+8, 2t+9} or k = t + 4;
///  - B (`mma_b`, two registers): column g; r[0] holds k = {2t, 2t+1} or t, r[1] k = {2t+8, 2t+9} or t + 4;
///  - C (`mma_c`, four floats): r[0], r[1] row g, columns 2t, 2t + 1; r[2], r[3] row g + 8.
/// So in every case lane t holds, for each row of A and each column of B, one 8-byte slice of the
/// k extent: bytes [0, 4) in the first register of the pair and bytes [4, 8) in the second.
///
/// Under `KVCOMPACT_CUDA_EMULATION` the calls forward to the emulator's implementation of the
/// instructions (test/support/cuda_emulator_mma.hpp).
#pragma once

#include <kvcompact/cuda/detail/execution.cuh>
#include <kvcompact/numeric.hpp>

#include <cstdint>
#include <type_traits>

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 700
#error "kvcompact: the CUDA backend needs compute capability 7.0 (sm_70) or newer: it relies on warp-synchronous shuffles (__shfl_xor_sync)."
#endif

KVCOMPACT_NAMESPACE_BEGIN
namespace cuda::detail {

/// A operand of one warp-level product: 16 rows x one k-step.
struct mma_a {
  std::uint32_t r[4];  ///< fragment registers (layout in the file comment)
};
/// B operand of one warp-level product: one k-step x 8 columns.
struct mma_b {
  std::uint32_t r[2];  ///< fragment registers (layout in the file comment)
};
/// Accumulator of one warp-level product: 16 x 8 floats.
struct mma_c {
  float r[4];  ///< fragment values (layout in the file comment)
};

/// Whether a storage type has a tensor-core product.
template <class T>
inline constexpr bool has_mma = std::is_same_v<T, bfloat16_t> || std::is_same_v<T, half_t> || std::is_same_v<T, float>;

/// Rounds fp32 to the nearest tf32 value (10 explicit mantissa bits, ties away from zero), as
/// `cvt.rna.tf32.f32` does; the tensor cores read only those bits. NaN and infinity stay as they are.
KVCOMPACT_HOST_DEVICE inline std::uint32_t round_to_tf32(std::uint32_t bits) {
  if ((bits & 0x7f800000u) == 0x7f800000u) return bits;
  return (bits + 0x1000u) & 0xffffe000u;
}

/// One element of a fragment register as float: the low (@p high false) or high 16 bits for
/// bf16 and fp16, the whole register for tf32.
template <class T>
KVCOMPACT_HOST_DEVICE inline float fragment_element(std::uint32_t bits, bool high) {
  if constexpr (std::is_same_v<T, float>) {
    return ::kvcompact::detail::bits_float(bits);
  } else {
    return to_float(T{static_cast<std::uint16_t>(high ? bits >> 16 : bits & 0xffffu)});
  }
}

/// Dot product of the elements two registers hold for one k slice (two products for 16-bit types).
template <class T>
KVCOMPACT_HOST_DEVICE inline float slice_dot(std::uint32_t a, std::uint32_t b, float sum) {
  sum = fmaf(fragment_element<T>(a, false), fragment_element<T>(b, false), sum);
  if constexpr (!std::is_same_v<T, float>) sum = fmaf(fragment_element<T>(a, true), fragment_element<T>(b, true), sum);
  return sum;
}

/// `C += A * B` with FFMAs and warp shuffles, the fragment contract of mma_accumulate() for GPUs
/// without the instruction (before sm_80). Every lane of the warp must call it. Lane (g, t) gathers
/// rows g and g + 8 of A from lanes (g, 0..3) and columns 2t, 2t + 1 of B from lanes (2t, 0..3)
/// and (2t + 1, 0..3).
template <class T>
__device__ inline void software_mma(mma_c& c, const mma_a& a, const mma_b& b) {
  const int lane = static_cast<int>(threadIdx.x % 32), t = lane % 4;
  KVCOMPACT_UNROLL
  for (int from = 0; from < 4; ++from) {  // the k slice of lanes with threadID_in_group == from
    const int a_mask = t ^ from;          // lane (g, from)
    std::uint32_t first[2], second[2];    // [row g, row g + 8]: first and second register of the slice
    first[0] = static_cast<std::uint32_t>(__shfl_xor_sync(0xffffffffu, static_cast<int>(a.r[0]), a_mask));
    first[1] = static_cast<std::uint32_t>(__shfl_xor_sync(0xffffffffu, static_cast<int>(a.r[1]), a_mask));
    second[0] = static_cast<std::uint32_t>(__shfl_xor_sync(0xffffffffu, static_cast<int>(a.r[2]), a_mask));
    second[1] = static_cast<std::uint32_t>(__shfl_xor_sync(0xffffffffu, static_cast<int>(a.r[3]), a_mask));
    KVCOMPACT_UNROLL
    for (int col = 0; col < 2; ++col) {
      const int b_mask = lane ^ ((2 * t + col) * 4 + from);  // lane (2t + col, from)
      const std::uint32_t b0 = static_cast<std::uint32_t>(__shfl_xor_sync(0xffffffffu, static_cast<int>(b.r[0]), b_mask));
      const std::uint32_t b1 = static_cast<std::uint32_t>(__shfl_xor_sync(0xffffffffu, static_cast<int>(b.r[1]), b_mask));
      c.r[col] = slice_dot<T>(second[0], b1, slice_dot<T>(first[0], b0, c.r[col]));
      c.r[2 + col] = slice_dot<T>(second[1], b1, slice_dot<T>(first[1], b0, c.r[2 + col]));
    }
  }
}

/// `C += A * B` for one warp on tensor cores (sm_80 and newer), else software_mma(). Every lane of
/// the warp must call it with converged control flow. @tparam T storage element: bf16, fp16 or
/// float (tf32: A and B must hold tf32 values, see round_to_tf32()).
template <class T>
__device__ inline void mma_accumulate(mma_c& c, const mma_a& a, const mma_b& b) {
  static_assert(has_mma<T>, "kvcompact: mma_accumulate needs bfloat16_t, half_t or float operands");
#if defined(KVCOMPACT_CUDA_EMULATION)
  ::kvemu::mma_sync<T>(c.r, a.r, b.r);
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  if constexpr (std::is_same_v<T, bfloat16_t>) {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
        : "+f"(c.r[0]), "+f"(c.r[1]), "+f"(c.r[2]), "+f"(c.r[3])
        : "r"(a.r[0]), "r"(a.r[1]), "r"(a.r[2]), "r"(a.r[3]), "r"(b.r[0]), "r"(b.r[1]));
  } else if constexpr (std::is_same_v<T, half_t>) {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
        : "+f"(c.r[0]), "+f"(c.r[1]), "+f"(c.r[2]), "+f"(c.r[3])
        : "r"(a.r[0]), "r"(a.r[1]), "r"(a.r[2]), "r"(a.r[3]), "r"(b.r[0]), "r"(b.r[1]));
  } else {
    asm("mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
        : "+f"(c.r[0]), "+f"(c.r[1]), "+f"(c.r[2]), "+f"(c.r[3])
        : "r"(a.r[0]), "r"(a.r[1]), "r"(a.r[2]), "r"(a.r[3]), "r"(b.r[0]), "r"(b.r[1]));
  }
#else
  software_mma<T>(c, a, b);
#endif
}

}  // namespace cuda::detail
KVCOMPACT_NAMESPACE_END
