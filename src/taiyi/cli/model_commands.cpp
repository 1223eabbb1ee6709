// `taiyi tokenize` (the ids the pipeline feeds the text encoder) and `taiyi info`
// (what a model folder holds: components, classes, parameter counts, dtypes, formats).
#include <cstdio>
#include <filesystem>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <set>
#include <string>

#include "taiyi/cli/commands.h"
#include "taiyi/io/model_folder.h"
#include "taiyi/sched/scheduler.h"
#include "taiyi/text/bert_tokenizer.h"

namespace taiyi::cli {

namespace {

namespace fs = std::filesystem;

std::string tokenizer_dir(const std::string& model) {
  if (fs::exists(fs::path(model) / "vocab.txt")) return model;
  return io::ModelFolder(model).component_dir("tokenizer");
}

std::string file_format(const std::string& path) {
  return path.size() > 12 && path.ends_with(".safetensors") ? "safetensors" : "pytorch-zip";
}

nlohmann::ordered_json component_info(const io::ModelFolder& folder, const std::string& name) {
  nlohmann::ordered_json j;
  j["class"] = folder.component_class(name);
  const std::string dir = folder.component_dir(name);
  if (name == "tokenizer") {
    const auto tok = text::BertTokenizer::load(dir);
    j["vocab_size"] = tok.vocab_size();
    j["model_max_length"] = tok.model_max_length();
    return j;
  }
  if (name == "scheduler") {
    const auto cfg = folder.component_config(name, "scheduler_config.json");
    j["sampler"] = sched::scheduler_name_for_config(cfg);
    return j;
  }
  const io::ComponentWeights w = io::read_component_weights(dir);
  int64_t params = 0;
  std::set<std::string> dtypes, formats;
  for (const auto& [tname, t] : w.tensors) {
    params += t.numel();
    dtypes.insert(dtype_name(t.dtype()));
  }
  for (const auto& f : w.files) formats.insert(file_format(f));
  j["files"] = w.files;
  j["formats"] = formats;
  j["tensors"] = w.tensors.size();
  j["parameters"] = params;
  j["dtypes"] = dtypes;
  return j;
}

void run_info(const std::string& model, bool json) {
  const io::ModelFolder folder(model);
  nlohmann::ordered_json out;
  out["model"] = model;
  out["pipeline"] = folder.model_index().value("_class_name", "");
  for (const auto& [name, value] : folder.model_index().items()) {
    if (name.starts_with("_")) continue;
    if (!value.is_array() || value.size() != 2 || value[1].is_null()) continue;  // [null, null]: not shipped
    const std::string cls = value[1].is_string() ? value[1].get<std::string>() : "";
    if (name == "safety_checker" || name == "feature_extractor") {
      out["components"][name] = {{"class", cls}, {"note", "not used by taiyi"}};
      continue;
    }
    out["components"][name] = component_info(folder, name);
  }
  if (json) {
    std::printf("%s\n", out.dump().c_str());
    return;
  }
  std::printf("%s (%s)\n", model.c_str(), out["pipeline"].get<std::string>().c_str());
  for (const auto& [name, c] : out["components"].items()) {
    std::printf("  %-14s %s", name.c_str(), c.value("class", "").c_str());
    if (c.contains("parameters")) {
      std::string dt, fm;
      for (const auto& d : c["dtypes"]) dt += (dt.empty() ? "" : "+") + d.get<std::string>();
      for (const auto& f : c["formats"]) fm += (fm.empty() ? "" : "+") + f.get<std::string>();
      std::printf(", %.1fM parameters in %zu tensors, %s, %s", c["parameters"].get<double>() / 1e6,
                  c["tensors"].get<size_t>(), dt.c_str(), fm.c_str());
    }
    if (c.contains("vocab_size"))
      std::printf(", vocab %zu, model_max_length %lld", c["vocab_size"].get<size_t>(),
                  static_cast<long long>(c["model_max_length"].get<int64_t>()));
    if (c.contains("sampler")) std::printf(", sampler %s", c["sampler"].get<std::string>().c_str());
    if (c.contains("note")) std::printf(" (%s)", c["note"].get<std::string>().c_str());
    std::printf("\n");
  }
}

}  // namespace

void add_model_commands(CLI::App& app) {
  auto tok_model = std::make_shared<std::string>();
  auto prompt = std::make_shared<std::string>();
  CLI::App* tok = app.add_subcommand("tokenize", "Print the token ids of a prompt as the pipeline builds them");
  tok->add_option("-m,--model", *tok_model, "Model folder or tokenizer folder")->required();
  tok->add_option("-p,--prompt", *prompt, "Prompt (UTF-8)")->required();
  tok->callback([tok_model, prompt] {
    const auto t = text::BertTokenizer::load(tokenizer_dir(*tok_model));
    std::printf("%s\n", nlohmann::json({{"input_ids", t.encode(*prompt)}}).dump().c_str());
  });

  auto info_model = std::make_shared<std::string>();
  auto json = std::make_shared<bool>(false);
  CLI::App* info = app.add_subcommand("info", "Describe a model folder: components, classes, parameters, formats");
  info->add_option("-m,--model", *info_model, "Model folder (diffusers layout)")->required();
  info->add_flag("--json", *json, "Print one JSON object");
  info->callback([info_model, json] { run_info(*info_model, *json); });
}

}  // namespace taiyi::cli
