// Follows diffusers 0.27.2 schedulers/scheduling_dpmsolver_multistep.py: __init__, set_timesteps,
// convert_model_output, dpm_solver_first_order_update, multistep_dpm_solver_second_order_update and step, for
// algorithm_type "dpmsolver++". Sigma-derived scalars are float32 0-dim tensors there, so float32 here.
#include "taiyi/sched/dpm_solver_multistep_scheduler.h"

#include <algorithm>
#include <cmath>
#include <limits>

namespace taiyi::sched {
namespace {

struct AlphaSigma {
  float alpha, sigma;
};
// _sigma_to_alpha_sigma_t: alpha_t = 1 / (sigma**2 + 1) ** 0.5, sigma_t = sigma * alpha_t.
AlphaSigma alpha_sigma(float sigma) {
  const float alpha = 1.0f / std::sqrt(sigma * sigma + 1.0f);
  return {alpha, sigma * alpha};
}
float lambda_of(AlphaSigma as) { return std::log(as.alpha) - std::log(as.sigma); }

// torch.exp on a float32 tensor (0-dim included) runs SLEEF's Sleef_expf8_u10 (sleefsimdsp.c xexpf, FMA build),
// which is not always correctly rounded; exp(-h) - 1 cancels, so its last bit shows in the result. Reproduced
// here (finite inputs in the range DPM uses) instead of std::exp.
float torch_expf(float d) {
  if (std::isnan(d)) return d;
  if (d < -104.0f) return 0.0f;
  if (d > 100.0f) return std::numeric_limits<float>::infinity();
  constexpr float kRLn2 = 1.442695040888963407359924681001892137426645954152985934135449406931f;
  constexpr float kL2U = 0.693145751953125f, kL2L = 1.428606765330187045e-06f;
  const int q = static_cast<int>(std::nearbyint(d * kRLn2));
  const auto qf = static_cast<float>(q);
  float s = std::fma(qf, -kL2U, d);
  s = std::fma(qf, -kL2L, s);
  float u = 0.000198527617612853646278381f;
  u = std::fma(u, s, 0.00139304355252534151077271f);
  u = std::fma(u, s, 0.00833336077630519866943359f);
  u = std::fma(u, s, 0.0416664853692054748535156f);
  u = std::fma(u, s, 0.166666671633720397949219f);
  u = std::fma(u, s, 0.5f);
  u = 1.0f + std::fma(s * s, u, s);
  // vldexp2: two exact power-of-two factors, as SLEEF scales.
  return u * std::ldexp(1.0f, q >> 1) * std::ldexp(1.0f, q - (q >> 1));
}

}  // namespace

DpmSolverMultistepScheduler::DpmSolverMultistepScheduler(const io::ConfigReader& config, std::string name)
    : name_(std::move(name)) {
  config_path_ = config.path();
  TrainingSchedule ts = read_training_schedule(config);
  num_train_timesteps_ = ts.num_train_timesteps;
  betas_ = std::move(ts.betas);
  alphas_cumprod_ = std::move(ts.alphas_cumprod);
  prediction_type_ = read_prediction_type(config, {"epsilon", "sample", "v_prediction"});
  timestep_spacing_ = read_choice(config, "timestep_spacing", "linspace", {"linspace", "leading", "trailing"});
  steps_offset_ = config.get<int64_t>("steps_offset", 0);
  // diffusers maps "deis" to dpmsolver++; the noise-prediction and SDE variants are not implemented.
  read_choice(config, "algorithm_type", "dpmsolver++", {"dpmsolver++", "deis"});
  const int64_t order = config.get<int64_t>("solver_order", 2);
  if (order != 1 && order != 2) config.fail("solver_order", std::to_string(order) + " is not supported (1 or 2)");
  solver_order_ = static_cast<int>(order);
  // diffusers maps the UniPC solver types to midpoint.
  solver_type_ = read_choice(config, "solver_type", "midpoint", {"midpoint", "heun", "logrho", "bh1", "bh2"});
  if (solver_type_ != "heun") solver_type_ = "midpoint";
  lower_order_final_ = config.get<bool>("lower_order_final", true);
  euler_at_final_ = config.get<bool>("euler_at_final", false);
  use_karras_sigmas_ = config.get<bool>("use_karras_sigmas", false);
  final_sigmas_type_ = read_choice(config, "final_sigmas_type", "zero", {"zero", "sigma_min"});
  lambda_min_clipped_ = config.get<double>("lambda_min_clipped", -std::numeric_limits<double>::infinity());
  refuse_true(config, "thresholding", "dynamic thresholding is for pixel-space models, not SD latents");
  refuse_true(config, "use_lu_lambdas", "Lu's uniform-logSNR spacing is not implemented");
  refuse_true(config, "rescale_betas_zero_snr", "zero-terminal-SNR rescaling is not implemented");
  if (config.has("variance_type"))
    config.fail("variance_type", config.json().at("variance_type").dump() +
                                     " is not supported (only null: SD's UNet predicts no variance)");
  train_sigmas_ = training_sigmas(alphas_cumprod_);
  for (float s : train_sigmas_) log_sigmas_.push_back(std::log(s));
}

void DpmSolverMultistepScheduler::set_timesteps(int num_inference_steps) {
  begin_set_timesteps(num_inference_steps, num_train_timesteps_);
  const int T = num_train_timesteps_, N = num_inference_steps;
  // Clipping the minimum of lambda(t): searchsorted(flip(lambda_t), lambda_min_clipped) counts the (ascending)
  // flipped lambdas below the threshold; lambda_t is float32.
  const auto clip = static_cast<float>(lambda_min_clipped_);
  int clipped_idx = 0;
  for (float a : alphas_cumprod_)
    if (std::log(std::sqrt(a)) - std::log(std::sqrt(1.0f - a)) < clip) ++clipped_idx;
  const int last_timestep = T - clipped_idx;

  std::vector<double> t;
  if (timestep_spacing_ == "linspace") {
    const std::vector<double> l = np_linspace(0, last_timestep - 1, N + 1);
    for (int i = N; i >= 1; --i) t.push_back(np_round(l[i]));
  } else if (timestep_spacing_ == "leading") {
    const int ratio = last_timestep / (N + 1);
    for (int i = N; i >= 1; --i) t.push_back(static_cast<double>(i) * ratio + static_cast<double>(steps_offset_));
  } else {
    for (double v : np_arange(last_timestep, 0, -(static_cast<double>(T) / N))) t.push_back(np_round(v) - 1);
  }

  std::vector<double> sigmas;
  if (use_karras_sigmas_) {
    // Over the flipped training sigmas: sigma_min = sigmas[0], sigma_max = sigmas[-1]; timesteps rounded.
    sigmas = karras_sigmas(train_sigmas_.front(), train_sigmas_.back(), N);
    t.clear();
    for (double s : sigmas) t.push_back(np_round(sigma_to_t(s, log_sigmas_)));
  } else {
    for (double v : t) sigmas.push_back(np_interp(v, train_sigmas_));
  }
  timesteps_ = std::move(t);
  for (double s : sigmas) sigmas_.push_back(static_cast<float>(s));
  sigmas_.push_back(final_sigmas_type_ == "zero" ? 0.0f : train_sigmas_.front());
  prev_x0_ = cur_x0_ = Tensor();
  lower_order_nums_ = 0;
}

Tensor DpmSolverMultistepScheduler::step(const Tensor& model_output_in, size_t step, const Tensor& sample_in,
                                         const NoiseFn&) {
  auto [model_output, sample] = begin_step(model_output_in, step, sample_in);
  const int64_t n = model_output.numel();
  const size_t num = timesteps_.size();
  // Improve numerical stability for small numbers of steps; a zero final sigma always ends with first order
  // (lambda there is +inf).
  const bool lower_order_final =
      step == num - 1 && (euler_at_final_ || (lower_order_final_ && num < 15) || final_sigmas_type_ == "zero");

  // convert_model_output: the data prediction x0 at sigmas[step].
  const AlphaSigma s0 = alpha_sigma(static_cast<float>(sigmas_[step]));
  Tensor x0 = Tensor::empty(sample.shape());
  {
    const float* mo = model_output.data<float>();
    const float* x = sample.data<float>();
    float* o = x0.data<float>();
    for (int64_t i = 0; i < n; ++i) {
      if (prediction_type_ == Prediction::kEpsilon) {
        o[i] = (x[i] - s0.sigma * mo[i]) / s0.alpha;
      } else if (prediction_type_ == Prediction::kSample) {
        o[i] = mo[i];
      } else {
        o[i] = s0.alpha * x[i] - s0.sigma * mo[i];
      }
    }
  }
  prev_x0_ = solver_order_ == 2 ? cur_x0_ : Tensor();
  cur_x0_ = x0;

  const AlphaSigma st = alpha_sigma(static_cast<float>(sigmas_[step + 1]));
  const float lambda_t = lambda_of(st), lambda_s0 = lambda_of(s0);
  const float h = lambda_t - lambda_s0;
  const float sample_coeff = st.sigma / s0.sigma;
  const float d0_coeff = st.alpha * (torch_expf(-h) - 1.0f);
  const float* x = sample.data<float>();
  const float* m0 = cur_x0_.data<float>();
  Tensor prev = Tensor::empty(sample.shape());
  float* p = prev.data<float>();
  if (solver_order_ == 1 || lower_order_nums_ < 1 || lower_order_final) {
    // dpm_solver_first_order_update (DDIM in the data-prediction form).
    for (int64_t i = 0; i < n; ++i) p[i] = sample_coeff * x[i] - d0_coeff * m0[i];
  } else {
    // multistep_dpm_solver_second_order_update with the previous step's x0 as m1.
    const AlphaSigma s1 = alpha_sigma(static_cast<float>(sigmas_[step - 1]));
    const float lambda_s1 = lambda_of(s1);
    const float h_0 = lambda_s0 - lambda_s1;
    const float r0 = h_0 / h;
    const float d1_scale = 1.0f / r0;
    const float* m1 = prev_x0_.data<float>();
    if (solver_type_ == "midpoint") {
      const float d1_coeff = 0.5f * (st.alpha * (torch_expf(-h) - 1.0f));
      for (int64_t i = 0; i < n; ++i) {
        const float d1 = d1_scale * (m0[i] - m1[i]);
        p[i] = sample_coeff * x[i] - d0_coeff * m0[i] - d1_coeff * d1;
      }
    } else {
      const float d1_coeff = st.alpha * ((torch_expf(-h) - 1.0f) / h + 1.0f);
      for (int64_t i = 0; i < n; ++i) {
        const float d1 = d1_scale * (m0[i] - m1[i]);
        p[i] = sample_coeff * x[i] - d0_coeff * m0[i] + d1_coeff * d1;
      }
    }
  }
  if (lower_order_nums_ < solver_order_) ++lower_order_nums_;
  return prev;
}

}  // namespace taiyi::sched
