// SPDX-License-Identifier: Apache-2.0
/// @file
/// @brief A CPU emulator of the CUDA execution model, enough to run kvcompact's kernels (and the GPU
/// tests) with a host compiler on machines without a GPU, and to find their data races. Included by
/// the library in place of <cuda_runtime.h> when KVCOMPACT_CUDA_EMULATION names this header.
///
/// ## Extending the emulator (instruction emulation by feature)
/// Emulation of a further instruction family (mma/ldmatrix, cp.async, ...) lives in its own header
/// `test/support/cuda_emulator_<feature>.hpp`, included by one line at the end of this file, and is
/// written against these hooks only:
/// - `kvemu::warp_all_gather(mine)`: every live lane of the calling warp contributes a trivially
///   copyable value (at most kvemu::max_gather_bytes) and receives all 32 contributions plus the
///   mask of live lanes. A lane reads or writes memory in its own code, before or after the gather,
///   never through another lane (so the race detector attributes each access to the right thread):
///   ldmatrix = each lane loads the row its address names, gathers, picks its fragment; mma = each
///   lane gathers the operand fragments and computes its own accumulators. Not a memory fence.
/// - `kvemu::warp_exchange(op, value, lane_mask, predicate)`: the scalar warp collective behind the
///   shuffle/vote intrinsics (interface unchanged since the first version; new kvemu::warp_op values
///   were added for `__shfl_sync`, `__shfl_up_sync`, `__shfl_down_sync`).
/// - `kvemu::lane_id()`, `kvemu::warp_id()`; `kvemu::fail(message)` for misuse (prints, exits with status 1).
/// - Memory ordering between blocks: `kvemu::load_acquire`, `kvemu::store_release` (library code reaches
///   them through include/kvcompact/cuda/detail/grid_sync.cuh), `kvemu::fetch_add_acq_rel`;
///   `kvemu::yield()` for spin-waits; `kvemu::spin_hook()`, run at every yield (tests set it to
///   change device memory "from another block" while one waits).
/// Feature headers must not touch the scheduler's bookkeeping or shared state of their own across
/// lanes: everything a lane keeps lives in the lane's own variables.
///
/// ## Model
/// Every block runs on its own OS thread, and its CUDA threads are fibers on that OS thread
/// (Boost.Context; glibc ucontext under ThreadSanitizer, see fiber_context), so `__shared__`
/// variables (`static thread_local` here) are private to the block and start zero-filled in every
/// block: nothing persists from one block to the next. Up to KVEMU_RESIDENT_BLOCKS blocks (default 4)
/// are resident at once and interleave: the launching thread
/// hands a turn of 1-8 scheduling rounds to one resident block at a time, chosen by a random
/// generator seeded by KVEMU_SEED (default 1), so a run is deterministic for a given seed and only
/// one OS thread runs at any moment. Within a round, the block's runnable threads resume once each
/// in shuffled order and run until they reach a barrier, a warp collective, a spin-wait hook or
/// their end. `__syncthreads*` releases when every live thread of the block waits at it, and all of
/// them must wait at the same `__syncthreads` call (source line and column): threads at two
/// different barriers end the run with both sites. Warp collectives release when every live lane of the
/// warp waits at the same kind of collective, and compute their results before any lane resumes.
/// Exited threads count as arrived. A barrier that can never release ends the run with a message, and so
/// does a grid whose resident blocks only spin without progress (a spin-wait on a block that can
/// never become resident, or on a flag nobody sets).
///
/// Memory: dynamic shared memory is an allocation of exactly the launch's size, 128-byte aligned
/// and garbage-filled in every block, and cudaMalloc allocates exactly the bytes asked for (256-byte
/// aligned, garbage-filled): under AddressSanitizer a read or write past either end is reported,
/// and UndefinedBehaviorSanitizer reports misaligned typed accesses and out-of-bounds indexing of
/// static `__shared__` arrays. Device atomics (atomicAdd, ...) are relaxed atomic operations.
///
/// Race detection: under ThreadSanitizer (`-fsanitize=thread`) every fiber is a TSan fiber, and
/// synchronisation is modelled as CUDA defines it: a block barrier orders everything before it in
/// every thread of the block before everything after it (release/acquire among the block's
/// threads), `__syncwarp` does the same among a warp's lanes, kernel launches are ordered, and
/// nothing else orders threads: warp shuffles and votes, relaxed atomics and blocks of one grid do
/// not. So a missing barrier, an update without an atomic, and a conflicting access by two blocks
/// without an acquire/release pair between them are reported as data races, whatever order the
/// scheduler happened to pick. `__threadfence()` is modelled coarsely (every fence releases to and
/// acquires from every earlier fence of the grid): code ordered by fences is accepted, and a missing
/// fence goes unseen; acquire/release flags (kvemu::load_acquire / store_release) are checked
/// exactly. The emulator's own bookkeeping uses relaxed atomics, invisible to the detector.
///
/// Other settings: KVEMU_SM_COUNT (default 4, a small "GPU" that exercises split paths) is what
/// cudaDeviceGetAttribute reports as the multiprocessor count; KVEMU_LAUNCH_LOG=FILE appends one line
/// per launch (kernel, grid, block, dynamic shared bytes; `-` for stdout) and KVEMU_SKIP_KERNELS=1
/// records launches without running them (device memory then stays zero and untouched: copies and
/// fills into it are skipped), so bench/static_gates.py can read the launch configurations of
/// bench/kernel_bench at the benchmark's full sizes.
/// Streams are ignored: every call completes before it returns.
///
/// Not emulated: the memory model beyond the above (no stale values are ever read), timing, `volatile`
/// spin loops (they never yield: use kvemu::load_acquire), `extern __shared__` (use the library's
/// KVCOMPACT_DYNAMIC_SHARED).
#pragma once

#include <dlfcn.h>
#include <linux/futex.h>
#include <pthread.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <math.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <new>
#include <random>
#include <source_location>
#include <string>
#include <thread>
#include <tuple>
#include <type_traits>
#include <vector>

#if defined(__SANITIZE_THREAD__)
#define KVEMU_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define KVEMU_TSAN 1
#endif
#endif
#if defined(__SANITIZE_ADDRESS__)
#define KVEMU_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define KVEMU_ASAN 1
#endif
#endif
#if defined(KVEMU_TSAN)
#include <sanitizer/tsan_interface.h>
#include <ucontext.h>
#else
#include <boost/context/fiber.hpp>
#endif
#if defined(KVEMU_ASAN)
#include <sanitizer/common_interface_defs.h>
#endif

// ---------------------------------------------------------------------------------------------
// Keywords and types
// ---------------------------------------------------------------------------------------------

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static thread_local

/// Four 32-bit words, 16-byte aligned (the vector type of 16-byte loads).
struct alignas(16) uint4 {
  unsigned x, y, z, w;
};

