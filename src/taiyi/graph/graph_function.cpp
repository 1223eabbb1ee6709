#include "taiyi/graph/graph_function.h"

#include <chrono>
#include <cstdlib>
#include <fstream>

namespace taiyi::graph {

namespace {
double now_s() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }
// TAIYI_DUMP_GRAPH=DIR writes each compiled graph, after its passes, to DIR/<function>-<n>.txt
// (one line per node, Graph::dump()): for reading what the passes made of a model.
void dump_if_asked(const Graph& g, const std::string& function) {
  const char* dir = std::getenv("TAIYI_DUMP_GRAPH");
  if (!dir || !*dir) return;
  static int count = 0;
  const std::string path = std::string(dir) + "/" + function + "-" + std::to_string(count++) + ".txt";
  std::ofstream out(path);
  out << g.dump();
  if (!out) throw Error("TAIYI_DUMP_GRAPH: cannot write " + path);
}
}  // namespace

Mode parse_mode(const std::string& s) {
  if (s == "eager") return Mode::kEager;
  if (s == "graph") return Mode::kGraph;
  throw Error("unknown mode '" + s + "' (expected eager or graph)");
}

const char* mode_name(Mode m) { return m == Mode::kEager ? "eager" : "graph"; }

DType parse_compute_dtype(const std::string& s) {
  if (s == "fp32" || s == "f32") return DType::F32;
  if (s == "bf16") return DType::BF16;
  throw Error("unknown dtype '" + s + "' (expected fp32 or bf16)");
}

CompileOptions compile_options(Mode mode, DType compute) {
  if (mode == Mode::kEager && compute != DType::F32)
    throw Error("--dtype bf16 needs --mode graph (eager mode computes in fp32)");
  CompileOptions o;
  o.compute = compute;
  return o;
}

GraphFunction::Signature GraphFunction::signature_of(const std::vector<Tensor>& inputs) {
  Signature s;
  for (const Tensor& t : inputs) {
    if (!t.defined()) throw Error("graph mode: an input of the function is undefined");
    s.emplace_back(t.shape(), t.dtype());
  }
  return s;
}

const Executor* GraphFunction::executor_for(const std::vector<Tensor>& inputs) const {
  auto it = cache_.find(signature_of(inputs));
  return it == cache_.end() ? nullptr : it->second.get();
}

std::vector<Tensor> GraphFunction::operator()(const std::vector<Tensor>& inputs, Profile* profile) {
  const Signature sig = signature_of(inputs);
  auto it = cache_.find(sig);
  if (it == cache_.end()) {
    CompileStats stats;
    stats.function = name_;
    const double t0 = now_s();
    std::vector<InputSpec> specs;
    for (const auto& [shape, dtype] : sig) specs.push_back({shape, dtype});
    Graph g = trace(fn_, specs);
    const double t1 = now_s();
    stats.passes = run_passes(g, options_);
    stats.compute = prepared_compute(options_);
    for (const Node& n : g.nodes) {
      if (!n.prepared) continue;
      ++stats.prepared_ops;
      stats.packed_weight_bytes += n.prepared->packed_weight_bytes();
    }
    const double t2 = now_s();
    dump_if_asked(g, name_);
    stats.nodes = g.nodes.size();
    for (const auto& v : g.values) stats.constants += v.kind == ValueKind::kConstant && v.constant.defined();
    auto ex = std::make_unique<Executor>(std::move(g), workspace_, options_.repeated_inputs);
    stats.arena_bytes = ex->memory_plan().arena_bytes;
    stats.planned_bytes = ex->memory_plan().planned_bytes;
    stats.kept_nodes = ex->kept_nodes();
    stats.trace_s = t1 - t0;
    stats.passes_s = t2 - t1;
    stats.total_s = now_s() - t0;
    compiles_.push_back(std::move(stats));
    it = cache_.emplace(sig, std::move(ex)).first;
  }
  return it->second->run(inputs, profile);
}

}  // namespace taiyi::graph
