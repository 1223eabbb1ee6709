// Follows diffusers 0.27.2 schedulers/scheduling_euler_ancestral_discrete.py: __init__, set_timesteps,
// init_noise_sigma, scale_model_input and step (sample upcast to float32 there, so float32 here).
#include "taiyi/sched/euler_ancestral_discrete_scheduler.h"

#include <cmath>

namespace taiyi::sched {

EulerAncestralDiscreteScheduler::EulerAncestralDiscreteScheduler(const io::ConfigReader& config) {
  config_path_ = config.path();
  TrainingSchedule ts = read_training_schedule(config);
  num_train_timesteps_ = ts.num_train_timesteps;
  betas_ = std::move(ts.betas);
  alphas_cumprod_ = std::move(ts.alphas_cumprod);
  // diffusers raises NotImplementedError for "sample" in this class.
  prediction_type_ = read_prediction_type(config, {"epsilon", "v_prediction"});
  timestep_spacing_ = read_choice(config, "timestep_spacing", "linspace", {"linspace", "leading", "trailing"});
  steps_offset_ = config.get<int64_t>("steps_offset", 0);
  refuse_true(config, "rescale_betas_zero_snr", "zero-terminal-SNR rescaling is not implemented");
  train_sigmas_ = training_sigmas(alphas_cumprod_);
}

void EulerAncestralDiscreteScheduler::set_timesteps(int num_inference_steps) {
  begin_set_timesteps(num_inference_steps, num_train_timesteps_);
  for (double v : spaced_timesteps(timestep_spacing_, num_train_timesteps_, num_inference_steps, steps_offset_)) {
    const auto t = static_cast<float>(v);
    timesteps_.push_back(t);
    sigmas_.push_back(static_cast<float>(np_interp(t, train_sigmas_)));
  }
  sigmas_.push_back(0.0);
}

float EulerAncestralDiscreteScheduler::init_noise_sigma() const {
  return sigma_init_noise(sigmas_, train_sigmas_, timestep_spacing_);
}

Tensor EulerAncestralDiscreteScheduler::scale_model_input(const Tensor& sample, size_t step) const {
  return divide_by_input_scale(checked_sample(sample, step), static_cast<float>(sigmas_[step]));
}

Tensor EulerAncestralDiscreteScheduler::step(const Tensor& model_output_in, size_t step, const Tensor& sample_in,
                                             const NoiseFn& noise) {
  auto [model_output, sample] = begin_step(model_output_in, step, sample_in);
  const int64_t n = model_output.numel();
  const auto sigma = static_cast<float>(sigmas_[step]);
  const float sigma_from = sigma, sigma_to = static_cast<float>(sigmas_[step + 1]);
  const float to2 = sigma_to * sigma_to, from2 = sigma_from * sigma_from;
  const float sigma_up = std::sqrt(to2 * (from2 - to2) / from2);
  const float sigma_down = std::sqrt(to2 - sigma_up * sigma_up);
  const float dt = sigma_down - sigma;
  const float c_out = -sigma / std::sqrt(sigma * sigma + 1.0f), c_skip_denom = sigma * sigma + 1.0f;
  const float* mo = model_output.data<float>();
  const float* x = sample.data<float>();
  Tensor prev = Tensor::empty(sample.shape());
  float* p = prev.data<float>();
  for (int64_t i = 0; i < n; ++i) {
    const float x0 =
        prediction_type_ == Prediction::kEpsilon ? x[i] - sigma * mo[i] : mo[i] * c_out + x[i] / c_skip_denom;
    const float derivative = (x[i] - x0) / sigma;
    p[i] = x[i] + derivative * dt;
  }
  // Drawn after the Euler part, as diffusers does (the order matters only to a generator shared with others).
  const Tensor z = draw_noise(noise, sample.shape());
  const float* zn = z.data<float>();
  for (int64_t i = 0; i < n; ++i) p[i] = p[i] + zn[i] * sigma_up;
  return prev;
}

}  // namespace taiyi::sched