/// Grid and block extents.
struct dim3 {
  unsigned x, y, z;  ///< extents
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

/// Runtime error codes used by kvcompact.
enum cudaError_t : int {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorMemoryAllocation = 2,
  cudaErrorInvalidConfiguration = 9,
  cudaErrorInsufficientDriver = 35,
  cudaErrorNoDevice = 100,
};
struct CUstream_st;
using cudaStream_t = CUstream_st*;  ///< streams are accepted and ignored
enum cudaMemcpyKind { cudaMemcpyHostToHost = 0, cudaMemcpyHostToDevice = 1, cudaMemcpyDeviceToHost = 2, cudaMemcpyDeviceToDevice = 3, cudaMemcpyDefault = 4 };
enum cudaDeviceAttr { cudaDevAttrMultiProcessorCount = 16, cudaDevAttrMaxSharedMemoryPerBlockOptin = 97 };
/// The device properties kvcompact's benchmarks read.
struct cudaDeviceProp {
  char name[256];            ///< "kvemu"
  int multiProcessorCount;   ///< KVEMU_SM_COUNT
  int major, minor;          ///< 9.0
  std::size_t sharedMemPerBlockOptin;
};
struct kvemu_event {
  double seconds = 0;  ///< host clock when recorded
};
using cudaEvent_t = kvemu_event*;  ///< events read the host clock
enum cudaFuncAttribute { cudaFuncAttributeMaxDynamicSharedMemorySize = 8 };

namespace kvemu {

/// Largest value one lane may contribute to warp_all_gather.
inline constexpr std::size_t max_gather_bytes = 256;
/// Dynamic shared memory a launch may use without cudaFuncSetAttribute, and at most (sm_90).
inline constexpr std::size_t default_dynamic_shared = 48 * 1024, max_dynamic_shared = 227 * 1024;

/// Reports misuse of the CUDA model (deadlock, divergent barrier, ...) and ends the process with
/// status 1, as a sanitizer does.
[[noreturn]] inline void fail(const std::string& what) {
  std::fprintf(stderr, "kvemu: %s\n", what.c_str());
  std::fflush(stderr);
  std::_Exit(1);
}

// ---------------------------------------------------------------------------------------------
// Sanitizer glue: TSan fibers and synchronisation, ASan stack switches (no-ops without them)
// ---------------------------------------------------------------------------------------------
namespace sanitizer {
#if defined(KVEMU_TSAN)
inline void* current_fiber() { return __tsan_get_current_fiber(); }
inline void* create_fiber() { return __tsan_create_fiber(0); }
inline void destroy_fiber(void* fiber) { __tsan_destroy_fiber(fiber); }
/// Tells TSan the next context switch goes to @p fiber; @p synchronise orders the two.
[[gnu::always_inline]] inline void switch_to(void* fiber, bool synchronise) { __tsan_switch_to_fiber(fiber, synchronise ? 0u : __tsan_switch_to_fiber_no_sync); }
inline void release(void* object) { __tsan_release(object); }
inline void acquire(void* object) { __tsan_acquire(object); }
#else
inline void* current_fiber() { return nullptr; }
inline void* create_fiber() { return nullptr; }
inline void destroy_fiber(void*) {}
inline void switch_to(void*, bool) {}
inline void release(void*) {}
inline void acquire(void*) {}
#endif
#if defined(KVEMU_ASAN)
inline void start_switch(void** fake_stack, const void* bottom, std::size_t size) { __sanitizer_start_switch_fiber(fake_stack, bottom, size); }
inline void finish_switch(void* fake_stack) { __sanitizer_finish_switch_fiber(fake_stack, nullptr, nullptr); }
#else
inline void start_switch(void**, const void*, std::size_t) {}
inline void finish_switch(void*) {}
#endif
/// Memory order of the turn hand-over between OS threads: relaxed under TSan, so the detector
/// sees no ordering between blocks that CUDA does not give (the futex calls order them for real).
#if defined(KVEMU_TSAN)
inline constexpr std::memory_order handover_release = std::memory_order_relaxed, handover_acquire = std::memory_order_relaxed;
#else
inline constexpr std::memory_order handover_release = std::memory_order_release, handover_acquire = std::memory_order_acquire;
#endif
}  // namespace sanitizer

/// The context switch between an emulated thread and its block's scheduler: Boost.Context's fibers,
/// where a switch saves a few registers (glibc's swapcontext, used before, also made a signal-mask
/// system call on every switch: the emulated tests ran 3-4x slower). Under ThreadSanitizer, glibc's
/// ucontext: Boost.Context's fiber handles are instrumented code that runs between the detector's
/// switch annotation and the switch itself, which it would report as races between fibers, while
/// swapcontext is not instrumented.
class fiber_context {
 public:
  /// Prepares the thread to run @p Body on the @p size bytes of stack below @p top; the thread ends,
  /// back in the scheduler, when @p Body returns.
  template <void (*Body)()>
  void start(char* top, std::size_t size) {
#if defined(KVEMU_TSAN)
    getcontext(&own_);
    own_.uc_stack.ss_sp = top - size;
    own_.uc_stack.ss_size = size;
    own_.uc_link = nullptr;
    // The context's address travels through makecontext's arguments, which the detector does not see
    // (a field written here and read by the new thread would be a race between two fibers to it).
    const auto self = reinterpret_cast<std::uintptr_t>(this);
    makecontext(&own_, reinterpret_cast<void (*)()>(&entry<Body>), 2, static_cast<unsigned>(self >> 32), static_cast<unsigned>(self & 0xffffffffu));
#else
    boost::context::stack_context stack;
    stack.size = size;
    stack.sp = top;
    own_ = boost::context::fiber(std::allocator_arg, boost::context::preallocated(top, size, stack), lent_stack{},
                                 [this](boost::context::fiber&& scheduler) {
                                   scheduler_ = std::move(scheduler);
                                   Body();
                                   return std::move(scheduler_);
                                 });
#endif
  }
  /// From the scheduler: runs the thread until it leaves or ends.
  void enter() {
#if defined(KVEMU_TSAN)
    swapcontext(&scheduler_, &own_);
#else
    own_ = std::move(own_).resume();
#endif
  }
  /// From the thread: back to the scheduler until it enters again.
  void leave() {
#if defined(KVEMU_TSAN)
    swapcontext(&own_, &scheduler_);
#else
    scheduler_ = std::move(scheduler_).resume();
#endif
  }

 private:
#if defined(KVEMU_TSAN)
  /// First code of the ucontext: the context's address in two halves.
  template <void (*Body)()>
  static void entry(unsigned high, unsigned low) {
    auto& self = *reinterpret_cast<fiber_context*>((std::uintptr_t{high} << 32) | low);
    Body();
    setcontext(&self.scheduler_);
  }
  ucontext_t own_{}, scheduler_{};
#else
  /// Boost.Context's stack allocator for a stack the emulator owns: nothing to free.
  struct lent_stack {
    void deallocate(boost::context::stack_context&) noexcept {}
  };
  boost::context::fiber own_, scheduler_;
#endif
};

/// A bookkeeping value shared by a block's fibers and its scheduler: relaxed atomic accesses,
/// which the race detector neither reports nor counts as synchronisation.
template <class T>
class relaxed {
 public:
  T load() const { return value_.load(std::memory_order_relaxed); }
  void store(T value) { value_.store(value, std::memory_order_relaxed); }
  T fetch_add(T delta) { return value_.fetch_add(delta, std::memory_order_relaxed); }

 private:
  std::atomic<T> value_{};
};

/// Settings read once from the environment.
struct settings {
  unsigned seed = 1;            ///< KVEMU_SEED
  std::size_t resident = 4;     ///< KVEMU_RESIDENT_BLOCKS
  int sm_count = 4;             ///< KVEMU_SM_COUNT
  bool skip_kernels = false;    ///< KVEMU_SKIP_KERNELS
  std::string launch_log;       ///< KVEMU_LAUNCH_LOG
};
inline const settings& config() {
  static const settings s = [] {
    settings r;
    auto number = [](const char* name, unsigned long fallback) {
      const char* text = std::getenv(name);
      return text && *text ? std::strtoul(text, nullptr, 10) : fallback;
    };
    r.seed = static_cast<unsigned>(number("KVEMU_SEED", 1));
    r.resident = std::max<std::size_t>(1, number("KVEMU_RESIDENT_BLOCKS", 4));
    r.sm_count = static_cast<int>(std::max<unsigned long>(1, number("KVEMU_SM_COUNT", 4)));
    r.skip_kernels = number("KVEMU_SKIP_KERNELS", 0) != 0;
    if (const char* log = std::getenv("KVEMU_LAUNCH_LOG")) r.launch_log = log;
    return r;
  }();
  return s;
}

// ---------------------------------------------------------------------------------------------
// Fibers, blocks, launches
// ---------------------------------------------------------------------------------------------

/// What a thread is doing, as its block's scheduler sees it.
enum class wait_kind { running, yielded, block_barrier, warp_op, done };
/// Which warp collective.
enum class warp_op { sync, shfl_xor_float, shfl_xor_int, ballot, match_any, shfl_idx, shfl_up, shfl_down, gather };

/// What a launch runs: the same for every block.
struct launch_context {
  dim3 grid_dim, block_dim;
  std::size_t shared_bytes = 0;
  std::function<void()> body;  ///< calls the kernel with the launch's arguments
  mutable int fence_object = 0;  ///< address for __threadfence's release/acquire
};

/// One pending 16-byte cp.async copy (support/cuda_emulator_decode.hpp performs them).
struct async_copy {
  void* to;          ///< shared memory
  const void* from;  ///< global memory
};

/// The cp.async copies a thread started and has not waited for.
struct async_copy_queue {
  std::vector<async_copy> open;                ///< copies of the group not yet committed
  std::deque<std::vector<async_copy>> groups;  ///< committed groups, oldest first
};

/// One emulated thread (a fiber of its block's OS thread).
struct fiber {
  int linear = 0;                  ///< linear thread index in the block (fixed for the fiber)
  relaxed<unsigned> index_x, index_y, index_z;  ///< threadIdx (set per block)
  fiber_context context;           ///< its saved registers and its scheduler's
  char* stack = nullptr;           ///< its stack (a slice of its thread set's mapping)
  std::size_t stack_size = 0;
  void* tsan = nullptr;            ///< its TSan fiber
  void* asan_fake_stack = nullptr; ///< ASan's fake stack while switched out
  relaxed<wait_kind> state;
  relaxed<warp_op> op;             ///< pending warp collective
  relaxed<std::uint64_t> value;    ///< its input
  relaxed<int> operand;            ///< lane mask / source lane / delta
  relaxed<int> width;              ///< shuffle width
  relaxed<int> predicate;          ///< vote / barrier predicate
  relaxed<std::uint64_t> result;   ///< its result
  relaxed<int> result_live;        ///< live threads at the last barrier (or the live lane mask)
  relaxed<const char*> site_file;  ///< the __syncthreads it waits at
  relaxed<unsigned> site_line, site_column;
  relaxed<std::uint32_t> gather_words[2][max_gather_bytes / 4];  ///< warp_all_gather contributions, double-buffered
  async_copy_queue async_copies;   ///< its cp.async copies (emptied when it starts a block)

