// The compile options the graph tests' bf16 graphs use: compute bf16, the rest default.
#pragma once

#include "taiyi/graph/passes/passes.h"

namespace taiyi::graph {

inline CompileOptions bf16() {
  CompileOptions o;
  o.compute = DType::BF16;
  return o;
}

}  // namespace taiyi::graph
