// SPDX-License-Identifier: Apache-2.0
/// @file
/// @brief Decode attention over a CSR cache's codes on the GPU: kvcompact::cuda::sparse_attention. Same
/// per-entry math as kvcompact::codecs::sparse_cache::attend (kvcompact/codecs/sparse_codes.hpp).
#pragma once

#include <kvcompact/codecs/sparse_codes.hpp>
#include <kvcompact/cuda/check.cuh>
#include <kvcompact/cuda/detail/launch.cuh>
#include <kvcompact/cuda/detail/sparse_attention_kernel.cuh>
#include <kvcompact/error.hpp>

#include <cstddef>
#include <span>

KVCOMPACT_NAMESPACE_BEGIN

namespace cuda {

/// @brief Decode attention of one token's queries over every entry of a layer of a CSR cache
/// (@ref methods_csr_attention), on the codes, in device memory: per query head the query is projected
/// on its KV head's key atoms once, a slot's logit is `scale * sum_m w_m p[i_m]`, the softmax weights
/// are scattered into per-atom weights through the value codes, and the output is `D_V^T h`. One
/// thread block per query head. The kernel checks the lengths and atom indices it reads; check()
/// raises what it found.
///
/// Typical use: encode entries with kvcompact::codecs::sparse_cache, copy the arrays of its codes()
/// view into device memory, bind a view of those copies, and call attend() for each layer at each
/// decode step.
class sparse_attention {
 public:
  /// @brief Most atoms per dictionary the kernel takes (its projections and atom weights live in shared memory).
  static constexpr index_t max_atoms = 16384;
  /// @brief Largest head dimension the kernel takes.
  static constexpr index_t max_head_dim = 1024;
  /// @brief Workspace bytes: the fault record. @return the byte count
  [[nodiscard]] static constexpr std::size_t workspace_bytes() { return sizeof(detail::device_status); }

  /// @brief Binds device codes and checks their extents.
  /// @param codes a kvcompact::codecs::sparse_codes view whose pointers are device memory
  /// @param workspace device memory of workspace_bytes() bytes
  /// @param stream the stream every call runs on
  /// @throws kvcompact::error naming the bad argument (`codes.indices`, `codes.layers`, `codes.atoms`, ...)
  sparse_attention(const codecs::sparse_codes& codes, std::span<std::byte> workspace, cudaStream_t stream = nullptr)
      : codes_(codes), stream_(stream) {
    constexpr const char* where = "cuda::sparse_attention";
    using ::kvcompact::detail::require;
    require(codes.indices != nullptr && codes.weights != nullptr && codes.lengths != nullptr && codes.dictionaries != nullptr, where, "codes.indices",
            "indices, weights, lengths and dictionaries must be device pointers");
    require(codes.layers > 0, where, "codes.layers", "must be positive");
    require(codes.kv_heads > 0, where, "codes.kv_heads", "must be positive");
    require(codes.capacity > 0, where, "codes.capacity", "must be positive");
    require(codes.terms > 0, where, "codes.terms", "must be positive");
    require(codes.head_dim > 0 && codes.head_dim <= max_head_dim, where, "codes.head_dim", "must be in [1, 1024]");
    require(codes.atoms > 0 && codes.atoms <= max_atoms, where, "codes.atoms", "must be in [1, 16384]");
    require(workspace.data() != nullptr && workspace.size() >= workspace_bytes(), where, "workspace", "smaller than workspace_bytes()");
    status_ = reinterpret_cast<detail::device_status*>(workspace.data());
    cuda::check(cudaMemsetAsync(status_, 0, sizeof(detail::device_status), stream_), where, "cudaMemsetAsync(status)");
  }

  /// @brief Attention of one token's queries over the entries of a layer.
  /// @param layer layer @param queries device [query_heads][head_dim] fp32
  /// @param query_heads query heads (a positive multiple of the KV heads)
  /// @param scale logit scale (1 / sqrt(head_dim) for standard attention)
  /// @param output device [query_heads][head_dim] fp32 (zeros for a head without entries)
  /// @throws kvcompact::error naming `layer`, `query_heads`, `queries` or `output`; faults found by the
  /// kernel surface in check()
  void attend(index_t layer, const float* queries, index_t query_heads, float scale, float* output) {
    constexpr const char* where = "cuda::sparse_attention::attend";
    using ::kvcompact::detail::require;
    require(layer >= 0 && layer < codes_.layers, where, "layer", "out of range");
    require(query_heads > 0 && query_heads % codes_.kv_heads == 0, where, "query_heads", "must be a positive multiple of the KV heads");
    require(queries != nullptr, where, "queries", "must be a device pointer");
    require(output != nullptr, where, "output", "must be a device pointer");
    const std::size_t shared = detail::sparse_attention_shared_bytes(codes_.head_dim, codes_.atoms);
    auto kernel = detail::sparse_attention_kernel<detail::sparse_attention_threads>;
    detail::allow_shared_memory(kernel, shared, where);
    detail::launch(kernel, dim3(detail::grid_extent(query_heads, where, "query_heads")), dim3(detail::sparse_attention_threads),
                   shared, stream_, codes_, layer, query_heads, queries, scale, status_, output);
    detail::check_launch(where, "sparse_attention_kernel");
  }

  /// @brief Waits for the stream and raises the first fault the kernel recorded (then clears it).
  /// @throws kvcompact::error describing the fault
  void check() { detail::raise_recorded(status_, stream_, "cuda::sparse_attention::check"); }

 private:
  codecs::sparse_codes codes_;
  cudaStream_t stream_;
  detail::device_status* status_ = nullptr;
};

}  // namespace cuda

KVCOMPACT_NAMESPACE_END