  dim3 thread_index() const { return dim3(index_x.load(), index_y.load(), index_z.load()); }
};

/// The threads of a block: fibers, their stacks (one mapping, a guard page below each) and their
/// TSan fibers. The launching thread lends a set to each block and keeps it for later blocks: a
/// TSan fiber costs about 0.8 MB and 0.4 ms to create, too much for every thread of every block.
/// The price, under TSan only: a block that reuses a set is ordered after the block that used it
/// before (its threads continue their histories), so a race between those two goes unseen. Blocks
/// resident at the same time never share a set, and consecutive blocks rarely do, so races between
/// them are seen.
struct thread_set {
#if defined(KVEMU_TSAN) || defined(KVEMU_ASAN)
  static constexpr std::size_t stack_bytes = 1024 * 1024;  ///< sanitizers use larger frames
#else
  static constexpr std::size_t stack_bytes = 256 * 1024;
#endif
  char* stacks = nullptr;
  int count = 0;
  std::unique_ptr<fiber[]> threads;

  static std::size_t page() { return static_cast<std::size_t>(sysconf(_SC_PAGESIZE)); }
  static std::size_t slice() { return stack_bytes + page(); }
  std::size_t bytes() const { return slice() * static_cast<std::size_t>(count); }

  /// Maps stacks and creates fibers for @p threads threads.
  static std::unique_ptr<thread_set> make(int threads) {
    auto set = std::make_unique<thread_set>();
    set->count = threads;
    void* p = mmap(nullptr, set->bytes(), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED) fail("cannot map fiber stacks");
    set->stacks = static_cast<char*>(p);
    set->threads.reset(new fiber[static_cast<std::size_t>(threads)]);
    for (int t = 0; t < threads; ++t) {
      fiber& f = set->threads[static_cast<std::size_t>(t)];
      char* guard = set->stacks + slice() * static_cast<std::size_t>(t);
      mprotect(guard, page(), PROT_NONE);
      f.linear = t;
      f.stack = guard + page();
      f.stack_size = stack_bytes;
      f.tsan = sanitizer::create_fiber();
    }
    return set;
  }
  thread_set() = default;
  thread_set(const thread_set&) = delete;
  thread_set& operator=(const thread_set&) = delete;
  ~thread_set() {
    for (int t = 0; t < count; ++t) sanitizer::destroy_fiber(threads[static_cast<std::size_t>(t)].tsan);
    if (stacks) munmap(stacks, bytes());
  }
};

/// Host-side state of the emulated device (touched by the launching thread only).
struct device_state {
  cudaError_t last_error = cudaSuccess;
  std::uint64_t launches = 0;                           ///< kernels launched so far
  std::map<const void*, std::size_t> shared_limits;     ///< cudaFuncSetAttribute(MaxDynamicSharedMemorySize)
  std::map<void*, std::size_t> skipped_allocations;     ///< KVEMU_SKIP_KERNELS: mappings by address
  std::vector<std::unique_ptr<thread_set>> thread_sets;  ///< every thread set made so far
  std::vector<thread_set*> free_threads;                ///< those no resident block uses

  /// Whether @p p lies in device memory left untouched because kernels are skipped.
  bool untouched(const void* p) const {
    auto it = skipped_allocations.upper_bound(const_cast<void*>(p));
    if (it == skipped_allocations.begin()) return false;
    --it;
    return static_cast<const char*>(p) < static_cast<const char*>(it->first) + it->second;
  }

