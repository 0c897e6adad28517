// SPDX-License-Identifier: Apache-2.0
/// @file
/// @brief Errors detected inside kernels: recorded in device memory, raised on the host by check().
#pragma once

#include <kvcompact/cuda/check.cuh>
#include <kvcompact/cuda/detail/execution.cuh>
#include <kvcompact/error.hpp>
#include <kvcompact/layouts/concepts.hpp>

#include <cstdint>
#include <string>

KVCOMPACT_NAMESPACE_BEGIN
namespace cuda::detail {

/// What a kernel found wrong. Kernels never touch memory they cannot vouch for: on such an error the
/// head concerned is left as it was.
enum class device_fault : std::int32_t {
  none = 0,
  nan_score = 1,          ///< a score is NaN (NaN in keys, queries or decode state)
  page_out_of_range = 2,  ///< a slot's page-table entry is outside the page pool
  head_full = 3,          ///< a head is at capacity and the policy evicted nothing
  bad_length = 4,         ///< a length is outside [0, capacity]
  non_finite_window = 5,  ///< NaN or Inf in a window query, or in a key a window row attends (slot: the window row)
  pruned_store = 6,       ///< a head does not fit its pruned key store, or its slots are not in position order (slot: its length)
  non_finite_attention = 7,  ///< NaN or Inf in a decode query, key or value reached the attention
  bad_code = 8,              ///< a sparse code (CSR) names an atom outside its dictionary (slot: the first such slot)
};

/// The first fault recorded since the last check (later ones are dropped).
struct device_status {
  std::int32_t fault;     ///< a device_fault
  std::int32_t sequence;  ///< where: sequence
  std::int32_t layer;     ///< storage layer
  std::int32_t head;      ///< KV head
  std::int64_t slot;      ///< slot (or the offending length)
};

/// Records @p fault unless an earlier one is recorded.
__device__ inline void report(device_status* status, device_fault fault, index_t sequence, index_t layer, index_t head, index_t slot) {
  if (atomicCAS(&status->fault, 0, static_cast<std::int32_t>(fault)) == 0) {
    status->sequence = static_cast<std::int32_t>(sequence);
    status->layer = static_cast<std::int32_t>(layer);
    status->head = static_cast<std::int32_t>(head);
    status->slot = slot;
  }
}

/// Element offset of a slot's dimension 0, or -1 (reported) when the layout says the slot does not
/// map into storage.
template <class Layout>
__device__ inline index_t checked_offset(const Layout& layout, index_t sequence, index_t layer, index_t head, index_t slot,
                                         device_status* status) {
  if (!::kvcompact::detail::slot_in_range(layout, sequence, slot)) {
    report(status, device_fault::page_out_of_range, sequence, layer, head, slot);
    return -1;
  }
  return layout.offset(sequence, layer, head, slot);
}

/// A head's length, or 0 (reported) when it lies outside [0, capacity].
__device__ inline index_t checked_length(std::int32_t length, index_t capacity, device_status* status, index_t sequence, index_t layer,
                                         index_t head) {
  if (length < 0 || length > capacity) {
    report(status, device_fault::bad_length, sequence, layer, head, length);
    return 0;
  }
  return length;
}

/// Throws kvcompact::error describing @p status when it holds a fault.
inline void raise(const device_status& status, const char* where) {
  const auto at = [&] {
    return " (sequence " + std::to_string(status.sequence) + ", layer " + std::to_string(status.layer) + ", head " +
           std::to_string(status.head) + ", slot " + std::to_string(status.slot) + ")";
  };
  switch (static_cast<device_fault>(status.fault)) {
    case device_fault::none: return;
    case device_fault::nan_score: throw error(where, "scores", "NaN score" + at() + "; NaN in keys, queries or state? The head was left unchanged");
    case device_fault::page_out_of_range:
      throw error(where, "cache.layout.block_table", "a page-table entry is outside the page pool" + at() + "; the access was skipped");
    case device_fault::head_full: throw error(where, "cache", "the head is full and the policy evicted nothing" + at());
    case device_fault::non_finite_window:
      throw error(where, "window.queries",
                  "NaN or Inf in window row " + std::to_string(status.slot) + " of query heads of KV head " + std::to_string(status.head) +
                      " (sequence " + std::to_string(status.sequence) + ", layer " + std::to_string(status.layer) +
                      "), or in a key it attends; the layer was left unchanged");
    case device_fault::pruned_store:
      throw error(where, "pruned", "head of length " + std::to_string(status.slot) +
                                       " does not fit the pruned key store (thin or tail capacity, or slots not in position order)" + at());
    case device_fault::bad_length:
      throw error(where, "cache.lengths", "length " + std::to_string(status.slot) + " is outside [0, capacity] (sequence " +
                                              std::to_string(status.sequence) + ", layer " + std::to_string(status.layer) + ", head " +
                                              std::to_string(status.head) + ")");
    case device_fault::non_finite_attention:
      throw error(where, "queries", "NaN or Inf in the query or a key (slot " + std::to_string(status.slot) +
                                        ", -1: in a value) reached the decode attention (sequence " + std::to_string(status.sequence) +
                                        ", layer " + std::to_string(status.layer) + ", KV head " + std::to_string(status.head) + ")");
    case device_fault::bad_code:
      throw error(where, "codes.indices", "a code of slot " + std::to_string(status.slot) + " names an atom outside the dictionary (layer " +
                                              std::to_string(status.layer) + ", KV head " + std::to_string(status.head) + "); the head's output was not written");
  }
  throw error(where, "status", "unknown device fault code " + std::to_string(status.fault));
}

/// Waits for @p stream, then raises (and clears) the fault recorded at @p status, if any.
inline void raise_recorded(device_status* status, cudaStream_t stream, const char* where) {
  cuda::check(cudaStreamSynchronize(stream), where, "cudaStreamSynchronize");
  device_status recorded{};
  cuda::check(cudaMemcpy(&recorded, status, sizeof(recorded), cudaMemcpyDeviceToHost), where, "cudaMemcpy(status)");
  if (recorded.fault != 0) {
    cuda::check(cudaMemset(status, 0, sizeof(device_status)), where, "cudaMemset(status)");
    raise(recorded, where);
  }
}

}  // namespace cuda::detail
KVCOMPACT_NAMESPACE_END
