// Liveness-based memory planning: every intermediate value gets an offset in one
// arena, allocated once per compiled graph and reused by every run, so replays
// touch no fresh pages (first-touch faults cost about 1-3 s per GiB on these
// virtual machines) and peak memory is what the live values need at once.
#pragma once

#include <cstdint>
#include <vector>

#include "taiyi/graph/graph.h"

namespace taiyi::graph {

struct MemoryPlan {
  static constexpr int64_t kNotPlanned = -1;
  std::vector<int64_t> offset;  // per value: byte offset in the arena, or kNotPlanned (inputs, constants, views,
                                // graph outputs: those get their own memory); an in-place output has
                                // its residual's offset
  std::vector<int> alias_of;    // per value: the value whose memory it views or, for the output of a
                                // fused residual epilogue computed in place, the residual (itself if none)
  size_t arena_bytes = 0;       // the arena's size (the peak of simultaneously live planned values)
  size_t planned_bytes = 0;     // sum of all planned values (what allocating each separately would take)
};

// True when the node's output is a view of its first input's memory (no copy at run time).
bool node_is_alias(const Graph& g, const Node& n);

// A prepared conv2d or linear with a fused residual (4th input) writes its output into the
// residual's memory when the residual is not read afterwards (in_place_residual in the .cpp).
// own_memory[v] (when given): value v, and any view of it, is not planned either, like a graph
// output (the executor keeps such values between runs).
MemoryPlan plan_memory(const Graph& g, const std::vector<bool>* own_memory = nullptr);

}  // namespace taiyi::graph
