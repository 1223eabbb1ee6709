// `taiyi txt2img`: a prompt to a PNG, with the flags Stable Diffusion users know
// (A1111 / sd.cpp style). The PNG carries A1111's `parameters` text, so the image
// can be reproduced (and read by tools that understand it).
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <string>

#include "taiyi/cli/commands.h"
#include "taiyi/cli/output_path.h"
#include "taiyi/io/png.h"
#include "taiyi/io/tensor_file.h"
#include "taiyi/ops/ops.h"
#include "taiyi/pipeline/pipeline.h"

namespace taiyi::cli {

namespace {

namespace fs = std::filesystem;

struct Txt2ImgOptions {
  std::string model, prompt, negative_prompt, sampler, rng = "torch", output = "taiyi.png", latents, save_raw;
  std::string mode = "graph", dtype = "fp32";
  int steps = 20, width = 0, height = 0, batch_count = 1, threads = 0;
  float cfg_scale = 7.5f;
  int64_t seed = -1;
  bool quiet = false;
};

double now_s() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

// out.png -> out-2.png for the second image of a batch.
std::string numbered(const std::string& path, int index, int count) {
  if (count == 1) return path;
  const fs::path p(path);
  return (p.parent_path() / (p.stem().string() + "-" + std::to_string(index + 1) + p.extension().string())).string();
}

std::string format_float(float v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%g", static_cast<double>(v));
  return buf;
}

// A1111's infotext: prompt, "Negative prompt: ...", then "Key: value" pairs.
std::string parameters_text(const Txt2ImgOptions& o, const pipeline::GenerateResult& r, const std::string& model) {
  std::string s = o.prompt + "\n";
  if (!o.negative_prompt.empty()) s += "Negative prompt: " + o.negative_prompt + "\n";
  s += "Steps: " + std::to_string(r.steps) + ", Sampler: " + pipeline::sampler_display_name(r.sampler) +
       ", CFG scale: " + format_float(o.cfg_scale) + ", Seed: " + std::to_string(r.seed) +
       ", Size: " + std::to_string(r.width) + "x" + std::to_string(r.height) + ", Model: " + model +
       ", RNG: " + (o.rng == "philox" ? "NV" : "CPU") + ", Version: taiyi 0.1.0";
  return s;
}

class ProgressBar {
 public:
  explicit ProgressBar(bool enabled) : enabled_(enabled) {}
  void update(const pipeline::StepProgress& p) {
    if (!enabled_) return;
    if (p.step == 1) first_ = p.elapsed_s;
    const double rate = p.step > 1 ? (p.step - 1) / std::max(p.elapsed_s - first_, 1e-9) : 0.0;
    const double eta = rate > 0 ? (p.total - p.step) / rate : 0.0;
    const int width = 30, filled = p.total ? width * p.step / p.total : width;
    std::fprintf(stderr, "\r  [%s%s] %d/%d  %.2f it/s  ETA %.0fs ", std::string(filled, '#').c_str(),
                 std::string(width - filled, ' ').c_str(), p.step, p.total, rate, eta);
    if (p.step == p.total) std::fprintf(stderr, "\n");
    std::fflush(stderr);
  }

