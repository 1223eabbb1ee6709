// `taiyi eval COMPONENT --model DIR --inputs IN.safetensors --output OUT.safetensors`:
// runs one model component on tensors named after diffusers' arguments, the
// parity harness for users and for the tests.
//
//   unet        sample, timestep, encoder_hidden_states -> noise_pred
//   vae_decode  latents (as the pipeline holds them; divided by scaling_factor here) -> image (raw)
//   vae_encode  image in [-1, 1] -> mean, std, logvar
//   text_encoder input_ids [, attention_mask] -> last_hidden_state (the mask applied when given)
#include <cstdio>
#include <filesystem>
#include <memory>
#include <string>

#include "taiyi/cli/commands.h"
#include "taiyi/cli/output_path.h"
#include "taiyi/graph/graph_function.h"
#include "taiyi/io/model_folder.h"
#include "taiyi/models/autoencoder_kl.h"
#include "taiyi/models/bert_model.h"
#include "taiyi/models/unet_2d_condition.h"
#include "taiyi/ops/ops.h"

namespace taiyi::cli {

namespace {

struct EvalOptions {
  std::string component, model, inputs, output, mode = "graph", dtype = "fp32";
  int threads = 0;
};

// Runs fn on its inputs eagerly, or traced and compiled as graph mode does.
std::vector<Tensor> run_in_mode(graph::Mode mode, const graph::CompileOptions& options, const std::string& name,
                                const graph::TraceFn& fn, const std::vector<Tensor>& inputs) {
  if (mode == graph::Mode::kEager) return fn(inputs);
  graph::GraphFunction f(fn, name, options);
  auto out = f(inputs);
  const auto& c = f.compiles().back();
  std::fprintf(stderr, "taiyi: compiled %s in %.3f s (%zu nodes)\n", name.c_str(), c.total_s, c.nodes);
  return out;
}

Tensor input(const io::TensorMap& in, const std::string& file, const std::string& name, bool float_only = true) {
  auto it = in.find(name);
  if (it == in.end()) throw Error(file + ": missing input tensor '" + name + "'");
  const Tensor& t = it->second;
  if (float_only) {
    if (!dtype_is_float(t.dtype()))
      throw Error(file + ": input tensor '" + name + "' has dtype " + dtype_name(t.dtype()) + ", expected float");
    return t.to(DType::F32).contiguous();
  }
  return t.contiguous();
}

void run_eval(const EvalOptions& o) {
  ops::set_num_threads(o.threads);
  const graph::Mode mode = graph::parse_mode(o.mode);
  const graph::CompileOptions options = graph::compile_options(mode, graph::parse_compute_dtype(o.dtype));
  check_writable(o.output, "--output");
  const io::TensorMap in = io::read_tensor_file(o.inputs);
  io::TensorMap out;
  if (o.component == "unet") {
    const auto unet = models::UNet2DConditionModel::load(io::resolve_component_dir(o.model, "unet"));
    out["noise_pred"] = run_in_mode(mode, options, "unet",
                                    [&](const auto& x) { return std::vector<Tensor>{unet->forward(x[0], x[1], x[2])}; },
                                    {input(in, o.inputs, "sample"), input(in, o.inputs, "timestep", false),
                                     input(in, o.inputs, "encoder_hidden_states")})[0];
  } else if (o.component == "vae_decode" || o.component == "vae_encode") {
    const auto vae = models::AutoencoderKL::load(io::resolve_component_dir(o.model, "vae"));
    if (o.component == "vae_decode") {
      const Tensor latents = input(in, o.inputs, "latents");
      out["image"] = run_in_mode(mode, options, "vae_decode",
                                 [&](const auto& x) { return std::vector<Tensor>{vae->decode(x[0])}; },
                                 {ops::scale(latents, 1.0f / vae->config().scaling_factor)})[0];
    } else {
      const auto d = run_in_mode(mode, options, "vae_encode",
                                 [&](const auto& x) {
                                   const auto dist = vae->encode(x[0]);
                                   return std::vector<Tensor>{dist.mean, dist.std, dist.logvar};
                                 },
                                 {input(in, o.inputs, "image")});
      out["mean"] = d[0];
      out["std"] = d[1];
      out["logvar"] = d[2];
    }
  } else if (o.component == "text_encoder") {
    const auto bert = models::BertModel::load(io::resolve_component_dir(o.model, "text_encoder"));
    const Tensor mask = in.count("attention_mask") ? input(in, o.inputs, "attention_mask", false) : Tensor();
    const Tensor ids = input(in, o.inputs, "input_ids", false);
    // A mask decides on the host which keys each row sees: that call stays eager.
    out["last_hidden_state"] =
        mask.defined() ? bert->forward(ids, mask)
                       : run_in_mode(mode, options, "text_encoder",
                                     [&](const auto& x) { return std::vector<Tensor>{bert->forward(x[0])}; }, {ids})[0];
  } else {
    throw Error("eval: unknown component '" + o.component +
                "' (expected unet, vae_decode, vae_encode or text_encoder)");
  }
  io::write_safetensors(o.output, out);
}

}  // namespace

void add_eval_command(CLI::App& app) {
  auto o = std::make_shared<EvalOptions>();
  CLI::App* cmd = app.add_subcommand("eval", "Run one model component on tensors from a safetensors file");
  cmd->add_option("component", o->component, "unet, vae_decode, vae_encode or text_encoder")->required();
  cmd->add_option("-m,--model", o->model, "Model folder (diffusers layout) or component folder")->required();
  cmd->add_option("-i,--inputs", o->inputs, "Input tensors (.safetensors)")->required();
  cmd->add_option("-o,--output", o->output, "Output tensors (.safetensors)")->required();
  cmd->add_option("-t,--threads", o->threads, "Threads (default: all cores)");
  cmd->add_option("--dtype", o->dtype,
                  "fp32, or bf16 convolutions, linears and attention (graph mode; f32 fallback on CPUs "
                  "without bf16)")
      ->capture_default_str();
  cmd->add_option("--mode", o->mode, "eager (op by op) or graph (traced, optimised, replayed)")->capture_default_str();
  cmd->callback([o] { run_eval(*o); });
}

}  // namespace taiyi::cli
