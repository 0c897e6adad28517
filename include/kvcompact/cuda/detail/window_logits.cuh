// SPDX-License-Identifier: Apache-2.0
/// @file
/// @brief Tile geometry and fragment loads of the window-scoring kernels: window-row x key logits on
/// tensor cores (ptx_mma.cuh), with both operands in their storage type (fp32 caches as tf32).
///
/// Both operands are rows of the padded head dimension Dp (64, 128 or 256; other head dimensions
/// are zero-padded up to the next of these). The k extent of a row is split into 16-byte chunks, and
/// lane t of a warp owns chunks t, t + 4, t + 8, ... of every row it touches: chunk i of its own
/// (row chunk 4i + t) feeds k-steps 2i and 2i + 1, 8 bytes each (ptx_mma.cuh: every fragment
/// register pair is one 8-byte k slice). A and B use the same map, so each product pairs equal
/// dimensions; a warp reads each row as four lanes x 16 bytes per step (coalesced, 16-byte loads) and
/// shared-memory rows padded by 64 bytes make those reads free of bank conflicts.
#pragma once

#include <kvcompact/cuda/detail/device_status.cuh>
#include <kvcompact/cuda/detail/ptx_mma.cuh>
#include <kvcompact/cuda/detail/workspace.cuh>
#include <kvcompact/numeric.hpp>
#include <kvcompact/types.hpp>

#include <cstdint>
#include <cstring>

