// Follows diffusers 0.27.2 schedulers/scheduling_lms_discrete.py: LMSDiscreteScheduler.__init__,
// set_timesteps, init_noise_sigma, scale_model_input, get_lms_coefficient and step (order 4).
#include "taiyi/sched/lms_discrete_scheduler.h"

#include <array>
#include <cmath>

namespace taiyi::sched {
namespace {

// QUADPACK's 21-point Gauss-Kronrod rule (dqk21 nodes and weights, node 10 is the centre).
constexpr std::array<double, 11> kXgk = {
    0.995657163025808080735527280689003, 0.973906528517171720077964012084452, 0.930157491355708226001207180059508,
    0.865063366688984510732096688423493, 0.780817726586416897063717578345042, 0.679409568299024406234327365114874,
    0.562757134668604683339000099272694, 0.433395394129247190799265943165784, 0.294392862701460198131126603103866,
    0.148874338981631210884826001129720, 0.000000000000000000000000000000000};
constexpr std::array<double, 11> kWgk = {
    0.011694638867371874278064396062192, 0.032558162307964727478818972459390, 0.054755896574351996031381300244580,
    0.075039674810919952767043140916190, 0.093125454583697605535065465083366, 0.109387158802297641899210590325805,
    0.123491976262065851077208814334748, 0.134709217311473325928054001771707, 0.142775938577060080797094273138717,
    0.147739104901338491374841515972068, 0.149445554002916905664936468389821};

// scipy.integrate.quad(f, a, b, epsrel=1e-4) for the polynomials LMS integrates (degree <= 3): QUADPACK's
// dqagse accepts its first 21-point Kronrod estimate, whose error estimate is then at rounding level, so
// this is that estimate, summed in dqk21's order.
template <typename F>
double quad_kronrod21(F&& f, double a, double b) {
  const double centr = 0.5 * (a + b), hlgth = 0.5 * (b - a);
  double resk = kWgk[10] * f(centr);
  for (int j = 1; j <= 9; j += 2) {  // the Gauss nodes first, as dqk21 does
    const double absc = hlgth * kXgk[j];
    resk += kWgk[j] * (f(centr - absc) + f(centr + absc));
  }
  for (int j = 0; j <= 8; j += 2) {
    const double absc = hlgth * kXgk[j];
    resk += kWgk[j] * (f(centr - absc) + f(centr + absc));
  }
  return resk * hlgth;
}

}  // namespace

LmsDiscreteScheduler::LmsDiscreteScheduler(const io::ConfigReader& config) {
  config_path_ = config.path();
  TrainingSchedule ts = read_training_schedule(config);
  num_train_timesteps_ = ts.num_train_timesteps;
  betas_ = std::move(ts.betas);
  alphas_cumprod_ = std::move(ts.alphas_cumprod);
  prediction_type_ = read_prediction_type(config, {"epsilon", "v_prediction", "sample"});
  timestep_spacing_ = read_choice(config, "timestep_spacing", "linspace", {"linspace", "leading", "trailing"});
  steps_offset_ = config.get<int64_t>("steps_offset", 0);
  use_karras_sigmas_ = config.get<bool>("use_karras_sigmas", false);
  train_sigmas_ = training_sigmas(alphas_cumprod_);
  for (float s : train_sigmas_) log_sigmas_.push_back(std::log(s));
}

void LmsDiscreteScheduler::set_timesteps(int num_inference_steps) {
  begin_set_timesteps(num_inference_steps, num_train_timesteps_);
  std::vector<double> t = spaced_timesteps(timestep_spacing_, num_train_timesteps_, num_inference_steps, steps_offset_);
  for (double& v : t) v = static_cast<float>(v);
  std::vector<double> sigmas;
  for (double v : t) sigmas.push_back(np_interp(v, train_sigmas_));
  if (use_karras_sigmas_) {
    // LMS's own _convert_to_karras: always the interpolated range; its timesteps stay float64.
    sigmas = karras_sigmas(sigmas.back(), sigmas.front(), num_inference_steps);
    t.clear();
    for (double s : sigmas) t.push_back(sigma_to_t(s, log_sigmas_));
  }
  timesteps_ = std::move(t);
  for (double s : sigmas) sigmas_.push_back(static_cast<float>(s));
  sigmas_.push_back(0.0);
  derivatives_.clear();
}

float LmsDiscreteScheduler::init_noise_sigma() const {
  return sigma_init_noise(sigmas_, train_sigmas_, timestep_spacing_);
}

Tensor LmsDiscreteScheduler::scale_model_input(const Tensor& sample, size_t step) const {
  return divide_by_input_scale(checked_sample(sample, step), static_cast<float>(sigmas_[step]));
}

double LmsDiscreteScheduler::lms_coefficient(int order, size_t t, int current_order) const {
  auto sigma = [&](size_t i) { return static_cast<float>(sigmas_[i]); };
  // diffusers evaluates the product on float32 0-dim tensors (tau is cast to float32); quad sees a double.
  auto lms_derivative = [&](double tau) -> double {
    if (order == 1) return 1.0;  // the product is empty: the Python float 1.0
    float prod = 1.0f;
    const auto tau32 = static_cast<float>(tau);
    for (int k = 0; k < order; ++k) {
      if (k == current_order) continue;
      prod *= (tau32 - sigma(t - k)) / (sigma(t - current_order) - sigma(t - k));
    }
    return prod;
  };
  return quad_kronrod21(lms_derivative, sigma(t), sigma(t + 1));
}

Tensor LmsDiscreteScheduler::step(const Tensor& model_output_in, size_t step, const Tensor& sample_in, const NoiseFn&) {
  auto [model_output, sample] = begin_step(model_output_in, step, sample_in);
  const int64_t n = model_output.numel();
  const auto sigma = static_cast<float>(sigmas_[step]);
  const float c_out = -sigma / std::sqrt(sigma * sigma + 1.0f), c_skip_denom = sigma * sigma + 1.0f;
  const bool epsilon = prediction_type_ == Prediction::kEpsilon;
  const bool v_prediction = prediction_type_ == Prediction::kVPrediction;
  const float* mo = model_output.data<float>();
  const float* x = sample.data<float>();
  Tensor derivative = Tensor::empty(sample.shape());
  float* d = derivative.data<float>();
  for (int64_t i = 0; i < n; ++i) {
    const float x0 = epsilon ? x[i] - sigma * mo[i] : v_prediction ? mo[i] * c_out + x[i] / c_skip_denom : mo[i];
    d[i] = (x[i] - x0) / sigma;
  }
  derivatives_.push_back(derivative);
  if (derivatives_.size() > static_cast<size_t>(kOrder)) derivatives_.erase(derivatives_.begin());

  const int order = std::min(static_cast<int>(step) + 1, kOrder);
  // prev = sample + sum(coeff * derivative), coefficient k paired with the k-th newest derivative; each
  // coefficient multiplies as a float32 scalar and the terms add left to right.
  std::vector<float> acc(static_cast<size_t>(n), 0.0f);
  for (int k = 0; k < order; ++k) {
    const auto coeff = static_cast<float>(lms_coefficient(order, step, k));
    const float* dk = derivatives_[derivatives_.size() - 1 - k].data<float>();
    for (int64_t i = 0; i < n; ++i) acc[i] = k == 0 ? coeff * dk[i] : acc[i] + coeff * dk[i];
  }
  Tensor prev = Tensor::empty(sample.shape());
  float* p = prev.data<float>();
  for (int64_t i = 0; i < n; ++i) p[i] = x[i] + acc[i];
  return prev;
}

}  // namespace taiyi::sched
