// DPMSolverMultistepScheduler of diffusers 0.27.2 (schedulers/scheduling_dpmsolver_multistep.py) as
// DPM-Solver++ (algorithm_type "dpmsolver++", data prediction) of order 1 or 2, midpoint or heun, optionally on
// Karras sigmas: the "DPM++ 2M" and "DPM++ 2M Karras" samplers.
#pragma once

#include "taiyi/sched/scheduler.h"
#include "taiyi/sched/training_schedule.h"

namespace taiyi::sched {

class DpmSolverMultistepScheduler : public Scheduler {
 public:
  // `name` is what name() reports: "dpmpp_2m" or "dpmpp_2m_karras".
  DpmSolverMultistepScheduler(const io::ConfigReader& config, std::string name);
  const char* name() const override { return name_.c_str(); }
  void set_timesteps(int num_inference_steps) override;
  Tensor step(const Tensor& model_output, size_t step, const Tensor& sample, const NoiseFn& noise) override;

 private:
  std::string name_;
  int num_train_timesteps_;
  Prediction prediction_type_;
  std::string timestep_spacing_, solver_type_, final_sigmas_type_;
  int64_t steps_offset_;
  int solver_order_;
  bool lower_order_final_, euler_at_final_, use_karras_sigmas_;
  double lambda_min_clipped_;
  std::vector<float> train_sigmas_, log_sigmas_;
  // The converted model outputs (x0 predictions) of the previous and the current step; lower_order_nums.
  Tensor prev_x0_, cur_x0_;
  int lower_order_nums_ = 0;
};

}  // namespace taiyi::sched
