// SPDX-License-Identifier: Apache-2.0
/// @file
/// @brief Prefill scoring on the device.
///
/// Slot scorers (KNorm, recency): one thread per slot over a shared-memory tile of keys loaded with
/// 16-byte loads. Attention scorers (SnapKV, PyramidKV, Ada-KV, H2O, TOVA, CORM, ...): the softmax of
/// every window row over all keys, in two passes over K on tensor cores (docs/cuda_backend.md has the
/// arithmetic):
///  1. window_queries_kernel converts the fp32 window to the storage type once (zero-padded to
///     8-row query heads and a head dimension of 64, 128 or 256) and flags NaN/Inf queries;
///  2. window_statistics_kernel: per key chunk and window row, the running maximum and sum of
///     exp2 of the scaled logits and the visible-key count; each warp keeps 16-row query tiles in
///     registers and reads a shared-memory tile of keys, so each key is read from memory once for
///     all G x W rows of its KV head;
///  3. window_normaliser_kernel combines the chunks into each row's log2 denominator and flags
///     non-finite rows (NaN/Inf in a query or in a key it attends);
///  4. window_scores_kernel recomputes the logits with keys in registers and the rows in shared
///     memory, turns them into probabilities, applies the scorer's row term, reduces over the rows of
///     each query head in registers (then across the 4 lanes of a quad), over the query heads of the
///     KV head (or of all KV heads for scorers that share scores) and writes each slot's score once,
///     plus the per-query-head scores only when the selector or merger reads them.
/// The window x N attention matrix never exists. Every score written is checked for NaN.
#pragma once

#include <kvcompact/cuda/detail/launch.cuh>
#include <kvcompact/cuda/detail/prefill_problem.cuh>
#include <kvcompact/cuda/detail/window_logits.cuh>
#include <kvcompact/cuda/detail/workspace.cuh>
#include <kvcompact/mergers/average.hpp>
#include <kvcompact/mergers/cam.hpp>
#include <kvcompact/mergers/drop.hpp>
#include <kvcompact/mergers/gaussian_pivot.hpp>
#include <kvcompact/policy.hpp>
#include <kvcompact/selectors/adaptive_heads.hpp>
#include <kvcompact/selectors/hit_window.hpp>
#include <kvcompact/selectors/merging_sets.hpp>
#include <kvcompact/selectors/top_k.hpp>
#include <kvcompact/tensor_parallel.hpp>

#include <climits>
#include <cstdint>
#include <cstring>
#include <type_traits>

