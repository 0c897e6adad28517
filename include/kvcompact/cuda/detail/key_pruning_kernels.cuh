// SPDX-License-Identifier: Apache-2.0
/// @file
/// @brief Kernels of key-channel pruning (ThinK): channel selection and thin copy (one block per KV
/// head), decode append (one block per KV head), decode attention over the kept channels (one block per
/// query head). The channel math is kvcompact::detail's (channel_ranking.hpp), shared with the CPU.
#pragma once

#include <kvcompact/cuda/detail/block_primitives.cuh>
#include <kvcompact/cuda/detail/device_status.cuh>
#include <kvcompact/cuda/detail/launch.cuh>
#include <kvcompact/detail/channel_ranking.hpp>
#include <kvcompact/kv_cache.hpp>
#include <kvcompact/pruned_keys.hpp>
#include <kvcompact/query_window.hpp>

#include <cstdint>

KVCOMPACT_NAMESPACE_BEGIN
namespace cuda::detail {

/// Threads per block of the key-pruning kernels.
inline constexpr int pruning_threads = 128;

/// What the pruning kernels read and write (device pointers).
template <class T, class Layout>
struct pruning_problem {
  kv_cache<T, Layout> cache;  ///< the token-compressed cache
  pruned_keys<T> pruned;      ///< the pruned key store
  index_t query_heads;        ///< query heads
  device_status* status;      ///< fault record
};

/// Dynamic shared memory of the selection kernel: scores, kept flags and the kept list of one head.
KVCOMPACT_HOST_DEVICE inline std::size_t selection_shared_bytes(index_t dims) {
  return static_cast<std::size_t>(dims) * (sizeof(float) + sizeof(std::int32_t) + sizeof(std::uint16_t));
}

/// One block per (KV head, storage layer, sequence): checks the head fits the store, scores its channels
/// (a thread per channel), keeps the best kept_channels(head_dim) in ascending order, copies the thin
/// rows' kept channels and the tail rows.
template <class Selector, class T, class Layout>
KVCOMPACT_KERNEL void __launch_bounds__(pruning_threads)
    select_channels_kernel(pruning_problem<T, Layout> p, query_window window, Selector selector, index_t unpruned_tail) {
  const index_t h = blockIdx.x, l = blockIdx.y, s = blockIdx.z;
  const auto& cache = p.cache;
  const auto& layout = cache.layout;
  const auto& pruned = p.pruned;
  const index_t dims = layout.head_dim(), kept = pruned.kept, head = cache.head_index(s, l, h);
  const index_t length = checked_length(cache.lengths[head], ::kvcompact::detail::layer_capacity(layout, l), p.status, s, l, h);
  const index_t tail = length < unpruned_tail ? length : unpruned_tail, thin = length - tail;
  const std::int32_t* positions = cache.positions + cache.slot_index(s, l, h, 0);
  int misfit = threadIdx.x == 0 && (thin > pruned.thin_capacity || tail > pruned.tail_capacity);
  for (index_t j = 1 + threadIdx.x; j < length; j += blockDim.x)
    if (positions[j - 1] >= positions[j]) misfit = 1;
  misfit = block_reduce<pruning_threads>(misfit, [](int a, int b) { return a | b; });
  if (misfit) {
    if (threadIdx.x == 0) report(p.status, device_fault::pruned_store, s, l, h, length);
    return;
  }
  KVCOMPACT_DYNAMIC_SHARED(unsigned char, shared);
  float* scores = reinterpret_cast<float*>(shared);
  std::int32_t* flags = reinterpret_cast<std::int32_t*>(scores + dims);
  std::uint16_t* channels = reinterpret_cast<std::uint16_t*>(flags + dims);
  const index_t group = p.query_heads / layout.num_kv_heads();
  for (index_t c = threadIdx.x; c < dims; c += blockDim.x)
    scores[c] = selector.channel_score(::kvcompact::detail::query_energy(window, s, l, h * group, group, layout.num_layers(), p.query_heads, dims, c),
                                       ::kvcompact::detail::key_energy(cache, s, l, h, length, c));
  __syncthreads();
  for (index_t c = threadIdx.x; c < dims; c += blockDim.x) flags[c] = ::kvcompact::detail::channel_is_kept(scores, dims, c, kept) ? 1 : 0;
  __syncthreads();
  for (index_t c = threadIdx.x; c < dims; c += blockDim.x) {
    if (!flags[c]) continue;
    index_t rank = 0;
    for (index_t k = 0; k < c; ++k) rank += flags[k];
    channels[rank] = static_cast<std::uint16_t>(c);
    pruned.channel_list(head)[rank] = static_cast<std::uint16_t>(c);
  }
  __syncthreads();
  const index_t stride = layout.dim_stride();
  for (index_t e = threadIdx.x; e < thin * kept; e += blockDim.x) {
    const index_t j = e / kept, i = e % kept;
    pruned.thin_row(head, j)[i] = cache.keys[layout.offset(s, l, h, j) + channels[i] * stride];
  }
  for (index_t e = threadIdx.x; e < tail * dims; e += blockDim.x) {
    const index_t row = e / dims, c = e % dims;
    pruned.tail_row(head, row)[c] = cache.keys[layout.offset(s, l, h, thin + row) + c * stride];
  }
  if (threadIdx.x == 0) pruned.thin_lengths[head] = static_cast<std::int32_t>(thin);
}

/// One block per (KV head, sequence): writes one decode token's key as a tail row, its value and
/// position into the cache, and grows the head by one (a negative position skips the sequence).
template <class T, class Layout>
KVCOMPACT_KERNEL void __launch_bounds__(pruning_threads)
    append_pruned_kernel(pruning_problem<T, Layout> p, index_t layer, const T* keys, const T* values, const std::int32_t* positions) {
  const index_t h = blockIdx.x, s = blockIdx.y, position = positions[s];
  if (position < 0) return;
  const auto& cache = p.cache;
  const auto& layout = cache.layout;
  const index_t dims = layout.head_dim(), head = cache.head_index(s, layer, h), capacity = ::kvcompact::detail::layer_capacity(layout, layer);
  const std::int32_t length = cache.lengths[head];
  const index_t row = length - p.pruned.thin_lengths[head];
  if (length < 0 || length >= capacity || row < 0 || row >= p.pruned.tail_capacity) {
    if (threadIdx.x == 0) report(p.status, length < 0 || length > capacity ? device_fault::bad_length : device_fault::head_full, s, layer, h, length);
    return;
  }
  const index_t source = (s * layout.num_kv_heads() + h) * dims, value_offset = layout.offset(s, layer, h, length);
  for (index_t c = threadIdx.x; c < dims; c += blockDim.x) {
    p.pruned.tail_row(head, row)[c] = keys[source + c];
    cache.values[value_offset + c * layout.dim_stride()] = values[source + c];
  }
  __syncthreads();  // every thread has read the length
  if (threadIdx.x == 0) {
    cache.positions[cache.slot_index(s, layer, h, length)] = static_cast<std::int32_t>(position);
    cache.lengths[head] = length + 1;
  }
}

/// Dynamic shared memory of the attention kernel: the query, its gathered channels and the partial
/// outputs of the slot groups.
KVCOMPACT_HOST_DEVICE inline std::size_t pruned_attention_shared_bytes(index_t dims, index_t kept) {
  return static_cast<std::size_t>(dims + kept + weighted_rows_groups(dims, pruning_threads) * dims) * sizeof(float);
}

/// One block per (query head, sequence) of one storage layer: gathers the query to its KV head's kept
/// channels, computes the logits (a thread per slot; thin slots over the kept channels), a block-wide
/// softmax, and the probability-weighted values (slot groups of head_dim threads, summed in group
/// order). @p logits is [sequences][query_heads][capacity] scratch.
template <class T, class Layout>
KVCOMPACT_KERNEL void __launch_bounds__(pruning_threads)
    attend_pruned_kernel(pruning_problem<T, Layout> p, index_t layer, const float* queries, const std::int32_t* query_positions, float scale,
                         float* logits, float* output) {
  const index_t qh = blockIdx.x, s = blockIdx.y, position = query_positions[s];
  if (position < 0) return;
  const auto& cache = p.cache;
  const auto& layout = cache.layout;
  const auto& pruned = p.pruned;
  const index_t dims = layout.head_dim(), kept = pruned.kept, h = qh / (p.query_heads / layout.num_kv_heads());
  const index_t head = cache.head_index(s, layer, h), capacity = layout.capacity();
  const index_t length = checked_length(cache.lengths[head], ::kvcompact::detail::layer_capacity(layout, layer), p.status, s, layer, h);
  const index_t thin = pruned.thin_lengths[head];
  float* out = output + (s * p.query_heads + qh) * dims;
  if (thin < 0 || thin > length || thin > pruned.thin_capacity || length - thin > pruned.tail_capacity) {
    if (threadIdx.x == 0) report(p.status, device_fault::pruned_store, s, layer, h, length);
    return;
  }
  KVCOMPACT_DYNAMIC_SHARED(float, shared);
  float* query = shared;
  float* gathered = query + dims;
  float* partial = gathered + kept;
  const float* source = queries + (s * p.query_heads + qh) * dims;
  for (index_t c = threadIdx.x; c < dims; c += blockDim.x) query[c] = source[c];
  const std::uint16_t* channels = pruned.channel_list(head);
  for (index_t i = threadIdx.x; i < kept; i += blockDim.x) gathered[i] = source[channels[i]];
  __syncthreads();
  const std::int32_t* positions = cache.positions + cache.slot_index(s, layer, h, 0);
  float* row_logits = logits + (s * p.query_heads + qh) * capacity;
  float top = -INFINITY;
  for (index_t j = threadIdx.x; j < length; j += blockDim.x) {
    float logit = -INFINITY;
    if (positions[j] <= position)
      logit = scale * (j < thin ? ::kvcompact::detail::row_dot(gathered, pruned.thin_row(head, j), kept)
                                : ::kvcompact::detail::row_dot(query, pruned.tail_row(head, j - thin), dims));
    row_logits[j] = logit;
    top = logit > top ? logit : top;
  }
  top = block_reduce<pruning_threads>(top, [](float a, float b) { return a > b ? a : b; });
  if (top == -INFINITY) {
    for (index_t c = threadIdx.x; c < dims; c += blockDim.x) out[c] = 0.0f;
    return;
  }
  float sum = 0.0f;
  for (index_t j = threadIdx.x; j < length; j += blockDim.x) {
    const float weight = positions[j] <= position ? expf(row_logits[j] - top) : 0.0f;
    row_logits[j] = weight;
    sum += weight;
  }
  sum = block_sum<pruning_threads>(sum);  // its barrier also publishes the weights
  block_weighted_rows<pruning_threads>(
      length, dims, [&](index_t j) { return row_logits[j]; },
      [&](index_t j, index_t c) { return to_float(cache.values[layout.offset(s, layer, h, j) + c * layout.dim_stride()]); }, sum, partial, out);
}

}  // namespace cuda::detail
KVCOMPACT_NAMESPACE_END