  /// A thread set for a block of @p threads threads: the smallest free one that is large enough,
  /// or a new one. The launching thread never writes to a set a block has used (the block's OS
  /// thread is not joined before the launch ends), so lending it again is invisible to TSan.
  thread_set* take_threads(int threads) {
    auto best = free_threads.end();
    for (auto it = free_threads.begin(); it != free_threads.end(); ++it)
      if ((*it)->count >= threads && (best == free_threads.end() || (*it)->count < (*best)->count)) best = it;
    if (best != free_threads.end()) {
      thread_set* set = *best;
      free_threads.erase(best);
      return set;
    }
    thread_sets.push_back(thread_set::make(threads));
    return thread_sets.back().get();
  }
  void give_back(thread_set* set) { free_threads.push_back(set); }
  /// After a launch (every block thread joined): keeps a few sets for the next launches.
  void trim() {
    while (thread_sets.size() > config().resident) {
      thread_set* oldest = thread_sets.front().get();
      free_threads.erase(std::find(free_threads.begin(), free_threads.end(), oldest));
      thread_sets.erase(thread_sets.begin());
    }
  }
};
inline device_state& device() {
  static device_state d;
  return d;
}

/// Result of a block's turn.
enum class turn_outcome { progress, spun, finished };

/// A block: its fibers, its scheduler (the OS thread's own context) and its TSan sync objects.
struct block {
  const launch_context* launch = nullptr;
  dim3 index;
  std::mt19937 order;                        ///< resume order of its threads
  thread_set* set = nullptr;                 ///< its threads (lent by the launching thread)
  fiber* threads = nullptr;                  ///< the first `count` of the set's fibers
  int count = 0;
  void* scheduler_tsan = nullptr;
  const void* scheduler_stack = nullptr;     ///< the OS thread's stack (for ASan)
  std::size_t scheduler_stack_size = 0;
  void* scheduler_fake_stack = nullptr;
  unsigned char* dynamic_shared = nullptr;   ///< exactly launch->shared_bytes
  relaxed<unsigned> barrier_generation;
  int barrier_object[2] = {};                ///< release/acquire addresses of __syncthreads, by generation parity
  std::unique_ptr<relaxed<unsigned>[]> warp_generation;
  std::unique_ptr<int[]> warp_object;        ///< [warp][2]: release/acquire addresses of __syncwarp
  int block_fence_object = 0;                ///< __threadfence_block
};

/// The block this OS thread runs, and the fiber running on it now.
inline thread_local block* running_block = nullptr;
inline thread_local relaxed<fiber*> running_fiber;

inline fiber& this_thread() {
  fiber* f = running_fiber.load();
  if (!f) fail("a device function was called outside a kernel");
  return *f;
}
inline block& this_block() { return *running_block; }
/// Lane of the calling thread in its warp.
inline int lane_id() { return this_thread().linear % 32; }
/// Warp of the calling thread in its block.
inline int warp_id() { return this_thread().linear / 32; }

/// Switches from the block's scheduler to @p f until it suspends.
inline void resume(block& b, fiber& f) {
  running_fiber.store(&f);
  f.state.store(wait_kind::running);
  sanitizer::switch_to(f.tsan, false);
  sanitizer::start_switch(&b.scheduler_fake_stack, f.stack, f.stack_size);
  f.context.enter();
  sanitizer::finish_switch(b.scheduler_fake_stack);
  running_fiber.store(nullptr);
}

/// Suspends the calling thread (@p why: what it waits for) until its scheduler resumes it.
inline void suspend(wait_kind why) {
  block& b = this_block();
  fiber& f = this_thread();
  f.state.store(why);
  sanitizer::switch_to(b.scheduler_tsan, false);
  sanitizer::start_switch(&f.asan_fake_stack, b.scheduler_stack, b.scheduler_stack_size);
  f.context.leave();
  sanitizer::finish_switch(f.asan_fake_stack);
}

/// First code of every fiber: runs the kernel, then ends the thread (ordered before the scheduler,
/// as the end of a kernel is ordered before what the host does next).
inline void fiber_entry() {
  sanitizer::finish_switch(nullptr);
  // First of all (before reading the block thread's thread-local state): what the block's thread set
  // up, not what the earlier users of this fiber did (see build_block).
  sanitizer::acquire(&running_block);
  block& b = this_block();
  fiber& f = this_thread();
  b.launch->body();
  f.state.store(wait_kind::done);
  sanitizer::switch_to(b.scheduler_tsan, true);
  sanitizer::start_switch(nullptr, b.scheduler_stack, b.scheduler_stack_size);
}

/// Sets up a block's fibers, shared memory and sync objects (on the block's own OS thread).
inline void build_block(block& b) {
  const dim3 dim = b.launch->block_dim;
  b.count = static_cast<int>(dim.x * dim.y * dim.z);
  b.threads = b.set->threads.get();
  sanitizer::acquire(b.set);  // the set's previous block (see thread_set)
  pthread_attr_t attributes;
  void* os_stack = nullptr;
  std::size_t os_stack_size = 0;
  pthread_getattr_np(pthread_self(), &attributes);
  pthread_attr_getstack(&attributes, &os_stack, &os_stack_size);
  pthread_attr_destroy(&attributes);
  b.scheduler_stack = os_stack;
  b.scheduler_stack_size = os_stack_size;
  b.scheduler_tsan = sanitizer::current_fiber();
  const std::size_t bytes = b.launch->shared_bytes;
  b.dynamic_shared = static_cast<unsigned char*>(::operator new(bytes, std::align_val_t{128}));
  std::memset(b.dynamic_shared, 0xcd, bytes);
  const int warps = (b.count + 31) / 32;
  b.warp_generation.reset(new relaxed<unsigned>[static_cast<std::size_t>(warps)]);
  b.warp_object.reset(new int[static_cast<std::size_t>(2 * warps)]());
  for (int t = 0; t < b.count; ++t) {
    fiber& f = b.threads[t];
    const unsigned u = static_cast<unsigned>(t);
    f.index_x.store(u % dim.x);
    f.index_y.store((u / dim.x) % dim.y);
    f.index_z.store(u / (dim.x * dim.y));
    f.state.store(wait_kind::running);
    f.async_copies = {};
    f.asan_fake_stack = nullptr;
    f.context.start<fiber_entry>(f.stack + f.stack_size, f.stack_size);  // stacks grow down
  }
  // Everything the block's thread did so far (its thread-local storage, where __shared__ variables
  // live, included) happens before every thread of the block, which acquires this first.
  sanitizer::release(&running_block);
}

inline void destroy_block(block& b) { ::operator delete(b.dynamic_shared, std::align_val_t{128}); }

/// Where a thread waits at a barrier, for messages.
inline std::string site_of(const fiber& f) {
  const char* file = f.site_file.load();
  return std::string(file ? file : "?") + ":" + std::to_string(f.site_line.load()) + ":" + std::to_string(f.site_column.load());
}
inline std::string block_name(const block& b) {
  return "block (" + std::to_string(b.index.x) + "," + std::to_string(b.index.y) + "," + std::to_string(b.index.z) + ")";
}

/// Releases the warp collectives that are complete; returns true if one was released.
inline bool release_warps(block& b) {
  bool released = false;
  for (int first = 0; first < b.count; first += 32) {
    const int last = std::min(b.count, first + 32);
    bool all = true, any = false;
    for (int t = first; t < last; ++t) {
      const wait_kind w = b.threads[t].state.load();
      if (w == wait_kind::done) continue;
      if (w != wait_kind::warp_op) all = false;
      else any = true;
    }
    if (!all || !any) continue;
    warp_op op = warp_op::sync;
    bool first_live = true;
    std::uint32_t votes = 0, live = 0;
    for (int t = first; t < last; ++t) {
      const fiber& f = b.threads[t];
      if (f.state.load() == wait_kind::done) continue;
      live |= 1u << (t - first);
      if (first_live) op = f.op.load(), first_live = false;
      else if (f.op.load() != op) fail("lanes of a warp of " + block_name(b) + " wait at different warp operations");
      if (f.predicate.load()) votes |= 1u << (t - first);
    }
    for (int t = first; t < last; ++t) {
      fiber& f = b.threads[t];
      if (f.state.load() == wait_kind::done) continue;
      const int lane = t - first, width = std::max(1, f.width.load()), base = lane - lane % width;
      int source = lane;
      switch (op) {
        case warp_op::ballot: f.result.store(votes); break;
        case warp_op::match_any: {
          std::uint32_t same = 0;
          for (int u = first; u < last; ++u) {
            const fiber& g = b.threads[u];
            if (g.state.load() != wait_kind::done && g.value.load() == f.value.load()) same |= 1u << (u - first);
          }
          f.result.store(same);
          break;
        }
        case warp_op::shfl_xor_float:
        case warp_op::shfl_xor_int:  // may read earlier groups of `width` lanes, never later ones
          source = lane ^ f.operand.load();
          if (source >= base + width) source = lane;
          break;
        case warp_op::shfl_idx: source = base + f.operand.load() % width; break;
        case warp_op::shfl_up: source = lane - f.operand.load() >= base ? lane - f.operand.load() : lane; break;
        case warp_op::shfl_down: source = lane + f.operand.load() < base + width ? lane + f.operand.load() : lane; break;
        case warp_op::sync:
        case warp_op::gather: break;
      }
      if (op == warp_op::shfl_xor_float || op == warp_op::shfl_xor_int || op == warp_op::shfl_idx || op == warp_op::shfl_up ||
          op == warp_op::shfl_down) {
        if (source < 0 || first + source >= last || !(live >> source & 1u))
          fail("a warp shuffle in " + block_name(b) + " reads lane " + std::to_string(source) + ", which has exited or does not exist");
        f.result.store(b.threads[first + source].value.load());
      }
      f.result_live.store(static_cast<int>(live));
      f.state.store(wait_kind::running);
    }
    b.warp_generation[static_cast<std::size_t>(first / 32)].fetch_add(1);
    released = true;
  }
  return released;
}

/// Releases the block barrier when every live thread waits at it (all at the same call); returns
/// true if released.
inline bool release_block(block& b) {
  int live = 0, count = 0;
  const fiber* first = nullptr;
  for (int t = 0; t < b.count; ++t) {
    const fiber& f = b.threads[t];
    const wait_kind w = f.state.load();
    if (w == wait_kind::done) continue;
    if (w != wait_kind::block_barrier) return false;
    ++live;
    count += f.predicate.load() != 0;
    if (!first) {
      first = &f;
    } else if (f.site_line.load() != first->site_line.load() || f.site_column.load() != first->site_column.load() ||
               std::strcmp(f.site_file.load(), first->site_file.load()) != 0) {
      fail("threads of " + block_name(b) + " wait at different __syncthreads (a barrier in divergent code): thread " +
           std::to_string(first->linear) + " at " + site_of(*first) + ", thread " + std::to_string(f.linear) + " at " + site_of(f));
    }
  }
  if (!live) return false;
  b.barrier_generation.fetch_add(1);
  for (int t = 0; t < b.count; ++t) {
    fiber& f = b.threads[t];
    if (f.state.load() == wait_kind::done) continue;
    f.result.store(static_cast<std::uint64_t>(count));
    f.result_live.store(live);
    f.state.store(wait_kind::running);
  }
  return true;
}

/// Describes where every live thread of @p b waits, for the deadlock message.
inline std::string waits_of(const block& b) {
  std::string text;
  int listed = 0;
  for (int t = 0; t < b.count && listed < 8; ++t) {
    const fiber& f = b.threads[t];
    const wait_kind w = f.state.load();
    if (w == wait_kind::done) continue;
    text += "\n  thread " + std::to_string(t) + ": " + (w == wait_kind::block_barrier ? "__syncthreads at " + site_of(f) : "a warp operation");
    ++listed;
  }
  return text;
}

/// One scheduling round of @p b: every runnable thread resumes once, in shuffled order; then the
/// complete warp collectives are released (a warp need not wait for threads that spin elsewhere),
/// and when no thread ran or was released, the block barrier.
inline turn_outcome run_round(block& b, std::vector<int>& order) {
  order.resize(static_cast<std::size_t>(b.count));
  for (int t = 0; t < b.count; ++t) order[static_cast<std::size_t>(t)] = t;
  std::shuffle(order.begin(), order.end(), b.order);
  bool ran = false, progressed = false;
  for (int t : order) {
    fiber& f = b.threads[t];
    const wait_kind w = f.state.load();
    if (w != wait_kind::running && w != wait_kind::yielded) continue;
    resume(b, f);
    ran = true;
    progressed |= f.state.load() != wait_kind::yielded;
  }
  bool live = false;
  for (int t = 0; t < b.count; ++t) live |= b.threads[t].state.load() != wait_kind::done;
  if (!live) return turn_outcome::finished;
  if (release_warps(b)) return turn_outcome::progress;
  if (ran) return progressed ? turn_outcome::progress : turn_outcome::spun;
  if (release_block(b)) return turn_outcome::progress;
  fail("deadlock in " + block_name(b) + ": threads wait at barriers that cannot release (__syncthreads in divergent code, or lanes of a warp at a warp operation while others wait at __syncthreads)" +
       waits_of(b));
}

/// Consecutive turns in which the resident blocks only spun, after which the grid is declared stuck.
inline constexpr unsigned long spin_limit = 1ul << 16;

/// A resident block and the OS thread that runs it; the launching thread hands it turns.
struct block_runner {
  block state;
  std::atomic<int> turn{0};     ///< 1 while the block holds the turn
  relaxed<int> rounds;          ///< rounds granted for the current turn (0: run to the end)
  relaxed<int> outcome;         ///< a turn_outcome, when the turn is handed back
  std::thread thread;

