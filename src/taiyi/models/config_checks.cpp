#include "taiyi/models/config_checks.h"

namespace taiyi::models {

void check_class_name(const io::ConfigReader& c, const std::string& expected) {
  const std::string name = c.get<std::string>("_class_name", expected);
  if (name != expected) throw Error(c.path() + ": _class_name is '" + name + "', expected '" + expected + "'");
}

void refuse_unless(const io::ConfigReader& c, const std::string& key, const nlohmann::json& allowed) {
  if (!c.has(key)) return;
  const nlohmann::json& v = c.json().at(key);
  if (v == allowed) return;
  if (v.is_array() && allowed.is_boolean()) {  // per-block booleans such as only_cross_attention
    bool all = true;
    for (const auto& e : v) all = all && e == allowed;
    if (all) return;
  }
  throw Error(c.path() + ": key '" + key + "' = " + v.dump() + " is not supported by taiyi (supported: " +
              (allowed.is_null() ? std::string("null") : allowed.dump()) + ")");
}

std::vector<std::string> block_types(const io::ConfigReader& c, const std::string& key, size_t n,
                                     const std::vector<std::string>& allowed) {
  const auto types = c.require<std::vector<std::string>>(key);
  if (types.size() != n)
    c.fail(key, "has " + std::to_string(types.size()) + " entries but block_out_channels has " + std::to_string(n));
  for (const auto& t : types) {
    bool ok = false;
    for (const auto& a : allowed) ok = ok || a == t;
    if (!ok) {
      std::string list;
      for (const auto& a : allowed) list += (list.empty() ? "" : ", ") + a;
      c.fail(key, "block type '" + t + "' is not supported (supported: " + list + ")");
    }
  }
  return types;
}

}  // namespace taiyi::models
