#include "taiyi/io/config.h"

#include <fstream>
#include <sstream>

namespace taiyi::io {

// Python's json module writes NaN, Infinity and -Infinity (diffusers saves lambda_min_clipped
// = -inf that way); JSON has no such numbers. Outside strings they become the strings
// "NaN", "Infinity", "-Infinity", which ConfigReader reads back as floats.
static std::string quote_python_specials(const std::string& text) {
  std::string out;
  out.reserve(text.size());
  bool in_string = false;
  for (size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (in_string) {
      out.push_back(c);
      if (c == '\\' && i + 1 < text.size()) out.push_back(text[++i]);
      else if (c == '"') in_string = false;
      continue;
    }
    if (c == '"') in_string = true;
    bool replaced = false;
    for (const char* word : {"-Infinity", "Infinity", "NaN"}) {
      const size_t n = std::char_traits<char>::length(word);
      if (text.compare(i, n, word) == 0) {
        out.append("\"").append(word).append("\"");
        i += n - 1;
        replaced = true;
        break;
      }
    }
    if (!replaced) out.push_back(c);
  }
  return out;
}

nlohmann::json read_json_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw Error(path + ": cannot open file");
  std::stringstream ss;
  ss << f.rdbuf();
  try {
    nlohmann::json j = nlohmann::json::parse(quote_python_specials(ss.str()));
    if (!j.is_object()) throw Error(path + ": expected a JSON object at the top level");
    return j;
  } catch (const nlohmann::json::parse_error& e) {
    throw Error(path + ": invalid JSON (" + e.what() + ")");
  }
}

std::vector<int64_t> ConfigReader::int_per_block(const std::string& key, size_t n,
                                                 const std::vector<int64_t>& fallback) const {
  if (!has(key)) return fallback;
  const nlohmann::json& v = json_.at(key);
  if (v.is_array()) {
    if (v.size() != n)
      fail(key, "expected " + std::to_string(n) + " values (one per block), got " + std::to_string(v.size()));
    std::vector<int64_t> out;
    for (const auto& e : v) {
      if (!e.is_number_integer()) fail(key, "expected integers, got " + v.dump());
      out.push_back(e.get<int64_t>());
    }
    return out;
  }
  return std::vector<int64_t>(n, convert<int64_t>(key, v));
}

std::vector<int64_t> ConfigReader::int_per_block(const std::string& key, size_t n, int64_t default_value) const {
  return int_per_block(key, n, std::vector<int64_t>(n, default_value));
}

}  // namespace taiyi::io
