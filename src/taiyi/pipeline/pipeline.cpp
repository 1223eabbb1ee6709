#include "taiyi/pipeline/pipeline.h"

#include <chrono>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <random>

#include "taiyi/io/model_folder.h"
#include "taiyi/ops/ops.h"
#include "taiyi/pipeline/generator.h"

namespace taiyi::pipeline {

namespace {

double now_s() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

// The UNet's timestep as diffusers hands it over: integer schedules as int64, others as float.
Tensor timestep_tensor(double t) {
  if (t == std::floor(t)) return Tensor::from_vector<int64_t>({static_cast<int64_t>(t)}, {});
  return Tensor::from_vector<float>({static_cast<float>(t)}, {});
}

}  // namespace

std::unique_ptr<Pipeline> Pipeline::load(const std::string& model_dir, const PipelineOptions& options) {
  const io::ModelFolder folder(model_dir);
  auto p = std::unique_ptr<Pipeline>(new Pipeline());
  p->model_dir_ = model_dir;
  p->options_ = options;
  for (const auto& [component, expected] :
       std::vector<std::pair<std::string, std::string>>{{"text_encoder", "BertModel"},
                                                        {"tokenizer", "BertTokenizer"},
                                                        {"unet", "UNet2DConditionModel"},
                                                        {"vae", "AutoencoderKL"}}) {
    const std::string cls = folder.component_class(component);
    if (!cls.empty() && cls != expected && !(component == "tokenizer" && cls == "BertTokenizerFast"))
      throw Error(model_dir + "/model_index.json: " + component + " is a " + cls + ", taiyi supports " + expected);
  }
  p->tokenizer_ = std::make_unique<text::BertTokenizer>(text::BertTokenizer::load(folder.component_dir("tokenizer")));
  if (options.random_weights) {
    p->text_encoder_ = models::BertModel::random(folder.component_dir("text_encoder"), 1);
    p->unet_ = models::UNet2DConditionModel::random(folder.component_dir("unet"), 2);
    p->vae_ = models::AutoencoderKL::random(folder.component_dir("vae"), 3);
  } else {
    p->text_encoder_ = models::BertModel::load(folder.component_dir("text_encoder"));
    p->unet_ = models::UNet2DConditionModel::load(folder.component_dir("unet"));
    p->vae_ = models::AutoencoderKL::load(folder.component_dir("vae"));
  }
  p->scheduler_config_ =
      std::make_unique<io::ConfigReader>(folder.component_config("scheduler", "scheduler_config.json"));
  sched::scheduler_name_for_config(*p->scheduler_config_);  // refuse an unknown scheduler class now
  if (p->text_encoder_->config().hidden_size != p->unet_->config().cross_attention_dim[0])
    throw Error(
        model_dir + ": the text encoder's hidden_size " + std::to_string(p->text_encoder_->config().hidden_size) +
        " differs from the UNet's cross_attention_dim " + std::to_string(p->unet_->config().cross_attention_dim[0]));
  const graph::CompileOptions compile = graph::compile_options(options.mode, options.compute);
  const Pipeline* self = p.get();
  // The three run one after another: one workspace, as big as the largest of their arenas.
  const auto workspace = std::make_shared<graph::Workspace>();
  p->text_fn_ = std::make_unique<graph::GraphFunction>(
      [self](const std::vector<Tensor>& in) { return std::vector<Tensor>{self->text_encoder_->forward(in[0])}; },
      "text_encoder", compile, workspace);
  // The text context is the same at every step of an image: the cross-attention K and V
  // projections of it are computed once per prompt instead of once per step
  // (TAIYI_KEEP_CONTEXT=0 turns that off, for A/B runs).
  graph::CompileOptions unet_compile = compile;
  const char* keep = std::getenv("TAIYI_KEEP_CONTEXT");
  if (keep == nullptr || std::string(keep) != "0") unet_compile.repeated_inputs = {2};
  p->unet_fn_ = std::make_unique<graph::GraphFunction>(
      [self](const std::vector<Tensor>& in) { return std::vector<Tensor>{self->unet_->forward(in[0], in[1], in[2])}; },
      "unet", unet_compile, workspace);
  p->vae_decode_fn_ = std::make_unique<graph::GraphFunction>(
      [self](const std::vector<Tensor>& in) { return std::vector<Tensor>{self->vae_->decode(in[0])}; }, "vae_decode",
      compile, workspace);
  return p;
}

std::vector<graph::CompileStats> Pipeline::compiles() const {
  std::vector<graph::CompileStats> all;
  for (const auto* f : {text_fn_.get(), unet_fn_.get(), vae_decode_fn_.get()})
    all.insert(all.end(), f->compiles().begin(), f->compiles().end());
  return all;
}

double Pipeline::compile_seconds() const {
  double s = 0;
  for (const auto& c : compiles()) s += c.total_s;
  return s;
}

Tensor Pipeline::run_text_encoder(const Tensor& ids, const Tensor& mask) const {
  // A mask changes which keys each row attends to, decided on the host: that path stays eager.
  if (options_.mode == graph::Mode::kEager || mask.defined()) return text_encoder_->forward(ids, mask);
  return (*text_fn_)({ids})[0];
}

Tensor Pipeline::run_unet(const Tensor& sample, const Tensor& t, const Tensor& context) const {
  if (options_.mode == graph::Mode::kEager) return unet_->forward(sample, t, context);
  return (*unet_fn_)({sample, t, context})[0];
}

Tensor Pipeline::run_vae_decode(const Tensor& z) const {
  if (options_.mode == graph::Mode::kEager) return vae_->decode(z);
  return (*vae_decode_fn_)({z})[0];
}

std::string Pipeline::model_name() const {
  std::filesystem::path p(model_dir_);
  if (p.filename().empty()) p = p.parent_path();
  return p.filename().string();
}

std::string Pipeline::default_sampler() const { return sched::scheduler_name_for_config(*scheduler_config_); }

int Pipeline::vae_scale_factor() const { return 1 << (vae_->config().block_out_channels.size() - 1); }

int Pipeline::default_size() const { return static_cast<int>(unet_->config().sample_size) * vae_scale_factor(); }

Tensor Pipeline::encode_prompt(const std::string& prompt, const std::string& negative_prompt, bool guidance) const {
  // diffusers pads both to the tokenizer's model_max_length and passes an attention mask only
  // when the text encoder's config asks for one.
  auto encode = [&](const std::string& text) {
    const std::vector<int64_t> ids = tokenizer_->encode(text);
    const int64_t n = static_cast<int64_t>(ids.size());
    Tensor mask;
    if (text_encoder_->use_attention_mask()) {
      const int64_t real = std::min(tokenizer_->count_ids(text), n);
      std::vector<int64_t> m(static_cast<size_t>(n), 0);
      std::fill_n(m.begin(), real, 1);
      mask = Tensor::from_vector(m, {1, n});
    }
    return run_text_encoder(Tensor::from_vector(ids, {1, n}), mask);
  };
  const Tensor cond = encode(prompt);
  if (!guidance) return cond;
  return ops::concat({encode(negative_prompt), cond}, 0);
}

void Pipeline::validate(const GenerateRequest& r) const {
  const int f = vae_scale_factor();
  const int w = r.width ? r.width : default_size(), h = r.height ? r.height : default_size();
  if (w <= 0 || h <= 0 || w % f || h % f)
    throw Error("image size " + std::to_string(w) + "x" + std::to_string(h) + " is not a positive multiple of " +
                std::to_string(f) + " in both width and height");
  if (w > 16384 || h > 16384)
    throw Error("image size " + std::to_string(w) + "x" + std::to_string(h) + " is too large");
  if (r.steps < 1 || r.steps > 1000) throw Error("steps must be between 1 and 1000, got " + std::to_string(r.steps));
  if (!std::isfinite(r.guidance_scale)) throw Error("guidance scale must be a finite number");
  if (!r.sampler.empty()) sched::make_scheduler(r.sampler, *scheduler_config_);
  make_generator(r.rng, 0);
  if (r.latents.defined()) {
    const Shape expected = {1, unet_->config().in_channels, h / f, w / f};
    if (r.latents.shape() != expected || !dtype_is_float(r.latents.dtype()))
      throw Error("latents must be float " + shape_str(expected) + " for a " + std::to_string(w) + "x" +
                  std::to_string(h) + " image, got " + r.latents.describe());
  }
  tokenizer_->count_ids(r.prompt);  // invalid UTF-8 fails here, before any work
  tokenizer_->count_ids(r.negative_prompt);
}

GenerateResult Pipeline::generate(const GenerateRequest& r) const {
  validate(r);
  const double t_start = now_s();
  const double compile_before = compile_seconds();
  GenerateResult out;
  const int f = vae_scale_factor();
  out.width = r.width ? r.width : default_size();
  out.height = r.height ? r.height : default_size();
  out.sampler = r.sampler.empty() ? default_sampler() : r.sampler;
  out.steps = r.steps;
  out.seed = r.seed >= 0 ? r.seed : static_cast<int64_t>(std::random_device{}() & 0xffffffffu);
  const bool guidance = r.guidance_scale > 1.0f;

  double t0 = now_s();
  const Tensor context = encode_prompt(r.prompt, r.negative_prompt, guidance);
  out.timings.text_encoder_s = now_s() - t0;

  auto scheduler = sched::make_scheduler(out.sampler, *scheduler_config_);
  scheduler->set_timesteps(r.steps);
  auto generator = make_generator(r.rng, static_cast<uint64_t>(out.seed));
  const Shape latent_shape = {1, unet_->config().in_channels, out.height / f, out.width / f};
  Tensor latents = r.latents.defined() ? r.latents.to(DType::F32).contiguous() : generator->randn(latent_shape);
  latents = ops::scale(latents, scheduler->init_noise_sigma());
  const sched::NoiseFn noise = [&](const Shape& shape) { return generator->randn(shape); };

  const size_t total = scheduler->num_steps();
  for (size_t i = 0; i < total; ++i) {
    t0 = now_s();
    const Tensor model_in = scheduler->scale_model_input(guidance ? ops::concat({latents, latents}, 0) : latents, i);
    out.timings.scheduler_s += now_s() - t0;
    t0 = now_s();
    Tensor eps = run_unet(model_in, timestep_tensor(scheduler->timesteps()[i]), context);
    if (guidance) {
      const auto halves = ops::chunk(eps, 2, 0);
      eps = ops::add(halves[0], ops::scale(ops::sub(halves[1], halves[0]), r.guidance_scale));
    }
    out.timings.unet_s += now_s() - t0;
    ++out.timings.unet_calls;
    t0 = now_s();
    latents = scheduler->step(eps, i, latents, noise);
    out.timings.scheduler_s += now_s() - t0;
    if (r.on_step) r.on_step({static_cast<int>(i + 1), static_cast<int>(total), now_s() - t_start});
  }
  out.latents = latents;

  t0 = now_s();
  const Tensor decoded = run_vae_decode(ops::scale(latents, 1.0f / vae_->config().scaling_factor));
  // VaeImageProcessor.denormalize then numpy NHWC, then numpy_to_pil's round().
  const Tensor image = ops::clamp(ops::add_scalar(ops::scale(decoded, 0.5f), 0.5f), 0.0f, 1.0f);
  out.image = ops::contiguous(ops::permute(image, {0, 2, 3, 1}));
  out.timings.vae_s = now_s() - t0;
  const float* px = out.image.data<float>();
  out.pixels.resize(static_cast<size_t>(out.image.numel()));
  for (size_t i = 0; i < out.pixels.size(); ++i)
    out.pixels[i] = static_cast<uint8_t>(std::nearbyint(px[i] * 255.0f));  // round half to even, as numpy
  out.timings.compile_s = compile_seconds() - compile_before;
  out.timings.total_s = now_s() - t_start;
  return out;
}

std::string sampler_display_name(const std::string& sampler) {
  if (sampler == "pndm") return "PLMS";
  if (sampler == "ddim") return "DDIM";
  if (sampler == "euler") return "Euler";
  if (sampler == "euler_a") return "Euler a";
  if (sampler == "dpmpp_2m") return "DPM++ 2M";
  if (sampler == "dpmpp_2m_karras") return "DPM++ 2M Karras";
  if (sampler == "lms") return "LMS";
  return sampler;
}

}  // namespace taiyi::pipeline
