// Follows diffusers 0.27.2 schedulers/scheduling_ddim.py: DDIMScheduler.__init__, set_timesteps and step with
// eta 0 (std_dev_t 0, no variance noise), in float32 as torch computes them.
#include "taiyi/sched/ddim_scheduler.h"

#include <algorithm>
#include <cmath>

namespace taiyi::sched {

DdimScheduler::DdimScheduler(const io::ConfigReader& config) {
  config_path_ = config.path();
  TrainingSchedule ts = read_training_schedule(config);
  num_train_timesteps_ = ts.num_train_timesteps;
  betas_ = std::move(ts.betas);
  alphas_cumprod_ = std::move(ts.alphas_cumprod);
  prediction_type_ = read_prediction_type(config, {"epsilon", "sample", "v_prediction"});
  timestep_spacing_ = read_choice(config, "timestep_spacing", "leading", {"linspace", "leading", "trailing"});
  steps_offset_ = config.get<int64_t>("steps_offset", 0);
  clip_sample_ = config.get<bool>("clip_sample", true);  // DDIM's default is true; SD configs set false
  clip_sample_range_ = static_cast<float>(config.get<double>("clip_sample_range", 1.0));
  if (clip_sample_ && !(clip_sample_range_ > 0)) config.fail("clip_sample_range", "expected a positive number");
  refuse_true(config, "thresholding", "dynamic thresholding is for pixel-space models, not SD latents");
  refuse_true(config, "rescale_betas_zero_snr", "zero-terminal-SNR rescaling is not implemented");
  final_alpha_cumprod_ = config.get<bool>("set_alpha_to_one", true) ? 1.0f : alphas_cumprod_[0];
}

void DdimScheduler::set_timesteps(int num_inference_steps) {
  begin_set_timesteps(num_inference_steps, num_train_timesteps_);
  num_inference_steps_ = num_inference_steps;
  std::vector<double> t = spaced_timesteps(timestep_spacing_, num_train_timesteps_, num_inference_steps, steps_offset_);
  for (double& v : t) {
    v = np_round(v);  // .round().astype(np.int64)
    if (v < 0 || v > num_train_timesteps_ - 1)
      throw Error(config_path_ + ": timestep_spacing \"" + timestep_spacing_ + "\" with steps_offset " +
                  std::to_string(steps_offset_) + " and " + std::to_string(num_inference_steps) +
                  " steps gives timestep " + std::to_string(static_cast<int64_t>(v)) + ", outside 0.." +
                  std::to_string(num_train_timesteps_ - 1) + " (diffusers would index out of the schedule)");
  }
  timesteps_ = std::move(t);
}

Tensor DdimScheduler::step(const Tensor& model_output_in, size_t step, const Tensor& sample_in, const NoiseFn&) {
  auto [model_output, sample] = begin_step(model_output_in, step, sample_in);
  const int64_t n = model_output.numel();
  const auto timestep = static_cast<int64_t>(timesteps_[step]);
  // diffusers steps back by T // N whatever the spacing.
  const int64_t prev_timestep = timestep - num_train_timesteps_ / num_inference_steps_;
  const float alpha_prod_t = alphas_cumprod_[timestep];
  const float alpha_prod_t_prev = prev_timestep >= 0 ? alphas_cumprod_[prev_timestep] : final_alpha_cumprod_;
  const float beta_prod_t = 1.0f - alpha_prod_t;
  const float sa = std::sqrt(alpha_prod_t), sb = std::sqrt(beta_prod_t);
  // eta 0: std_dev_t = 0, so the direction coefficient is sqrt(1 - alpha_prod_t_prev - 0).
  const float dir_coeff = std::sqrt(1.0f - alpha_prod_t_prev - 0.0f);
  const float sa_prev = std::sqrt(alpha_prod_t_prev);
  const float* mo = model_output.data<float>();
  const float* x = sample.data<float>();
  Tensor prev = Tensor::empty(sample.shape());
  float* p = prev.data<float>();
  for (int64_t i = 0; i < n; ++i) {
    float x0, eps;
    if (prediction_type_ == Prediction::kEpsilon) {
      x0 = (x[i] - sb * mo[i]) / sa;
      eps = mo[i];
    } else if (prediction_type_ == Prediction::kSample) {
      x0 = mo[i];
      eps = (x[i] - sa * x0) / sb;
    } else {  // v_prediction
      x0 = sa * x[i] - sb * mo[i];
      eps = sa * mo[i] + sb * x[i];
    }
    if (clip_sample_) x0 = std::clamp(x0, -clip_sample_range_, clip_sample_range_);
    p[i] = sa_prev * x0 + dir_coeff * eps;
  }
  return prev;
}

}  // namespace taiyi::sched
