// SPDX-License-Identifier: Apache-2.0
/// @file
/// @brief In-place heap sort usable in host and device code (no std algorithms on the device).
#pragma once

#include <kvcompact/types.hpp>

KVCOMPACT_NAMESPACE_BEGIN
namespace detail {

/// Sorts items[0, count) ascending by @p less (a strict weak order); O(n log n), no allocation.
template <class Item, class Less>
KVCOMPACT_HOST_DEVICE void heap_sort(Item* items, index_t count, const Less& less) {
  auto sift_down = [&](index_t root, index_t end) {
    while (2 * root + 1 < end) {
      index_t child = 2 * root + 1;
      if (child + 1 < end && less(items[child], items[child + 1])) ++child;
      if (!less(items[root], items[child])) return;
      const Item tmp = items[root];
      items[root] = items[child];
      items[child] = tmp;
      root = child;
    }
  };
  for (index_t start = count / 2 - 1; start >= 0; --start) sift_down(start, count);
  for (index_t end = count - 1; end > 0; --end) {
    const Item tmp = items[0];
    items[0] = items[end];
    items[end] = tmp;
    sift_down(0, end);
  }
}

}  // namespace detail
KVCOMPACT_NAMESPACE_END
