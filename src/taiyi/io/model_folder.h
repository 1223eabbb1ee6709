// A diffusers pipeline folder exactly as downloaded from the hub:
//
//   model_index.json            {"unet": ["diffusers", "UNet2DConditionModel"], ...}
//   unet/config.json            + diffusion_pytorch_model.{safetensors,bin}
//   vae/config.json             + diffusion_pytorch_model.{safetensors,bin}
//   text_encoder/config.json    + model.safetensors or pytorch_model.bin
//   tokenizer/, scheduler/
//
// Weights are found as shipped: *.safetensors preferred over *.bin, fp32 files
// preferred over *.fp16.* variants, sharded files through their *.index.json.
#pragma once

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "taiyi/io/config.h"
#include "taiyi/io/tensor_file.h"

namespace taiyi::io {

// Tensors of one component with the file each came from (for error messages).
struct ComponentWeights {
  TensorMap tensors;
  std::map<std::string, std::string> file_of;  // tensor name -> file path
  std::vector<std::string> files;
  std::string files_str() const;  // "a.bin" or "a.safetensors, b.safetensors"
};

// The weight files of a component folder, in load order. Throws if there are none.
std::vector<std::string> find_weight_files(const std::string& component_dir);
ComponentWeights read_component_weights(const std::string& component_dir);

class ModelFolder {
 public:
  // `root` is a pipeline folder (with model_index.json). Throws naming the path if it is not one.
  explicit ModelFolder(std::string root);

  const std::string& root() const { return root_; }
  const nlohmann::json& model_index() const { return index_; }
  // The class model_index.json names for a component ("UNet2DConditionModel"); "" if absent or null.
  std::string component_class(const std::string& name) const;
  // root/name; throws "<root>: component 'unet' is missing" if the folder does not exist.
  std::string component_dir(const std::string& name) const;
  ConfigReader component_config(const std::string& name, const std::string& file = "config.json") const;

 private:
  std::string root_;
  nlohmann::json index_;
};

// Resolves `path` for a command that needs one component: either a pipeline
// folder (returns path/component) or the component folder itself (has config.json).
std::string resolve_component_dir(const std::string& path, const std::string& component);

}  // namespace taiyi::io
