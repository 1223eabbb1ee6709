// Shared checks for diffusers model configs: the class name, and options this
// engine does not implement, which must keep diffusers' default to be accepted.
#pragma once

#include <string>
#include <vector>

#include "taiyi/io/config.h"

namespace taiyi::models {

// Throws unless `_class_name` is absent or equals `expected`.
void check_class_name(const io::ConfigReader& c, const std::string& expected);
// Throws "<file>: key 'class_embed_type' = "timestep" is not supported (only null)" unless the
// key is absent, null, or equal to `allowed` (a JSON value).
void refuse_unless(const io::ConfigReader& c, const std::string& key, const nlohmann::json& allowed);
// Every entry of a list key must be one of `allowed`.
std::vector<std::string> block_types(const io::ConfigReader& c, const std::string& key, size_t n,
                                     const std::vector<std::string>& allowed);

// Config::from_config(component_dir/config.json).
template <typename Config>
Config from_config_file(const std::string& component_dir) {
  return Config::from_config(io::ConfigReader::load(component_dir + "/config.json"));
}

}  // namespace taiyi::models
