#include "taiyi/graph/tracer.h"

#include <map>
#include <tuple>
#include <unordered_map>

namespace taiyi::graph {

namespace {

class Tracer : public ops::Recorder {
 public:
  explicit Tracer(Graph& g) : g_(g) {}

  Tensor input(const InputSpec& spec) {
    Tensor t = ops::meta_tensor(spec.shape, spec.dtype);
    Value v;
    v.kind = ValueKind::kInput;
    v.shape = spec.shape;
    v.strides = t.strides();
    v.dtype = spec.dtype;
    const int id = g_.add_value(std::move(v));
    meta_ids_[t.storage().get()] = id;
    keep_alive_.push_back(t.storage());
    g_.inputs.push_back(id);
    return t;
  }

  // The value of a tensor the traced function returns or passes to an op.
  int value_of(const Tensor& t) {
    if (!t.defined()) return -1;
    if (t.is_meta()) {
      auto it = meta_ids_.find(t.storage().get());
      if (it == meta_ids_.end()) throw Error("graph trace: a tensor from outside this trace reached an op");
      return it->second;
    }
    const auto key = std::make_tuple(t.storage().get(), t.byte_offset(), t.shape(), t.strides(), t.dtype());
    auto it = constant_ids_.find(key);
    if (it != constant_ids_.end()) return it->second;
    Value v;
    v.kind = ValueKind::kConstant;
    v.shape = t.shape();
    v.strides = t.strides();
    v.dtype = t.dtype();
    v.constant = t;
    const int id = g_.add_value(std::move(v));
    constant_ids_[key] = id;
    return id;
  }

  Tensor record(ops::OpKind kind, const std::vector<Tensor>& inputs, const ops::OpAttrs& attrs,
                const Tensor& out) override {
    bool any_meta = false;
    for (const Tensor& t : inputs) any_meta = any_meta || t.is_meta();
    if (!any_meta) {  // constant folding: computed now, a constant from here on
      ops::RecordingScope eager(nullptr);
      return ops::run_op(kind, inputs, attrs);
    }
    Node n;
    n.kind = kind;
    n.attrs = attrs;
    for (const Tensor& t : inputs) n.inputs.push_back(value_of(t));
    // Every value gets its own meta storage (views included), which is its identity.
    Tensor result = Tensor::from_storage(Storage::meta(out.storage()->bytes()), out.byte_offset(), out.shape(),
                                         out.strides(), out.dtype());
    Value v;
    v.shape = out.shape();
    v.strides = out.strides();
    v.dtype = out.dtype();
    v.producer = static_cast<int>(g_.nodes.size());
    n.output = g_.add_value(std::move(v));
    meta_ids_[result.storage().get()] = n.output;
    keep_alive_.push_back(result.storage());  // so no later storage reuses the address
    g_.nodes.push_back(std::move(n));
    return result;
  }

 private:
  Graph& g_;
  std::unordered_map<const Storage*, int> meta_ids_;
  std::vector<std::shared_ptr<Storage>> keep_alive_;
  std::map<std::tuple<const Storage*, size_t, Shape, Strides, DType>, int> constant_ids_;
};

}  // namespace

Graph trace(const TraceFn& fn, const std::vector<InputSpec>& inputs) {
  Graph g;
  Tracer tracer(g);
  std::vector<Tensor> args;
  for (const auto& spec : inputs) args.push_back(tracer.input(spec));
  std::vector<Tensor> results;
  {
    ops::RecordingScope scope(&tracer);
    results = fn(args);
  }
  for (const Tensor& r : results) {
    if (!r.defined()) throw Error("graph trace: the traced function returned an undefined tensor");
    g.outputs.push_back(tracer.value_of(r));
  }
  g.validate();
  return g;
}

}  // namespace taiyi::graph
