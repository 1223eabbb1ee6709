#include "taiyi/graph/graph.h"

#include <sstream>

namespace taiyi::graph {

int Graph::add_value(Value v) {
  values.push_back(std::move(v));
  return static_cast<int>(values.size()) - 1;
}

size_t Graph::count(ops::OpKind kind) const {
  size_t n = 0;
  for (const auto& node : nodes) n += node.kind == kind;
  return n;
}

std::string Graph::dump() const {
  std::ostringstream os;
  auto name = [&](int v) -> std::string {
    if (v < 0) return "_";
    std::string s(1, values[v].kind == ValueKind::kConstant ? '#' : '%');
    s.append(std::to_string(v));
    return s;
  };
  for (size_t i = 0; i < inputs.size(); ++i)
    os << "input " << i << ": %" << inputs[i] << " " << dtype_name(values[inputs[i]].dtype)
       << shape_str(values[inputs[i]].shape) << "\n";
  for (const auto& n : nodes) {
    os << name(n.output) << " = " << ops::op_name(n.kind) << "(";
    for (size_t i = 0; i < n.inputs.size(); ++i) os << (i ? ", " : "") << name(n.inputs[i]);
    const Value& out = values[n.output];
    os << ") " << dtype_name(out.dtype) << shape_str(out.shape) << "\n";
  }
  os << "outputs:";
  for (int v : outputs) os << " " << name(v);
  os << "\n";
  return os.str();
}

void Graph::validate() const {
  std::vector<bool> defined(values.size(), false);
  for (size_t v = 0; v < values.size(); ++v) defined[v] = values[v].kind != ValueKind::kNode;
  for (size_t i = 0; i < nodes.size(); ++i) {
    for (int in : nodes[i].inputs)
      if (in >= 0 && (in >= static_cast<int>(values.size()) || !defined[in]))
        throw Error("graph: node " + std::to_string(i) + " (" + ops::op_name(nodes[i].kind) + ") reads value %" +
                    std::to_string(in) + " before it is defined");
    defined[nodes[i].output] = true;
  }
  for (int v : outputs)
    if (!defined[v]) throw Error("graph: output %" + std::to_string(v) + " is never computed");
}

std::vector<std::vector<int>> Graph::readers() const {
  std::vector<std::vector<int>> r(values.size());
  for (size_t i = 0; i < nodes.size(); ++i)
    for (int v : nodes[i].inputs)
      if (v >= 0) r[v].push_back(static_cast<int>(i));
  return r;
}

bool Graph::is_output(int v) const {
  for (int o : outputs)
    if (o == v) return true;
  return false;
}

void Graph::remove_nodes(const std::vector<bool>& removed) {
  std::vector<Node> kept;
  kept.reserve(nodes.size());
  for (size_t i = 0; i < nodes.size(); ++i)
    if (!removed[i]) kept.push_back(std::move(nodes[i]));
  nodes = std::move(kept);
  for (size_t i = 0; i < nodes.size(); ++i) values[nodes[i].output].producer = static_cast<int>(i);
}

}  // namespace taiyi::graph
