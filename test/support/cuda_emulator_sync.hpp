// SPDX-License-Identifier: Apache-2.0
/// @file
/// @brief The emulator's side of include/kvcompact/cuda/detail/grid_sync.cuh (acquire loads, release
/// stores, acquire-release counters between blocks) and of the bit-scan intrinsic `__clz`. An acquire
/// load first yields: the thread goes back to the scheduler and the other runnable threads (and,
/// where the emulator runs blocks concurrently, other blocks) run before it reads, so a spin-wait on
/// device memory never stalls the emulator. Tests can set spin_hook() to play a block that
/// publishes while another one waits. Included by cuda_emulator.hpp.
#pragma once

#include <functional>

namespace kvemu {

/// Called before every acquire load; tests set it to change device memory "from another block".
inline std::function<void()>& spin_hook() {
  static std::function<void()> hook;
  return hook;
}

/// Lets the other runnable threads run before the caller continues.
inline void yield() {
  if (spin_hook()) spin_hook()();
  suspend(wait_kind::none);
}

/// Acquire load at device scope (yields first). @param address the word @return its value
template <class Value>
Value load_acquire(const Value* address) {
  yield();
  return *address;
}

/// Release store at device scope. @param address the word @param value the value
template <class Value>
void store_release(Value* address, Value value) {
  *address = value;
}

/// Acquire-release fetch-and-add at device scope. @param address the word @param value the addend
/// @return the old value
template <class Value>
Value fetch_add_acq_rel(Value* address, Value value) {
  const Value old = *address;
  *address = static_cast<Value>(old + value);
  return old;
}

}  // namespace kvemu

/// Leading zero bits of a 32-bit word (32 for 0).
inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz(static_cast<unsigned>(x)); }
