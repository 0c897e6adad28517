// SPDX-License-Identifier: Apache-2.0
/// @file
/// @brief Kernel of decode attention over a CSR cache's codes (one block per query head). The per-entry
/// math is kvcompact::codecs' (sparse_codes.hpp), shared with the CPU's codecs::sparse_cache::attend.
#pragma once

#include <kvcompact/codecs/sparse_codes.hpp>
#include <kvcompact/cuda/detail/block_primitives.cuh>
#include <kvcompact/cuda/detail/device_status.cuh>
#include <kvcompact/cuda/detail/launch.cuh>
#include <kvcompact/detail/channel_ranking.hpp>

#include <cstddef>
#include <cstdint>

KVCOMPACT_NAMESPACE_BEGIN
namespace cuda::detail {

/// Threads per block of the sparse attention kernel.
inline constexpr int sparse_attention_threads = 128;

/// Dynamic shared memory of the kernel: the query, its projections on the key atoms, the value-atom
/// weights `h` and the partial outputs of the atom groups (blocks of sparse_attention_threads).
KVCOMPACT_HOST_DEVICE inline std::size_t sparse_attention_shared_bytes(index_t dims, index_t atoms) {
  return static_cast<std::size_t>(dims + 2 * atoms + weighted_rows_groups(dims, sparse_attention_threads) * dims) * sizeof(float);
}

/// One block per query head of one layer: projects the query on its KV head's key atoms (a thread per
/// atom), finds the largest logit (a thread per slot), then recomputes each logit, scatters
/// `exp(logit - max)` times the value code's weights into `h` (shared-memory atomics) and writes
/// `D_V^T h / sum` (block_weighted_rows). The two passes over the slots check the atom indices they
/// read (the keys' in both, the values' in the second) and never look up an atom outside the
/// dictionary; if a code has one, the first such slot is reported as device_fault::bad_code and the
/// head's output is left unwritten.
/// @p queries and @p output are [query_heads][head_dim] fp32. @tparam Threads the block size (a power of two).
template <int Threads>
KVCOMPACT_KERNEL void __launch_bounds__(Threads)
    sparse_attention_kernel(codecs::sparse_codes codes, index_t layer, index_t query_heads, const float* queries, float scale,
                            device_status* status, float* output) {
  using codecs::entry_half;
  const index_t qh = blockIdx.x, dims = codes.head_dim, atoms = codes.atoms;
  const index_t h = qh / (query_heads / codes.kv_heads);
  const index_t length = checked_length(codes.length(layer, h), codes.capacity, status, 0, layer, h);
  KVCOMPACT_DYNAMIC_SHARED(float, shared);
  float* query = shared;
  float* projected = query + dims;
  float* weights = projected + atoms;
  float* partial = weights + atoms;
  for (index_t c = threadIdx.x; c < dims; c += blockDim.x) query[c] = queries[qh * dims + c];
  for (index_t k = threadIdx.x; k < atoms; k += blockDim.x) weights[k] = 0.0f;
  __syncthreads();
  const float* key_atoms = codes.atoms_of(layer, h, entry_half::key);
  for (index_t k = threadIdx.x; k < atoms; k += blockDim.x) projected[k] = ::kvcompact::detail::row_dot(query, key_atoms + k * dims, dims);
  float* out = output + qh * dims;
  if (length == 0) {
    for (index_t c = threadIdx.x; c < dims; c += blockDim.x) out[c] = 0.0f;
    return;
  }
  index_t bad_slot = length;  // the first slot this thread read with an atom index outside the dictionary
  const auto note_code = [&](bool in_range, index_t j) { bad_slot = in_range || bad_slot < j ? bad_slot : j; };
  const auto scaled_logit = [&](index_t j) {
    bool in_range = true;
    const float logit = codecs::code_logit(codes, layer, h, j, [&](std::uint16_t atom) {
      in_range = in_range && atom < atoms;
      return atom < atoms ? projected[atom] : 0.0f;
    });
    note_code(in_range, j);
    return scale * logit;
  };
  __syncthreads();  // publishes the projections
  float top = -INFINITY;
  for (index_t j = threadIdx.x; j < length; j += blockDim.x) {
    const float logit = scaled_logit(j);
    top = logit > top ? logit : top;
  }
  top = block_reduce<Threads>(top, [](float a, float b) { return a > b ? a : b; });
  float sum = 0.0f;
  for (index_t j = threadIdx.x; j < length; j += blockDim.x) {
    const float a = expf(scaled_logit(j) - top);
    sum += a;
    bool in_range = true;
    codecs::for_each_term(codes, layer, h, j, entry_half::value, [&](std::uint16_t atom, float weight) {
      in_range = in_range && atom < atoms;
      if (atom < atoms) atomicAdd(&weights[atom], a * weight);
    });
    note_code(in_range, j);
  }
  sum = block_sum<Threads>(sum);  // its barriers also publish the atom weights
  bad_slot = block_reduce<Threads>(bad_slot, [](index_t a, index_t b) { return a < b ? a : b; });
  if (bad_slot < length) {
    if (threadIdx.x == 0) report(status, device_fault::bad_code, 0, layer, h, bad_slot);
    return;
  }
  const float* value_atoms = codes.atoms_of(layer, h, entry_half::value);
  block_weighted_rows<Threads>(
      atoms, dims, [&](index_t k) { return weights[k]; }, [&](index_t k, index_t c) { return value_atoms[k * dims + c]; }, sum, partial, out);
}

}  // namespace cuda::detail
KVCOMPACT_NAMESPACE_END