  static void wait_while(std::atomic<int>& word, int value) {
    while (word.load(sanitizer::handover_acquire) == value)
      syscall(SYS_futex, reinterpret_cast<int*>(&word), FUTEX_WAIT_PRIVATE, value, nullptr, nullptr, 0);
  }
  static void hand_over(std::atomic<int>& word, int value) {
    word.store(value, sanitizer::handover_release);
    syscall(SYS_futex, reinterpret_cast<int*>(&word), FUTEX_WAKE_PRIVATE, 1, nullptr, nullptr, 0);
  }

  /// Body of the block's OS thread.
  void run() {
    wait_while(turn, 0);
    running_block = &state;
    build_block(state);
    std::vector<int> order;
    unsigned long spins = 0;
    for (;;) {
      const int granted = rounds.load();
      turn_outcome result = turn_outcome::spun;
      for (int r = 0; granted == 0 || r < granted; ++r) {
        const turn_outcome o = run_round(state, order);
        if (o == turn_outcome::finished) {
          result = o;
          break;
        }
        if (o == turn_outcome::progress) result = o;
        spins = o == turn_outcome::spun ? spins + 1 : 0;
        if (granted == 0 && spins > spin_limit) fail("livelock in " + block_name(state) + ": its threads only spin in kvemu::load_acquire / yield");
      }
      if (result == turn_outcome::finished) {
        destroy_block(state);
        sanitizer::release(state.set);  // to the next block lent this set
      }
      outcome.store(static_cast<int>(result));
      hand_over(turn, 0);
      if (result == turn_outcome::finished) return;
      wait_while(turn, 0);
    }
  }

