#include "taiyi/graph/memory_plan.h"

#include <algorithm>
#include <numeric>

namespace taiyi::graph {

namespace {

bool is_contiguous(const Value& v) {
  int64_t expected = 1;
  for (int i = static_cast<int>(v.shape.size()) - 1; i >= 0; --i) {
    if (v.shape[i] == 1) continue;
    if (v.strides[i] != expected) return false;
    expected *= v.shape[i];
  }
  return true;
}

constexpr size_t kAlign = 64;

}  // namespace

bool node_is_alias(const Graph& g, const Node& n) {
  switch (n.kind) {
    case ops::OpKind::kPermute:
    case ops::OpKind::kSlice: return true;
    case ops::OpKind::kReshape: return is_contiguous(g.values[n.inputs[0]]);
    case ops::OpKind::kContiguous: return is_contiguous(g.values[n.inputs[0]]);
    default: return false;
  }
}

// Whether view value v shows all of its base buffer from its start: made by reshapes and permutes
// only (a slice starts elsewhere or shows part of it).
bool whole_view(const Graph& g, int v, const std::vector<bool>& is_view) {
  while (is_view[v]) {
    const Node& n = g.nodes[g.values[v].producer];
    if (n.kind == ops::OpKind::kSlice) return false;
    v = n.inputs[0];
  }
  return true;
}

// Whether node i's output may take the memory of its fused residual (4th input of a prepared
// conv2d or linear), so that the epilogue adds into it in place with no copy first: the residual
// is its buffer's base, an earlier in-place output, or a reshaped or permuted view of all of one
// (the transformer's input, [B, H W, C] over the proj_in convolution's channels-last output), with
// the output's shape, strides and dtype (so each element is at the same address in both); nothing
// reads that buffer after node i (group_last: the last read of any value in it); the op's x is
// not in it; and neither value is a graph output or kept in memory of its own. A linear's multiply
// post-op input is no residual (oneDNN's binary post-op is not promised to read before it writes).
bool may_take_residual(const Graph& g, size_t i, const std::vector<int>& alias_of, const std::vector<bool>& is_view,
                       const std::vector<int>& group_last, const std::vector<bool>* own_memory) {
  const Node& n = g.nodes[i];
  if (!n.prepared || !ops::has_fused_residual(n.attrs, n.inputs) ||
      (n.kind != ops::OpKind::kConv2d && n.kind != ops::OpKind::kLinear))
    return false;
  const int r = n.inputs[3];
  if (r < 0 || !whole_view(g, r, is_view)) return false;
  const int base = alias_of[r];
  if (g.values[base].kind != ValueKind::kNode || group_last[base] != static_cast<int>(i)) return false;
  if (alias_of[n.inputs[0]] == base || g.is_output(r) || g.is_output(n.output)) return false;
  const auto own = [&](int v) { return own_memory && static_cast<size_t>(v) < own_memory->size() && (*own_memory)[v]; };
  if (own(r) || own(base) || own(n.output)) return false;
  const Value &res = g.values[r], &out = g.values[n.output];
  // (of one dtype: summed in place by oneDNN's sum post-op; a linear adds a residual of the other
  // dtype by a binary post-op, not in place, as above)
  return res.shape == out.shape && res.strides == out.strides && res.dtype == out.dtype;
}

MemoryPlan plan_memory(const Graph& g, const std::vector<bool>* own_memory) {
  const size_t nv = g.values.size();
  MemoryPlan plan;
  plan.offset.assign(nv, MemoryPlan::kNotPlanned);
  plan.alias_of.resize(nv);
  std::iota(plan.alias_of.begin(), plan.alias_of.end(), 0);

  // last_read[v]: the last node that reads v or any view of it.
  std::vector<int> last_read(nv, -1);
  for (size_t i = 0; i < g.nodes.size(); ++i)
    for (int v : g.nodes[i].inputs)
      if (v >= 0) last_read[v] = std::max(last_read[v], static_cast<int>(i));
  for (size_t i = g.nodes.size(); i-- > 0;)
    if (node_is_alias(g, g.nodes[i]))
      last_read[g.nodes[i].inputs[0]] = std::max(last_read[g.nodes[i].inputs[0]], last_read[g.nodes[i].output]);
  // Views alias their input's buffer; an output that takes its residual's memory in place aliases
  // the residual's buffer, whose last read then moves on to the output's.
  std::vector<bool> is_view(nv, false);
  std::vector<int> group_last = last_read;
  std::vector<int> in_place(g.nodes.size(), -1);
  for (size_t i = 0; i < g.nodes.size(); ++i) {
    const Node& n = g.nodes[i];
    if (node_is_alias(g, n)) {
      plan.alias_of[n.output] = plan.alias_of[n.inputs[0]];
      is_view[n.output] = true;
    } else if (may_take_residual(g, i, plan.alias_of, is_view, group_last, own_memory)) {
      const int base = plan.alias_of[n.inputs[3]];
      in_place[i] = n.inputs[3];
      plan.alias_of[n.output] = base;
      group_last[base] = std::max(group_last[base], last_read[n.output]);
    }
  }

  // Live range of each base buffer: from its producer to the last reader of it or any alias of it.
  std::vector<int> first(nv, -1), last(nv, -1);
  for (size_t i = 0; i < g.nodes.size(); ++i) {
    const Node& n = g.nodes[i];
    if (plan.alias_of[n.output] == n.output) first[n.output] = static_cast<int>(i);
    for (int v : n.inputs)
      if (v >= 0) last[plan.alias_of[v]] = std::max(last[plan.alias_of[v]], static_cast<int>(i));
    last[plan.alias_of[n.output]] = std::max(last[plan.alias_of[n.output]], static_cast<int>(i));
  }
  // A graph output (or a view of one) must outlive the run: its base is not planned.
  std::vector<bool> escapes(nv, false);
  for (int v : g.outputs) escapes[plan.alias_of[v]] = true;
  if (own_memory)
    for (size_t v = 0; v < nv && v < own_memory->size(); ++v)
      if ((*own_memory)[v]) escapes[plan.alias_of[v]] = true;

  struct Buffer {
    int value;
    size_t bytes;
    int first, last;
  };
  std::vector<Buffer> buffers;
  for (size_t v = 0; v < nv; ++v) {
    if (first[v] < 0 || escapes[v] || plan.alias_of[v] != static_cast<int>(v)) continue;
    const Value& val = g.values[v];
    const size_t bytes =
        (static_cast<size_t>(shape_numel(val.shape)) * dtype_size(val.dtype) + kAlign - 1) / kAlign * kAlign;
    if (bytes == 0) continue;
    buffers.push_back({static_cast<int>(v), bytes, first[v], last[v]});
    plan.planned_bytes += bytes;
  }
  // Greedy by size: each buffer takes the lowest offset that no placed buffer with an
  // overlapping live range occupies.
  std::vector<size_t> order(buffers.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return buffers[a].bytes > buffers[b].bytes; });
  std::vector<size_t> placed;
  for (size_t idx : order) {
    const Buffer& b = buffers[idx];
    std::vector<std::pair<int64_t, int64_t>> taken;  // [begin, end) of overlapping placed buffers
    for (size_t p : placed) {
      const Buffer& o = buffers[p];
      if (o.first <= b.last && b.first <= o.last)
        taken.emplace_back(plan.offset[o.value], plan.offset[o.value] + static_cast<int64_t>(o.bytes));
    }
    std::sort(taken.begin(), taken.end());
    int64_t at = 0;
    for (const auto& [begin, end] : taken) {
      if (at + static_cast<int64_t>(b.bytes) <= begin) break;
      at = std::max(at, end);
    }
    plan.offset[b.value] = at;
    plan.arena_bytes = std::max(plan.arena_bytes, static_cast<size_t>(at) + b.bytes);
    placed.push_back(idx);
  }
  // In-place outputs write at their residual's buffer's offset (a whole view starts there).
  for (size_t i = 0; i < g.nodes.size(); ++i)
    if (in_place[i] >= 0) plan.offset[g.nodes[i].output] = plan.offset[plan.alias_of[in_place[i]]];
  return plan;
}

}  // namespace taiyi::graph
