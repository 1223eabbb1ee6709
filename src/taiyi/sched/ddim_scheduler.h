// DDIMScheduler of diffusers 0.27.2 (schedulers/scheduling_ddim.py), deterministic (eta 0, as the pipeline
// calls it): no noise is drawn.
#pragma once

#include "taiyi/sched/scheduler.h"
#include "taiyi/sched/training_schedule.h"

namespace taiyi::sched {

class DdimScheduler : public Scheduler {
 public:
  explicit DdimScheduler(const io::ConfigReader& config);
  const char* name() const override { return "ddim"; }
  void set_timesteps(int num_inference_steps) override;
  Tensor step(const Tensor& model_output, size_t step, const Tensor& sample, const NoiseFn& noise) override;

 private:
  int num_train_timesteps_;
  Prediction prediction_type_;
  std::string timestep_spacing_;
  int64_t steps_offset_;
  bool clip_sample_;
  float clip_sample_range_;
  float final_alpha_cumprod_;
  int num_inference_steps_ = 0;
};

}  // namespace taiyi::sched
