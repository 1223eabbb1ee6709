#include "taiyi/nn/parameters.h"

#include <cmath>
#include <vector>

namespace taiyi::nn {

Parameter* ParameterSet::add(const std::string& name, Shape shape, Init init, int64_t fan_in) {
  if (by_name_.count(name)) throw Error("internal: parameter '" + name + "' declared twice");
  params_.push_back(Parameter{name, std::move(shape), init, fan_in, Tensor()});
  Parameter* p = &params_.back();
  by_name_[name] = p;
  return p;
}

const Parameter* ParameterSet::find(const std::string& name) const {
  auto it = by_name_.find(name);
  return it == by_name_.end() ? nullptr : it->second;
}

int64_t ParameterSet::numel() const {
  int64_t n = 0;
  for (const auto& p : params_) n += shape_numel(p.shape);
  return n;
}

void ParameterSet::load(const io::ComponentWeights& w, const std::string& model_name, const WeightAdapter& adapt) {
  std::unordered_map<std::string, bool> bound;
  for (const auto& [file_name, file_tensor] : w.tensors) {
    std::string name = file_name;
    Tensor t = file_tensor;
    const std::string& file = w.file_of.at(file_name);
    if (adapt && !adapt(name, t)) continue;
    auto it = by_name_.find(name);
    if (it == by_name_.end())
      throw Error(file + ": unexpected tensor '" + file_name + "' (not a parameter of " + model_name +
                  " as its config.json describes it)");
    Parameter* p = it->second;
    if (bound.count(name)) throw Error(file + ": tensor '" + name + "' given twice");
    if (t.shape() != p->shape)
      throw Error(file + ": tensor '" + file_name + "' has shape " + shape_str(t.shape()) + " but " + model_name +
                  " with this config.json needs " + shape_str(p->shape));
    if (!dtype_is_float(t.dtype()))
      throw Error(file + ": tensor '" + file_name + "' has dtype " + dtype_name(t.dtype()) +
                  ", expected a floating-point weight");
    p->value = t.to(DType::F32).contiguous();
    bound[name] = true;
  }
  std::vector<std::string> missing;
  for (const auto& p : params_)
    if (!bound.count(p.name)) missing.push_back(p.name);
  if (!missing.empty()) {
    std::string list;
    for (size_t i = 0; i < missing.size() && i < 5; ++i) list += (i ? ", '" : "'") + missing[i] + "'";
    if (missing.size() > 5) list += " and " + std::to_string(missing.size() - 5) + " more";
    throw Error(w.files_str() + ": missing tensor" + (missing.size() > 1 ? "s " : " ") + list + " needed by " +
                model_name);
  }
}

// splitmix64: a counter-based generator, so every element is independent of the
// thread that fills it and the result does not depend on the thread count.
static inline uint64_t splitmix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

void ParameterSet::init_random(uint64_t seed) {
  uint64_t stream = seed * 0x100000001b3ull;
  for (auto& p : params_) {
    p.value = Tensor::empty(p.shape, DType::F32);
    float* d = p.value.data<float>();
    const int64_t n = p.value.numel();
    const float bound = 1.0f / std::sqrt(static_cast<float>(std::max<int64_t>(p.fan_in, 1)));
    const uint64_t base = splitmix64(stream++) ;
    switch (p.init) {
      case Init::Ones: std::fill_n(d, n, 1.0f); break;
      case Init::Zeros: std::fill_n(d, n, 0.0f); break;
      case Init::Weight:
      case Init::Bias:
      case Init::Normal: {
        const float s = p.init == Init::Normal ? 1.0f : bound;
#pragma omp parallel for schedule(static)
        for (int64_t i = 0; i < n; ++i) {
          const uint64_t r = splitmix64(base + static_cast<uint64_t>(i));
          const float u = static_cast<float>(r >> 40) * (1.0f / 16777216.0f);  // [0, 1)
          d[i] = (2.0f * u - 1.0f) * s;
        }
        break;
      }
    }
  }
}

Parameter* Scope::param(const std::string& name, Shape shape, Init init, int64_t fan_in) const {
  return set_->add(prefix_.empty() ? name : prefix_ + "." + name, std::move(shape), init, fan_in);
}

const Tensor& value_of(const Parameter* p) {
  if (!p->value.defined()) throw Error("parameter '" + p->name + "' used before the model was loaded");
  return p->value;
}

}  // namespace taiyi::nn
