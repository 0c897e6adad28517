// SPDX-License-Identifier: Apache-2.0
/// @file
/// @brief Fused decode attention: split-K flash decoding whose pass over K also leaves what the
/// scorer's state update needs (raw logits and softmax statistics), then one kernel that combines the
/// splits into the output and folds each slot's group-reduced probability term into its state.
#pragma once

#include <kvcompact/cuda/detail/device_status.cuh>
#include <kvcompact/cuda/detail/launch.cuh>
#include <kvcompact/cuda/detail/row_loads.cuh>
#include <kvcompact/kv_cache.hpp>
#include <kvcompact/layouts/layer_condensed.hpp>

#include <cfloat>
#include <cstdint>

KVCOMPACT_NAMESPACE_BEGIN
namespace cuda::detail {

/// Keys per tile of the decode kernel (one per lane of a warp in the softmax step).
inline constexpr int decode_tile = 32;
/// Threads per block of the decode kernels.
inline constexpr int decode_threads = 128;
/// Outputs (query head x dimension) one thread of the decode kernel accumulates at most.
inline constexpr int decode_max_outputs_per_thread = 32;
/// Slots per block of the state-update kernel.
inline constexpr int update_threads = 256;

/// Everything one decode step of one layer reads and writes (device pointers).
template <class T, class Layout>
struct decode_problem {
  kv_cache<T, Layout> cache;              ///< the cache (device arrays)
  index_t storage_layer;                  ///< storage layer holding the keys
  index_t model_layer;                    ///< layer that attends (visibility rule)
  index_t query_heads;                    ///< query heads
  float scale;                            ///< logit scale
  const T* queries;                       ///< [S][Hq][D]
  const std::int32_t* query_positions;    ///< [S]; a negative position skips the sequence
  T* output;                              ///< [S][Hq][D], or null (observe)
  index_t splits;                         ///< blocks per head
  float* logits;                          ///< [S][Hq][capacity] scaled logits (scoring only)
  float* partial_out;                     ///< [S][Hq][splits][D] unnormalised outputs
  float* partial_max;                     ///< [S][Hq][splits] running maxima
  float* partial_sum;                     ///< [S][Hq][splits] running sums
  std::int32_t* partial_count;            ///< [S][Hkv][splits] visible keys
  device_status* status;                  ///< fault record
};

/// Dynamic shared memory of decode_partial_kernel, in bytes.
inline std::size_t decode_shared_bytes(index_t group, index_t head_dim) {
  const std::size_t floats = static_cast<std::size_t>(group * head_dim + 2 * decode_tile * (head_dim + 1) + group * decode_tile + 3 * group);
  return (floats + 1) / 2 * 2 * sizeof(float) + decode_tile * sizeof(index_t);  // the index_t rows 8-byte aligned
}

/// One block per (split, KV head, sequence): attends the block's slot range with the G query heads
/// of the KV head (online softmax), writes unnormalised partial outputs with their maximum and sum,
/// the visible-key count and, when @p Score, every scaled logit.
template <bool Score, class T, class Layout>
KVCOMPACT_KERNEL void __launch_bounds__(decode_threads) decode_partial_kernel(decode_problem<T, Layout> p) {
  KVCOMPACT_DYNAMIC_SHARED(float, shared);
  const index_t s = blockIdx.z, h = blockIdx.y, split = blockIdx.x;
  const index_t query_position = p.query_positions[s];
  if (query_position < 0) return;
  const Layout& layout = p.cache.layout;
  const index_t capacity = layout.capacity(), kv_heads = layout.num_kv_heads();
  const int dims = static_cast<int>(layout.head_dim()), group = static_cast<int>(p.query_heads / kv_heads);  // tile-local math in 32 bits
  const index_t head = p.cache.head_index(s, p.storage_layer, h);
  const index_t length = checked_length(p.cache.lengths[head], capacity, p.status, s, p.storage_layer, h);
  const index_t chunk = ceil_div(ceil_div(length, p.splits), decode_tile) * decode_tile;
  const index_t begin = split * chunk;
  const index_t end = begin + chunk < length ? begin + chunk : length;

  float* q = shared;                                   // [G][D]
  float* k = q + group * dims;                         // [tile][D + 1]
  float* v = k + decode_tile * (dims + 1);             // [tile][D + 1]
  float* logit = v + decode_tile * (dims + 1);         // [G][tile]
  float* running_max = logit + group * decode_tile;    // [G]
  float* running_sum = running_max + group;            // [G]
  float* correction = running_sum + group;             // [G]
  auto* row_offset = reinterpret_cast<index_t*>(shared + (correction + group - shared + 1) / 2 * 2);  // [tile], -1 = not visible (8-byte aligned)

  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  const index_t first_query = s * p.query_heads + h * group;
  for (int i = tid; i < group * dims; i += blockDim.x) q[i] = to_float(p.queries[first_query * dims + i]);
  for (int g = tid; g < group; g += blockDim.x) {
    running_max[g] = -INFINITY;
    running_sum[g] = 0.0f;
  }
  const int outputs = group * dims;
  float acc[decode_max_outputs_per_thread];
KVCOMPACT_UNROLL
  for (int o = 0; o < decode_max_outputs_per_thread; ++o) acc[o] = 0.0f;
  int visible = 0;
  const index_t stride = layout.dim_stride();
  const int width = static_cast<int>(row_chunk<T>(stride, dims)), chunks_per_row = dims / width;
  __syncthreads();

  for (index_t tile = begin; tile < end; tile += decode_tile) {
    const int n = static_cast<int>(end - tile < decode_tile ? end - tile : decode_tile);
    if (tid < decode_tile) {
      index_t offset = -1;
      if (tid < n) {
        const index_t slot = tile + tid;
        const index_t key_position = p.cache.positions[head * capacity + slot];
        if (::kvcompact::detail::attends(layout, p.model_layer, key_position, query_position))
          offset = checked_offset(layout, s, p.storage_layer, h, slot, p.status);
      }
      row_offset[tid] = offset;
      visible += offset >= 0;
    }
    __syncthreads();
    for (int i = tid; i < n * chunks_per_row; i += blockDim.x) {
      const int j = i / chunks_per_row, d = i % chunks_per_row * width;
      load_row_chunk(p.cache.keys, row_offset[j], d, stride, width, k + j * (dims + 1) + d);
      load_row_chunk(p.cache.values, row_offset[j], d, stride, width, v + j * (dims + 1) + d);
    }
    __syncthreads();
    for (int i = tid; i < group * decode_tile; i += blockDim.x) {
      const int g = i / decode_tile, j = i % decode_tile;
      float value = -INFINITY;
      if (j < n && row_offset[j] >= 0) {
        float dot = 0.0f;
        for (int d = 0; d < dims; ++d) dot += q[g * dims + d] * k[j * (dims + 1) + d];
        value = dot * p.scale;
      }
      logit[i] = value;
      if constexpr (Score)
        if (j < n) p.logits[(first_query + g) * capacity + tile + j] = value;
    }
    __syncthreads();
    for (int g = warp; g < group; g += blockDim.x / 32) {
      const float x = logit[g * decode_tile + lane];
      float tile_max = x;
      for (int o = 16; o > 0; o /= 2) tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, o));
      const float old_max = running_max[g];
      const float new_max = fmaxf(old_max, tile_max);
      const float e = x == -INFINITY ? 0.0f : expf(x - new_max);
      float tile_sum = e;
      for (int o = 16; o > 0; o /= 2) tile_sum += __shfl_xor_sync(0xffffffffu, tile_sum, o);
      logit[g * decode_tile + lane] = e;
      __syncwarp();  // every lane has read running_max[g] before lane 0 overwrites it
      if (lane == 0) {
        const float c = old_max == -INFINITY ? 0.0f : expf(old_max - new_max);
        correction[g] = c;
        running_sum[g] = running_sum[g] * c + tile_sum;
        running_max[g] = new_max;
      }
    }
    __syncthreads();
KVCOMPACT_UNROLL
    for (int o = 0; o < decode_max_outputs_per_thread; ++o) {
      const int out = tid + o * static_cast<int>(blockDim.x);
      if (out >= outputs) break;
      const int g = out / dims, d = out % dims;
      float a = acc[o] * correction[g];
      for (int j = 0; j < n; ++j) a += logit[g * decode_tile + j] * v[j * (dims + 1) + d];
      acc[o] = a;
    }
    __syncthreads();
  }

  const index_t partial = split;
  const index_t splits = p.splits;
