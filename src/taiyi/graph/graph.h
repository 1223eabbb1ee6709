// The graph layer: the IR that graph mode records, rewrites and replays.
//
// A Graph is a list of nodes in execution order. Each node is one op call
// (ops::OpKind + attributes) reading values and writing exactly one value.
// Values are graph inputs, constants (weights and anything computed from
// weights alone, folded while tracing) or node outputs; each carries the
// shape, strides and dtype it will have at run time.
//
//   Graph g = trace(fn, {{{2, 4, 64, 64}, DType::F32}, ...});   // tracer.h
//   run_passes(g);                                             // passes/passes.h
//   Executor ex(g);                                            // executor.h
//   std::vector<Tensor> out = ex.run({sample, t, context});
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "taiyi/ops/op_call.h"
#include "taiyi/ops/prepared.h"
#include "taiyi/tensor/tensor.h"

namespace taiyi::graph {

enum class ValueKind : uint8_t { kInput, kConstant, kNode };

struct Value {
  ValueKind kind = ValueKind::kNode;
  Shape shape;
  Strides strides;
  DType dtype = DType::F32;
  int producer = -1;  // node index for kNode
  Tensor constant;    // for kConstant
};

struct Node {
  ops::OpKind kind;
  std::vector<int> inputs;  // value ids; -1 for an absent optional input (e.g. no bias)
  ops::OpAttrs attrs;
  int output = -1;
  // Set by prepack_weights: the op bound to its constant weights, run instead of the eager op.
  std::shared_ptr<const ops::PreparedOp> prepared;
};

class Graph {
 public:
  std::vector<Value> values;
  std::vector<Node> nodes;
  std::vector<int> inputs;   // value ids, in the order the caller passes tensors
  std::vector<int> outputs;  // value ids

  int add_value(Value v);
  // Number of nodes of a kind (for tests and reports).
  size_t count(ops::OpKind kind) const;
  // One line per node: "%12 = conv2d(%3, #w, #b) f32[2, 320, 64, 64]".
  std::string dump() const;
  // Throws if a node reads a value no earlier node or input defines.
  void validate() const;

  // For passes: the nodes reading each value (a node reading a value twice is listed twice),
  // whether a value is a graph output, and dropping nodes (keeping order and producers right).
  std::vector<std::vector<int>> readers() const;
  bool is_output(int v) const;
  void remove_nodes(const std::vector<bool>& removed);
};

}  // namespace taiyi::graph
