#include "taiyi/io/model_folder.h"

#include <algorithm>
#include <filesystem>

namespace taiyi::io {

namespace fs = std::filesystem;

std::string ComponentWeights::files_str() const {
  std::string s;
  for (const auto& f : files) s += (s.empty() ? "" : ", ") + f;
  return s;
}

static bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

std::vector<std::string> find_weight_files(const std::string& component_dir) {
  if (!fs::is_directory(component_dir)) throw Error(component_dir + ": not a directory");
  // Preference order: plain names first, then *.fp16.* variants; safetensors before bin.
  // A sharded checkpoint lists its files in <name>.index.json.
  const std::vector<std::string> stems = {"diffusion_pytorch_model",      "model",      "pytorch_model",
                                          "diffusion_pytorch_model.fp16", "model.fp16", "pytorch_model.fp16"};
  const std::vector<std::string> exts = {".safetensors", ".bin"};
  for (const auto& stem : stems) {
    for (const auto& ext : exts) {
      const fs::path single = fs::path(component_dir) / (stem + ext);
      if (fs::is_regular_file(single)) return {single.string()};
      const fs::path index = fs::path(component_dir) / (stem + ext + ".index.json");
      if (fs::is_regular_file(index)) {
        const nlohmann::json j = read_json_file(index.string());
        if (!j.contains("weight_map") || !j["weight_map"].is_object())
          throw Error(index.string() + ": missing 'weight_map' object");
        std::vector<std::string> files;
        for (const auto& [name, file] : j["weight_map"].items()) {
          if (!file.is_string()) throw Error(index.string() + ": weight_map entry '" + name + "' is not a file name");
          const std::string f = file.get<std::string>();
          if (f.find('/') != std::string::npos || f == "..")
            throw Error(index.string() + ": weight_map entry '" + name + "' points outside the folder");
          const std::string p = (fs::path(component_dir) / f).string();
          if (std::find(files.begin(), files.end(), p) == files.end()) files.push_back(p);
        }
        if (files.empty()) throw Error(index.string() + ": empty weight_map");
        return files;
      }
    }
  }
  // Anything else with a weight extension (a single renamed file) is accepted if it is alone.
  std::vector<std::string> found;
  for (const auto& e : fs::directory_iterator(component_dir)) {
    const std::string n = e.path().filename().string();
    if (e.is_regular_file() && (ends_with(n, ".safetensors") || ends_with(n, ".bin")))
      found.push_back(e.path().string());
  }
  std::sort(found.begin(), found.end());
  if (found.size() == 1) return found;
  if (found.empty())
    throw Error(component_dir +
                ": no weights found (expected diffusion_pytorch_model.safetensors, model.safetensors "
                "or a .bin file)");
  throw Error(component_dir + ": several weight files and no index.json to say which to use");
}

ComponentWeights read_component_weights(const std::string& component_dir) {
  ComponentWeights w;
  w.files = find_weight_files(component_dir);
  for (const auto& f : w.files) {
    TensorMap m = read_tensor_file(f);
    for (auto& [name, t] : m) {
      if (w.tensors.count(name)) throw Error(f + ": tensor '" + name + "' also appears in " + w.file_of[name]);
      w.file_of[name] = f;
      w.tensors.emplace(name, std::move(t));
    }
  }
  return w;
}

ModelFolder::ModelFolder(std::string root) : root_(std::move(root)) {
  if (!fs::exists(root_)) throw Error(root_ + ": model folder does not exist");
  if (!fs::is_directory(root_)) throw Error(root_ + ": not a directory (expected a diffusers model folder)");
  const std::string index = (fs::path(root_) / "model_index.json").string();
  if (!fs::exists(index)) throw Error(root_ + ": not a diffusers pipeline folder (no model_index.json)");
  index_ = read_json_file(index);
}

std::string ModelFolder::component_class(const std::string& name) const {
  if (!index_.contains(name)) return "";
  const auto& v = index_.at(name);
  if (v.is_array() && v.size() == 2 && v[1].is_string()) return v[1].get<std::string>();
  return "";
}

std::string ModelFolder::component_dir(const std::string& name) const {
  const fs::path p = fs::path(root_) / name;
  if (!fs::is_directory(p)) throw Error(root_ + ": component '" + name + "' is missing (no folder " + p.string() + ")");
  return p.string();
}

ConfigReader ModelFolder::component_config(const std::string& name, const std::string& file) const {
  return ConfigReader::load((fs::path(component_dir(name)) / file).string());
}

std::string resolve_component_dir(const std::string& path, const std::string& component) {
  if (!fs::exists(path)) throw Error(path + ": model folder does not exist");
  if (fs::exists(fs::path(path) / "model_index.json")) return ModelFolder(path).component_dir(component);
  if (fs::exists(fs::path(path) / "config.json")) return path;
  throw Error(path + ": neither a diffusers pipeline folder (model_index.json) nor a component folder (config.json)");
}

}  // namespace taiyi::io
