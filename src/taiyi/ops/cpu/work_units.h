// A thread's share of a parallel loop as a range of units of work that other threads may take
// from: the owner takes [front, back) from the front, a thread that has finished its own takes
// from the back once the owner has opened it (where the units need something the owner prepares
// first). The host preempts one of our threads now and then; with a static split the other then
// waits at the loop's end (the AMX linear's threads 26-128 us a call, the VAE's split-panel
// Winograd up to 20 ms a decode).
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <thread>

namespace taiyi::ops::cpu {

struct alignas(64) WorkUnits {
  std::atomic<uint64_t> range{0};  // front | back << 32
  std::atomic<bool> open{false};

  // Units [0, count) to take, and whether others may take them already.
  void reset(int64_t count, bool open_now) {
    range.store(static_cast<uint64_t>(static_cast<uint32_t>(count)) << 32, std::memory_order_relaxed);
    if (open_now) open.store(true, std::memory_order_release);
  }
  void open_up() { open.store(true, std::memory_order_release); }
  bool is_open() const { return open.load(std::memory_order_acquire); }
  // The next unit from the front (the owner) or the back (another thread), or -1 when none is left.
  int64_t take(bool front) {
    uint64_t v = range.load(std::memory_order_relaxed);
    for (;;) {
      const uint64_t f = v & 0xffffffffu, b = v >> 32;
      if (f >= b) return -1;
      const uint64_t next = front ? (b << 32) | (f + 1) : ((b - 1) << 32) | f;
      if (range.compare_exchange_weak(v, next, std::memory_order_acq_rel, std::memory_order_relaxed))
        return static_cast<int64_t>(front ? f : b - 1);
    }
  }
  int64_t take_front() { return take(true); }
  int64_t take_back() { return take(false); }
};

// After thread id's own units: the units of the other threads of nt whose ranges are open, from
// their ends, each through run(victim, unit); the count goes to the test support's tally.
template <typename Run>
void take_from_others(WorkUnits* units, int64_t id, int64_t nt, Run&& run);

// Test support (work_stealing_stall_for_tests, prepared_kernels.h): the thread that sleeps at a
// loop's stall point, for how long, and how many units threads have taken from others.
namespace work_units_testing {
inline std::atomic<int> stall_thread{-1}, stall_us{0};
inline std::atomic<int64_t> taken{0};
}  // namespace work_units_testing
// Where a loop lets a test stall thread `thread` (after a unit of its own work).
inline void stall_point_for_tests(int64_t thread) {
  if (thread == work_units_testing::stall_thread.load(std::memory_order_relaxed))
    std::this_thread::sleep_for(
        std::chrono::microseconds(work_units_testing::stall_us.load(std::memory_order_relaxed)));
}
inline void count_units_taken(int64_t n) {
  if (n) work_units_testing::taken.fetch_add(n, std::memory_order_relaxed);
}

template <typename Run>
void take_from_others(WorkUnits* units, int64_t id, int64_t nt, Run&& run) {
  int64_t taken = 0;
  for (int64_t k = 1; k < nt; ++k) {
    const int64_t victim = (id + k) % nt;
    if (!units[victim].is_open()) continue;
    for (int64_t u; (u = units[victim].take_back()) >= 0; ++taken) run(victim, u);
  }
  count_units_taken(taken);
}

}  // namespace taiyi::ops::cpu
