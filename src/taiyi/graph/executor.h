// Replays a Graph on real tensors. Nodes run in order and write into one arena
// planned by plan_memory (allocated once, reused by every run); graph outputs get
// fresh memory so they outlive the run. Not reentrant: one run at a time.
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

class Executor {
 public:
  explicit Executor(Graph g);
  // Inputs must match the traced shapes and dtypes (throws naming the input otherwise).
  // With `profile`, each node is timed and its time added under its op's name.
  std::vector<Tensor> run(const std::vector<Tensor>& inputs, Profile* profile = nullptr) const;
  const Graph& graph() const { return g_; }
  const MemoryPlan& memory_plan() const { return plan_; }

 private:
  Graph g_;
  MemoryPlan plan_;
  std::shared_ptr<Storage> arena_;
  std::shared_ptr<Storage> scratch_;             // shared by prepared ops (one runs at a time)
  std::vector<std::vector<int>> release_after_;  // per node: values whose last reader it is
};

}  // namespace taiyi::graph