  /// Gives the block a turn of @p granted rounds (0: until it ends) and waits until it is over.
  turn_outcome take_turn(int granted) {
    rounds.store(granted);
    hand_over(turn, 1);
    wait_while(turn, 1);
    return static_cast<turn_outcome>(outcome.load());
  }
};

/// Appends the launch to KVEMU_LAUNCH_LOG: kernel (object file and offset in it), grid, block, bytes.
inline void log_launch(const void* kernel, dim3 grid, dim3 block_dim, std::size_t shared_bytes) {
  Dl_info info{};
  if (!dladdr(kernel, &info) || !info.dli_fname) fail("KVEMU_LAUNCH_LOG: cannot locate a kernel's object file");
  const bool to_stdout = config().launch_log == "-";
  std::FILE* log = to_stdout ? stdout : std::fopen(config().launch_log.c_str(), "a");
  if (!log) fail("KVEMU_LAUNCH_LOG: cannot open " + config().launch_log);
  std::fprintf(log, "kvemu-launch object=%s offset=0x%lx grid=%u,%u,%u block=%u,%u,%u shared=%zu\n", info.dli_fname,
               static_cast<unsigned long>(reinterpret_cast<std::uintptr_t>(kernel) - reinterpret_cast<std::uintptr_t>(info.dli_fbase)), grid.x,
               grid.y, grid.z, block_dim.x, block_dim.y, block_dim.z, shared_bytes);
  if (!to_stdout) std::fclose(log);
}

/// Runs a kernel over a grid: blocks interleave, up to KVEMU_RESIDENT_BLOCKS at a time.
template <class... Params, class... Args>
void launch(void (*kernel)(Params...), dim3 grid, dim3 block_dim, std::size_t shared_bytes, cudaStream_t, Args&&... args) {
  device_state& d = device();
  const unsigned long threads = static_cast<unsigned long>(block_dim.x) * block_dim.y * block_dim.z;
  if (threads == 0 || threads > 1024 || block_dim.z > 64 || grid.x == 0 || grid.y == 0 || grid.z == 0 || grid.y > 65535 || grid.z > 65535) {
    d.last_error = cudaErrorInvalidConfiguration;
    return;
  }
  const auto limit = d.shared_limits.find(reinterpret_cast<const void*>(kernel));
  const std::size_t allowed = limit == d.shared_limits.end() ? default_dynamic_shared : limit->second;
  if (shared_bytes > allowed) {  // a GPU refuses such a launch
    d.last_error = cudaErrorInvalidValue;
    return;
  }
  ++d.launches;
  if (!config().launch_log.empty()) log_launch(reinterpret_cast<const void*>(kernel), grid, block_dim, shared_bytes);
  if (config().skip_kernels) return;

  std::tuple<std::decay_t<Params>...> params(std::forward<Args>(args)...);
  launch_context context;
  context.grid_dim = grid;
  context.block_dim = block_dim;
  context.shared_bytes = shared_bytes;
  context.body = [&] { std::apply(kernel, params); };
  const unsigned long total = static_cast<unsigned long>(grid.x) * grid.y * grid.z;
  std::seed_seq seeds{config().seed, static_cast<unsigned>(d.launches)};
  std::mt19937 picker(seeds);
  std::vector<std::unique_ptr<block_runner>> runners;
  std::vector<block_runner*> resident;
  unsigned long next = 0, spins = 0;
  while (next < total || !resident.empty()) {
    while (resident.size() < config().resident && next < total) {
      auto runner = std::make_unique<block_runner>();
      runner->state.launch = &context;
      runner->state.index = dim3(static_cast<unsigned>(next % grid.x), static_cast<unsigned>(next / grid.x % grid.y),
                                 static_cast<unsigned>(next / (static_cast<unsigned long>(grid.x) * grid.y)));
      runner->state.order.seed(static_cast<unsigned>(picker()));
      runner->state.set = d.take_threads(static_cast<int>(threads));
      runner->thread = std::thread([r = runner.get()] { r->run(); });
      resident.push_back(runner.get());
      runners.push_back(std::move(runner));
      ++next;
    }
    const std::size_t pick = picker() % resident.size();
    const bool alone = resident.size() == 1 && (next == total || config().resident == 1);
    const turn_outcome outcome = resident[pick]->take_turn(alone ? 0 : 1 + static_cast<int>(picker() % 8));
    if (outcome == turn_outcome::finished) {
      d.give_back(resident[pick]->state.set);
      resident.erase(resident.begin() + static_cast<std::ptrdiff_t>(pick));
    }
    spins = outcome == turn_outcome::spun ? spins + 1 : 0;
    if (spins > spin_limit)
      fail("livelock: the resident blocks only spin in kvemu::load_acquire / yield (waiting for a block that is not resident, or a flag nobody sets?)");
  }
  // Joined only now: a block that ended is not ordered before a block that started later.
  for (auto& runner : runners) runner->thread.join();
  d.trim();
}

/// The block's dynamic shared memory (128-byte aligned, exactly the launch's size).
inline unsigned char* dynamic_shared() { return this_block().dynamic_shared; }

/// The scalar warp collective behind the shuffle and vote intrinsics (see the file comment).
inline std::uint64_t warp_collective(warp_op op, std::uint64_t value, int operand, int width, int predicate) {
  fiber& f = this_thread();
  f.op.store(op);
  f.value.store(value);
  f.operand.store(operand);
  f.width.store(width);
  f.predicate.store(predicate);
  suspend(wait_kind::warp_op);
  return f.result.load();
}

/// Warp collective with 32-bit values (interface of the first version, kept for feature headers).
inline std::uint32_t warp_exchange(warp_op op, std::uint32_t value, int lane_mask, int predicate) {
  return static_cast<std::uint32_t>(warp_collective(op, value, lane_mask, 32, predicate));
}

/// What warp_all_gather returns: every lane's contribution and the mask of live lanes.
template <class T>
struct warp_gathered {
  T lane[32];          ///< contribution of each lane (value-initialised for lanes that exited)
  std::uint32_t live;  ///< lanes that took part
};

/// Every live lane of the calling warp contributes @p mine and receives all contributions (see the
/// file comment). Not a memory fence.
template <class T>
warp_gathered<T> warp_all_gather(const T& mine) {
  static_assert(std::is_trivially_copyable_v<T> && sizeof(T) <= max_gather_bytes, "kvemu: warp_all_gather takes a small trivially copyable value");
  constexpr std::size_t words = (sizeof(T) + 3) / 4;
  block& b = this_block();
  fiber& self = this_thread();
  const int warp = self.linear / 32;
  const unsigned generation = b.warp_generation[static_cast<std::size_t>(warp)].load();
  std::uint32_t packed[words] = {};
  std::memcpy(packed, &mine, sizeof(T));
  for (std::size_t w = 0; w < words; ++w) self.gather_words[generation % 2][w].store(packed[w]);
  warp_collective(warp_op::gather, 0, 0, 32, 0);
  warp_gathered<T> all{};
  all.live = static_cast<std::uint32_t>(self.result_live.load());
  for (int lane = 0; lane < 32; ++lane) {
    if (!(all.live >> lane & 1u)) continue;
    const fiber& other = b.threads[warp * 32 + lane];
    for (std::size_t w = 0; w < words; ++w) packed[w] = other.gather_words[generation % 2][w].load();
    std::memcpy(&all.lane[lane], packed, sizeof(T));
  }
  return all;
}

/// Run at every yield() when set: tests set it to change device memory "from another block" while a
/// thread waits.
inline std::function<void()>& spin_hook() {
  static std::function<void()> hook;
  return hook;
}

/// Gives the other threads and blocks a turn (spin-waits call it, directly or through the loads below).
inline void yield() {
  if (spin_hook()) spin_hook()();
  suspend(wait_kind::yielded);
}

/// ld.acquire.gpu: yields first (so a spin-wait on it lets the writer progress), then loads.
template <class T>
T load_acquire(const T* address) {
  yield();
  return std::atomic_ref<T>(*const_cast<T*>(address)).load(std::memory_order_acquire);
}
/// ld.relaxed.gpu (what a `volatile` load is for): yields first, then loads.
template <class T>
T load_relaxed(const T* address) {
  yield();
  return std::atomic_ref<T>(*const_cast<T*>(address)).load(std::memory_order_relaxed);
}
/// st.release.gpu: orders the thread's earlier writes before the store for a load_acquire that sees it.
template <class T>
void store_release(T* address, T value) {
  std::atomic_ref<T>(*address).store(value, std::memory_order_release);
}
/// st.relaxed.gpu.
template <class T>
void store_relaxed(T* address, T value) {
  std::atomic_ref<T>(*address).store(value, std::memory_order_relaxed);
}
/// atom.add.acq_rel.gpu: the arrival counter of "the last block to arrive finishes the work".
template <class T>
T fetch_add_acq_rel(T* address, T value) {
  return std::atomic_ref<T>(*address).fetch_add(value, std::memory_order_acq_rel);
}

/// Arrives at the block barrier at @p site and returns the number of threads whose predicate held.
inline int block_barrier(int predicate, const std::source_location& site) {
  block& b = this_block();
  fiber& f = this_thread();
  void* object = &b.barrier_object[b.barrier_generation.load() % 2];
  f.predicate.store(predicate != 0);
  f.site_file.store(site.file_name());
  f.site_line.store(site.line());
  f.site_column.store(site.column());
  sanitizer::release(object);
  suspend(wait_kind::block_barrier);
  sanitizer::acquire(object);
  return static_cast<int>(f.result.load());
}

/// Read-modify-write of a device atomic: relaxed, as CUDA's atomic functions are.
template <class T, class Update>
T atomic_update(T* address, Update update) {
  std::atomic_ref<T> target(*address);
  T old = target.load(std::memory_order_relaxed);
  while (!target.compare_exchange_weak(old, update(old), std::memory_order_relaxed)) {
  }
  return old;
}

}  // namespace kvemu

#define threadIdx (::kvemu::this_thread().thread_index())
#define blockIdx (::kvemu::this_block().index)
#define blockDim (::kvemu::this_block().launch->block_dim)
#define gridDim (::kvemu::this_block().launch->grid_dim)

// ---------------------------------------------------------------------------------------------
// Device functions
// ---------------------------------------------------------------------------------------------

inline void __syncthreads(const std::source_location& site = std::source_location::current()) { ::kvemu::block_barrier(1, site); }
inline int __syncthreads_and(int predicate, const std::source_location& site = std::source_location::current()) {
  const int count = ::kvemu::block_barrier(predicate, site);
  return count == ::kvemu::this_thread().result_live.load();
}
inline int __syncthreads_or(int predicate, const std::source_location& site = std::source_location::current()) {
  return ::kvemu::block_barrier(predicate, site) > 0;
}
inline int __syncthreads_count(int predicate, const std::source_location& site = std::source_location::current()) {
  return ::kvemu::block_barrier(predicate, site);
}
inline void __syncwarp(unsigned = 0xffffffffu) {
  ::kvemu::block& b = ::kvemu::this_block();
  const int warp = ::kvemu::warp_id();
  void* object = &b.warp_object[static_cast<std::size_t>(2 * warp) + b.warp_generation[static_cast<std::size_t>(warp)].load() % 2];
  ::kvemu::sanitizer::release(object);
  ::kvemu::warp_collective(::kvemu::warp_op::sync, 0, 0, 32, 0);
  ::kvemu::sanitizer::acquire(object);
}
inline void __threadfence() {
  void* object = &::kvemu::this_block().launch->fence_object;
  ::kvemu::sanitizer::release(object);
  ::kvemu::sanitizer::acquire(object);
  std::atomic_thread_fence(std::memory_order_seq_cst);
}
inline void __threadfence_block() {
  void* object = &::kvemu::this_block().block_fence_object;
  ::kvemu::sanitizer::release(object);
  ::kvemu::sanitizer::acquire(object);
  std::atomic_thread_fence(std::memory_order_seq_cst);
}
inline void __nanosleep(unsigned) { ::kvemu::yield(); }
inline unsigned __ballot_sync(unsigned, int predicate) {
  return static_cast<unsigned>(::kvemu::warp_collective(::kvemu::warp_op::ballot, 0, 0, 32, predicate != 0));
}
inline int __all_sync(unsigned mask, int predicate) {
  const unsigned votes = __ballot_sync(mask, predicate);
  return votes == static_cast<unsigned>(::kvemu::this_thread().result_live.load());
}
inline int __any_sync(unsigned mask, int predicate) { return __ballot_sync(mask, predicate) != 0; }
inline unsigned __activemask() { return 0xffffffffu; }

namespace kvemu {
/// Shuffle of a 4- or 8-byte value (the bits travel unchanged).
template <class T>
T shuffle(warp_op op, T value, int operand, int width) {
  static_assert(std::is_trivially_copyable_v<T> && (sizeof(T) == 4 || sizeof(T) == 8), "kvemu: shuffles take 4- or 8-byte values");
  std::uint64_t bits = 0;
  std::memcpy(&bits, &value, sizeof(T));
  bits = warp_collective(op, bits, operand, width, 0);
  std::memcpy(&value, &bits, sizeof(T));
  return value;
}
}  // namespace kvemu

template <class T>
T __shfl_xor_sync(unsigned, T value, int lane_mask, int width = 32) {
  return ::kvemu::shuffle(std::is_floating_point_v<T> ? ::kvemu::warp_op::shfl_xor_float : ::kvemu::warp_op::shfl_xor_int, value, lane_mask, width);
}
template <class T>
T __shfl_sync(unsigned, T value, int source_lane, int width = 32) {
  return ::kvemu::shuffle(::kvemu::warp_op::shfl_idx, value, source_lane, width);
}
template <class T>
T __shfl_up_sync(unsigned, T value, unsigned delta, int width = 32) {
  return ::kvemu::shuffle(::kvemu::warp_op::shfl_up, value, static_cast<int>(delta), width);
}
template <class T>
T __shfl_down_sync(unsigned, T value, unsigned delta, int width = 32) {
  return ::kvemu::shuffle(::kvemu::warp_op::shfl_down, value, static_cast<int>(delta), width);
}
inline unsigned __match_any_sync(unsigned, unsigned value) {
  return static_cast<unsigned>(::kvemu::warp_collective(::kvemu::warp_op::match_any, value, 0, 32, 0));
}
inline unsigned __match_any_sync(unsigned, unsigned long long value) {
  return static_cast<unsigned>(::kvemu::warp_collective(::kvemu::warp_op::match_any, value, 0, 32, 0));
}
inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
inline int __ffs(unsigned x) { return __builtin_ffs(static_cast<int>(x)); }
inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz(static_cast<unsigned>(x)); }
inline unsigned __float_as_uint(float x) {
  unsigned u = 0;
  std::memcpy(&u, &x, 4);
  return u;
}
inline float __uint_as_float(unsigned u) {
  float x = 0;
  std::memcpy(&x, &u, 4);
  return x;
}

