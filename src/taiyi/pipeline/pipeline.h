// The txt2img pipeline: diffusers' StableDiffusionPipeline.__call__ (0.27) for a
// Taiyi / SD 1.x folder, in C++.
//
//   auto pipe = Pipeline::load("Taiyi-Stable-Diffusion-1B-Chinese-v0.1");
//   GenerateRequest r;
//   r.prompt = "飞流直下三千尺, 疑是银河落九天";
//   r.seed = 42;
//   GenerateResult out = pipe->generate(r);   // out.pixels: H x W x 3 uint8
//
// Same inputs, same numbers as diffusers: the prompt is tokenized and encoded
// ([negative, prompt] for classifier-free guidance, one UNet batch of 2), the
// initial latents come from a torch-compatible generator (or the caller), the
// scheduler is the folder's or a named one, and the same generator feeds any
// per-step noise in diffusers' order.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "taiyi/graph/graph_function.h"
#include "taiyi/models/autoencoder_kl.h"
#include "taiyi/models/bert_model.h"
#include "taiyi/models/unet_2d_condition.h"
#include "taiyi/sched/scheduler.h"
#include "taiyi/text/bert_tokenizer.h"

namespace taiyi::pipeline {

struct StepProgress {
  int step = 0;   // UNet calls done (1-based after the call)
  int total = 0;  // UNet calls in the run
  double elapsed_s = 0;
};

struct GenerateRequest {
  std::string prompt;
  std::string negative_prompt;  // "" is diffusers' negative_prompt=None
  float guidance_scale = 7.5f;  // <= 1: no unconditional pass, as diffusers
  int steps = 20;
  int width = 0, height = 0;  // 0: the UNet's sample_size x the VAE's scale factor
  int64_t seed = -1;          // < 0: a random seed (reported in the result)
  std::string rng = "torch";  // "torch" (torch.Generator('cpu')) or "philox" (A1111 / CUDA style)
  std::string sampler;        // "": the folder's scheduler; else one of sched::scheduler_names()
  Tensor latents;             // optional [1, 4, h, w], diffusers' latents= (multiplied by init_noise_sigma)
  std::function<void(const StepProgress&)> on_step;
};

struct StageTimings {
  double text_encoder_s = 0, unet_s = 0, scheduler_s = 0, vae_s = 0, total_s = 0;
  double compile_s = 0;  // graph mode: tracing and compiling new signatures (inside the stage times above)
  int unet_calls = 0;
};

struct GenerateResult {
  Tensor latents;               // final latents [1, 4, h, w]
  Tensor image;                 // float NHWC [1, H, W, 3] in [0, 1]
  std::vector<uint8_t> pixels;  // H x W x 3, round(image * 255) as diffusers' numpy_to_pil
  int width = 0, height = 0;
  int64_t seed = 0;
  std::string sampler;
  int steps = 0;
  StageTimings timings;
};

struct PipelineOptions {
  graph::Mode mode = graph::Mode::kGraph;  // graph: each component compiled once per input signature
  DType compute = DType::F32;              // bf16: convolutions, linears, attention in bf16 (graph mode)
  bool random_weights = false;             // configs only, seeded random weights (benchmarks)
};

class Pipeline {
 public:
  // Loads every component of a diffusers folder (model_index.json). Errors name the folder,
  // component and file at fault.
  static std::unique_ptr<Pipeline> load(const std::string& model_dir, const PipelineOptions& options = {});

  GenerateResult generate(const GenerateRequest& request) const;

  // Checks a request without running it (sizes, steps, sampler, rng, latents shape, prompt
  // encoding), so a front end can refuse bad input before writing anything.
  void validate(const GenerateRequest& request) const;

  // [negative, prompt] embeddings [2, L, D] for guidance, or [1, L, D] (prompt only) without.
  Tensor encode_prompt(const std::string& prompt, const std::string& negative_prompt, bool guidance) const;

  const std::string& model_dir() const { return model_dir_; }
  std::string model_name() const;       // the folder's name, for PNG parameters
  std::string default_sampler() const;  // the folder's scheduler, as a sampler name
  int vae_scale_factor() const;         // 8 for SD 1.x
  int default_size() const;             // sample_size x vae_scale_factor (512 for Taiyi)
  const text::BertTokenizer& tokenizer() const { return *tokenizer_; }
  const models::UNet2DConditionModel& unet() const { return *unet_; }
  const models::AutoencoderKL& vae() const { return *vae_; }
  const models::BertModel& text_encoder() const { return *text_encoder_; }
  graph::Mode mode() const { return options_.mode; }
  // Every graph compiled so far (graph mode), in order.
  std::vector<graph::CompileStats> compiles() const;

 private:
  Tensor run_text_encoder(const Tensor& ids, const Tensor& mask) const;
  Tensor run_unet(const Tensor& sample, const Tensor& t, const Tensor& context) const;
  Tensor run_vae_decode(const Tensor& z) const;
  double compile_seconds() const;

  PipelineOptions options_;
  std::string model_dir_;
  std::unique_ptr<text::BertTokenizer> tokenizer_;
  std::unique_ptr<models::BertModel> text_encoder_;
  std::unique_ptr<models::UNet2DConditionModel> unet_;
  std::unique_ptr<models::AutoencoderKL> vae_;
  std::unique_ptr<io::ConfigReader> scheduler_config_;
  // Graph mode's compiled functions (caches: they change on the first call of a signature).
  mutable std::unique_ptr<graph::GraphFunction> text_fn_, unet_fn_, vae_decode_fn_;
};

// A1111's display name of a sampler ("Euler a", "DPM++ 2M Karras", "PLMS"...).
std::string sampler_display_name(const std::string& sampler);

}  // namespace taiyi::pipeline
