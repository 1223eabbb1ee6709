// ConfigReader and read_json_file: defaults, type errors naming file and key, and the
// non-finite floats Python's json module writes into diffusers configs.
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>

#include "taiyi/io/config.h"
#include "test_util.h"

namespace taiyi::io {
namespace {

TEST(Config, PythonNonFiniteFloatsAreRead) {
  testing::TempDir tmp("config");
  std::ofstream(tmp / "c.json") << R"({"lambda_min_clipped": -Infinity, "hi": Infinity, "x": NaN,
    "s": "NaN and -Infinity stay text", "list": [1, -Infinity]})";
  const ConfigReader c = ConfigReader::load(tmp / "c.json");
  EXPECT_EQ(c.get<float>("lambda_min_clipped", 0.0f), -INFINITY);
  EXPECT_EQ(c.get<double>("hi", 0.0), INFINITY);
  EXPECT_TRUE(std::isnan(c.get<float>("x", 0.0f)));
  EXPECT_EQ(c.get<std::string>("s", ""), "NaN and -Infinity stay text");
  EXPECT_THROW(c.get<int>("hi", 0), Error);
}

TEST(Config, DefaultsTypesAndRequiredKeys) {
  const ConfigReader c(nlohmann::json::parse(R"({"a": 3, "b": null, "c": "x", "d": [1, 2], "e": 2.5})"), "cfg.json");
  EXPECT_EQ(c.get<int>("a", 7), 3);
  EXPECT_EQ(c.get<int>("b", 7), 7);  // null takes the default, as diffusers' None
  EXPECT_EQ(c.get<int>("zz", 7), 7);
  EXPECT_EQ(c.int_per_block("a", 3, 0), (std::vector<int64_t>{3, 3, 3}));
  EXPECT_EQ(c.int_per_block("d", 2, 0), (std::vector<int64_t>{1, 2}));
  EXPECT_THROW(c.int_per_block("d", 3, 0), Error);
  try {
    c.get<int>("c", 0);
    ADD_FAILURE();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("cfg.json: key 'c'"), std::string::npos) << e.what();
  }
  EXPECT_THROW(c.get<int>("e", 0), Error);
  EXPECT_THROW(c.require<int>("b"), Error);
  EXPECT_THROW(read_json_file("/nonexistent/config.json"), Error);
}

}  // namespace
}  // namespace taiyi::io