KVCOMPACT_UNROLL
  for (int o = 0; o < decode_max_outputs_per_thread; ++o) {
    const int out = tid + o * static_cast<int>(blockDim.x);
    if (out >= outputs) break;
    const int g = out / dims, d = out % dims;
    p.partial_out[((first_query + g) * splits + partial) * dims + d] = acc[o];
  }
  for (int g = tid; g < group; g += blockDim.x) {
    p.partial_max[(first_query + g) * splits + partial] = running_max[g];
    p.partial_sum[(first_query + g) * splits + partial] = running_sum[g];
  }
  for (int o = 16; o > 0; o /= 2) visible += __shfl_xor_sync(0xffffffffu, visible, o);
  if (tid == 0) p.partial_count[(s * kv_heads + h) * splits + partial] = visible;  // tid < 32 hold all counts
}

/// Maximum and sum of a query head's softmax over all splits.
__device__ inline void combine_statistics(const float* maxima, const float* sums, index_t splits, float& max_out, float& sum_out) {
  float m = -INFINITY;
  for (index_t i = 0; i < splits; ++i) m = fmaxf(m, maxima[i]);
  float l = 0.0f;
  if (m != -INFINITY)
    for (index_t i = 0; i < splits; ++i)
      if (maxima[i] != -INFINITY) l += sums[i] * expf(maxima[i] - m);
  max_out = m;
  sum_out = l;
}

