// PNDMScheduler of diffusers 0.27.2 (schedulers/scheduling_pndm.py), PLMS path (skip_prk_steps true):
// Taiyi's and every SD 1.x checkpoint's default scheduler.
#pragma once

#include "taiyi/sched/scheduler.h"
#include "taiyi/sched/training_schedule.h"

namespace taiyi::sched {

class PndmScheduler : public Scheduler {
 public:
  explicit PndmScheduler(const io::ConfigReader& config);
  const char* name() const override { return "pndm"; }
  void set_timesteps(int num_inference_steps) override;
  Tensor step(const Tensor& model_output, size_t step, const Tensor& sample, const NoiseFn& noise) override;

 private:
  int num_train_timesteps_;
  Prediction prediction_type_;
  std::string timestep_spacing_;
  int64_t steps_offset_;
  float final_alpha_cumprod_;
  int num_inference_steps_ = 0;
  // step_plms state: the eps history (at most 4), the call counter and call 0's sample.
  std::vector<Tensor> ets_;
  int counter_ = 0;
  Tensor cur_sample_;
};

}  // namespace taiyi::sched
