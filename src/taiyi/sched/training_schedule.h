// What every diffusers scheduler class builds the same way in its __init__ (diffusers 0.27.2
// schedulers/scheduling_*.py): the training betas and alphas_cumprod, the per-timestep sigmas, and the
// timestep spacing of set_timesteps, in the dtypes diffusers uses (torch float32 for betas/alphas, numpy
// float64 for timesteps and interpolated sigmas), plus the config readers the classes share.
#pragma once

#include <string>
#include <vector>

#include "taiyi/io/config.h"

namespace taiyi::sched {

// num_train_timesteps, beta_start, beta_end, beta_schedule, trained_betas (defaults 1000, 0.0001, 0.02,
// "linear": the same in every class here).
struct TrainingSchedule {
  int num_train_timesteps = 1000;
  std::vector<float> betas;           // torch float32
  std::vector<float> alphas_cumprod;  // torch.cumprod(1 - betas) (float32 out, double accumulator on CPU)
};
TrainingSchedule read_training_schedule(const io::ConfigReader& c);

// np.array(((1 - alphas_cumprod) / alphas_cumprod) ** 0.5): computed in float32 by torch, then numpy.
std::vector<float> training_sigmas(const std::vector<float>& alphas_cumprod);

// A string key that must be one of `allowed`; absent or null takes `default_value`.
std::string read_choice(const io::ConfigReader& c, const std::string& key, const std::string& default_value,
                        const std::vector<std::string>& allowed);
// prediction_type: what the UNet predicts. "original_sample" (Euler's deprecated spelling) reads as kSample.
enum class Prediction { kEpsilon, kSample, kVPrediction };
// prediction_type (default "epsilon"), which must be one of `allowed`.
Prediction read_prediction_type(const io::ConfigReader& c, const std::vector<std::string>& allowed);
// A boolean key whose `true` this engine does not implement (diffusers' default is false).
void refuse_true(const io::ConfigReader& c, const std::string& key, const std::string& why);

// numpy 1.24 arithmetic that set_timesteps relies on, reproduced to the last bit where it matters.
std::vector<double> np_linspace(double start, double stop, int64_t num);
std::vector<double> np_arange(double start, double stop, double step);  // float arange, numpy's length rule
double np_round(double x);                                              // half to even
// np.interp(x, np.arange(len(fp)), fp) with numpy's edge rules (clamped ends, exact hits return fp[j]).
double np_interp(double x, const std::vector<float>& fp);

// The timestep_spacing of DDIM, PNDM, Euler, Euler-ancestral and LMS set_timesteps: N descending values
// as numpy float64 before the class casts them. "linspace" is np.linspace(0, T-1, N), not yet rounded
// (DDIM/PNDM round it, Euler-type classes keep the fractions); "leading" is arange(N) * (T // N) + offset;
// "trailing" is round(arange(T, 0, -T / N)) - 1, which numpy's arange length rule can make N+1 long.
std::vector<double> spaced_timesteps(const std::string& spacing, int num_train_timesteps, int num_inference_steps,
                                     int64_t steps_offset);

// k-diffusion's Karras et al. (2022) schedule (rho 7) from sigma_max down to sigma_min, float64.
std::vector<double> karras_sigmas(double sigma_min, double sigma_max, int num_inference_steps);
// EulerDiscreteScheduler._sigma_to_t: the fractional training timestep of `sigma` by interpolating
// log-sigmas, with numpy 1.24's float32/float64 mix (log_sigmas is float32).
double sigma_to_t(double sigma, const std::vector<float>& log_sigmas);

}  // namespace taiyi::sched