/// One block per (KV head, sequence): combines the splits of the G query heads into the output
/// (zero where a query saw no key, as in a reads-ahead layer's first token).
template <class T, class Layout>
KVCOMPACT_KERNEL void __launch_bounds__(decode_threads) decode_combine_kernel(decode_problem<T, Layout> p) {
  const index_t s = blockIdx.y, h = blockIdx.x;
  if (p.query_positions[s] < 0) return;
  const index_t dims = p.cache.layout.head_dim(), kv_heads = p.cache.layout.num_kv_heads();
  const index_t group = p.query_heads / kv_heads;
  const index_t first_query = s * p.query_heads + h * group;
  for (index_t out = threadIdx.x; out < group * dims; out += blockDim.x) {
    const index_t g = out / dims, d = out % dims, query = first_query + g;
    float m = 0.0f, l = 0.0f;
    combine_statistics(p.partial_max + query * p.splits, p.partial_sum + query * p.splits, p.splits, m, l);
    float value = 0.0f;
    if (l > 0.0f) {
      for (index_t i = 0; i < p.splits; ++i) {
        const float mi = p.partial_max[query * p.splits + i];
        if (mi != -INFINITY) value += p.partial_out[(query * p.splits + i) * dims + d] * expf(mi - m);
      }
      value /= l;
    }
    p.output[query * dims + d] = from_float<T>(value);
  }
}

/// Grid (slot tiles, KV heads or 1 for shared scores, sequences): folds the current query's group-reduced term into each
/// visible slot's state, exactly as the CPU backend's attend() does: per query head the probability
/// `exp(logit - max) / sum`, the scorer's row term, then the scorer's group reduction (over all query
/// heads when the scorer shares scores across KV heads).
template <class Scorer, class T, class Layout>
KVCOMPACT_KERNEL void __launch_bounds__(update_threads)
    decode_update_kernel(decode_problem<T, Layout> p, Scorer scorer, typename Scorer::state_type* states) {
  KVCOMPACT_DYNAMIC_SHARED(float, shared);
  const index_t s = blockIdx.z, h = blockIdx.y;
  const index_t query_position = p.query_positions[s];
  if (query_position < 0) return;
  const Layout& layout = p.cache.layout;
  const index_t capacity = layout.capacity(), kv_heads = layout.num_kv_heads();
  const index_t group = p.query_heads / kv_heads;
  const bool shared_scores = Scorer::shares_across_kv_heads;
  const index_t first = shared_scores ? 0 : h * group;
  const index_t count = shared_scores ? p.query_heads : group;
  float* maxima = shared;              // [count]
  float* sums = maxima + count;        // [count]
  auto* visible = reinterpret_cast<std::int32_t*>(sums + count);  // [kv heads]: visible keys of each head
  for (index_t g = threadIdx.x; g < count; g += blockDim.x) {
    const index_t query = s * p.query_heads + first + g;
    combine_statistics(p.partial_max + query * p.splits, p.partial_sum + query * p.splits, p.splits, maxima[g], sums[g]);
  }
  for (index_t kh = threadIdx.x; kh < kv_heads; kh += blockDim.x) {
    std::int32_t n = 0;
    for (index_t i = 0; i < p.splits; ++i) n += p.partial_count[(s * kv_heads + kh) * p.splits + i];
    visible[kh] = n;
  }
  __syncthreads();
  const index_t j = static_cast<index_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (j >= capacity) return;
  auto updates = [&](index_t kv_head) {  // the slot holds a token the current query sees
    const index_t head = p.cache.head_index(s, p.storage_layer, kv_head);
    return j < p.cache.lengths[head] &&
           ::kvcompact::detail::attends(layout, p.model_layer, p.cache.positions[head * capacity + j], query_position);
  };
  // A shared score is the same for every KV head: computed once (grid y = 1), folded into all heads.
  const index_t first_head = shared_scores ? 0 : h, last_head = shared_scores ? kv_heads : h + 1;
  bool any = false;
  for (index_t kh = first_head; kh < last_head; ++kh) any = any || updates(kh);
  if (!any) return;
  float acc = ::kvcompact::detail::reduction_identity(scorer.group);
  for (index_t g = 0; g < count; ++g) {
    const index_t query_head = first + g, other = query_head / group;
    const index_t other_head = p.cache.head_index(s, p.storage_layer, other);
    float term = 0.0f;
    if (j < p.cache.lengths[other_head] &&
        ::kvcompact::detail::attends(layout, p.model_layer, p.cache.positions[other_head * capacity + j], query_position)) {
      const float probability = expf(p.logits[(s * p.query_heads + query_head) * capacity + j] - maxima[g]) / sums[g];
      term = scorer.row_term(probability, visible[other], query_position);
    }
    acc = ::kvcompact::detail::reduction_combine(scorer.group, acc, term);
  }
  const float term = ::kvcompact::detail::reduction_finish(scorer.group, acc, static_cast<int>(count));
  for (index_t kh = first_head; kh < last_head; ++kh)
    if (updates(kh)) scorer.observe(states[p.cache.head_index(s, p.storage_layer, kh) * capacity + j], term, query_position);
}

}  // namespace cuda::detail
KVCOMPACT_NAMESPACE_END
