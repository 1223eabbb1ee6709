// Replays a Graph on real tensors. Nodes run in order and write into one arena
// planned by plan_memory (allocated once, reused by every run); graph outputs get
// fresh memory so they outlive the run. Not reentrant: one run at a time.
//
// Repeated inputs (positions given at construction): the nodes computed from those inputs and
// constants alone keep their outputs, in memory of their own, from one run to the next, and run
// again only when a repeated input's content differs from the previous run's (compared byte for
// byte with a copy, so a caller may reuse or overwrite its tensors freely).
//
// Executors that never run at the same time can share one Workspace for their arenas and
// scratch (the pipeline's text encoder, UNet and VAE do): it grows to the largest of them
// instead of holding their sum.
#pragma once

#include <map>
#include <string>
#include <vector>

#include "taiyi/graph/graph.h"
#include "taiyi/graph/memory_plan.h"

namespace taiyi::graph {

// Where a run's time went, per op kind: seconds, calls, FLOPs (matrix products).
struct OpProfile {
  double seconds = 0;
  int64_t calls = 0;
  double flops = 0;
};
using Profile = std::map<std::string, OpProfile>;
std::string format_profile(const Profile& p, double total_s);

// Memory for the arenas and scratch of executors that take turns. Not thread-safe.
class Workspace {
 public:
  // At least `bytes`, 64-byte aligned. A larger request than any before replaces the memory, so
  // only the executor running now may hold views of it.
  std::shared_ptr<Storage> reserve(size_t bytes);
  size_t bytes() const { return mem_ ? mem_->bytes() : 0; }

 private:
  std::shared_ptr<Storage> mem_;
};

class Executor {
 public:
  // workspace: shared with other executors that never run while this one does; null: its own.
  explicit Executor(Graph g, std::shared_ptr<Workspace> workspace = nullptr, std::vector<int> repeated_inputs = {});
  // Inputs must match the traced shapes and dtypes (throws naming the input otherwise).
  // With `profile`, each node is timed and its time added under its op's name.
  std::vector<Tensor> run(const std::vector<Tensor>& inputs, Profile* profile = nullptr) const;
  const Graph& graph() const { return g_; }
  const MemoryPlan& memory_plan() const { return plan_; }
  // Nodes whose outputs are kept between runs (computed from repeated inputs and constants).
  size_t kept_nodes() const;
  // Runs so far that reused the kept outputs instead of computing them.
  int64_t reused_runs() const { return reused_runs_; }

 private:
  Graph g_;
  MemoryPlan plan_;
  std::shared_ptr<Workspace> workspace_;  // the arena, then the scratch prepared ops share (one runs at a time)
  size_t scratch_offset_ = 0, workspace_bytes_ = 0;
  std::vector<std::vector<int>> release_after_;  // per node: values whose last reader it is
  // Repeated inputs: their positions, which nodes' outputs are kept, and between runs the inputs'
  // contents and the kept outputs (valid once a run has computed them all).
  std::vector<int> repeated_inputs_;
  std::vector<bool> kept_;  // per node
  mutable std::vector<Tensor> repeated_copy_, kept_values_;
  mutable bool kept_valid_ = false;
  mutable int64_t reused_runs_ = 0;
};

}  // namespace taiyi::graph
