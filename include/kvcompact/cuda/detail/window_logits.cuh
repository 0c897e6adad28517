// SPDX-License-Identifier: Apache-2.0
/// @file
/// @brief Logits of a tile of window rows against a tile of 32 keys, for the window-scoring kernels:
/// on tensor cores (WMMA, m16n16k16) for fp16 and bf16 caches, with fp32 FMAs otherwise.
///
/// The tensor-core path keeps fp32-like accuracy: each fp32 query is split into a high and a low
/// part in the storage type (q = hi + lo, |lo| <= 2^-8 |q| for bf16), both multiplied by the exact
/// stored keys and accumulated in fp32, so the logits match the CPU backend's to about 2^-16
/// relative instead of the 2^-8 of rounding the queries once.
#pragma once

#include <kvcompact/cuda/detail/execution.cuh>
#include <kvcompact/numeric.hpp>
#include <kvcompact/types.hpp>

#if !defined(KVCOMPACT_CUDA_EMULATION)
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <mma.h>
#endif

#include <type_traits>

KVCOMPACT_NAMESPACE_BEGIN
namespace cuda::detail {

/// Keys per logit tile.
inline constexpr int logit_tile_keys = 32;

/// The element type WMMA takes for a storage type (void: no tensor-core path).
template <class T>
struct mma_element {
  using type = void;
};
#if defined(KVCOMPACT_CUDA_EMULATION)
using mma_half = half_t;          ///< fp16 as the WMMA emulation takes it
using mma_bfloat16 = bfloat16_t;  ///< bf16 as the WMMA emulation takes it
#else
using mma_half = __half;             ///< fp16 as nvcuda::wmma takes it
using mma_bfloat16 = __nv_bfloat16;  ///< bf16 as nvcuda::wmma takes it
#endif
/// fp16 tiles go through tensor cores.
template <>
struct mma_element<half_t> {
  using type = mma_half;  ///< the WMMA element type
};
/// bf16 tiles go through tensor cores.
template <>
struct mma_element<bfloat16_t> {
  using type = mma_bfloat16;  ///< the WMMA element type
};

/// Whether tiles of this storage type and head dimension go through tensor cores.
template <class T>
KVCOMPACT_HOST_DEVICE inline bool uses_tensor_cores(index_t head_dim) {
  return !std::is_void_v<typename mma_element<T>::type> && head_dim % 16 == 0;
}

/// Row stride (elements) of the 16-bit operand tiles in shared memory: 16 bytes of padding.
KVCOMPACT_HOST_DEVICE inline index_t mma_stride(index_t head_dim) { return head_dim + 8; }

/// Writes the unscaled logits `logit[r * 32 + j] = q_r . k_j` for r < @p rows (at most 32) with
/// tensor cores. @p q_high, @p q_low: [32][mma_stride] query parts; @p keys: [32][mma_stride] keys;
/// all 32-byte aligned. Warps 0..3 compute one 16 x 16 block each; every thread of those warps calls.
template <class T>
__device__ void mma_tile_logits(const T* q_high, const T* q_low, const T* keys, index_t rows, index_t head_dim, float* logit) {
  using element = typename mma_element<T>::type;
  namespace wmma = nvcuda::wmma;
  const int warp = threadIdx.x / 32;
  const int row_blocks = static_cast<int>((rows + 15) / 16);
  if (warp >= 2 * row_blocks) return;
  const int row_block = warp / 2, key_block = warp % 2;
  const unsigned stride = static_cast<unsigned>(mma_stride(head_dim));
  wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
  wmma::fill_fragment(acc, 0.0f);
  for (index_t d = 0; d < head_dim; d += 16) {
    wmma::fragment<wmma::matrix_a, 16, 16, 16, element, wmma::row_major> high, low;
    wmma::fragment<wmma::matrix_b, 16, 16, 16, element, wmma::col_major> key;
    wmma::load_matrix_sync(high, reinterpret_cast<const element*>(q_high + row_block * 16 * stride + d), stride);
    wmma::load_matrix_sync(low, reinterpret_cast<const element*>(q_low + row_block * 16 * stride + d), stride);
    wmma::load_matrix_sync(key, reinterpret_cast<const element*>(keys + key_block * 16 * stride + d), stride);
    wmma::mma_sync(acc, high, key, acc);
    wmma::mma_sync(acc, low, key, acc);
  }
  wmma::store_matrix_sync(logit + row_block * 16 * logit_tile_keys + key_block * 16, acc, logit_tile_keys, wmma::mem_row_major);
}

/// Splits fp32 @p x into the storage type's nearest value and the remainder.
template <class T>
__device__ inline void split_query(float x, T& high, T& low) {
  high = from_float<T>(x);
  low = from_float<T>(x - to_float(high));
}

}  // namespace cuda::detail
KVCOMPACT_NAMESPACE_END
