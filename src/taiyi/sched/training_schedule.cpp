// Follows diffusers 0.27.2 schedulers/scheduling_ddpm.py (betas_for_alpha_bar), the __init__ beta schedules
// shared by every scheduling_*.py, their set_timesteps spacing, and EulerDiscreteScheduler's
// _convert_to_karras / _sigma_to_t; torch 1.13 (CPU) and numpy 1.24 arithmetic as the goldens were made with.
#include "taiyi/sched/training_schedule.h"

#include <algorithm>
#include <cmath>
#include <numbers>

namespace taiyi::sched {
namespace {

// torch.linspace(start, end, steps, dtype=torch.float32) as torch 1.13's CPU kernel computes it (AVX2 build):
// the first half counts up from start, the second half down from end, in blocks of two 8-lane vectors whose
// first element is an fma-contracted start + step * idx, then a scalar tail. This reproduces the golden betas
// bit for bit; a plain start + i * step differs by 1-2 ulp in about a quarter of them.
std::vector<float> torch_linspace_f32(double start_d, double end_d, int64_t steps) {
  std::vector<float> out(static_cast<size_t>(steps));
  if (steps == 1) {
    out[0] = static_cast<float>(start_d);
    return out;
  }
  const float start = static_cast<float>(start_d), end = static_cast<float>(end_d);
  const float step = (end - start) / static_cast<float>(steps - 1);
  const int64_t halfway = steps / 2;
  auto at = [&](int64_t idx) {
    return idx < halfway ? std::fma(step, static_cast<float>(idx), start)
                         : std::fma(-step, static_cast<float>(steps - idx - 1), end);
  };
  constexpr int64_t kLanes = 8;
  int64_t idx = 0;
  for (; idx + 2 * kLanes <= steps; idx += kLanes) {
    const float base = at(idx);
    for (int64_t j = 0; j < kLanes; ++j) out[idx + j] = base + static_cast<float>(j) * step;
  }
  for (; idx < steps; ++idx) out[idx] = at(idx);
  return out;
}

// diffusers' betas_for_alpha_bar (cosine, max_beta 0.999): Python floats, then torch.tensor(float32).
std::vector<float> betas_for_alpha_bar(int n) {
  auto alpha_bar = [](double t) {
    const double c = std::cos((t + 0.008) / 1.008 * std::numbers::pi / 2);
    return c * c;
  };
  std::vector<float> betas(n);
  for (int i = 0; i < n; ++i) {
    const double t1 = static_cast<double>(i) / n, t2 = static_cast<double>(i + 1) / n;
    betas[i] = static_cast<float>(std::min(1 - alpha_bar(t2) / alpha_bar(t1), 0.999));
  }
  return betas;
}

}  // namespace

std::string read_choice(const io::ConfigReader& c, const std::string& key, const std::string& default_value,
                        const std::vector<std::string>& allowed) {
  const std::string v = c.get<std::string>(key, default_value);
  if (std::find(allowed.begin(), allowed.end(), v) != allowed.end()) return v;
  std::string list;
  for (const auto& a : allowed) list += (list.empty() ? "\"" : ", \"") + a + "\"";
  c.fail(key, "\"" + v + "\" is not supported (expected one of " + list + ")");
}

Prediction read_prediction_type(const io::ConfigReader& c, const std::vector<std::string>& allowed) {
  const std::string v = read_choice(c, "prediction_type", "epsilon", allowed);
  if (v == "epsilon") return Prediction::kEpsilon;
  if (v == "v_prediction") return Prediction::kVPrediction;
  return Prediction::kSample;
}

void refuse_true(const io::ConfigReader& c, const std::string& key, const std::string& why) {
  if (c.get<bool>(key, false)) c.fail(key, "true is not supported (" + why + ")");
}

TrainingSchedule read_training_schedule(const io::ConfigReader& c) {
  TrainingSchedule s;
  const int64_t n = c.get<int64_t>("num_train_timesteps", 1000);
  if (n < 2 || n > 100000) c.fail("num_train_timesteps", "expected 2..100000, got " + std::to_string(n));
  s.num_train_timesteps = static_cast<int>(n);
  if (c.has("trained_betas")) {
    // diffusers takes the list as given (torch.tensor(trained_betas, dtype=float32)); its length is the
    // schedule's length, so it must agree with num_train_timesteps, which set_timesteps spaces over.
    const nlohmann::json& v = c.json().at("trained_betas");
    if (!v.is_array() || v.size() != static_cast<size_t>(n))
      c.fail("trained_betas", "expected a list of " + std::to_string(n) + " numbers (num_train_timesteps)");
    for (const auto& b : v) {
      if (!b.is_number()) c.fail("trained_betas", "expected numbers, got " + b.dump());
      const double beta = b.get<double>();
      if (!(beta >= 0 && beta < 1)) c.fail("trained_betas", "expected values in [0, 1), got " + b.dump());
      s.betas.push_back(static_cast<float>(beta));
    }
  } else {
    const std::string schedule =
        read_choice(c, "beta_schedule", "linear", {"linear", "scaled_linear", "squaredcos_cap_v2"});
    const double beta_start = c.get<double>("beta_start", 0.0001), beta_end = c.get<double>("beta_end", 0.02);
    if (schedule != "squaredcos_cap_v2") {
      if (!(beta_start >= 0 && beta_start < 1)) c.fail("beta_start", "expected a value in [0, 1)");
      if (!(beta_end >= 0 && beta_end < 1)) c.fail("beta_end", "expected a value in [0, 1)");
    }
    if (schedule == "linear") {
      s.betas = torch_linspace_f32(beta_start, beta_end, n);
    } else if (schedule == "scaled_linear") {
      // torch.linspace(beta_start**0.5, beta_end**0.5, n, dtype=float32) ** 2: the square roots are Python
      // floats, the linspace and the square float32.
      s.betas = torch_linspace_f32(std::sqrt(beta_start), std::sqrt(beta_end), n);
      for (float& b : s.betas) b = b * b;
    } else {
      s.betas = betas_for_alpha_bar(static_cast<int>(n));
    }
  }
  // torch.cumprod on CPU accumulates float32 in double and rounds each output.
  double acc = 1.0;
  s.alphas_cumprod.reserve(s.betas.size());
  for (float b : s.betas) {
    acc *= static_cast<double>(1.0f - b);
    s.alphas_cumprod.push_back(static_cast<float>(acc));
  }
  return s;
}

std::vector<float> training_sigmas(const std::vector<float>& alphas_cumprod) {
  std::vector<float> sigmas(alphas_cumprod.size());
  for (size_t i = 0; i < sigmas.size(); ++i) {
    const float a = alphas_cumprod[i];
    sigmas[i] = std::sqrt((1.0f - a) / a);
  }
  return sigmas;
}

std::vector<double> np_linspace(double start, double stop, int64_t num) {
  std::vector<double> y(static_cast<size_t>(std::max<int64_t>(num, 0)));
  if (num == 1) y[0] = start;  // numpy multiplies by delta with an undefined step: y = [0 * delta + start]
  if (num <= 1) return y;
  const double step = (stop - start) / static_cast<double>(num - 1);
  for (int64_t i = 0; i < num; ++i) y[i] = static_cast<double>(i) * step + start;
  y[num - 1] = stop;
  return y;
}

std::vector<double> np_arange(double start, double stop, double step) {
  // numpy: length = ceil((stop - start) / step); buffer[0] = start, buffer[1] = start + step, then
  // buffer[i] = start + i * (buffer[1] - buffer[0]).
  const double len_d = std::ceil((stop - start) / step);
  if (!(len_d > 0)) return {};
  const auto len = static_cast<int64_t>(len_d);
  std::vector<double> y(static_cast<size_t>(len));
  y[0] = start;
  if (len == 1) return y;
  y[1] = start + step;
  const double delta = y[1] - y[0];
  for (int64_t i = 2; i < len; ++i) y[i] = start + static_cast<double>(i) * delta;
  return y;
}

double np_round(double x) { return std::nearbyint(x); }

double np_interp(double x, const std::vector<float>& fp) {
  const auto n = static_cast<int64_t>(fp.size());
  if (std::isnan(x)) return x;
  if (x < 0) return fp.front();
  if (x >= static_cast<double>(n - 1)) return fp.back();
  const auto j = static_cast<int64_t>(std::floor(x));
  if (static_cast<double>(j) == x) return fp[j];
  const double slope = (static_cast<double>(fp[j + 1]) - static_cast<double>(fp[j])) /
                       (static_cast<double>(j + 1) - static_cast<double>(j));
  return slope * (x - static_cast<double>(j)) + static_cast<double>(fp[j]);
}

std::vector<double> spaced_timesteps(const std::string& spacing, int num_train_timesteps, int num_inference_steps,
                                     int64_t steps_offset) {
  const int T = num_train_timesteps, N = num_inference_steps;
  std::vector<double> t;
  if (spacing == "linspace") {
    t = np_linspace(0, T - 1, N);
    std::reverse(t.begin(), t.end());
  } else if (spacing == "leading") {
    const int ratio = T / N;
    for (int i = N - 1; i >= 0; --i) t.push_back(static_cast<double>(i) * ratio + static_cast<double>(steps_offset));
  } else {  // trailing
    t = np_arange(T, 0, -(static_cast<double>(T) / N));
    for (double& v : t) v = np_round(v) - 1;
  }
  return t;
}

std::vector<double> karras_sigmas(double sigma_min, double sigma_max, int num_inference_steps) {
  constexpr double rho = 7.0;  // the value used in the paper
  const std::vector<double> ramp = np_linspace(0, 1, num_inference_steps);
  const double min_inv_rho = std::pow(sigma_min, 1 / rho), max_inv_rho = std::pow(sigma_max, 1 / rho);
  std::vector<double> sigmas(ramp.size());
  for (size_t i = 0; i < ramp.size(); ++i)
    sigmas[i] = std::pow(max_inv_rho + ramp[i] * (min_inv_rho - max_inv_rho), rho);
  return sigmas;
}

double sigma_to_t(double sigma, const std::vector<float>& log_sigmas) {
  const double log_sigma = std::log(std::max(sigma, 1e-10));
  // numpy 1.24 value-based casting: a float64 scalar against the float32 log_sigmas array computes in float32.
  const auto ls32 = static_cast<float>(log_sigma);
  const auto n = static_cast<int64_t>(log_sigmas.size());
  // cumsum(dists >= 0).argmax(): the last index whose log-sigma is <= log_sigma (0 if none), clipped to n - 2.
  int64_t low_idx = 0;
  for (int64_t i = 0; i < n; ++i)
    if (ls32 - log_sigmas[i] >= 0.0f) low_idx = i;
  low_idx = std::min(low_idx, n - 2);
  const int64_t high_idx = low_idx + 1;
  const float low = log_sigmas[low_idx], high = log_sigmas[high_idx];
  const float w = std::clamp((low - ls32) / (low - high), 0.0f, 1.0f);
  // (1 - w) is float32; multiplying by the int64 index arrays promotes to float64.
  return static_cast<double>(1.0f - w) * static_cast<double>(low_idx) +
         static_cast<double>(w) * static_cast<double>(high_idx);
}

}  // namespace taiyi::sched
