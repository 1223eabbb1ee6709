// Named parameters of a model, declared by the modules as they are built from
// config.json, then filled from a weights file (or with random values for
// benchmarks). Names are the diffusers/transformers state-dict keys, so a
// checkpoint binds without a translation table (legacy names aside).
//
//   ParameterSet params;
//   Linear to_q(Scope(params, "mid_block.attentions.0.transformer_blocks.0.attn1") / "to_q", 320, 320, false);
//   params.load(io::read_component_weights(dir), "UNet2DConditionModel");
//   Tensor y = to_q(x);
#pragma once

#include <deque>
#include <functional>
#include <string>
#include <unordered_map>

#include "taiyi/io/model_folder.h"
#include "taiyi/tensor/tensor.h"

namespace taiyi::nn {

// How a parameter is filled by init_random (the scale follows torch's defaults
// so activations of a randomly initialised network stay in a sane range).
enum class Init { Weight, Bias, Ones, Zeros, Normal };

struct Parameter {
  std::string name;
  Shape shape;
  Init init = Init::Weight;
  int64_t fan_in = 1;
  Tensor value;  // undefined until loaded
};

// Maps a checkpoint tensor (name, tensor) to the model's name and layout; returns
// false to skip the tensor (e.g. BERT's position_ids buffer).
using WeightAdapter = std::function<bool(std::string& name, Tensor& t)>;

class ParameterSet {
 public:
  Parameter* add(const std::string& name, Shape shape, Init init, int64_t fan_in);
  const Parameter* find(const std::string& name) const;

  // Binds every parameter from `w`, converting to f32. Missing, unexpected and
  // wrong-shaped tensors throw Error naming the tensor and its file.
  void load(const io::ComponentWeights& w, const std::string& model_name, const WeightAdapter& adapt = {});
  void init_random(uint64_t seed);

  size_t size() const { return params_.size(); }
  int64_t numel() const;
  const std::deque<Parameter>& all() const { return params_; }

 private:
  std::deque<Parameter> params_;  // deque: modules keep pointers, which must stay valid
  std::unordered_map<std::string, Parameter*> by_name_;
};

// Where a module's parameters go: a ParameterSet plus a dotted prefix.
class Scope {
 public:
  Scope(ParameterSet& set, std::string prefix = "") : set_(&set), prefix_(std::move(prefix)) {}
  Scope operator/(const std::string& child) const { return Scope(*set_, prefix_.empty() ? child : prefix_ + "." + child); }
  Scope operator/(int64_t index) const { return *this / std::to_string(index); }
  Parameter* param(const std::string& name, Shape shape, Init init, int64_t fan_in = 1) const;
  const std::string& prefix() const { return prefix_; }

 private:
  ParameterSet* set_;
  std::string prefix_;
};

// The value of a bound parameter (throws if the model was never loaded).
const Tensor& value_of(const Parameter* p);

}  // namespace taiyi::nn
