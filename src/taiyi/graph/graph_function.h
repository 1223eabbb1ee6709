// A function of tensors run in graph mode: the first call for an input signature
// (shapes and dtypes) traces the function, runs the passes and builds an
// executor; later calls with that signature replay it. Compiled graphs live as
// long as the GraphFunction.
//
//   GraphFunction unet([&](const auto& in) { return std::vector{model.forward(in[0], in[1], in[2])}; }, "unet");
//   Tensor eps = unet({sample, t, context})[0];
#pragma once

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "taiyi/graph/executor.h"
#include "taiyi/graph/passes/passes.h"
#include "taiyi/graph/tracer.h"

namespace taiyi::graph {

// How model code runs: op by op, or traced once per signature and replayed.
enum class Mode { kEager, kGraph };
Mode parse_mode(const std::string& s);  // "eager" | "graph"; throws naming the value otherwise
const char* mode_name(Mode m);
// "fp32" | "bf16" (the --dtype flag) -> the compute dtype; throws naming the value otherwise.
DType parse_compute_dtype(const std::string& s);
// Checks a mode and dtype go together (bf16 is a graph-mode compilation) and returns the options.
CompileOptions compile_options(Mode mode, DType compute);

struct CompileStats {
  std::string function;
  double trace_s = 0, passes_s = 0, total_s = 0;
  size_t nodes = 0, constants = 0;
  size_t arena_bytes = 0, planned_bytes = 0;  // activation arena vs the sum of its buffers
  size_t prepared_ops = 0, packed_weight_bytes = 0;
  size_t kept_nodes = 0;  // nodes whose outputs are kept between calls (CompileOptions::repeated_inputs)
  DType compute = DType::F32;  // what the matrix products run in (bf16 may have fallen back to f32)
  std::vector<PassReport> passes;
};

class GraphFunction {
 public:
  // workspace: arenas and scratch shared with other functions that never run while this one does
  // (its own signatures always share one); null: its own.
  GraphFunction(TraceFn fn, std::string name, CompileOptions options = {},
                std::shared_ptr<Workspace> workspace = nullptr)
      : fn_(std::move(fn)),
        name_(std::move(name)),
        options_(options),
        workspace_(workspace ? std::move(workspace) : std::make_shared<Workspace>()) {}
  std::vector<Tensor> operator()(const std::vector<Tensor>& inputs, Profile* profile = nullptr);

  // Compiles each call's signature that has not been seen yet; stats of every compile so far.
  const std::vector<CompileStats>& compiles() const { return compiles_; }
  const Executor* executor_for(const std::vector<Tensor>& inputs) const;

 private:
  using Signature = std::vector<std::pair<Shape, DType>>;
  static Signature signature_of(const std::vector<Tensor>& inputs);

  TraceFn fn_;
  std::string name_;
  CompileOptions options_;
  std::shared_ptr<Workspace> workspace_;
  std::map<Signature, std::unique_ptr<Executor>> cache_;
  std::vector<CompileStats> compiles_;
};

}  // namespace taiyi::graph