KVCOMPACT_NAMESPACE_BEGIN
namespace cuda::detail {

/// Largest head dimension the window-scoring kernels take.
inline constexpr index_t max_window_head_dim = 256;

/// Compile-time geometry of the window tiles of storage type @p T and padded head dimension @p Dp.
template <class T, int Dp>
struct window_tile {
  static_assert(Dp == 64 || Dp == 128 || Dp == 256, "kvcompact: window tiles take a padded head dimension of 64, 128 or 256");
  static constexpr int row_bytes = Dp * static_cast<int>(sizeof(T));  ///< one padded row
  static constexpr int steps = row_bytes / 32;                        ///< mma k-steps per row (8 bytes per lane each)
  static constexpr int lane_chunks = steps / 2;                       ///< 16-byte chunks a lane holds of each row
  static constexpr int row_chunks = 4 * lane_chunks;                  ///< 16-byte chunks per row
  static constexpr int smem_stride = row_bytes + 64;                  ///< shared-memory row pitch (conflict-free chunk reads)
  static constexpr int chunk_elements = 16 / static_cast<int>(sizeof(T));  ///< elements per chunk
  /// 16-row tiles a warp keeps as A operands: 64 registers of fragments (128 for fp32 at Dp 256).
  static constexpr int a_tiles = row_bytes <= 128 ? 4 : row_bytes <= 256 ? 2 : 1;
  /// Keys per shared-memory tile of the statistics pass (a divisor of window_chunk_quantum).
  static constexpr int statistics_keys = row_bytes >= 1024 ? 32 : 64;
};

/// Lane coordinates inside a warp: groupID (row / column within a fragment) and threadID_in_group.
struct lane_id {
  int g;  ///< lane / 4
  int t;  ///< lane % 4
};
/// The calling thread's lane coordinates.
__device__ inline lane_id this_lane() {
  const int lane = static_cast<int>(threadIdx.x % 32);
  return {lane / 4, lane % 4};
}

/// Packs the 16 bytes of a chunk; fp32 elements are rounded to tf32 (the tensor cores' input).
template <class T>
__device__ inline uint4 tensor_chunk(uint4 bits) {
  if constexpr (sizeof(T) == 4) {
    bits.x = round_to_tf32(bits.x);
    bits.y = round_to_tf32(bits.y);
    bits.z = round_to_tf32(bits.z);
    bits.w = round_to_tf32(bits.w);
  }
  return bits;
}

/// A cache row as the window kernels read it: element offset of dimension 0 (negative: no row,
/// read as zeros) and whether it allows 16-byte loads (unit dimension stride, 16-byte aligned,
/// unpadded head dimension).
struct cache_row {
  index_t offset;  ///< element offset, or -1
  bool wide;       ///< 16-byte loads
};

/// Describes the row at @p offset of @p data for tiles of padded dimension @p Dp.
template <class T, int Dp>
__device__ inline cache_row describe_row(const T* data, index_t offset, index_t dim_stride, index_t dims) {
  const bool wide = offset >= 0 && dim_stride == 1 && dims == Dp && reinterpret_cast<std::uintptr_t>(data + offset) % 16 == 0;
  return {offset, wide};
}

/// Chunk @p chunk (16 bytes of the padded row) of a cache row, zero past the head dimension or when
/// the row is absent.
template <class T, int Dp>
__device__ inline uint4 load_cache_chunk(const T* data, const cache_row& row, int chunk, index_t dim_stride, index_t dims) {
  constexpr int per_chunk = window_tile<T, Dp>::chunk_elements;
  if (row.offset < 0) return uint4{0u, 0u, 0u, 0u};
  if (row.wide) return tensor_chunk<T>(*reinterpret_cast<const uint4*>(data + row.offset + chunk * per_chunk));
  T items[per_chunk];
  KVCOMPACT_UNROLL
  for (int e = 0; e < per_chunk; ++e) {
    const index_t d = static_cast<index_t>(chunk) * per_chunk + e;
    items[e] = d < dims ? data[row.offset + d * dim_stride] : from_float<T>(0.0f);
  }
  uint4 bits;
  std::memcpy(&bits, items, 16);
  return tensor_chunk<T>(bits);
}

/// Chunk @p chunk of a shared-memory row.
__device__ inline uint4 shared_chunk(const unsigned char* row, int chunk) { return *reinterpret_cast<const uint4*>(row + chunk * 16); }

/// Writes chunk i of rows g (@p low) and g + 8 (@p high) into the A fragments of k-steps 2i, 2i + 1.
__device__ inline void put_a_chunk(mma_a* fragments, int i, const uint4& low, const uint4& high) {
  fragments[2 * i] = {{low.x, high.x, low.y, high.y}};
  fragments[2 * i + 1] = {{low.z, high.z, low.w, high.w}};
}

/// Writes chunk i of column g's row into the B fragments of k-steps 2i, 2i + 1.
__device__ inline void put_b_chunk(mma_b* fragments, int i, const uint4& bits) {
  fragments[2 * i] = {{bits.x, bits.y}};
  fragments[2 * i + 1] = {{bits.z, bits.w}};
}

/// The B fragments of 8 rows of a shared-memory tile (row @p first + g for this lane).
template <class T, int Dp>
__device__ inline void load_b_fragments(mma_b (&b)[window_tile<T, Dp>::steps], const unsigned char* tile, int first, lane_id lane) {
  using shape = window_tile<T, Dp>;
  const unsigned char* row = tile + (first + lane.g) * shape::smem_stride;
  KVCOMPACT_UNROLL
  for (int i = 0; i < shape::lane_chunks; ++i) put_b_chunk(b + 0, i, shared_chunk(row, 4 * i + lane.t));
}

/// `c = A * B` over the whole padded head dimension for one 16 x 8 tile.
template <class T, int Dp>
__device__ inline mma_c tile_product(const mma_a (&a)[window_tile<T, Dp>::steps], const mma_b (&b)[window_tile<T, Dp>::steps]) {
  mma_c c{{0.0f, 0.0f, 0.0f, 0.0f}};
  KVCOMPACT_UNROLL
  for (int s = 0; s < window_tile<T, Dp>::steps; ++s) mma_accumulate<T>(c, a[s], b[s]);
  return c;
}

/// Copies row @p row_index of a converted query array (padded rows of Dp elements, 16-byte aligned)
/// into a shared-memory row, or zeros when @p present is false. Every lane of a quad calls it with
/// its own @p t; each copies the chunks t, t + 4, ...
template <class T, int Dp>
__device__ inline void stage_query_row(unsigned char* destination, const T* queries, index_t row_index, bool present, int t) {
  using shape = window_tile<T, Dp>;
  const uint4* source = reinterpret_cast<const uint4*>(queries + row_index * Dp);
  for (int c = t; c < shape::row_chunks; c += 4)
    *reinterpret_cast<uint4*>(destination + c * 16) = present ? source[c] : uint4{0u, 0u, 0u, 0u};
}

}  // namespace cuda::detail
KVCOMPACT_NAMESPACE_END
