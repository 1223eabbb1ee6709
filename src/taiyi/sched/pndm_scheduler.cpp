// Follows diffusers 0.27.2 schedulers/scheduling_pndm.py: PNDMScheduler.__init__, set_timesteps, step_plms and
// _get_prev_sample, in float32 as torch computes them.
#include "taiyi/sched/pndm_scheduler.h"

#include <algorithm>
#include <cmath>

namespace taiyi::sched {

PndmScheduler::PndmScheduler(const io::ConfigReader& config) {
  config_path_ = config.path();
  TrainingSchedule ts = read_training_schedule(config);
  num_train_timesteps_ = ts.num_train_timesteps;
  betas_ = std::move(ts.betas);
  alphas_cumprod_ = std::move(ts.alphas_cumprod);
  // PNDM's Runge-Kutta warm-up (skip_prk_steps false, the class default) is not implemented; every SD 1.x
  // scheduler_config.json sets skip_prk_steps true.
  if (!config.get<bool>("skip_prk_steps", false))
    config.fail("skip_prk_steps",
                "false (PNDM's Runge-Kutta warm-up steps) is not supported; only the PLMS path "
                "(skip_prk_steps true) is implemented");
  prediction_type_ = read_prediction_type(config, {"epsilon", "v_prediction"});
  timestep_spacing_ = read_choice(config, "timestep_spacing", "leading", {"linspace", "leading", "trailing"});
  steps_offset_ = config.get<int64_t>("steps_offset", 0);
  final_alpha_cumprod_ = config.get<bool>("set_alpha_to_one", false) ? 1.0f : alphas_cumprod_[0];
}

void PndmScheduler::set_timesteps(int num_inference_steps) {
  begin_set_timesteps(num_inference_steps, num_train_timesteps_);
  num_inference_steps_ = num_inference_steps;
  // _timesteps ascending (int64), then PLMS order: all but the last, the second-to-last again, the last; reversed.
  std::vector<double> t = spaced_timesteps(timestep_spacing_, num_train_timesteps_, num_inference_steps, steps_offset_);
  std::reverse(t.begin(), t.end());
  for (double& v : t) {
    v = np_round(v);
    if (v < 0 || v > num_train_timesteps_ - 1)
      throw Error(config_path_ + ": timestep_spacing \"" + timestep_spacing_ + "\" with steps_offset " +
                  std::to_string(steps_offset_) + " and " + std::to_string(num_inference_steps) +
                  " steps gives timestep " + std::to_string(static_cast<int64_t>(v)) + ", outside 0.." +
                  std::to_string(num_train_timesteps_ - 1) + " (diffusers would index out of the schedule)");
  }
  const size_t n = t.size();
  std::vector<double> plms(t.begin(), t.end() - 1);
  if (n >= 2) plms.push_back(t[n - 2]);
  plms.push_back(t[n - 1]);
  timesteps_.assign(plms.rbegin(), plms.rend());
  ets_.clear();
  counter_ = 0;
  cur_sample_ = Tensor();
}

Tensor PndmScheduler::step(const Tensor& model_output_in, size_t step, const Tensor& sample_in, const NoiseFn&) {
  auto [model_output, sample] = begin_step(model_output_in, step, sample_in);
  const int64_t n = model_output.numel();
  const int ratio = num_train_timesteps_ / num_inference_steps_;
  auto timestep = static_cast<int64_t>(timesteps_[step]);
  int64_t prev_timestep = timestep - ratio;

  if (counter_ != 1) {
    if (ets_.size() > 3) ets_.erase(ets_.begin(), ets_.end() - 3);
    ets_.push_back(model_output.clone());  // history must not alias a buffer the caller reuses
  } else {
    // Call 1 redoes call 0's step (timestep + ratio -> timestep) from call 0's sample with the averaged eps.
    prev_timestep = timestep;
    timestep = timestep + ratio;
  }

  Tensor eps = Tensor::empty(model_output.shape());
  float* e = eps.data<float>();
  const float* mo = model_output.data<float>();
  const size_t k = ets_.size();
  auto et = [&](size_t back) { return ets_[k - back].data<float>(); };  // et(1) = ets[-1]
  if (k == 1 && counter_ == 0) {
    std::copy(mo, mo + n, e);
    cur_sample_ = sample.clone();
  } else if (k == 1 && counter_ == 1) {
    const float* e1 = et(1);
    for (int64_t i = 0; i < n; ++i) e[i] = (mo[i] + e1[i]) / 2.0f;
    sample = cur_sample_;
    cur_sample_ = Tensor();
  } else if (k == 2) {
    const float *e1 = et(1), *e2 = et(2);
    for (int64_t i = 0; i < n; ++i) e[i] = (3.0f * e1[i] - e2[i]) / 2.0f;
  } else if (k == 3) {
    const float *e1 = et(1), *e2 = et(2), *e3 = et(3);
    for (int64_t i = 0; i < n; ++i) e[i] = (23.0f * e1[i] - 16.0f * e2[i] + 5.0f * e3[i]) / 12.0f;
  } else {
    const float *e1 = et(1), *e2 = et(2), *e3 = et(3), *e4 = et(4);
    const auto c = static_cast<float>(1.0 / 24.0);
    for (int64_t i = 0; i < n; ++i) e[i] = c * (55.0f * e1[i] - 59.0f * e2[i] + 37.0f * e3[i] - 9.0f * e4[i]);
  }
  ++counter_;

  // _get_prev_sample: formula (9) of the PNDM paper.
  if (timestep < 0 || timestep >= num_train_timesteps_)
    throw Error(config_path_ + ": PNDM step reached timestep " + std::to_string(timestep) + ", outside the schedule");
  const float alpha_prod_t = alphas_cumprod_[timestep];
  const float alpha_prod_t_prev = prev_timestep >= 0 ? alphas_cumprod_[prev_timestep] : final_alpha_cumprod_;
  const float beta_prod_t = 1.0f - alpha_prod_t;
  const float beta_prod_t_prev = 1.0f - alpha_prod_t_prev;
  const float* x = sample.data<float>();
  if (prediction_type_ == Prediction::kVPrediction) {
    const float sa = std::sqrt(alpha_prod_t), sb = std::sqrt(beta_prod_t);
    for (int64_t i = 0; i < n; ++i) e[i] = sa * e[i] + sb * x[i];
  }
  const float sample_coeff = std::sqrt(alpha_prod_t_prev / alpha_prod_t);
  const float denom =
      alpha_prod_t * std::sqrt(beta_prod_t_prev) + std::sqrt(alpha_prod_t * beta_prod_t * alpha_prod_t_prev);
  const float diff = alpha_prod_t_prev - alpha_prod_t;
  Tensor prev = Tensor::empty(sample.shape());
  float* p = prev.data<float>();
  for (int64_t i = 0; i < n; ++i) p[i] = sample_coeff * x[i] - diff * e[i] / denom;
  return prev;
}

}  // namespace taiyi::sched
