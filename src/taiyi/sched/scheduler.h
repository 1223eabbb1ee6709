// The sched layer: diffusers 0.27.2's noise schedulers (src/diffusers/schedulers/) for SD 1.x sampling.
//
// A Scheduler is built from a model folder's scheduler/scheduler_config.json with diffusers' `from_config`
// semantics: keys the chosen class does not know are ignored, absent keys take that class's __init__
// defaults, so any SD scheduler config (PNDM, DDIM, ...) can drive any scheduler here. Values this engine
// does not implement (thresholding, rescale_betas_zero_snr, ...) throw Error naming the file and the key.
//
//   auto s = sched::make_scheduler("euler_a", io::ConfigReader::load(dir + "/scheduler/scheduler_config.json"));
//   s->set_timesteps(20);
//   Tensor x = initial_noise * s->init_noise_sigma();
//   for (size_t i = 0; i < s->num_steps(); ++i) {
//     Tensor eps = unet(s->scale_model_input(x, i), s->timesteps()[i], ...);
//     x = s->step(eps, i, x, draw_noise);   // draw_noise: the pipeline's torch-compatible generator
//   }
//
// Arithmetic follows diffusers' dtypes (float32 torch tensors, numpy float64 schedules cast to float32) so
// results match it to float32 rounding; each scheduler's file names the diffusers function it follows.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "taiyi/io/config.h"
#include "taiyi/tensor/tensor.h"

namespace taiyi::sched {

// Draws standard-normal noise of a shape (the pipeline passes its torch-compatible generator).
using NoiseFn = std::function<Tensor(const Shape&)>;

class Scheduler {
 public:
  virtual ~Scheduler() = default;
  // "pndm", "ddim", "euler", "euler_a", "dpmpp_2m", "dpmpp_2m_karras", "lms"
  virtual const char* name() const = 0;
  // Resets all step state; throws Error if num_inference_steps < 1 or > num_train_timesteps.
  virtual void set_timesteps(int num_inference_steps) = 0;
  // The UNet's timestep for each step call (PNDM: N+1 entries; Euler/LMS fractional, others integers).
  const std::vector<double>& timesteps() const { return timesteps_; }
  // The float32 sigmas diffusers keeps (N+1 entries, the last one the final sigma); empty for PNDM/DDIM.
  const std::vector<double>& sigmas() const { return sigmas_; }
  size_t num_steps() const { return timesteps().size(); }
  // Multiply the initial noise by this.
  virtual float init_noise_sigma() const { return 1.0f; }
  // The UNet input for step `step`; the sample itself where diffusers' scale_model_input is the identity.
  virtual Tensor scale_model_input(const Tensor& sample, size_t step) const;
  // One call per entry of timesteps(), in order; returns prev_sample. Draws noise only if needs_noise().
  virtual Tensor step(const Tensor& model_output, size_t step, const Tensor& sample, const NoiseFn& noise) = 0;
  // Whether step() calls `noise` (once per call, sample's shape) where diffusers' step draws from the generator:
  // euler_a (the noise it adds) and euler (drawn and ignored with s_churn 0, as diffusers does).
  virtual bool needs_noise() const { return false; }
  const std::vector<float>& alphas_cumprod() const { return alphas_cumprod_; }
  const std::vector<float>& betas() const { return betas_; }

 protected:
  // Checks that set_timesteps ran, that `step` is the next step in order, and that both tensors are f32 of
  // one shape; returns contiguous copies-or-views of both.
  std::pair<Tensor, Tensor> begin_step(const Tensor& model_output, size_t step, const Tensor& sample);
  // begin_step's counterpart for scale_model_input (any step of the current schedule, any order).
  Tensor checked_sample(const Tensor& sample, size_t step) const;
  // Calls `noise` for sample's shape and checks what comes back.
  Tensor draw_noise(const NoiseFn& noise, const Shape& shape) const;
  // Validates num_inference_steps and marks the schedule as (re)started.
  void begin_set_timesteps(int num_inference_steps, int num_train_timesteps);
  // Euler-type scale_model_input: sample / ((sigma**2 + 1) ** 0.5), float32 as torch computes it.
  static Tensor divide_by_input_scale(const Tensor& sample, float sigma);
  // Euler-type init_noise_sigma: the largest sigma (of the current schedule, or of the training schedule before
  // set_timesteps) for linspace/trailing spacing, else (max**2 + 1) ** 0.5.
  static float sigma_init_noise(const std::vector<double>& sigmas, const std::vector<float>& train_sigmas,
                                const std::string& timestep_spacing);

  std::string config_path_;
  std::vector<float> betas_, alphas_cumprod_;
  std::vector<double> timesteps_, sigmas_;
  size_t next_step_ = 0;
  bool timesteps_set_ = false;
};

// name: one of scheduler_names(); config: the folder's scheduler_config.json (any SD scheduler class in
// _class_name: from_config semantics). The name fixes what it promises: "dpmpp_2m" is algorithm_type
// dpmsolver++ with solver_order 2 and use_karras_sigmas false whatever the config says, "dpmpp_2m_karras"
// the same with use_karras_sigmas true.
std::unique_ptr<Scheduler> make_scheduler(const std::string& name, const io::ConfigReader& config);
// The scheduler the config's _class_name names (PNDMScheduler -> "pndm", ..., DPMSolverMultistepScheduler ->
// "dpmpp_2m" or "dpmpp_2m_karras" per use_karras_sigmas); unknown class -> Error naming the file and class.
std::string scheduler_name_for_config(const io::ConfigReader& config);
std::vector<std::string> scheduler_names();

}  // namespace taiyi::sched
