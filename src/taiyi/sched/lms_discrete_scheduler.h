// LMSDiscreteScheduler of diffusers 0.27.2 (schedulers/scheduling_lms_discrete.py): linear multistep of order 4
// on the sigma schedule, its coefficients integrated numerically as diffusers does with scipy's quad.
#pragma once

#include "taiyi/sched/scheduler.h"
#include "taiyi/sched/training_schedule.h"

namespace taiyi::sched {

class LmsDiscreteScheduler : public Scheduler {
 public:
  explicit LmsDiscreteScheduler(const io::ConfigReader& config);
  const char* name() const override { return "lms"; }
  void set_timesteps(int num_inference_steps) override;
  float init_noise_sigma() const override;
  Tensor scale_model_input(const Tensor& sample, size_t step) const override;
  Tensor step(const Tensor& model_output, size_t step, const Tensor& sample, const NoiseFn& noise) override;

 private:
  // get_lms_coefficient: the integral over [sigma_t, sigma_t+1] of the Lagrange basis polynomial
  // `current_order` through sigmas t, t-1, ..., t-order+1.
  double lms_coefficient(int order, size_t t, int current_order) const;

  static constexpr int kOrder = 4;  // step()'s default `order`, which the pipeline uses
  int num_train_timesteps_;
  Prediction prediction_type_;
  std::string timestep_spacing_;
  int64_t steps_offset_;
  bool use_karras_sigmas_;
  std::vector<float> train_sigmas_, log_sigmas_;
  std::vector<Tensor> derivatives_;  // newest last, at most kOrder
};

}  // namespace taiyi::sched
