// SPDX-License-Identifier: Apache-2.0
/// @file
/// @brief Threads of the CPU backend: OpenMP when the consumer compiles with it (-fopenmp,
/// OpenMP::OpenMP_CXX, the kvcompact::openmp CMake target), plain serial loops otherwise.
///
/// Every loop handed to parallel_for() gives each index its own outputs and fixes the order of
/// every reduction independently of the thread count, so a serial build, one thread and any number
/// of threads produce bit-identical results.
#pragma once

#include <kvcompact/types.hpp>

#include <algorithm>

#if defined(_OPENMP)
#include <omp.h>
#endif

KVCOMPACT_NAMESPACE_BEGIN

namespace detail {

/// Threads a parallel loop uses for a requested count: the count itself, or OpenMP's default team
/// size (all cores unless OMP_NUM_THREADS says otherwise) for 0; always 1 without OpenMP.
inline int team_size(int requested) {
#if defined(_OPENMP)
  return requested > 0 ? requested : omp_get_max_threads();
#else
  (void)requested;
  return 1;
#endif
}

/// Calls `body(i)` for every i in [0, count) on up to @p threads threads (static schedule: thread t
/// runs one contiguous range of indices). @p body must not throw.
template <class Body>
void parallel_for(index_t count, int threads, const Body& body) {
#if defined(_OPENMP)
  const int team = static_cast<int>(std::min<index_t>(threads, count));
  if (team > 1) {
#pragma omp parallel for num_threads(team) schedule(static)
    for (index_t i = 0; i < count; ++i) body(i);
    return;
  }
#else
  (void)threads;
#endif
  for (index_t i = 0; i < count; ++i) body(i);
}

}  // namespace detail

KVCOMPACT_NAMESPACE_END