// Device atomics (relaxed, device scope). The value converts to the pointee type, as CUDA's
// overloads convert it.
template <class T>
T atomicAdd(T* address, std::type_identity_t<T> value) {
  return ::kvemu::atomic_update(address, [value](T old) { return static_cast<T>(old + value); });
}
template <class T>
T atomicSub(T* address, std::type_identity_t<T> value) {
  return ::kvemu::atomic_update(address, [value](T old) { return static_cast<T>(old - value); });
}
template <class T>
T atomicMax(T* address, std::type_identity_t<T> value) {
  static_assert(std::is_integral_v<T>, "kvemu: atomicMax takes integers");
  return ::kvemu::atomic_update(address, [value](T old) { return old > value ? old : value; });
}
template <class T>
T atomicMin(T* address, std::type_identity_t<T> value) {
  static_assert(std::is_integral_v<T>, "kvemu: atomicMin takes integers");
  return ::kvemu::atomic_update(address, [value](T old) { return old < value ? old : value; });
}
template <class T>
T atomicAnd(T* address, std::type_identity_t<T> value) {
  return ::kvemu::atomic_update(address, [value](T old) { return static_cast<T>(old & value); });
}
template <class T>
T atomicOr(T* address, std::type_identity_t<T> value) {
  return ::kvemu::atomic_update(address, [value](T old) { return static_cast<T>(old | value); });
}
template <class T>
T atomicXor(T* address, std::type_identity_t<T> value) {
  return ::kvemu::atomic_update(address, [value](T old) { return static_cast<T>(old ^ value); });
}
/// ((old >= limit) ? 0 : old + 1), as CUDA defines it.
inline unsigned atomicInc(unsigned* address, unsigned limit) {
  return ::kvemu::atomic_update(address, [limit](unsigned old) { return old >= limit ? 0u : old + 1u; });
}
/// ((old == 0 || old > limit) ? limit : old - 1), as CUDA defines it.
inline unsigned atomicDec(unsigned* address, unsigned limit) {
  return ::kvemu::atomic_update(address, [limit](unsigned old) { return old == 0 || old > limit ? limit : old - 1u; });
}
template <class T>
T atomicExch(T* address, std::type_identity_t<T> value) {
  return std::atomic_ref<T>(*address).exchange(value, std::memory_order_relaxed);
}
template <class T>
T atomicCAS(T* address, std::type_identity_t<T> compare, std::type_identity_t<T> value) {
  std::atomic_ref<T>(*address).compare_exchange_strong(compare, value, std::memory_order_relaxed);
  return compare;
}

// ---------------------------------------------------------------------------------------------
// Runtime API (host memory stands in for device memory)
// ---------------------------------------------------------------------------------------------

