// EulerAncestralDiscreteScheduler of diffusers 0.27.2 (schedulers/scheduling_euler_ancestral_discrete.py):
// an Euler step down to sigma_down, plus fresh noise of scale sigma_up drawn from the generator every step.
#pragma once

#include "taiyi/sched/scheduler.h"
#include "taiyi/sched/training_schedule.h"

namespace taiyi::sched {

class EulerAncestralDiscreteScheduler : public Scheduler {
 public:
  explicit EulerAncestralDiscreteScheduler(const io::ConfigReader& config);
  const char* name() const override { return "euler_a"; }
  void set_timesteps(int num_inference_steps) override;
  float init_noise_sigma() const override;
  Tensor scale_model_input(const Tensor& sample, size_t step) const override;
  // Draws one standard-normal tensor of sample's shape per call, the last step too (its sigma_up is 0).
  Tensor step(const Tensor& model_output, size_t step, const Tensor& sample, const NoiseFn& noise) override;
  bool needs_noise() const override { return true; }

 private:
  int num_train_timesteps_;
  Prediction prediction_type_;
  std::string timestep_spacing_;
  int64_t steps_offset_;
  std::vector<float> train_sigmas_;
};

}  // namespace taiyi::sched
