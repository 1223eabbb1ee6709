#include "taiyi/graph/executor.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

namespace taiyi::graph {

std::shared_ptr<Storage> Workspace::reserve(size_t bytes) {
  if (!mem_ || mem_->bytes() < bytes) {
    mem_.reset();  // free the smaller block first
    mem_ = Storage::allocate(bytes);
  }
  return mem_;
}

namespace {

// The nodes whose outputs depend only on the given inputs and constants, and that are worth
// keeping: not views (those are free to redo, and a view of an input would keep the caller's
// memory), not graph outputs (the caller owns those). Views of kept values are recomputed.
std::vector<bool> nodes_to_keep(const Graph& g, const std::vector<int>& repeated_inputs) {
  std::vector<bool> invariant(g.values.size(), false), keep(g.nodes.size(), false);
  for (size_t v = 0; v < g.values.size(); ++v) invariant[v] = g.values[v].kind == ValueKind::kConstant;
  for (int i : repeated_inputs) invariant[g.inputs.at(static_cast<size_t>(i))] = true;
  for (size_t i = 0; i < g.nodes.size(); ++i) {
    const Node& n = g.nodes[i];
    bool inv = true;
    for (int v : n.inputs) inv = inv && (v < 0 || invariant[v]);
    invariant[n.output] = inv;
    keep[i] = inv && !node_is_alias(g, n) && !g.is_output(n.output);
  }
  return keep;
}

bool same_content(const Tensor& a, const Tensor& b) {
  if (a.shape() != b.shape() || a.dtype() != b.dtype()) return false;
  const Tensor ac = a.contiguous(), bc = b.contiguous();
  return std::memcmp(ac.raw_data(), bc.raw_data(), static_cast<size_t>(ac.numel()) * dtype_size(ac.dtype())) == 0;
}

}  // namespace

Executor::Executor(Graph g, std::shared_ptr<Workspace> workspace, std::vector<int> repeated_inputs)
    : g_(std::move(g)),
      workspace_(workspace ? std::move(workspace) : std::make_shared<Workspace>()),
      repeated_inputs_(std::move(repeated_inputs)) {
  g_.validate();
  for (int i : repeated_inputs_)
    if (i < 0 || static_cast<size_t>(i) >= g_.inputs.size())
      throw Error("graph: repeated input " + std::to_string(i) + " of a graph with " +
                  std::to_string(g_.inputs.size()) + " inputs");
  kept_ = nodes_to_keep(g_, repeated_inputs_);
  std::vector<bool> own_memory(g_.values.size(), false);
  for (size_t i = 0; i < g_.nodes.size(); ++i) own_memory[g_.nodes[i].output] = kept_[i];
  plan_ = plan_memory(g_, &own_memory);
  kept_values_.resize(g_.values.size());
  size_t scratch = 0;
  for (const Node& n : g_.nodes)
    if (n.prepared) scratch = std::max(scratch, n.prepared->scratch_bytes());
  scratch_offset_ = (plan_.arena_bytes + 63) / 64 * 64;
  workspace_bytes_ = scratch_offset_ + scratch;
  workspace_->reserve(workspace_bytes_);  // at compile time, not in the first run
  std::vector<int> last_use(g_.values.size(), -1);
  for (size_t i = 0; i < g_.nodes.size(); ++i)
    for (int v : g_.nodes[i].inputs)
      if (v >= 0) last_use[v] = static_cast<int>(i);
  std::vector<bool> keep(g_.values.size(), false);
  for (int v : g_.outputs) keep[v] = true;
  release_after_.resize(g_.nodes.size());
  for (size_t v = 0; v < g_.values.size(); ++v)
    if (last_use[v] >= 0 && !keep[v] && g_.values[v].kind == ValueKind::kNode)
      release_after_[last_use[v]].push_back(static_cast<int>(v));
}

size_t Executor::kept_nodes() const { return static_cast<size_t>(std::count(kept_.begin(), kept_.end(), true)); }

// TAIYI_PROFILE_DETAIL=1: profile rows per op and output shape (and prepared kernel), not per op;
// with TAIYI_PROFILE_NODES=1 also one row per node (its index after #), to tell its calls apart.
static bool detailed_profile() {
  static const bool on = [] {
    const char* v = std::getenv("TAIYI_PROFILE_DETAIL");
    return v && *v && std::string(v) != "0";
  }();
  return on;
}

std::string format_profile(const Profile& p, double total_s) {
  std::vector<std::pair<std::string, OpProfile>> rows(p.begin(), p.end());
  std::sort(rows.begin(), rows.end(), [](const auto& a, const auto& b) { return a.second.seconds > b.second.seconds; });
  std::string out = "  op                       calls    seconds   share    GFLOP   GFLOP/s\n";
  char line[512];
  for (const auto& [name, r] : rows) {
    std::snprintf(line, sizeof line, "  %-22s %7lld %10.4f %6.1f%% %8.1f %9.1f\n", name.c_str(),
                  static_cast<long long>(r.calls), r.seconds, total_s > 0 ? 100.0 * r.seconds / total_s : 0.0,
                  r.flops * 1e-9, r.seconds > 0 ? r.flops * 1e-9 / r.seconds : 0.0);
    out += line;
  }
  return out;
}

std::vector<Tensor> Executor::run(const std::vector<Tensor>& inputs, Profile* profile) const {
  if (inputs.size() != g_.inputs.size())
    throw Error("graph: expected " + std::to_string(g_.inputs.size()) + " inputs, got " +
                std::to_string(inputs.size()));
  std::vector<Tensor> vals(g_.values.size());
  for (size_t v = 0; v < g_.values.size(); ++v)
    if (g_.values[v].kind == ValueKind::kConstant) vals[v] = g_.values[v].constant;
  for (size_t i = 0; i < inputs.size(); ++i) {
    const Value& spec = g_.values[g_.inputs[i]];
    if (inputs[i].shape() != spec.shape || inputs[i].dtype() != spec.dtype)
      throw Error("graph: input " + std::to_string(i) + " is " + inputs[i].describe() + ", the graph was built for " +
                  dtype_name(spec.dtype) + shape_str(spec.shape));
    vals[g_.inputs[i]] = inputs[i];
  }
  // Kept outputs serve this run when every repeated input has the content of the last run's.
  bool reuse = kept_valid_ && !repeated_inputs_.empty();
  for (size_t k = 0; reuse && k < repeated_inputs_.size(); ++k)
    reuse = same_content(inputs[repeated_inputs_[k]], repeated_copy_[k]);
  if (!reuse && !repeated_inputs_.empty()) {
    kept_valid_ = false;  // until this run has computed them
    repeated_copy_.clear();
    for (int i : repeated_inputs_) repeated_copy_.push_back(inputs[i].contiguous().clone());
  }
  reused_runs_ += reuse;
  const std::shared_ptr<Storage> arena = workspace_->reserve(workspace_bytes_);
  std::byte* scratch = arena->data() + scratch_offset_;
  std::vector<Tensor> args;
  for (size_t i = 0; i < g_.nodes.size(); ++i) {
    const Node& n = g_.nodes[i];
    if (reuse && kept_[i]) {
      vals[n.output] = kept_values_[n.output];
      continue;
    }
    args.clear();
    if (n.prepared && n.kind != ops::OpKind::kAttention) {
      // A prepared conv2d or linear holds its weights (and a prologue's gamma and beta): it reads x,
      // and the residual of a fused epilogue (4th input). A prepared attention reads all its inputs.
      args.push_back(vals[n.inputs[0]]);
      if (n.inputs.size() > 3 && n.inputs[3] >= 0) args.push_back(vals[n.inputs[3]]);
    } else {
      for (int v : n.inputs) args.push_back(v >= 0 ? vals[v] : Tensor());
    }
    const int64_t offset = plan_.offset[n.output];
    auto execute = [&] {
      const Value& v = g_.values[n.output];
      if (n.prepared) {
        // A prepared op may write a dense non-NCHW order (channels-last): the value's strides say which.
        Tensor target = offset == MemoryPlan::kNotPlanned
                            ? Tensor::from_storage(Storage::allocate(shape_numel(v.shape) * dtype_size(v.dtype)), 0,
                                                   v.shape, v.strides, v.dtype)
                            : Tensor::from_storage(arena, static_cast<size_t>(offset), v.shape, v.strides, v.dtype);
        n.prepared->run(args, target, scratch);
        ops::add_flop_count(n.prepared->flops());
        return target;
      }
      if (offset == MemoryPlan::kNotPlanned) return ops::run_op(n.kind, args, n.attrs);
      // Dense, in the layout the passes chose (channels_last_activations): ops that cannot write
      // it compute elsewhere and are copied in below.
      Tensor target = Tensor::from_storage(arena, static_cast<size_t>(offset), v.shape, v.strides, v.dtype);
      const Tensor r = ops::run_op_into(n.kind, args, n.attrs, target);
      if (r.storage() != target.storage() || r.byte_offset() != target.byte_offset()) target.copy_from(r);
      return target;
    };
    if (profile) {
      const uint64_t f0 = ops::flop_count();
      const auto t0 = std::chrono::steady_clock::now();
      vals[n.output] = execute();
      std::string key = ops::op_name(n.kind);
      if (detailed_profile()) {
        key.append(" ").append(shape_str(g_.values[n.output].shape));
        if (n.prepared) key.append(" ").append(n.prepared->describe());
        if (getenv("TAIYI_PROFILE_NODES")) key.append(" #").append(std::to_string(i));
      }
      OpProfile& r = (*profile)[key];
      r.seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      r.calls += 1;
      r.flops += static_cast<double>(ops::flop_count() - f0);
    } else {
      vals[n.output] = execute();
    }
    if (kept_[i]) {
      // An eager op may hand back its input unchanged: never keep a view of the caller's memory.
      Tensor& kept = kept_values_[n.output];
      kept = vals[n.output];
      for (const Tensor& in : inputs)
        if (kept.storage() == in.storage()) kept = kept.clone();
    }
    for (int v : release_after_[i]) vals[v] = Tensor();
  }
  if (!repeated_inputs_.empty()) kept_valid_ = true;
  std::vector<Tensor> out;
  for (int v : g_.outputs) out.push_back(vals[v]);
  return out;
}

}  // namespace taiyi::graph