KVCOMPACT_NAMESPACE_BEGIN
namespace cuda::detail {

/// Threads per block of the prefill kernels.
inline constexpr int prefill_threads = 256;
/// Threads per block of window_statistics_kernel (8 warps).
inline constexpr int statistics_threads = 256;
/// Threads per block of window_scores_kernel (4 warps).
inline constexpr int score_threads = 128;
/// Slots per block of slot_score_kernel.
inline constexpr int slot_tile = 64;
/// log2(e): the kernels work with exp2 of logits scaled by scale * log2(e).
inline constexpr float log2_e = 1.44269504088896340736f;

/// Whether a selector or merger reads per-query-head scores (`ctx.query_score`). True unless known
/// otherwise, so a user-written component always gets them; the built-in ones that never read them
/// are listed below, and the kernels then skip writing them.
template <class Component>
struct reads_query_scores : std::true_type {};
/// Top-k reads per-KV-head scores only.
template <class Schedule>
struct reads_query_scores<selectors::top_k<Schedule>> : std::false_type {};
/// CORM's budget-free rule reads per-KV-head scores only.
template <>
struct reads_query_scores<selectors::hit_window> : std::false_type {};
/// Ada-KV reads per-KV-head scores only.
template <class Schedule>
struct reads_query_scores<selectors::adaptive_heads<Schedule>> : std::false_type {};
/// KVMerger's merging sets read per-KV-head scores and keys.
template <class Schedule>
struct reads_query_scores<selectors::merging_sets<Schedule>> : std::false_type {};
/// Dropping reads nothing.
template <>
struct reads_query_scores<mergers::drop> : std::false_type {};
/// Averaging reads keys and values.
template <>
struct reads_query_scores<mergers::average> : std::false_type {};
/// CaM reads per-KV-head scores and values.
template <>
struct reads_query_scores<mergers::cam> : std::false_type {};
/// The Gaussian pivot reads per-KV-head scores and keys.
template <>
struct reads_query_scores<mergers::gaussian_pivot> : std::false_type {};

/// Whether prefill scoring must fill the per-query-head scores for a policy.
template <class Policy>
inline constexpr bool needs_query_scores =
    reads_query_scores<typename Policy::selector_type>::value || reads_query_scores<typename Policy::merger_type>::value;

/// Records a NaN score of a layer: reported, and the layer is left as it is.
template <class T, class Layout, class State>
__device__ void flag_nan(const prefill_problem<T, Layout, State>& p, index_t s, index_t l, index_t h, index_t slot) {
  report(p.status, device_fault::nan_score, s, l, h, slot);
  atomicExch(&p.layer_faults[s * p.layers() + l], 1);
}

/// Grid (Hkv, S x L): clears keep flags and merge targets, marks each head's slot order as not yet
/// computed (the selection kernels compute it with layer_context::prepare_order, a block sort) and
/// finds each layer's newest position.
template <class T, class Layout, class State>
KVCOMPACT_KERNEL void __launch_bounds__(prefill_threads) prepare_kernel(prefill_problem<T, Layout, State> p) {
  const index_t h = blockIdx.x, s = p.grid_sequence(blockIdx.y), l = p.grid_layer(blockIdx.y);
  const index_t capacity = ::kvcompact::detail::layer_capacity(p.cache.layout, l);  // the layer's own (ragged layouts)
  const index_t base = p.head_base(s, l, h);
  const std::int32_t raw = p.cache.lengths[p.cache.head_index(s, l, h)];
  if (raw < 0 || raw > capacity) {
    if (threadIdx.x == 0) {
      report(p.status, device_fault::bad_length, s, l, h, raw);
      atomicExch(&p.layer_faults[s * p.layers() + l], 1);
    }
    return;
  }
  const index_t n = raw;
  const std::int32_t* positions = p.cache.positions + base;
  std::int32_t newest = 0;
  for (index_t j = threadIdx.x; j < n; j += blockDim.x) {
    p.keep[base + j] = 0;
    p.targets[base + j] = -1;
    newest = positions[j] > newest ? positions[j] : newest;
  }
  atomicMax(&p.step[s * p.layers() + l], newest);
  if (threadIdx.x == 0) p.order_ready[p.cache.head_index(s, l, h)] = 0;
}

/// The (sequence, layer, KV head, slot) of a thread in a (slot tiles, Hkv, S x L) grid; `valid` is
/// false past the head's length.
struct slot_thread {
  index_t s, l, h, j;  ///< sequence, layer, KV head, slot
  bool valid;          ///< the slot holds a token
};

template <class T, class Layout, class State>
__device__ slot_thread slot_of_thread(const prefill_problem<T, Layout, State>& p) {
  slot_thread t{p.grid_sequence(blockIdx.z), p.grid_layer(blockIdx.z), blockIdx.y, static_cast<index_t>(blockIdx.x) * blockDim.x + threadIdx.x, false};
  t.valid = t.j < p.cache.lengths[p.cache.head_index(t.s, t.l, t.h)] && t.j < p.cache.layout.capacity();
  return t;
}

/// Records a non-finite window row (NaN or Inf in a query or in a key it attends): reported, and the
/// layer is left as it is.
template <class T, class Layout, class State>
__device__ void flag_non_finite(const prefill_problem<T, Layout, State>& p, index_t s, index_t l, index_t h, index_t row) {
  report(p.status, device_fault::non_finite_window, s, l, h, row);
  atomicExch(&p.layer_faults[s * p.layers() + l], 1);
}

/// A head's length as the scoring kernels use it: 0 when outside [0, the layer's capacity]
/// (prepare_kernel reports that and leaves the layer alone).
template <class T, class Layout, class State>
__device__ index_t scored_length(const prefill_problem<T, Layout, State>& p, index_t s, index_t l, index_t h) {
  const std::int32_t raw = p.cache.lengths[p.cache.head_index(s, l, h)];
  return raw < 0 || raw > ::kvcompact::detail::layer_capacity(p.cache.layout, l) ? 0 : raw;
}

/// Element offset of a slot's key for the scoring kernels: -1 past @p length, or (reported, layer
/// left alone) when the slot does not map into storage.
template <class T, class Layout, class State>
__device__ index_t scored_offset(const prefill_problem<T, Layout, State>& p, index_t s, index_t l, index_t h, index_t slot, index_t length) {
  if (slot >= length) return -1;
  const index_t offset = checked_offset(p.cache.layout, s, l, h, slot, p.status);
  if (offset < 0) atomicExch(&p.layer_faults[s * p.layers() + l], 1);
  return offset;
}

/// 32-bit words per key row staged by slot_score_kernel: odd, so threads reading their own rows at the
/// same dimension hit distinct banks.
KVCOMPACT_HOST_DEVICE inline index_t slot_row_pitch_words(index_t head_dim, index_t element_bytes) {
  return (head_dim * element_bytes + 3) / 4 | 1;
}
/// Shared memory of slot_score_kernel.
inline std::size_t slot_shared_bytes(index_t head_dim, index_t element_bytes) {
  return static_cast<std::size_t>(slot_tile) * (static_cast<std::size_t>(slot_row_pitch_words(head_dim, element_bytes)) * 4 + sizeof(index_t));
}

/// Grid (slot tiles of slot_tile, Hkv, S x L): scores of slot scorers (key and position). The
/// block's keys are copied to shared memory with 16-byte loads where the layout allows, then each
/// thread calls the scorer's slot_score on its own row. Per-query-head scores (each KV head's, as the
/// CPU backend does) are written only when @p QueryScores.
template <class Policy, bool QueryScores, class T, class Layout, class State>
KVCOMPACT_KERNEL void __launch_bounds__(slot_tile) slot_score_kernel(prefill_problem<T, Layout, State> p, Policy policy) {
  KVCOMPACT_DYNAMIC_SHARED(unsigned char, shared);
  const index_t s = p.grid_sequence(blockIdx.z), l = p.grid_layer(blockIdx.z), h = blockIdx.y;
  const index_t dims = p.cache.layout.head_dim(), stride = p.cache.layout.dim_stride(), capacity = p.cache.layout.capacity();
  const index_t n = scored_length(p, s, l, h), first = static_cast<index_t>(blockIdx.x) * slot_tile;
  if (first >= n) return;
  const int pitch = static_cast<int>(slot_row_pitch_words(dims, sizeof(T)));
  std::uint32_t* rows = reinterpret_cast<std::uint32_t*>(shared);
  index_t* offsets = reinterpret_cast<index_t*>(rows + slot_tile * pitch);
  const index_t j = first + threadIdx.x;
  offsets[threadIdx.x] = scored_offset(p, s, l, h, j, n);
  __syncthreads();
  const int words = static_cast<int>(dims * static_cast<index_t>(sizeof(T)) / 4);
  const bool vector_rows = stride == 1 && words % 4 == 0;
  if (vector_rows) {  // 16-byte loads from each row (a row starts 4-byte aligned; 16 checked per row)
    for (int i = threadIdx.x; i < slot_tile * (words / 4); i += blockDim.x) {
      const int row = i / (words / 4), quad = i % (words / 4);
      if (offsets[row] < 0) continue;
      const T* source = p.cache.keys + offsets[row];
      uint4 bits;
      if (reinterpret_cast<std::uintptr_t>(source) % 16 == 0) bits = reinterpret_cast<const uint4*>(source)[quad];
      else std::memcpy(&bits, reinterpret_cast<const unsigned char*>(source) + quad * 16, 16);
      std::uint32_t* out = rows + row * pitch + quad * 4;
      out[0] = bits.x, out[1] = bits.y, out[2] = bits.z, out[3] = bits.w;
    }
  } else {
    for (int i = threadIdx.x; i < slot_tile * static_cast<int>(dims); i += blockDim.x) {
      const int row = i / static_cast<int>(dims), d = i % static_cast<int>(dims);
      if (offsets[row] >= 0) reinterpret_cast<T*>(rows + row * pitch)[d] = p.cache.keys[offsets[row] + d * stride];
    }
  }
  __syncthreads();
  if (offsets[threadIdx.x] < 0) return;
  const T* own = reinterpret_cast<const T*>(rows + threadIdx.x * pitch);
  auto key = [own](index_t d) { return to_float(own[d]); };
  const float score = policy.scorer.slot_score(key, dims, p.cache.positions[p.head_base(s, l, h) + j]);
  if (isnan(score)) flag_nan(p, s, l, h, j);
  p.scores[p.head_base(s, l, h) + j] = score;
  if constexpr (QueryScores) {
    const index_t group = p.query_heads / p.cache.layout.num_kv_heads();
    for (index_t g = h * group; g < (h + 1) * group; ++g) p.query_scores[((s * p.layers() + l) * p.query_heads + g) * capacity + j] = score;
  }
}

/// A window element in the storage type the tensor cores take (fp32 as tf32).
template <class T>
__device__ inline T window_element(float x) {
  if constexpr (std::is_same_v<T, float>) return ::kvcompact::detail::bits_float(round_to_tf32(::kvcompact::detail::float_bits(x)));
  else return from_float<T>(x);
}

/// Grid (Hq, S x L): converts the fp32 window of one query head to the storage type, padded with
/// zeros to padded_rows x Dp, and flags NaN or Inf queries.
template <int Dp, class T, class Layout, class State>
KVCOMPACT_KERNEL void __launch_bounds__(prefill_threads) window_queries_kernel(prefill_problem<T, Layout, State> p) {
  const index_t g = blockIdx.x, s = p.grid_sequence(blockIdx.y), l = p.grid_layer(blockIdx.y);
  const index_t dims = p.cache.layout.head_dim(), rows = p.window.rows;
  const index_t group = p.query_heads / p.cache.layout.num_kv_heads();
  T* out = p.window_queries + ((s * p.layers() + l) * p.query_heads + g) * p.padded_rows * Dp;
  const float* in = p.window.queries + p.window.offset(s, l - p.first_layer, g, 0, p.grid_layers, p.query_heads, dims);
  const int total = static_cast<int>(p.padded_rows) * Dp;
  for (int i = threadIdx.x; i < total; i += blockDim.x) {
    const int r = i / Dp, d = i % Dp;
    float x = 0.0f;
    if (r < rows && d < dims) {
      x = in[r * dims + d];
      if (!isfinite(x)) flag_non_finite(p, s, l, g / group, r);
    }
    out[i] = window_element<T>(x);
  }
}

/// Folds the partial softmax (max @p m2, sum @p sum2) into (@p m, @p sum); maxima are in the
/// exp2 domain and -inf marks an empty partial.
__device__ inline void merge_softmax(float& m, float& sum, float m2, float sum2) {
  const float top = fmaxf(m, m2);
  if (top == -INFINITY) return;
  sum = (m == -INFINITY ? 0.0f : sum * exp2f(m - top)) + (m2 == -INFINITY ? 0.0f : sum2 * exp2f(m2 - top));
  m = top;
}

/// Grid (key chunks, Hkv, S x L), statistics_threads: pass 1. Each warp holds 16-row tiles of the
/// KV head's G x padded_rows window rows as A fragments; the block streams its key chunk through a
/// shared-memory tile (each key read once) and every warp takes the tile's 8-key column blocks it
/// owns (all of them when the rows need all 8 warps, every second one when they need 4, ...). Each
/// lane keeps a running (max, sum, count) of its two rows per tile over its own key columns; the
/// partials are merged across the quad and the warps at the end of the chunk and stored per row.
template <int Dp, class T, class Layout, class State>
KVCOMPACT_KERNEL void __launch_bounds__(statistics_threads, 1) window_statistics_kernel(prefill_problem<T, Layout, State> p) {
  using shape = window_tile<T, Dp>;
  constexpr int row_tiles = shape::a_tiles, warps = statistics_threads / 32, key_tile = shape::statistics_keys;
  constexpr int warp_rows = 16 * row_tiles;
  KVCOMPACT_DYNAMIC_SHARED(unsigned char, shared);
  unsigned char* keys = shared;
  index_t* key_offset = reinterpret_cast<index_t*>(keys + key_tile * shape::smem_stride);
  std::int32_t* key_wide = reinterpret_cast<std::int32_t*>(key_offset + key_tile);
  std::int32_t* key_pos = key_wide + key_tile;
  float* partial = reinterpret_cast<float*>(key_pos + key_tile);  // [warps][warp_rows][3]
  const lane_id lane = this_lane();
  const int warp = static_cast<int>(threadIdx.x / 32);
  const index_t s = p.grid_sequence(blockIdx.z), l = p.grid_layer(blockIdx.z), h = blockIdx.y, chunk = blockIdx.x;
  const index_t n = scored_length(p, s, l, h), begin = chunk * p.chunk_keys;
  if (begin >= n) return;
  const index_t end = begin + p.chunk_keys < n ? begin + p.chunk_keys : n;
  const index_t head = p.cache.head_index(s, l, h), base = p.head_base(s, l, h);
  const index_t dims = p.cache.layout.head_dim(), stride = p.cache.layout.dim_stride();
  const int padded_rows = static_cast<int>(p.padded_rows), window_rows = static_cast<int>(p.window.rows);
  const int rows = static_cast<int>(p.query_heads / p.cache.layout.num_kv_heads()) * padded_rows;
  int row_warps = 1;
  while (row_warps < warps && row_warps * warp_rows < rows) row_warps *= 2;
  const int key_warps = warps / row_warps, row_warp = warp % row_warps, key_warp = warp / row_warps;
  const T* queries = p.window_queries + (s * p.layers() + l) * p.query_heads * p.padded_rows * Dp + h * rows * static_cast<index_t>(Dp);
  const float scale = p.scale * log2_e;
  for (int first_row = 0; first_row < rows; first_row += row_warps * warp_rows) {
    mma_a a[row_tiles][shape::steps];
    std::int32_t query_pos[row_tiles][2];
    bool live[row_tiles][2];
    float m[row_tiles][2], sum[row_tiles][2];
    int seen[row_tiles][2];
    KVCOMPACT_UNROLL
    for (int tile = 0; tile < row_tiles; ++tile) {
      int row[2];
      KVCOMPACT_UNROLL
      for (int half = 0; half < 2; ++half) {
        row[half] = first_row + row_warp * warp_rows + tile * 16 + lane.g + 8 * half;
        const int in_head = row[half] % padded_rows;
        live[tile][half] = row[half] < rows && in_head < window_rows;
        query_pos[tile][half] = live[tile][half] ? p.window.positions[s * window_rows + in_head] : 0;
        m[tile][half] = -INFINITY, sum[tile][half] = 0.0f, seen[tile][half] = 0;
      }
      KVCOMPACT_UNROLL
      for (int i = 0; i < shape::lane_chunks; ++i) {
        const int c = 4 * i + lane.t;
        const uint4 zero{0u, 0u, 0u, 0u};
        const uint4 low = row[0] < rows ? reinterpret_cast<const uint4*>(queries + row[0] * static_cast<index_t>(Dp))[c] : zero;
        const uint4 high = row[1] < rows ? reinterpret_cast<const uint4*>(queries + row[1] * static_cast<index_t>(Dp))[c] : zero;
        put_a_chunk(a[tile], i, low, high);
      }
    }
    for (index_t tile_first = begin; tile_first < end; tile_first += key_tile) {
      __syncthreads();  // the previous tile is consumed
      if (threadIdx.x < key_tile) {
        const index_t j = tile_first + threadIdx.x;
        const index_t offset = scored_offset(p, s, l, h, j, end);
        key_offset[threadIdx.x] = offset;
        key_wide[threadIdx.x] = describe_row<T, Dp>(p.cache.keys, offset, stride, dims).wide;
        key_pos[threadIdx.x] = offset >= 0 ? p.cache.positions[base + j] : 0;
      }
      __syncthreads();
      for (int c = threadIdx.x; c < key_tile * shape::row_chunks; c += blockDim.x) {
        const int k = c / shape::row_chunks, part = c % shape::row_chunks;
        const cache_row row{key_offset[k], key_wide[k] != 0};
        *reinterpret_cast<uint4*>(keys + k * shape::smem_stride + part * 16) = load_cache_chunk<T, Dp>(p.cache.keys, row, part, stride, dims);
      }
      __syncthreads();
      for (int block = key_warp; block < key_tile / 8; block += key_warps) {
        mma_b b[shape::steps];
        load_b_fragments<T, Dp>(b, keys, block * 8, lane);
        const int k0 = block * 8 + 2 * lane.t;
        const bool key_ok[2] = {key_offset[k0] >= 0, key_offset[k0 + 1] >= 0};
        const std::int32_t position[2] = {key_pos[k0], key_pos[k0 + 1]};
        KVCOMPACT_UNROLL
        for (int tile = 0; tile < row_tiles; ++tile) {
          const mma_c c = tile_product<T, Dp>(a[tile], b);
          KVCOMPACT_UNROLL
          for (int i = 0; i < 4; ++i) {
            const int half = i / 2, e = i % 2;
            if (!(live[tile][half] && key_ok[e] && position[e] <= query_pos[tile][half])) continue;
            const float x = c.r[i] * scale;
            if (x > m[tile][half]) {
              sum[tile][half] = sum[tile][half] * exp2f(m[tile][half] - x) + 1.0f;
              m[tile][half] = x;
            } else {
              sum[tile][half] += exp2f(x - m[tile][half]);
            }
            ++seen[tile][half];
          }
        }
      }
    }
    KVCOMPACT_UNROLL
    for (int tile = 0; tile < row_tiles; ++tile)
      KVCOMPACT_UNROLL
      for (int half = 0; half < 2; ++half) {
        KVCOMPACT_UNROLL
        for (int o = 1; o <= 2; o *= 2) {
          const float m2 = __shfl_xor_sync(0xffffffffu, m[tile][half], o), sum2 = __shfl_xor_sync(0xffffffffu, sum[tile][half], o);
          seen[tile][half] += __shfl_xor_sync(0xffffffffu, seen[tile][half], o);
          merge_softmax(m[tile][half], sum[tile][half], m2, sum2);
        }
        if (lane.t == 0) {
          float* out = partial + (warp * warp_rows + tile * 16 + lane.g + 8 * half) * 3;
          out[0] = m[tile][half], out[1] = sum[tile][half], out[2] = static_cast<float>(seen[tile][half]);
        }
      }
    __syncthreads();
    for (int i = threadIdx.x; i < row_warps * warp_rows; i += blockDim.x) {
      const int row = first_row + i;
      if (row >= rows) continue;
      float top = -INFINITY, total = 0.0f, visible = 0.0f;
      for (int w = i / warp_rows; w < warps; w += row_warps) {
        const float* in = partial + (w * warp_rows + i % warp_rows) * 3;
        merge_softmax(top, total, in[0], in[1]);
        visible += in[2];
      }
      float* out = p.stats + ((head * p.chunks + chunk) * 3) * rows + row;
      out[0] = top, out[rows] = total, out[2 * rows] = visible;
    }
  }
}

/// Grid (Hkv, S x L): pass 1's chunks combined into each window row's log2 denominator (+inf when
/// the row sees no key) and visible-key count (-1 for padding rows); rows with NaN or Inf are flagged.
template <class T, class Layout, class State>
KVCOMPACT_KERNEL void __launch_bounds__(prefill_threads) window_normaliser_kernel(prefill_problem<T, Layout, State> p) {
  const index_t h = blockIdx.x, s = p.grid_sequence(blockIdx.y), l = p.grid_layer(blockIdx.y);
  const index_t head = p.cache.head_index(s, l, h);
  const index_t used = ceil_div(scored_length(p, s, l, h), p.chunk_keys);
  const index_t rows = p.query_heads / p.cache.layout.num_kv_heads() * p.padded_rows;
  for (index_t r = threadIdx.x; r < rows; r += blockDim.x) {
    const bool live = r % p.padded_rows < p.window.rows;
    float m = -INFINITY, sum = 0.0f, visible = 0.0f;
    for (index_t c = 0; c < used; ++c) {
      const float* in = p.stats + ((head * p.chunks + c) * 3) * rows + r;
      merge_softmax(m, sum, in[0], in[rows]);
      visible += in[2 * rows];
    }
    if (live && (!isfinite(sum) || m == INFINITY)) flag_non_finite(p, s, l, h, r % p.padded_rows);
    p.row_lse[head * rows + r] = sum > 0.0f ? m + log2f(sum) : INFINITY;
    p.row_visible[head * rows + r] = live ? static_cast<std::int32_t>(visible) : -1;
  }
}

/// Copies window rows [@p first, @p first + @p count) of KV head @p h (its G x padded_rows rows) and
/// their log2 denominators, visible-key counts and positions to shared-memory slots from @p slot.
template <int Dp, class T, class Layout, class State>
__device__ void stage_window_rows(const prefill_problem<T, Layout, State>& p, index_t s, index_t l, index_t h, int first, int count, int slot,
                                  unsigned char* q_rows, float* row_lse, std::int32_t* row_pos, std::int32_t* row_seen) {
  using shape = window_tile<T, Dp>;
  const int rows = static_cast<int>(p.query_heads / p.cache.layout.num_kv_heads() * p.padded_rows);
  const T* queries = p.window_queries + (s * p.layers() + l) * p.query_heads * p.padded_rows * Dp + h * rows * static_cast<index_t>(Dp);
  for (int i = threadIdx.x; i < count * 4; i += blockDim.x)
    stage_query_row<T, Dp>(q_rows + (slot + i / 4) * shape::smem_stride, queries, first + i / 4, true, i % 4);
  const index_t head = p.cache.head_index(s, l, h);
  for (int i = threadIdx.x; i < count; i += blockDim.x) {
    const int r = first + i;
    const std::int32_t seen = p.row_visible[head * rows + r];
    row_lse[slot + i] = p.row_lse[head * rows + r];
    row_seen[slot + i] = seen;
    row_pos[slot + i] = seen >= 0 ? p.window.positions[s * p.window.rows + r % p.padded_rows] : 0;
  }
}

/// Shared memory of window_scores_kernel staging @p rows window rows.
template <class T, int Dp>
inline std::size_t score_shared_bytes(index_t rows) {
  return static_cast<std::size_t>(rows) * static_cast<std::size_t>(window_tile<T, Dp>::smem_stride + 3 * 4);
}

/// Shared memory of window_statistics_kernel.
template <class T, int Dp>
inline std::size_t statistics_shared_bytes() {
  using shape = window_tile<T, Dp>;
  return static_cast<std::size_t>(shape::statistics_keys) * (shape::smem_stride + sizeof(index_t) + 2 * 4) +
         static_cast<std::size_t>(statistics_threads / 32 * 16 * shape::a_tiles * 3) * sizeof(float);
}

/// The running reduction over query heads of scores shared across KV heads, handed from rank to rank of
/// a tensor-parallel group (continue_across_ranks in rank_exchange.cuh); null `running`: one rank.
struct score_handoff {
  double* running = nullptr;  ///< [S x grid layers][capacity] kvcompact::detail::float_as_exchanged() accumulators
  bool continues = false;     ///< start from `running` (a rank after the first) instead of the reduction's identity
};

/// Writes the score of slot @p j of the KV heads [@p h_first, @p h_first + @p h_count) that hold it,
/// flagging NaN.
template <class T, class Layout, class State>
__device__ void write_slot_score(const prefill_problem<T, Layout, State>& p, index_t s, index_t l, index_t h_first, index_t h_count, index_t j,
                                 float score) {
  for (index_t hh = h_first; hh < h_first + h_count; ++hh) {
    if (j >= scored_length(p, s, l, hh)) continue;
    if (isnan(score)) flag_nan(p, s, l, hh, j);
    p.scores[p.head_base(s, l, hh) + j] = score;
  }
}

/// Grid (key chunks, Hkv or 1 for scorers that share scores across KV heads, S x L), score_threads:
/// pass 2. Each warp holds 16-key tiles of its KV head(s) as A fragments loaded straight from the
/// cache (16-byte loads; the page table or layout is consulted once per key, by one lane); the window
/// rows come from shared memory (staged once when they fit, else block by block). For each key and
/// query head the lane folds the scorer's row terms of its rows in registers; at the end of a query
/// head the 4 lanes of the quad combine, and the group reduction follows in registers. Each slot's
/// score is written once (per-query-head scores too when @p QueryScores). Scores shared across KV heads
/// on one rank of several (@p handoff.running set): the group reduction starts from the accumulators
/// handed over (or the identity on the first rank), runs over this rank's query heads in order, and is
/// written back unfinished for every slot of the capacity (other ranks' heads may be longer);
/// finish_shared_scores_kernel writes the scores once every rank has added its heads.
template <class Scorer, int Dp, bool QueryScores, class T, class Layout, class State>
KVCOMPACT_KERNEL void __launch_bounds__(score_threads, 2)
    window_scores_kernel(prefill_problem<T, Layout, State> p, Scorer scorer, score_handoff handoff) {
  using shape = window_tile<T, Dp>;
  constexpr int key_tiles = shape::a_tiles, warps = score_threads / 32, warp_keys = 16 * key_tiles, block_keys = warps * warp_keys;
  constexpr int key_slots = (warp_keys + 31) / 32;
  constexpr bool all_heads = Scorer::shares_across_kv_heads;
  KVCOMPACT_DYNAMIC_SHARED(unsigned char, shared);
  const int staged = static_cast<int>(p.staged_rows);
  unsigned char* q_rows = shared;
  float* row_lse = reinterpret_cast<float*>(shared + staged * shape::smem_stride);
  std::int32_t* row_pos = reinterpret_cast<std::int32_t*>(row_lse + staged);
  std::int32_t* row_seen = row_pos + staged;
  const lane_id lane = this_lane();
  const int lane_index = static_cast<int>(threadIdx.x % 32), warp = static_cast<int>(threadIdx.x / 32);
  const index_t s = p.grid_sequence(blockIdx.z), l = p.grid_layer(blockIdx.z);
  const index_t kv_heads = p.cache.layout.num_kv_heads(), group = p.query_heads / kv_heads, capacity = p.cache.layout.capacity();
  const index_t h_first = all_heads ? 0 : blockIdx.y, h_count = all_heads ? kv_heads : 1;
  const index_t dims = p.cache.layout.head_dim(), stride = p.cache.layout.dim_stride();
  const int rows = static_cast<int>(group * p.padded_rows), padded_rows = static_cast<int>(p.padded_rows);
  const bool handing = all_heads && handoff.running != nullptr;
  const index_t running_base = static_cast<index_t>(blockIdx.z) * capacity;
  index_t longest = handing ? capacity : 0;
  for (index_t hh = h_first; hh < h_first + h_count; ++hh) {
    const index_t n = scored_length(p, s, l, hh);
    longest = n > longest ? n : longest;
  }
  const index_t begin = static_cast<index_t>(blockIdx.x) * p.chunk_keys;
  if (begin >= longest) return;
  const index_t end = begin + p.chunk_keys < longest ? begin + p.chunk_keys : longest;
  const float scale = p.scale * log2_e;
  if (p.rows_resident) {
    for (index_t hh = h_first; hh < h_first + h_count; ++hh)
      stage_window_rows<Dp>(p, s, l, hh, 0, rows, static_cast<int>(hh - h_first) * rows, q_rows, row_lse, row_pos, row_seen);
    __syncthreads();
  }
  for (index_t tile_first = begin; tile_first < end; tile_first += block_keys) {
    const index_t warp_first = tile_first + warp * warp_keys;
    float group_acc[key_tiles][2];
    KVCOMPACT_UNROLL
    for (int tile = 0; tile < key_tiles; ++tile)
      KVCOMPACT_UNROLL
      for (int half = 0; half < 2; ++half) {
        const index_t j = warp_first + tile * 16 + lane.g + 8 * half;
        group_acc[tile][half] = handing && handoff.continues && j < end ? ::kvcompact::detail::exchanged_as_float(handoff.running[running_base + j])
                                                                        : ::kvcompact::detail::reduction_identity(scorer.group);
      }
    for (index_t hh = h_first; hh < h_first + h_count; ++hh) {
      const index_t n = scored_length(p, s, l, hh), base = p.head_base(s, l, hh);
      index_t own_offset[key_slots];
      std::int32_t own_pos[key_slots], own_wide[key_slots];
      KVCOMPACT_UNROLL
      for (int q = 0; q < key_slots; ++q) {  // one lane per key: the layout (page table) is read once per key
        const int k = q * 32 + lane_index;
        const index_t j = warp_first + k;
        own_offset[q] = k < warp_keys && j < end ? scored_offset(p, s, l, hh, j, n) : -1;
        own_wide[q] = describe_row<T, Dp>(p.cache.keys, own_offset[q], stride, dims).wide;
        own_pos[q] = own_offset[q] >= 0 ? p.cache.positions[base + j] : 0;
      }
      mma_a a[key_tiles][shape::steps];
      bool key_ok[key_tiles][2];
      std::int32_t key_pos[key_tiles][2];
      KVCOMPACT_UNROLL
      for (int tile = 0; tile < key_tiles; ++tile) {
        cache_row row[2];
        KVCOMPACT_UNROLL
        for (int half = 0; half < 2; ++half) {
          const int from = 16 * (tile % 2) + lane.g + 8 * half, mask = lane_index ^ from;  // key tile * 16 + g + 8 half lives in lane `from`
          const std::uint64_t bits = static_cast<std::uint64_t>(own_offset[tile / 2]);
          const std::uint32_t low = static_cast<std::uint32_t>(__shfl_xor_sync(0xffffffffu, static_cast<int>(bits & 0xffffffffu), mask));
          const std::uint32_t high = static_cast<std::uint32_t>(__shfl_xor_sync(0xffffffffu, static_cast<int>(bits >> 32), mask));
          row[half].offset = static_cast<index_t>((static_cast<std::uint64_t>(high) << 32) | low);
          row[half].wide = __shfl_xor_sync(0xffffffffu, own_wide[tile / 2], mask) != 0;
          key_pos[tile][half] = __shfl_xor_sync(0xffffffffu, own_pos[tile / 2], mask);
          key_ok[tile][half] = row[half].offset >= 0;
        }
        KVCOMPACT_UNROLL
        for (int i = 0; i < shape::lane_chunks; ++i)
          put_a_chunk(a[tile], i, load_cache_chunk<T, Dp>(p.cache.keys, row[0], 4 * i + lane.t, stride, dims),
                      load_cache_chunk<T, Dp>(p.cache.keys, row[1], 4 * i + lane.t, stride, dims));
      }
      float row_acc[key_tiles][2];
      KVCOMPACT_UNROLL
      for (int tile = 0; tile < key_tiles; ++tile) row_acc[tile][0] = row_acc[tile][1] = ::kvcompact::detail::reduction_identity(scorer.rows);
      const int step = p.rows_resident ? rows : staged;
      const int slot_base = p.rows_resident ? static_cast<int>(hh - h_first) * rows : 0;
      for (int first = 0; first < rows; first += step) {
        const int count = rows - first < step ? rows - first : step;
        if (!p.rows_resident) {
          __syncthreads();
          stage_window_rows<Dp>(p, s, l, hh, first, count, 0, q_rows, row_lse, row_pos, row_seen);
          __syncthreads();
        }
        for (int block = 0; block < count / 8; ++block) {
          const int slot = slot_base + block * 8;
          mma_b b[shape::steps];
          load_b_fragments<T, Dp>(b, q_rows, slot, lane);
          const int r0 = slot + 2 * lane.t;
          const float lse[2] = {row_lse[r0], row_lse[r0 + 1]};
          const std::int32_t query_pos[2] = {row_pos[r0], row_pos[r0 + 1]}, seen[2] = {row_seen[r0], row_seen[r0 + 1]};
          KVCOMPACT_UNROLL
          for (int tile = 0; tile < key_tiles; ++tile) {
            const mma_c c = tile_product<T, Dp>(a[tile], b);
            KVCOMPACT_UNROLL
            for (int i = 0; i < 4; ++i) {
              const int half = i / 2, e = i % 2;
              if (!(key_ok[tile][half] && seen[e] >= 0 && key_pos[tile][half] <= query_pos[e])) continue;
              const float probability = exp2f(c.r[i] * scale - lse[e]);
              row_acc[tile][half] =
                  ::kvcompact::detail::reduction_combine(scorer.rows, row_acc[tile][half], scorer.row_term(probability, seen[e], query_pos[e]));
            }
          }
          const int row = first + block * 8;
          if ((row + 8) % padded_rows != 0) continue;
          const index_t query_head = hh * group + row / padded_rows;  // its last 8 rows are done
          KVCOMPACT_UNROLL
          for (int tile = 0; tile < key_tiles; ++tile)
            KVCOMPACT_UNROLL
            for (int half = 0; half < 2; ++half) {
              float v = row_acc[tile][half];
              v = ::kvcompact::detail::reduction_combine(scorer.rows, v, __shfl_xor_sync(0xffffffffu, v, 1));
              v = ::kvcompact::detail::reduction_combine(scorer.rows, v, __shfl_xor_sync(0xffffffffu, v, 2));
              v = ::kvcompact::detail::reduction_finish(scorer.rows, v, static_cast<int>(p.window.rows));
              if constexpr (QueryScores) {
                const index_t j = warp_first + tile * 16 + lane.g + 8 * half;
                if (lane.t == 0 && key_ok[tile][half]) p.query_scores[((s * p.layers() + l) * p.query_heads + query_head) * capacity + j] = v;
              }
              group_acc[tile][half] = ::kvcompact::detail::reduction_combine(scorer.group, group_acc[tile][half], v);
              row_acc[tile][half] = ::kvcompact::detail::reduction_identity(scorer.rows);
            }
        }
      }
    }
    if (lane.t == 0) {
      const int reduced = static_cast<int>(all_heads ? p.query_heads : group);
      KVCOMPACT_UNROLL
      for (int tile = 0; tile < key_tiles; ++tile)
        KVCOMPACT_UNROLL
        for (int half = 0; half < 2; ++half) {
          const index_t j = warp_first + tile * 16 + lane.g + 8 * half;
          if (j >= end) continue;
          if (handing)
            handoff.running[running_base + j] = ::kvcompact::detail::float_as_exchanged(group_acc[tile][half]);
          else
            write_slot_score(p, s, l, h_first, h_count, j, ::kvcompact::detail::reduction_finish(scorer.group, group_acc[tile][half], reduced));
        }
    }
  }
}

/// Grid (capacity / prefill_threads, S x grid layers), prefill_threads: the scores shared across KV
/// heads once every rank of a group has carried the group reduction on (window_scores_kernel with a
/// score_handoff): each slot's accumulator in @p running finished over @p query_heads (every rank's)
/// and written for this rank's heads that hold the slot.
template <class Scorer, class T, class Layout, class State>
KVCOMPACT_KERNEL void __launch_bounds__(prefill_threads)
    finish_shared_scores_kernel(prefill_problem<T, Layout, State> p, Scorer scorer, const double* running, int query_heads) {
  const index_t j = static_cast<index_t>(blockIdx.x) * prefill_threads + threadIdx.x, capacity = p.cache.layout.capacity();
  if (j >= capacity) return;
  const float accumulator = ::kvcompact::detail::exchanged_as_float(running[static_cast<index_t>(blockIdx.y) * capacity + j]);
  write_slot_score(p, p.grid_sequence(blockIdx.y), p.grid_layer(blockIdx.y), 0, p.cache.layout.num_kv_heads(), j,
                   ::kvcompact::detail::reduction_finish(scorer.group, accumulator, query_heads));
}

}  // namespace cuda::detail
KVCOMPACT_NAMESPACE_END
