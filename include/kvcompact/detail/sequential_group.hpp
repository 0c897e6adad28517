// SPDX-License-Identifier: Apache-2.0
/// @file
/// @brief The CPU backend's execution group (kvcompact::execution_group): one worker, plain loops,
/// partial selection by a radix select and sorting by std::sort.
#pragma once

#include <kvcompact/error.hpp>
#include <kvcompact/execution_group.hpp>

#include <algorithm>
#include <bit>
#include <cstdint>
#include <functional>
#include <string>

KVCOMPACT_NAMESPACE_BEGIN
namespace detail {

/// Thrown (host only) when a component asks sequential_group::kth_largest for more keys than its scratch holds.
[[noreturn]] inline void scratch_overflow(index_t n, index_t capacity) {
  throw error("sequential_group", "n", std::to_string(n) + " keys exceed the " + std::to_string(capacity) + " the selection scratch holds");
}

/// std::nth_element behind a function nvcc sees as host-only and not constexpr, so host-device
/// members can call it with the execution-space check disabled.
template <class Iterator, class Compare>
void host_nth_element(Iterator first, Iterator nth, Iterator last, Compare compare) {
  std::nth_element(first, nth, last, compare);
}

/// The @p k-th largest of the @p n keys at @p keys (1 <= k <= n), which it reorders: a most-significant-
/// digit radix select. Each round finds the highest bit in which the keys left differ (one AND/OR
/// pass), histograms the 8 bits from there down, picks the digit whose keys hold the k-th largest and
/// keeps only those. Starting at a differing bit, every round shrinks the keys (16k keys of similar
/// scores: about 1/128 left after the first); a small remainder goes to std::nth_element. A few
/// branch-free passes where std::nth_element's comparisons mispredict; returns exactly the key it would.
inline std::uint64_t host_kth_largest(std::uint64_t* keys, index_t n, index_t k) {
  constexpr index_t small = 64;  // keys left that std::nth_element finishes
  constexpr int digit_bits = 8;
  while (n > small) {
    std::uint64_t all = ~std::uint64_t{0}, any = 0;
    for (index_t i = 0; i < n; ++i) {
      all &= keys[i];
      any |= keys[i];
    }
    if (all == any) return keys[0];  // every key left is the same
    const int top = 63 - std::countl_zero(all ^ any), shift = top >= digit_bits - 1 ? top - (digit_bits - 1) : 0;
    index_t counts[1 << digit_bits] = {};
    const auto digit_of = [&](std::uint64_t key) { return static_cast<unsigned>(key >> shift) & ((1u << digit_bits) - 1); };
    for (index_t i = 0; i < n; ++i) ++counts[digit_of(keys[i])];
    unsigned digit = (1u << digit_bits) - 1;
    for (; counts[digit] < k; --digit) k -= counts[digit];  // the k-th largest lies in the highest digit reaching k
    index_t left = 0;
    for (index_t i = 0; i < n; ++i) {
      const std::uint64_t key = keys[i];
      keys[left] = key;
      left += digit_of(key) == digit ? 1 : 0;
    }
    n = left;
  }
  host_nth_element(keys, keys + (k - 1), keys + n, std::greater<>{});
  return keys[k - 1];
}

/// std::sort behind a host-only, non-constexpr function (see host_nth_element).
template <class Iterator, class Compare>
void host_sort(Iterator first, Iterator last, Compare compare) {
  std::sort(first, last, compare);
}

/// One worker running a cooperative step as plain loops. kth_largest() copies the keys into caller-
/// provided scratch (at least as many entries as the largest `n` it is asked for) and selects in it
/// (host_kth_largest()). The members are host-device so that components (host-device
/// templates) may call them; they only ever run on the host.
class sequential_group {
 public:
  /// @param keys scratch for kth_largest() @param capacity its entries
  sequential_group(std::uint64_t* keys, index_t capacity) : keys_(keys), capacity_(capacity) {}

  /// One worker.
  KVCOMPACT_HOST_DEVICE int size() const { return 1; }
  /// The only worker.
  KVCOMPACT_HOST_DEVICE int rank() const { return 0; }
  /// Nothing to wait for.
  KVCOMPACT_HOST_DEVICE void sync() const {}

  /// f(i) for i in [0, n), in order.
  KVCOMPACT_EXEC_CHECK_DISABLE
  template <class F>
  KVCOMPACT_HOST_DEVICE void for_each(index_t n, const F& f) const {
    for (index_t i = 0; i < n; ++i) f(i);
  }

  /// f() once.
  KVCOMPACT_EXEC_CHECK_DISABLE
  template <class F>
  KVCOMPACT_HOST_DEVICE void once(const F& f) const {
    f();
  }

  /// op over value_of(0), ..., value_of(n - 1), left to right.
  KVCOMPACT_EXEC_CHECK_DISABLE
  template <class T, class ValueOf, class Op>
  KVCOMPACT_HOST_DEVICE T reduce(index_t n, const ValueOf& value_of, T identity, const Op& op) const {
    T acc = identity;
    for (index_t i = 0; i < n; ++i) acc = op(acc, static_cast<T>(value_of(i)));
    return acc;
  }

  /// write(i, prefix before i, value_of(i)) in index order; returns the total.
  KVCOMPACT_EXEC_CHECK_DISABLE
  template <class T, class ValueOf, class Op, class Write>
  KVCOMPACT_HOST_DEVICE T exclusive_scan(index_t n, const ValueOf& value_of, T identity, const Op& op, const Write& write) const {
    T acc = identity;
    for (index_t i = 0; i < n; ++i) {
      const T value = static_cast<T>(value_of(i));
      write(i, acc, value);
      acc = op(acc, value);
    }
    return acc;
  }

  /// The k-th largest nonzero key (see kvcompact::execution_group), by host_kth_largest().
  KVCOMPACT_EXEC_CHECK_DISABLE
  template <class KeyOf>
  KVCOMPACT_HOST_DEVICE std::uint64_t kth_largest(index_t n, index_t k, const KeyOf& key_of) const {
    if (k <= 0) return ~std::uint64_t{0};
    if (n > capacity_) scratch_overflow(n, capacity_);
    index_t items = 0;
    for (index_t i = 0; i < n; ++i) {
      const std::uint64_t key = key_of(i);
      if (key != 0) keys_[items++] = key;
    }
    if (k >= items) return 1;
    return host_kth_largest(keys_, items, k);
  }

  /// Sorts ids by (key, id), which is the stable order for ids ascending on entry.
  KVCOMPACT_EXEC_CHECK_DISABLE
  template <class KeyOf>
  KVCOMPACT_HOST_DEVICE void sort(std::int32_t* items, index_t n, const KeyOf& key_of, std::int32_t*) const {
    host_sort(items, items + n, [&](std::int32_t a, std::int32_t b) {
      const auto ka = key_of(a), kb = key_of(b);
      return ka < kb || (ka == kb && a < b);
    });
  }

 private:
  std::uint64_t* keys_;
  index_t capacity_;
};

static_assert(execution_group<sequential_group>);

}  // namespace detail
KVCOMPACT_NAMESPACE_END
