// EulerDiscreteScheduler of diffusers 0.27.2 (schedulers/scheduling_euler_discrete.py) with s_churn 0 (as the
// pipeline calls it): Karras et al.'s Algorithm 2 without churn, optionally on Karras sigmas.
#pragma once

#include <optional>

#include "taiyi/sched/scheduler.h"
#include "taiyi/sched/training_schedule.h"

namespace taiyi::sched {

class EulerDiscreteScheduler : public Scheduler {
 public:
  explicit EulerDiscreteScheduler(const io::ConfigReader& config);
  const char* name() const override { return "euler"; }
  void set_timesteps(int num_inference_steps) override;
  float init_noise_sigma() const override;
  Tensor scale_model_input(const Tensor& sample, size_t step) const override;
  // The noise is drawn and ignored (s_churn 0): diffusers' step() calls randn_tensor unconditionally, so a
  // seeded generator only stays in step with diffusers if this one is consumed the same way.
  Tensor step(const Tensor& model_output, size_t step, const Tensor& sample, const NoiseFn& noise) override;
  bool needs_noise() const override { return true; }

 private:
  int num_train_timesteps_;
  Prediction prediction_type_;
  std::string timestep_spacing_;
  int64_t steps_offset_;
  bool use_karras_sigmas_;
  bool continuous_v_timesteps_;  // timestep_type "continuous" with v_prediction: timesteps are 0.25 * log(sigma)
  std::optional<double> sigma_min_, sigma_max_;
  std::vector<float> train_sigmas_, log_sigmas_;
};

}  // namespace taiyi::sched
