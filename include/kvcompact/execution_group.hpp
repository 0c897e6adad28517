// SPDX-License-Identifier: Apache-2.0
/// @file
/// @brief The group-execution interface cooperative selectors and mergers are written against: a
/// group of workers (one on the CPU, the threads of a block on the GPU) runs one step together.
#pragma once

#include <kvcompact/types.hpp>

#include <concepts>
#include <cstdint>

KVCOMPACT_NAMESPACE_BEGIN

namespace detail {
/// The members of an execution group, with the signatures components may call. Backends provide
/// their own types (kvcompact::detail::sequential_group on the CPU, a thread block on the GPU).
struct probe_group {
  KVCOMPACT_HOST_DEVICE int size() const { return 1; }
  KVCOMPACT_HOST_DEVICE int rank() const { return 0; }
  KVCOMPACT_HOST_DEVICE void sync() const {}
  template <class F>
  KVCOMPACT_HOST_DEVICE void for_each(index_t, const F&) const {}
  template <class F>
  KVCOMPACT_HOST_DEVICE void once(const F&) const {}
  template <class T, class ValueOf, class Op>
  KVCOMPACT_HOST_DEVICE T reduce(index_t, const ValueOf&, T identity, const Op&) const {
    return identity;
  }
  template <class T, class ValueOf, class Op, class Write>
  KVCOMPACT_HOST_DEVICE T exclusive_scan(index_t, const ValueOf&, T identity, const Op&, const Write&) const {
    return identity;
  }
  template <class KeyOf>
  KVCOMPACT_HOST_DEVICE std::uint64_t kth_largest(index_t, index_t, const KeyOf&) const {
    return 0;
  }
  template <class KeyOf>
  KVCOMPACT_HOST_DEVICE void sort(std::int32_t*, index_t, const KeyOf&, std::int32_t*) const {}
};

/// Callables of the shapes the group members take (named types: nvcc rejects lambdas in requires-expressions).
struct probe_callables {
  /// `f(i)` of for_each, `write(i, prefix, value)` of exclusive_scan, `f()` of once.
  struct visit {
    KVCOMPACT_HOST_DEVICE void operator()() const {}
    KVCOMPACT_HOST_DEVICE void operator()(index_t) const {}
    KVCOMPACT_HOST_DEVICE void operator()(index_t, int, int) const {}
  };
  /// `value_of(i)`.
  struct value {
    KVCOMPACT_HOST_DEVICE int operator()(index_t) const { return 0; }
  };
  /// `op(a, b)`.
  struct combine {
    KVCOMPACT_HOST_DEVICE int operator()(int a, int b) const { return a + b; }
  };
  /// `key_of(i)` of kth_largest and sort.
  struct key {
    KVCOMPACT_HOST_DEVICE std::uint64_t operator()(index_t) const { return 0; }
    KVCOMPACT_HOST_DEVICE unsigned operator()(std::int32_t) const { return 0; }
  };
};
}  // namespace detail

/// @brief A group of workers that runs one cooperative step of a selector or merger.
///
/// Cooperative components (kvcompact::cooperative_selector, kvcompact::entry_merger) are written
/// once against this interface: the CPU backend runs them with one worker and plain loops, the CUDA
/// backend with the threads of a block. Every worker of the group executes the component's code; the
/// collective members below must be reached by all workers with the same arguments (on the GPU they
/// contain barriers), and each ends with a barrier, so what one worker wrote before a collective is
/// visible to every worker after it.
///
/// Members of a group `g` (all callable from host and device code):
/// - `g.size()`, `g.rank()`: number of workers and this worker's index in [0, size);
/// - `g.sync()`: barrier;
/// - `g.for_each(n, f)`: `f(i)` once for every i in [0, n), spread over the workers in any order;
/// - `g.once(f)`: `f()` on one worker;
/// - `g.reduce(n, value_of, identity, op)`: combines `value_of(i)` over i in [0, n) with the
///   associative and commutative `op`, the result returned to every worker (floating-point sums may
///   round differently on the two backends: keep each item's arithmetic in one worker where results
///   must agree bit for bit);
/// - `g.exclusive_scan(n, value_of, identity, op, write)`: calls `write(i, prefix, value)` for every
///   i with `prefix = op(value_of(0), ..., value_of(i - 1))` (`identity` for i = 0), returns the total;
///   `op` associative;
/// - `g.kth_largest(n, k, key_of)`: the k-th largest of the 64-bit keys `key_of(i)`, i in [0, n),
///   which must be distinct unless 0 (0 means "not an item"); the keys at or above it are exactly the
///   min(k, items) largest. Returns a value above every key when k <= 0 and 1 when k >= items.
///   Backends rank by partial selection (`std::nth_element` on the CPU, a radix select on the GPU);
/// - `g.sort(items, n, key_of, temp)`: sorts `items[0, n)` (ids in ascending order on entry) by the
///   32-bit unsigned `key_of(id)`, equal keys keeping ascending id order; `temp` holds n ids of scratch.
///
/// `value_of` is called exactly once per index (it may write); `key_of` may be called several times
/// and must return the same key each time.
template <class G>
concept execution_group = requires(const G& g, std::int32_t* items, detail::probe_callables::visit visit, detail::probe_callables::value value,
                                   detail::probe_callables::combine combine, detail::probe_callables::key key) {
  { g.size() } -> std::convertible_to<int>;
  { g.rank() } -> std::convertible_to<int>;
  g.sync();
  g.for_each(index_t{}, visit);
  g.once(visit);
  { g.reduce(index_t{}, value, 0, combine) } -> std::convertible_to<int>;
  { g.exclusive_scan(index_t{}, value, 0, combine, visit) } -> std::convertible_to<int>;
  { g.kth_largest(index_t{}, index_t{}, key) } -> std::convertible_to<std::uint64_t>;
  g.sort(items, index_t{}, key, items);
};

static_assert(execution_group<detail::probe_group>);

KVCOMPACT_NAMESPACE_END
