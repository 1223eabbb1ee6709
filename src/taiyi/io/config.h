// Typed access to a JSON config file (a diffusers/transformers config.json).
//
// Absent keys and JSON null take the caller's default, which is how diffusers
// fills the keys that 2022-era configs do not spell out; a key of the wrong JSON
// type, or a missing required key, throws Error naming the file and the key.
//
//   ConfigReader c = ConfigReader::load(dir + "/config.json");
//   int layers = c.get<int>("layers_per_block", 2);
#pragma once

#include <limits>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "taiyi/tensor/tensor.h"

namespace taiyi::io {

nlohmann::json read_json_file(const std::string& path);

class ConfigReader {
 public:
  ConfigReader(nlohmann::json json, std::string path) : json_(std::move(json)), path_(std::move(path)) {}
  static ConfigReader load(const std::string& path) { return ConfigReader(read_json_file(path), path); }

  const std::string& path() const { return path_; }
  const nlohmann::json& json() const { return json_; }
  bool has(const std::string& key) const { return json_.contains(key) && !json_.at(key).is_null(); }

  template <typename T>
  T get(const std::string& key, const T& default_value) const {
    return has(key) ? convert<T>(key, json_.at(key)) : default_value;
  }
  template <typename T>
  T require(const std::string& key) const {
    if (!has(key)) throw Error(path_ + ": missing required key '" + key + "'");
    return convert<T>(key, json_.at(key));
  }
  // A key that is either one number or a list of `n` numbers (diffusers' per-block settings).
  std::vector<int64_t> int_per_block(const std::string& key, size_t n, int64_t default_value) const;
  std::vector<int64_t> int_per_block(const std::string& key, size_t n, const std::vector<int64_t>& fallback) const;

  [[noreturn]] void fail(const std::string& key, const std::string& what) const {
    throw Error(path_ + ": key '" + key + "': " + what);
  }

 private:
  template <typename T>
  T convert(const std::string& key, const nlohmann::json& v) const {
    try {
      if constexpr (std::is_same_v<T, bool>) {
        if (!v.is_boolean()) fail(key, "expected true or false, got " + v.dump());
      } else if constexpr (std::is_integral_v<T>) {
        if (!v.is_number_integer() &&
            !(v.is_number_float() && v.get<double>() == static_cast<int64_t>(v.get<double>())))
          fail(key, "expected an integer, got " + v.dump());
      } else if constexpr (std::is_floating_point_v<T>) {
        if (v.is_string()) {  // Python's json spellings of the non-finite floats
          const std::string s = v.get<std::string>();
          if (s == "Infinity") return std::numeric_limits<T>::infinity();
          if (s == "-Infinity") return -std::numeric_limits<T>::infinity();
          if (s == "NaN") return std::numeric_limits<T>::quiet_NaN();
        }
        if (!v.is_number()) fail(key, "expected a number, got " + v.dump());
      } else if constexpr (std::is_same_v<T, std::string>) {
        if (!v.is_string()) fail(key, "expected a string, got " + v.dump());
      }
      return v.get<T>();
    } catch (const nlohmann::json::exception& e) {
      fail(key, std::string("unexpected value ") + v.dump() + " (" + e.what() + ")");
    }
  }

  nlohmann::json json_;
  std::string path_;
};

}  // namespace taiyi::io
