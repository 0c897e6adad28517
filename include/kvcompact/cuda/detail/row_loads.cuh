// SPDX-License-Identifier: Apache-2.0
/// @file
/// @brief Loading pieces of K/V rows into shared memory as floats, with 16-byte loads where the
/// layout allows them (unit dimension stride, aligned rows).
#pragma once

#include <kvcompact/cuda/detail/execution.cuh>
#include <kvcompact/numeric.hpp>
#include <kvcompact/types.hpp>

#include <cstdint>
#include <cstring>

KVCOMPACT_NAMESPACE_BEGIN
namespace cuda::detail {

/// Elements one thread loads at a time: 16 bytes when the dimension stride is 1 and the head
/// dimension a multiple of them, else 1.
template <class T>
KVCOMPACT_HOST_DEVICE inline index_t row_chunk(index_t dim_stride, index_t head_dim) {
  constexpr index_t wide = 16 / static_cast<index_t>(sizeof(T));
  return dim_stride == 1 && head_dim % wide == 0 ? wide : 1;
}

/// Writes `width` elements of a row, from dimension @p d of the row at element @p offset of @p data,
/// to @p out as floats (zeros when @p offset is negative: a slot not to be read).
template <class T>
__device__ inline void load_row_chunk(const T* data, index_t offset, index_t d, index_t dim_stride, index_t width, float* out) {
  if (offset < 0) {
    for (index_t e = 0; e < width; ++e) out[e] = 0.0f;
    return;
  }
  const T* first = data + offset + d * dim_stride;
  if (width > 1 && reinterpret_cast<std::uintptr_t>(first) % 16 == 0) {
    T items[16 / sizeof(T)];
    const uint4 bits = *reinterpret_cast<const uint4*>(first);
    std::memcpy(items, &bits, 16);
    for (index_t e = 0; e < width; ++e) out[e] = to_float(items[e]);
    return;
  }
  for (index_t e = 0; e < width; ++e) out[e] = to_float(first[e * dim_stride]);
}

/// Copies `width` elements of a row as they are stored (16-byte copies where the source allows; @p out
/// must then be 16-byte aligned), or zeros when @p offset is negative.
template <class T>
__device__ inline void copy_row_chunk(const T* data, index_t offset, index_t d, index_t dim_stride, index_t width, T* out) {
  if (offset < 0) {
    for (index_t e = 0; e < width; ++e) out[e] = from_float<T>(0.0f);
    return;
  }
  const T* first = data + offset + d * dim_stride;
  if (width > 1 && reinterpret_cast<std::uintptr_t>(first) % 16 == 0) {
    *reinterpret_cast<uint4*>(out) = *reinterpret_cast<const uint4*>(first);
    return;
  }
  for (index_t e = 0; e < width; ++e) out[e] = first[e * dim_stride];
}

}  // namespace cuda::detail
KVCOMPACT_NAMESPACE_END