inline cudaError_t cudaGetLastError() {
  const cudaError_t e = ::kvemu::device().last_error;
  ::kvemu::device().last_error = cudaSuccess;
  return e;
}
inline cudaError_t cudaPeekAtLastError() { return ::kvemu::device().last_error; }
inline const char* cudaGetErrorName(cudaError_t e) {
  switch (e) {
    case cudaSuccess: return "cudaSuccess";
    case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
    case cudaErrorMemoryAllocation: return "cudaErrorMemoryAllocation";
    case cudaErrorInvalidConfiguration: return "cudaErrorInvalidConfiguration";
    case cudaErrorInsufficientDriver: return "cudaErrorInsufficientDriver";
    case cudaErrorNoDevice: return "cudaErrorNoDevice";
  }
  return "cudaErrorUnknown";
}
inline const char* cudaGetErrorString(cudaError_t e) { return cudaGetErrorName(e); }
inline cudaError_t cudaGetDeviceCount(int* count) {
  *count = 1;
  return cudaSuccess;
}
inline cudaError_t cudaGetDevice(int* device) {
  *device = 0;
  return cudaSuccess;
}
inline cudaError_t cudaSetDevice(int) { return cudaSuccess; }
/// Multiprocessors: KVEMU_SM_COUNT; shared memory a block may opt in to: 227 KiB (sm_90).
inline cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attribute, int) {
  switch (attribute) {
    case cudaDevAttrMultiProcessorCount: *value = ::kvemu::config().sm_count; return cudaSuccess;
    case cudaDevAttrMaxSharedMemoryPerBlockOptin: *value = static_cast<int>(::kvemu::max_dynamic_shared); return cudaSuccess;
  }
  return cudaErrorInvalidValue;
}
/// Raises the dynamic shared memory @p kernel may be launched with (at most 227 KiB, as on sm_90).
template <class Kernel>
cudaError_t cudaFuncSetAttribute(Kernel kernel, cudaFuncAttribute, int value) {
  if (value < 0 || static_cast<std::size_t>(value) > ::kvemu::max_dynamic_shared) return cudaErrorInvalidValue;
  ::kvemu::device().shared_limits[reinterpret_cast<const void*>(kernel)] = static_cast<std::size_t>(value);
  return cudaSuccess;
}
/// Allocates exactly @p bytes (256-byte aligned), garbage-filled; zero-filled and never touched
/// when kernels are skipped (KVEMU_SKIP_KERNELS), so benchmark-sized buffers cost nothing.
template <class T>
cudaError_t cudaMalloc(T** pointer, std::size_t bytes) {
  if (bytes == 0) {
    *pointer = nullptr;
    return cudaSuccess;
  }
  if (::kvemu::config().skip_kernels) {
    void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED) return cudaErrorMemoryAllocation;
    ::kvemu::device().skipped_allocations[p] = bytes;
    *pointer = static_cast<T*>(p);
    return cudaSuccess;
  }
  void* p = ::operator new(bytes, std::align_val_t{256}, std::nothrow);
  if (!p) return cudaErrorMemoryAllocation;
  std::memset(p, 0xcd, bytes);
  *pointer = static_cast<T*>(p);
  return cudaSuccess;
}
inline cudaError_t cudaFree(void* p) {
  if (!p) return cudaSuccess;
  auto& mapped = ::kvemu::device().skipped_allocations;
  if (const auto found = mapped.find(p); found != mapped.end()) {
    munmap(p, found->second);
    mapped.erase(found);
    return cudaSuccess;
  }
  ::operator delete(p, std::align_val_t{256});
  return cudaSuccess;
}
inline cudaError_t cudaMemcpy(void* to, const void* from, std::size_t bytes, cudaMemcpyKind) {
  if (bytes && !::kvemu::device().untouched(to)) std::memmove(to, from, bytes);
  return cudaSuccess;
}
inline cudaError_t cudaMemcpyAsync(void* to, const void* from, std::size_t bytes, cudaMemcpyKind kind, cudaStream_t = nullptr) {
  return cudaMemcpy(to, from, bytes, kind);
}
inline cudaError_t cudaMemset(void* p, int value, std::size_t bytes) {
  if (bytes && !::kvemu::device().untouched(p)) std::memset(p, value, bytes);
  return cudaSuccess;
}
inline cudaError_t cudaMemsetAsync(void* p, int value, std::size_t bytes, cudaStream_t = nullptr) { return cudaMemset(p, value, bytes); }
inline cudaError_t cudaStreamSynchronize(cudaStream_t) { return cudaSuccess; }
inline cudaError_t cudaDeviceSynchronize() { return cudaSuccess; }
inline cudaError_t cudaStreamCreate(cudaStream_t* stream) {
  *stream = nullptr;
  return cudaSuccess;
}
inline cudaError_t cudaStreamDestroy(cudaStream_t) { return cudaSuccess; }
inline cudaError_t cudaGetDeviceProperties(cudaDeviceProp* properties, int) {
  *properties = cudaDeviceProp{};
  std::strcpy(properties->name, "kvemu");
  properties->multiProcessorCount = ::kvemu::config().sm_count;
  properties->major = 9;
  properties->minor = 0;
  properties->sharedMemPerBlockOptin = ::kvemu::max_dynamic_shared;
  return cudaSuccess;
}
inline cudaError_t cudaEventCreate(cudaEvent_t* event) {
  *event = new kvemu_event;
  return cudaSuccess;
}
inline cudaError_t cudaEventDestroy(cudaEvent_t event) {
  delete event;
  return cudaSuccess;
}
inline cudaError_t cudaEventRecord(cudaEvent_t event, cudaStream_t = nullptr) {
  event->seconds = std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
  return cudaSuccess;
}
inline cudaError_t cudaEventSynchronize(cudaEvent_t) { return cudaSuccess; }
inline cudaError_t cudaEventElapsedTime(float* milliseconds, cudaEvent_t start, cudaEvent_t stop) {
  *milliseconds = static_cast<float>((stop->seconds - start->seconds) * 1e3);
  return cudaSuccess;
}

// ---------------------------------------------------------------------------------------------
// WMMA: each lane holds whole 16 x 16 tiles (the API hides the fragment layout, so any layout is
// faithful) and stores its share of them; elements convert with an unqualified to_float (found by
// argument-dependent lookup). The warp must be converged at each call, as on a GPU.
// ---------------------------------------------------------------------------------------------

namespace nvcuda::wmma {
struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };

/// A 16 x 16 tile held by one lane.
template <class Use, int M, int N, int K, class T, class Layout = void>
struct fragment {
  static_assert(M == 16 && N == 16 && K == 16, "kvemu: only m16n16k16 fragments are emulated");
  float x[256];
};

namespace detail {
template <class T>
void check_operand(const T* p, unsigned ldm) {
  if (reinterpret_cast<std::uintptr_t>(p) % 32 != 0) ::kvemu::fail("wmma: a tile pointer is not 32-byte aligned");
  if ((ldm * sizeof(T)) % 16 != 0) ::kvemu::fail("wmma: ldm is not a multiple of 16 bytes");
}
template <class T>
float element(const T& e) {
  if constexpr (std::is_same_v<T, float>) return e;
  else return to_float(e);
}
}  // namespace detail

template <class Use, class T, class Layout>
void fill_fragment(fragment<Use, 16, 16, 16, T, Layout>& f, float value) {
  for (float& e : f.x) e = value;
}
template <class T, class Layout>
void load_matrix_sync(fragment<matrix_a, 16, 16, 16, T, Layout>& f, const T* p, unsigned ldm) {
  detail::check_operand(p, ldm);
  for (int r = 0; r < 16; ++r)
    for (int c = 0; c < 16; ++c) f.x[r * 16 + c] = detail::element(std::is_same_v<Layout, row_major> ? p[r * ldm + c] : p[c * ldm + r]);
}
template <class T, class Layout>
void load_matrix_sync(fragment<matrix_b, 16, 16, 16, T, Layout>& f, const T* p, unsigned ldm) {
  detail::check_operand(p, ldm);
  for (int k = 0; k < 16; ++k)
    for (int n = 0; n < 16; ++n) f.x[k * 16 + n] = detail::element(std::is_same_v<Layout, row_major> ? p[k * ldm + n] : p[n * ldm + k]);
}
template <class A, class B, class LA, class LB>
void mma_sync(fragment<accumulator, 16, 16, 16, float>& d, const fragment<matrix_a, 16, 16, 16, A, LA>& a,
              const fragment<matrix_b, 16, 16, 16, B, LB>& b, const fragment<accumulator, 16, 16, 16, float>& c) {
  float out[256];
  for (int m = 0; m < 16; ++m)
    for (int n = 0; n < 16; ++n) {
      float sum = c.x[m * 16 + n];
      for (int k = 0; k < 16; ++k) sum += a.x[m * 16 + k] * b.x[k * 16 + n];
      out[m * 16 + n] = sum;
    }
  std::memcpy(d.x, out, sizeof(out));
}
/// Every lane holds the whole tile; each stores its share (element i goes to lane i % 32), as the
/// lanes of a warp share the stores on a GPU (so the race detector sees no lane write another's part).
inline void store_matrix_sync(float* p, const fragment<accumulator, 16, 16, 16, float>& f, unsigned ldm, layout_t layout) {
  detail::check_operand(p, ldm);
  for (int i = ::kvemu::lane_id(); i < 256; i += 32) {
    const int m = i / 16, n = i % 16;
    (layout == mem_row_major ? p[m * ldm + n] : p[n * ldm + m]) = f.x[i];
  }
}
}  // namespace nvcuda::wmma

// ---------------------------------------------------------------------------------------------
// Instruction emulation by feature (see "Extending the emulator" above): one include per header.
// ---------------------------------------------------------------------------------------------
#include "support/cuda_emulator_mma.hpp"  // NOLINT: mma.sync emulation (prefill-score)
#include "support/cuda_emulator_decode.hpp"  // NOLINT: cp.async, fences, programmatic launch, cvt (decode)
#include "support/cuda_emulator_cub.hpp"   // NOLINT: stand-ins for the CUB collectives kvcompact uses (device-select)