 private:
  bool enabled_;
  double first_ = 0;
};

void run_txt2img(const Txt2ImgOptions& o) {
  ops::set_num_threads(o.threads);
  if (o.batch_count < 1) throw Error("--batch-count must be at least 1");
  if (o.seed < -1) throw Error("--seed must be -1 (random) or a non-negative number");
  for (int i = 0; i < o.batch_count; ++i) {
    check_writable(numbered(o.output, i, o.batch_count), "--output");
    if (!o.save_raw.empty()) check_writable(numbered(o.save_raw, i, o.batch_count), "--save-raw");
  }
  pipeline::PipelineOptions options;
  options.mode = graph::parse_mode(o.mode);
  options.compute = graph::parse_compute_dtype(o.dtype);
  graph::compile_options(options.mode, options.compute);  // refuses eager + bf16 before loading
  const double t_load = now_s();
  const auto pipe = pipeline::Pipeline::load(o.model, options);
  const double load_s = now_s() - t_load;

  pipeline::GenerateRequest req;
  req.prompt = o.prompt;
  req.negative_prompt = o.negative_prompt;
  req.guidance_scale = o.cfg_scale;
  req.steps = o.steps;
  req.width = o.width;
  req.height = o.height;
  req.rng = o.rng;
  req.sampler = o.sampler;
  if (!o.latents.empty()) {
    const io::TensorMap m = io::read_tensor_file(o.latents);
    if (!m.count("latents")) throw Error(o.latents + ": no tensor named 'latents'");
    req.latents = m.at("latents");
  }
  pipe->validate(req);
  if (!o.quiet)
    std::fprintf(stderr, "taiyi: loaded %s in %.2f s (%d threads, %s mode)\n", o.model.c_str(), load_s,
                 ops::num_threads(), graph::mode_name(options.mode));

  int64_t seed = o.seed;
  for (int i = 0; i < o.batch_count; ++i) {
    req.seed = seed < 0 ? -1 : seed + i;
    ProgressBar bar(!o.quiet && ::isatty(STDERR_FILENO));
    req.on_step = [&bar](const pipeline::StepProgress& p) { bar.update(p); };
    const pipeline::GenerateResult r = pipe->generate(req);
    if (seed < 0) {
      seed = r.seed - i;  // later images of the batch continue from the random seed
      if (!o.quiet) std::fprintf(stderr, "taiyi: random seed %lld\n", static_cast<long long>(r.seed));
    }
    const std::string png = numbered(o.output, i, o.batch_count);
    io::write_png(png, r.pixels.data(), r.width, r.height, 3,
                  {{"parameters", parameters_text(o, r, pipe->model_name())}});
    if (!o.save_raw.empty())
      io::write_safetensors(numbered(o.save_raw, i, o.batch_count), {{"latents", r.latents}, {"image", r.image}});
    if (!o.quiet) {
      const auto& t = r.timings;
      std::fprintf(stderr,
                   "taiyi: %s %dx%d seed %lld, %s %d steps: text encoder %.3f s, unet %d x %.3f s = %.3f s, "
                   "scheduler %.3f s, vae %.3f s, total %.3f s (of which compiling %.3f s)\n",
                   png.c_str(), r.width, r.height, static_cast<long long>(r.seed),
                   pipeline::sampler_display_name(r.sampler).c_str(), r.steps, t.text_encoder_s, t.unet_calls,
                   t.unet_calls ? t.unet_s / t.unet_calls : 0.0, t.unet_s, t.scheduler_s, t.vae_s, t.total_s,
                   t.compile_s);
    }
    std::printf("%s\n", png.c_str());
  }
}

}  // namespace

void add_txt2img_command(CLI::App& app) {
  auto o = std::make_shared<Txt2ImgOptions>();
  CLI::App* cmd = app.add_subcommand("txt2img", "Generate an image from a text prompt");
  cmd->add_option("-m,--model", o->model,
                  "Model folder (diffusers layout, e.g. Taiyi-Stable-Diffusion-1B-Chinese-v0.1)")
      ->required();
  cmd->add_option("-p,--prompt", o->prompt, "Prompt (UTF-8, any language the tokenizer knows)")->required();
  cmd->add_option("-n,--negative-prompt", o->negative_prompt, "Negative prompt");
  cmd->add_option("--steps", o->steps, "Sampling steps")->capture_default_str();
  cmd->add_option("--cfg-scale", o->cfg_scale, "Classifier-free guidance scale (<= 1: off)")->capture_default_str();
  cmd->add_option("--sampler", o->sampler,
                  "pndm, ddim, euler, euler_a, dpmpp_2m, dpmpp_2m_karras or lms (default: the model's scheduler)");
  cmd->add_option("-s,--seed", o->seed, "Seed (-1: random, printed)")->capture_default_str();
  cmd->add_option("--rng", o->rng, "Noise generator: torch (torch.Generator('cpu')) or philox (A1111 NV/CUDA)")
      ->capture_default_str();
  cmd->add_option("-W,--width", o->width, "Width in pixels, a multiple of 8 (default: the model's)");
  cmd->add_option("-H,--height", o->height, "Height in pixels, a multiple of 8 (default: the model's)");
  cmd->add_option("-b,--batch-count", o->batch_count, "Images to make, one after another, seeds seed, seed+1, ...")
      ->capture_default_str();
  cmd->add_option("--latents", o->latents, "Initial latents (.safetensors, tensor 'latents' [1, 4, H/8, W/8])");
  cmd->add_option("-t,--threads", o->threads, "Threads (default: all cores)");
  cmd->add_option("-o,--output", o->output, "Output PNG (batches add -1, -2, ...)")->capture_default_str();
  cmd->add_option("--save-raw", o->save_raw, "Also save float tensors: latents and image (NHWC, [0, 1])");
  cmd->add_flag("-q,--quiet", o->quiet, "No progress or timings on stderr");
  cmd->add_option("--dtype", o->dtype,
                  "fp32, or bf16 convolutions, linears and attention (graph mode; f32 fallback on CPUs "
                  "without bf16)")
      ->capture_default_str();
  cmd->add_option("--mode", o->mode, "eager (op by op) or graph (compiled once per shape, then replayed)")
      ->capture_default_str();
  cmd->callback([o] { run_txt2img(*o); });
}

}  // namespace taiyi::cli
