// Follows diffusers 0.27.2 schedulers/scheduling_euler_discrete.py: EulerDiscreteScheduler.__init__,
// set_timesteps (interpolation_type "linear", optional Karras sigmas), init_noise_sigma, scale_model_input and
// step with s_churn 0; the sample is upcast to float32 there, so all arithmetic here is float32.
#include "taiyi/sched/euler_discrete_scheduler.h"

#include <cmath>

namespace taiyi::sched {

EulerDiscreteScheduler::EulerDiscreteScheduler(const io::ConfigReader& config) {
  config_path_ = config.path();
  TrainingSchedule ts = read_training_schedule(config);
  num_train_timesteps_ = ts.num_train_timesteps;
  betas_ = std::move(ts.betas);
  alphas_cumprod_ = std::move(ts.alphas_cumprod);
  // "original_sample" is the deprecated spelling of "sample" that step() still accepts.
  prediction_type_ = read_prediction_type(config, {"epsilon", "v_prediction", "sample", "original_sample"});
  timestep_spacing_ = read_choice(config, "timestep_spacing", "linspace", {"linspace", "leading", "trailing"});
  steps_offset_ = config.get<int64_t>("steps_offset", 0);
  read_choice(config, "interpolation_type", "linear", {"linear"});
  const std::string timestep_type = read_choice(config, "timestep_type", "discrete", {"discrete", "continuous"});
  continuous_v_timesteps_ = timestep_type == "continuous" && prediction_type_ == Prediction::kVPrediction;
  use_karras_sigmas_ = config.get<bool>("use_karras_sigmas", false);
  if (config.has("sigma_min")) sigma_min_ = config.get<double>("sigma_min", 0.0);
  if (config.has("sigma_max")) sigma_max_ = config.get<double>("sigma_max", 0.0);
  refuse_true(config, "rescale_betas_zero_snr", "zero-terminal-SNR rescaling is not implemented");
  train_sigmas_ = training_sigmas(alphas_cumprod_);
  for (float s : train_sigmas_) log_sigmas_.push_back(std::log(s));
}

void EulerDiscreteScheduler::set_timesteps(int num_inference_steps) {
  begin_set_timesteps(num_inference_steps, num_train_timesteps_);
  // The spaced timesteps are cast to float32 before np.interp reads them.
  std::vector<double> t = spaced_timesteps(timestep_spacing_, num_train_timesteps_, num_inference_steps, steps_offset_);
  for (double& v : t) v = static_cast<float>(v);
  std::vector<double> sigmas;
  for (double v : t) sigmas.push_back(np_interp(v, train_sigmas_));
  if (use_karras_sigmas_) {
    // Euler's _convert_to_karras spans the interpolated sigmas (not the training range) unless the config
    // sets sigma_min / sigma_max.
    sigmas =
        karras_sigmas(sigma_min_.value_or(sigmas.back()), sigma_max_.value_or(sigmas.front()), num_inference_steps);
    t.clear();
    for (double s : sigmas) t.push_back(sigma_to_t(s, log_sigmas_));
  }
  for (double s : sigmas) sigmas_.push_back(static_cast<float>(s));
  for (size_t i = 0; i < t.size(); ++i)
    timesteps_.push_back(continuous_v_timesteps_ ? 0.25f * std::log(static_cast<float>(sigmas_[i]))
                                                 : static_cast<float>(t[i]));
  sigmas_.push_back(0.0);
}

float EulerDiscreteScheduler::init_noise_sigma() const {
  return sigma_init_noise(sigmas_, train_sigmas_, timestep_spacing_);
}

Tensor EulerDiscreteScheduler::scale_model_input(const Tensor& sample, size_t step) const {
  return divide_by_input_scale(checked_sample(sample, step), static_cast<float>(sigmas_[step]));
}

Tensor EulerDiscreteScheduler::step(const Tensor& model_output_in, size_t step, const Tensor& sample_in,
                                    const NoiseFn& noise) {
  auto [model_output, sample] = begin_step(model_output_in, step, sample_in);
  draw_noise(noise, sample.shape());  // unused with s_churn 0; see the header
  const int64_t n = model_output.numel();
  const auto sigma = static_cast<float>(sigmas_[step]);
  const float sigma_hat = sigma * (0.0f + 1.0f);  // gamma 0
  const float dt = static_cast<float>(sigmas_[step + 1]) - sigma_hat;
  const float c_out = -sigma / std::sqrt(sigma * sigma + 1.0f), c_skip_denom = sigma * sigma + 1.0f;
  const float* mo = model_output.data<float>();
  const float* x = sample.data<float>();
  Tensor prev = Tensor::empty(sample.shape());
  float* p = prev.data<float>();
  for (int64_t i = 0; i < n; ++i) {
    float x0;
    if (prediction_type_ == Prediction::kEpsilon) {
      x0 = x[i] - sigma_hat * mo[i];
    } else if (prediction_type_ == Prediction::kVPrediction) {
      x0 = mo[i] * c_out + x[i] / c_skip_denom;
    } else {
      x0 = mo[i];
    }
    const float derivative = (x[i] - x0) / sigma_hat;
    p[i] = x[i] + derivative * dt;
  }
  return prev;
}

}  // namespace taiyi::sched
