// `taiyi bench COMPONENT --model DIR [--random-weights] ...`: times a model
// component on synthetic inputs. Human-readable lines go to stderr; the last
// stdout line (with --json) is one JSON object, so scripts can compare runs.
//
// A folder that holds only config files (configs/taiyi-v0.1) runs with
// --random-weights: same shapes and FLOPs as the real model.
#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "taiyi/cli/commands.h"
#include "taiyi/graph/graph_function.h"
#include "taiyi/io/model_folder.h"
#include "taiyi/models/autoencoder_kl.h"
#include "taiyi/models/bert_model.h"
#include "taiyi/models/unet_2d_condition.h"
#include "taiyi/ops/machine_peak.h"
#include "taiyi/ops/ops.h"
#include "taiyi/ops/runtime_info.h"
#include "taiyi/pipeline/pipeline.h"

namespace taiyi::cli {

namespace {

struct BenchOptions {
  std::string component, model, mode = "graph", dtype = "fp32";
  bool random_weights = false;
  int width = 512, height = 512, batch = 0, context = 77, repeat = 3, warmup = 1, threads = 0, steps = 20;
  bool json = false, profile = false;
  uint64_t seed = 0;
};

double now_s() {
  using clock = std::chrono::steady_clock;
  return std::chrono::duration<double>(clock::now().time_since_epoch()).count();
}

double peak_rss_mb() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return static_cast<double>(u.ru_maxrss) / 1024.0;  // ru_maxrss is in KiB on Linux
}

// Deterministic values in [-1, 1): inputs for timing, not for parity.
Tensor synthetic(const Shape& shape, uint64_t seed) {
  Tensor t = Tensor::empty(shape);
  float* d = t.data<float>();
  uint64_t s = seed * 6364136223846793005ull + 1442695040888963407ull;
  for (int64_t i = 0; i < t.numel(); ++i) {
    s = s * 6364136223846793005ull + 1442695040888963407ull;
    d[i] = static_cast<float>(static_cast<int64_t>(s >> 40) - (1 << 23)) / static_cast<float>(1 << 23);
  }
  return t;
}

double median_of(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

// A whole txt2img (PNDM unless the folder says otherwise, CFG 7.5), timed end to end, with the
// parts (text encoder, UNet calls, VAE) so the pipeline's overhead shows.
void run_txt2img_bench(const BenchOptions& o) {
  pipeline::PipelineOptions po;
  po.mode = graph::parse_mode(o.mode);
  po.compute = graph::parse_compute_dtype(o.dtype);
  po.random_weights = o.random_weights;
  graph::compile_options(po.mode, po.compute);
  const double t_load = now_s();
  const auto pipe = pipeline::Pipeline::load(o.model, po);
  const double load_s = now_s() - t_load;
  pipeline::GenerateRequest r;
  r.prompt = "飞流直下三千尺, 疑是银河落九天, 唯美, 插画";
  r.negative_prompt = "低质量, 模糊";
  r.steps = o.steps;
  r.width = o.width;
  r.height = o.height;
  r.seed = 42;
  std::fprintf(stderr, "bench txt2img: %dx%d, %d steps, %s mode, %d threads, cpu %s, oneDNN %s isa %s\n", o.width,
               o.height, o.steps, graph::mode_name(po.mode), ops::num_threads(), ops::cpu_model_name().c_str(),
               ops::onednn_version().c_str(), ops::onednn_isa().c_str());
  std::fprintf(stderr, "  load %.2f s\n", load_s);
  std::vector<double> times;
  pipeline::StageTimings last;
  double first_compile = 0;
  for (int i = 0; i < o.warmup + o.repeat; ++i) {
    const auto out = pipe->generate(r);
    const auto& t = out.timings;
    std::fprintf(stderr,
                 "  %s %d: %.3f s (text encoder %.3f, unet %d x %.3f, scheduler %.3f, vae %.3f, compile %.3f)\n",
                 i < o.warmup ? "warmup" : "run", i < o.warmup ? i : i - o.warmup, t.total_s, t.text_encoder_s,
                 t.unet_calls, t.unet_s / std::max(t.unet_calls, 1), t.scheduler_s, t.vae_s, t.compile_s);
    if (i == 0) first_compile = t.compile_s;
    if (i >= o.warmup) {
      times.push_back(t.total_s);
      last = t;
    }
  }
  for (const auto& c : pipe->compiles())
    std::fprintf(stderr, "  compiled %s: %zu nodes, %zu kept between calls, %.3f s\n", c.function.c_str(), c.nodes,
                 c.kept_nodes, c.total_s);
  const double median = median_of(times);
  const double parts = last.text_encoder_s + last.unet_s + last.vae_s;
  std::fprintf(stderr, "  median %.3f s; parts (text + unet + vae) %.3f s; peak RSS %.0f MB\n", median, parts,
               peak_rss_mb());
  if (o.json) {
    const nlohmann::json j = {{"component", "txt2img"},
                              {"mode", graph::mode_name(po.mode)},
                              {"dtype_requested", o.dtype},
                              {"width", o.width},
                              {"height", o.height},
                              {"steps", o.steps},
                              {"median_s", median},
                              {"min_s", *std::min_element(times.begin(), times.end())},
                              {"times_s", times},
                              {"unet_calls", last.unet_calls},
                              {"unet_s", last.unet_s},
                              {"text_encoder_s", last.text_encoder_s},
                              {"vae_s", last.vae_s},
                              {"scheduler_s", last.scheduler_s},
                              {"parts_s", parts},
                              {"first_run_compile_s", first_compile},
                              {"peak_rss_mb", peak_rss_mb()},
                              {"load_s", load_s},
                              {"threads", ops::num_threads()},
                              {"cpu", ops::cpu_model_name()},
                              {"onednn_isa", ops::onednn_isa()},
                              {"onednn_version", ops::onednn_version()}};
    std::printf("%s\n", j.dump().c_str());
  }
}

void run_bench(const BenchOptions& o) {
  ops::set_num_threads(o.threads);
  const graph::Mode mode = graph::parse_mode(o.mode);
  const graph::CompileOptions options = graph::compile_options(mode, graph::parse_compute_dtype(o.dtype));
  if (o.width <= 0 || o.height <= 0 || o.width % 8 || o.height % 8)
    throw Error("bench: --width and --height must be positive multiples of 8, got " + std::to_string(o.width) + "x" +
                std::to_string(o.height));
  if (o.batch < 0 || o.context <= 0 || o.repeat <= 0 || o.warmup < 0 || o.steps <= 0)
    throw Error("bench: --batch, --context, --steps and --repeat must be positive");
  if (o.component == "txt2img") return run_txt2img_bench(o);
  const int batch = o.batch > 0 ? o.batch : (o.component == "vae_decode" ? 1 : 2);

  const double t_load = now_s();
  graph::TraceFn fn;
  std::vector<Tensor> inputs;
  std::unique_ptr<models::UNet2DConditionModel> unet;
  std::unique_ptr<models::AutoencoderKL> vae;
  std::unique_ptr<models::BertModel> bert;
  Tensor a, b, c;
  const int64_t lh = o.height / 8, lw = o.width / 8;
  if (o.component == "unet") {
    const std::string dir = io::resolve_component_dir(o.model, "unet");
    unet =
        o.random_weights ? models::UNet2DConditionModel::random(dir, o.seed) : models::UNet2DConditionModel::load(dir);
    const auto& cfg = unet->config();
    a = synthetic({batch, cfg.in_channels, lh, lw}, 1);
    b = Tensor::from_vector<int64_t>({500}, {});
    c = synthetic({batch, o.context, cfg.cross_attention_dim[0]}, 2);
    fn = [&](const std::vector<Tensor>& x) { return std::vector<Tensor>{unet->forward(x[0], x[1], x[2])}; };
    inputs = {a, b, c};
  } else if (o.component == "vae_decode") {
    const std::string dir = io::resolve_component_dir(o.model, "vae");
    vae = o.random_weights ? models::AutoencoderKL::random(dir, o.seed) : models::AutoencoderKL::load(dir);
    a = synthetic({batch, vae->config().latent_channels, lh, lw}, 1);
    fn = [&](const std::vector<Tensor>& x) { return std::vector<Tensor>{vae->decode(x[0])}; };
    inputs = {a};
  } else if (o.component == "text_encoder") {
    const std::string dir = io::resolve_component_dir(o.model, "text_encoder");
    bert = o.random_weights ? models::BertModel::random(dir, o.seed) : models::BertModel::load(dir);
    std::vector<int64_t> ids(static_cast<size_t>(batch) * o.context);
    for (size_t i = 0; i < ids.size(); ++i) ids[i] = static_cast<int64_t>((i * 7919 + 101) % bert->config().vocab_size);
    a = Tensor::from_vector(ids, {batch, o.context});
    fn = [&](const std::vector<Tensor>& x) { return std::vector<Tensor>{bert->forward(x[0])}; };
    inputs = {a};
  } else {
    throw Error("bench: unknown component '" + o.component + "' (expected unet, vae_decode, text_encoder or txt2img)");
  }
  const double load_s = now_s() - t_load;
  graph::GraphFunction compiled(fn, o.component, options);
  const std::function<void()> step = [&] {
    if (mode == graph::Mode::kEager)
      fn(inputs);
    else
      compiled(inputs);
  };

  std::fprintf(stderr, "bench %s: %dx%d batch %d%s, %d threads, cpu %s, oneDNN %s isa %s\n", o.component.c_str(),
               o.width, o.height, batch,
               o.component == "unet" ? (", context " + std::to_string(o.context)).c_str() : "", ops::num_threads(),
               ops::cpu_model_name().c_str(), ops::onednn_version().c_str(), ops::onednn_isa().c_str());
  std::fprintf(stderr, "  load %.2f s (%s weights), mode %s\n", load_s, o.random_weights ? "random" : "file",
               graph::mode_name(mode));

  ops::reset_flop_count();
  for (int i = 0; i < o.warmup; ++i) {
    const double t0 = now_s();
    step();
    std::fprintf(stderr, "  warmup %d: %.3f s\n", i, now_s() - t0);
  }
  double compile_s = 0;
  DType compute = DType::F32;
  size_t graph_nodes = 0;
  double arena_mb = 0, packed_mb = 0;
  if (mode == graph::Mode::kGraph) {
    if (compiled.compiles().empty()) compiled(inputs);  // --warmup 0: compile outside the timed runs
    compile_s = compiled.compiles().back().total_s;
    graph_nodes = compiled.compiles().back().nodes;
    const auto& stats = compiled.compiles().back();
    std::fprintf(stderr,
                 "  compile %.3f s (%zu nodes, trace %.2f s, passes %.2f s), activation arena %.0f MB (%.0f MB without "
                 "reuse), packed weights %.0f MB\n",
                 compile_s, graph_nodes, stats.trace_s, stats.passes_s, stats.arena_bytes / 1e6,
                 stats.planned_bytes / 1e6, stats.packed_weight_bytes / 1e6);
    arena_mb = stats.arena_bytes / 1e6;
    packed_mb = stats.packed_weight_bytes / 1e6;
    compute = stats.compute;
    if (options.compute == DType::BF16 && compute != DType::BF16)
      std::fprintf(stderr, "  bf16 is not available on this CPU (oneDNN isa %s): ran fp32\n",
                   ops::onednn_isa().c_str());
  }
  std::vector<double> times;
  uint64_t flops = 0;
  for (int i = 0; i < o.repeat; ++i) {
    ops::reset_flop_count();
    const double t0 = now_s();
    step();
    times.push_back(now_s() - t0);
    flops = ops::flop_count();
    std::fprintf(stderr, "  run %d: %.3f s\n", i, times.back());
  }
  const double median = median_of(times);
  const double gflop = static_cast<double>(flops) * 1e-9;
  if (o.profile && mode == graph::Mode::kGraph) {
    graph::Profile prof;
    const double t0 = now_s();
    compiled(inputs, &prof);
    const double total = now_s() - t0;
    std::fprintf(stderr, "  profile of one more run (%.3f s):\n%s", total, graph::format_profile(prof, total).c_str());
  }
  std::fprintf(stderr, "  median %.3f s, %.1f GFLOP, %.1f GFLOP/s, peak RSS %.0f MB\n", median, gflop, gflop / median,
               peak_rss_mb());
  // The machine's peak at the precision the products ran in, measured now (after the timed runs).
  const ops::MeasuredPeak peak = ops::measure_conv_peak(compute);
  const double fraction = peak.supported && median > 0 ? gflop / median / peak.gflops : 0;
  std::fprintf(stderr, "  machine peak (measured, %s, %s): %.1f GFLOP/s; this run: %.1f%% of it\n",
               peak.shape.c_str(), peak.kernel.c_str(), peak.gflops, 100.0 * fraction);
  if (o.json) {
    nlohmann::json j = {{"component", o.component},
                        {"mode", graph::mode_name(mode)},
                        {"compile_s", compile_s},
                        {"graph_nodes", graph_nodes},
                        {"arena_mb", arena_mb},
                        {"packed_weight_mb", packed_mb},
                        {"dtype", compute == DType::BF16 ? "bf16" : "fp32"},
                        {"dtype_requested", o.dtype},
                        {"width", o.width},
                        {"height", o.height},
                        {"batch", batch},
                        {"median_s", median},
                        {"min_s", *std::min_element(times.begin(), times.end())},
                        {"times_s", times},
                        {"gflop", gflop},
                        {"gflop_per_s", gflop / median},
                        {"peak_rss_mb", peak_rss_mb()},
                        {"machine_peak_gflop_per_s", peak.gflops},
                        {"machine_peak_kernel", peak.kernel},
                        {"fraction_of_peak", fraction},
                        {"load_s", load_s},
                        {"threads", ops::num_threads()},
                        {"cpu", ops::cpu_model_name()},
                        {"onednn_isa", ops::onednn_isa()},
                        {"onednn_version", ops::onednn_version()}};
    if (o.component == "unet") j["context"] = o.context;
    std::printf("%s\n", j.dump().c_str());
  }
}

}  // namespace

void add_bench_command(CLI::App& app) {
  auto o = std::make_shared<BenchOptions>();
  CLI::App* cmd = app.add_subcommand("bench", "Time a component (unet, vae_decode, text_encoder) or a whole txt2img");
  cmd->add_option("component", o->component, "unet, vae_decode, text_encoder or txt2img")->required();
  cmd->add_option("-m,--model", o->model, "Model folder (diffusers layout), e.g. configs/taiyi-v0.1")->required();
  cmd->add_flag("--random-weights", o->random_weights, "Random weights: the folder needs only config.json files");
  cmd->add_option("-W,--width", o->width, "Image width in pixels")->capture_default_str();
  cmd->add_option("-H,--height", o->height, "Image height in pixels")->capture_default_str();
  cmd->add_option("-b,--batch", o->batch, "Batch (default: 2 for unet and text_encoder = one image with CFG, 1 for vae)");
  cmd->add_option("--steps", o->steps, "txt2img: sampling steps")->capture_default_str();
  cmd->add_option("--context", o->context, "Text tokens (encoder_hidden_states length)")->capture_default_str();
  cmd->add_option("--repeat", o->repeat, "Timed runs")->capture_default_str();
  cmd->add_option("--warmup", o->warmup, "Untimed runs first")->capture_default_str();
  cmd->add_option("-t,--threads", o->threads, "Threads (default: all cores)");
  cmd->add_option("--seed", o->seed, "Seed of the random weights");
  cmd->add_flag("--json", o->json, "Print one JSON object as the last stdout line");
  cmd->add_option("--dtype", o->dtype,
                  "fp32, or bf16 convolutions, linears and attention (graph mode; f32 fallback on CPUs "
                  "without bf16)")
      ->capture_default_str();
  cmd->add_option("--mode", o->mode, "eager or graph")->capture_default_str();
  cmd->add_flag("--profile", o->profile, "Graph mode: time one more run per op kind and print the table");
  cmd->callback([o] { run_bench(*o); });
}

}  // namespace taiyi::cli
