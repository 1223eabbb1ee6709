// The graph compiler's passes, in the order they run. Each pass is one file of
// this folder with the same small interface (a name and a function that rewrites
// the graph and says whether it changed anything) and an equivalence test (the
// graph computes the same before and after, tests/graph/).
#pragma once

#include <string>
#include <vector>

#include "taiyi/graph/graph.h"

namespace taiyi::graph {

struct Pass {
  const char* name;
  bool (*run)(Graph& g);
};

// Removes nodes whose outputs no graph output depends on.
bool dead_value_elimination(Graph& g);

// Binds each conv2d with constant weights to a prepared oneDNN primitive whose weights
// are reordered once into its preferred layout.
bool prepack_weights(Graph& g);

// The pipeline, in order:
inline const std::vector<Pass>& default_passes() {
  static const std::vector<Pass> passes = {
      {"dead_value_elimination", dead_value_elimination},
      {"prepack_weights", prepack_weights},
  };
  return passes;
}

struct PassReport {
  std::string name;
  size_t nodes_before = 0, nodes_after = 0;
  double seconds = 0;
};

std::vector<PassReport> run_passes(Graph& g, const std::vector<Pass>& passes = default_passes());

}  // namespace taiyi::graph
