#include <chrono>
#include <cstdlib>
#include <string>

#include "taiyi/graph/passes/passes.h"

namespace taiyi::graph {

bool pass_turned_off(const char* env_var) {
  const char* v = std::getenv(env_var);
  return v != nullptr && std::string(v) == "0";
}

std::vector<PassReport> run_passes(Graph& g, const CompileOptions& options, const std::vector<Pass>& passes) {
  std::vector<PassReport> reports;
  for (const Pass& p : passes) {
    PassReport r;
    r.name = p.name;
    r.nodes_before = g.nodes.size();
    const auto t0 = std::chrono::steady_clock::now();
    p.run(g, options);
    r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    r.nodes_after = g.nodes.size();
    g.validate();
    reports.push_back(r);
  }
  return reports;
}

}  // namespace taiyi::graph
