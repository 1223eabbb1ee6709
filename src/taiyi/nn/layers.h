// The torch.nn layers the models are made of, with torch's parameter names
// (weight, bias) and shapes. Each is a thin owner of its parameters that calls
// one op; a default-constructed layer is "absent" (e.g. no conv_shortcut).
#pragma once

#include "taiyi/nn/parameters.h"
#include "taiyi/ops/ops.h"

namespace taiyi::nn {

class Linear {
 public:
  Linear() = default;
  Linear(const Scope& s, int64_t in, int64_t out, bool bias = true);
  Tensor operator()(const Tensor& x) const;
  bool present() const { return weight_ != nullptr; }
  int64_t in_features = 0, out_features = 0;

 private:
  Parameter* weight_ = nullptr;
  Parameter* bias_ = nullptr;
};

class Conv2d {
 public:
  Conv2d() = default;
  // Square kernel; `params` gives stride and padding (default: "same" padding, stride 1).
  Conv2d(const Scope& s, int64_t in, int64_t out, int kernel, ops::Conv2dParams params, bool bias = true);
  Conv2d(const Scope& s, int64_t in, int64_t out, int kernel)
      : Conv2d(s, in, out, kernel, ops::Conv2dParams::same((kernel - 1) / 2)) {}
  Tensor operator()(const Tensor& x) const;
  bool present() const { return weight_ != nullptr; }
  int64_t in_channels = 0, out_channels = 0;

 private:
  Parameter* weight_ = nullptr;
  Parameter* bias_ = nullptr;
  ops::Conv2dParams params_;
};

class GroupNorm {
 public:
  GroupNorm() = default;
  GroupNorm(const Scope& s, int groups, int64_t channels, float eps);
  Tensor operator()(const Tensor& x) const;

 private:
  Parameter* weight_ = nullptr;
  Parameter* bias_ = nullptr;
  int groups_ = 1;
  float eps_ = 1e-5f;
};

class LayerNorm {
 public:
  LayerNorm() = default;
  LayerNorm(const Scope& s, int64_t dim, float eps);
  Tensor operator()(const Tensor& x) const;

 private:
  Parameter* weight_ = nullptr;
  Parameter* bias_ = nullptr;
  float eps_ = 1e-5f;
};

// torch.nn.Embedding: weight [num, dim]; rows picked by integer ids.
class Embedding {
 public:
  Embedding() = default;
  Embedding(const Scope& s, int64_t num, int64_t dim);
  Tensor operator()(const Tensor& ids) const { return ops::embedding(value_of(weight_), ids); }
  const Tensor& weight() const { return value_of(weight_); }

 private:
  Parameter* weight_ = nullptr;
};

}  // namespace taiyi::nn
