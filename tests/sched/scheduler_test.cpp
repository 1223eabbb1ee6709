// The schedulers against diffusers 0.27.2 (tests/fixtures/golden/schedulers.*: every case run end to end on
// our own samples, exactly as the manifest's loop), plus hand-derived checks of v_prediction, timestep
// spacing and the errors a bad config or call gets.
#include "taiyi/sched/scheduler.h"

#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <iostream>
#include <map>
#include <numbers>
#include <sstream>

#include "taiyi/io/config.h"
#include "taiyi/io/tensor_file.h"
#include "test_util.h"

namespace taiyi {
namespace {

using sched::make_scheduler;
using sched::NoiseFn;
using sched::Scheduler;
using testing::fixture;
using testing::max_abs_diff;

const std::string kConfigPath = fixture("tiny-taiyi/scheduler/scheduler_config.json");

const io::TensorMap& golden() {
  static io::TensorMap g = io::read_safetensors(fixture("golden/schedulers.safetensors"));
  return g;
}
// The manifest is Python's json.dump output, which writes lambda_min_clipped as -Infinity (not JSON); quote it.
const nlohmann::json& manifest() {
  static nlohmann::json m = [] {
    std::ifstream f(fixture("golden/schedulers.json"));
    std::stringstream ss;
    ss << f.rdbuf();
    std::string text = ss.str();
    for (size_t p = 0; (p = text.find("-Infinity", p)) != std::string::npos; p += 11)
      text.replace(p, 9, "\"-Infinity\"");
    return nlohmann::json::parse(text);
  }();
  return m;
}

// The tiny model's scheduler_config.json with `overrides` applied, read from its real path (so errors name it).
io::ConfigReader config_with(const nlohmann::json& overrides = nlohmann::json::object()) {
  nlohmann::json j = io::read_json_file(kConfigPath);
  for (const auto& [k, v] : overrides.items()) j[k] = v;
  return io::ConfigReader(j, kConfigPath);
}

// Golden case prefix ("dpmpp2m") -> our scheduler name ("dpmpp_2m").
std::string scheduler_for_case(const std::string& prefix) {
  if (prefix == "dpmpp2m") return "dpmpp_2m";
  if (prefix == "dpmpp2m_karras") return "dpmpp_2m_karras";
  return prefix;
}

double max_abs(const Tensor& t) {
  double m = 0;
  for (int64_t i = 0; i < t.numel(); ++i) m = std::max(m, std::fabs(t.item(i)));
  return m;
}
// max |a - b| / max |ref|, the measure of the fixtures' README.
double rel_err(const Tensor& a, const Tensor& ref) { return max_abs_diff(a, ref) / std::max(max_abs(ref), 1e-30); }
double rel_err(const std::vector<double>& a, const Tensor& ref) {
  EXPECT_EQ(static_cast<int64_t>(a.size()), ref.numel());
  if (static_cast<int64_t>(a.size()) != ref.numel()) return INFINITY;
  double m = 0, r = 1e-30;
  for (size_t i = 0; i < a.size(); ++i) {
    m = std::max(m, std::fabs(a[i] - ref.item(static_cast<int64_t>(i))));
    r = std::max(r, std::fabs(ref.item(static_cast<int64_t>(i))));
  }
  return m / r;
}
double rel_err(const std::vector<float>& a, const Tensor& ref) {
  return rel_err(std::vector<double>(a.begin(), a.end()), ref);
}

Tensor row(const Tensor& stacked, int64_t i) { return stacked.slice(0, i, i + 1).squeeze(0).contiguous(); }

Tensor scaled(const Tensor& x, float s) {
  Tensor out = Tensor::empty(x.shape());
  for (int64_t i = 0; i < x.numel(); ++i) out.data<float>()[i] = x.data<float>()[i] * s;
  return out;
}

// A NoiseFn that must not be called.
NoiseFn no_noise() {
  return [](const Shape& s) -> Tensor {
    ADD_FAILURE() << "unexpected noise draw of shape " << shape_str(s);
    return Tensor::zeros(s);
  };
}

std::vector<std::string> case_names() {
  std::vector<std::string> names;
  for (const auto& c : manifest().at("cases")) names.push_back(c.at("name"));
  return names;
}

class SchedulerGolden : public ::testing::TestWithParam<std::string> {};

TEST_P(SchedulerGolden, MatchesDiffusers) {
  const std::string name = GetParam();  // "euler_a/20"
  const std::string prefix = name.substr(0, name.find('/'));
  const auto& g = golden();
  nlohmann::json c;
  for (const auto& e : manifest().at("cases"))
    if (e.at("name") == name) c = e;
  const int steps = c.at("num_inference_steps");

  auto s = make_scheduler(scheduler_for_case(prefix), config_with(manifest().at("overrides").at(prefix)));
  EXPECT_EQ(s->name(), scheduler_for_case(prefix));
  s->set_timesteps(steps);

  const Tensor& ref_t = g.at(name + "/timesteps");
  ASSERT_EQ(static_cast<int64_t>(s->num_steps()), ref_t.numel());
  ASSERT_EQ(static_cast<int>(s->num_steps()), c.at("num_step_calls").get<int>());
  double err_t = rel_err(s->timesteps(), ref_t);
  if (ref_t.dtype() == DType::I64) {
    for (size_t i = 0; i < s->num_steps(); ++i)
      EXPECT_EQ(s->timesteps()[i], ref_t.item(static_cast<int64_t>(i))) << name << " timestep " << i;
  }
  EXPECT_LE(err_t, 1e-5) << name;

  double err_sigma = 0;
  if (g.count(name + "/sigmas")) {
    err_sigma = rel_err(s->sigmas(), g.at(name + "/sigmas"));
    EXPECT_LE(err_sigma, 1e-5) << name;
  } else {
    EXPECT_TRUE(s->sigmas().empty()) << name;
  }
  const double ref_init = g.at(name + "/init_noise_sigma").item();
  const double err_init = std::fabs(s->init_noise_sigma() - ref_init) / ref_init;
  EXPECT_LE(err_init, 1e-5) << name;

  const bool has_noise = g.count(name + "/step_noise") > 0;
  EXPECT_EQ(s->needs_noise(), has_noise) << name;
  const Tensor& outputs = g.at(name + "/model_outputs");
  const Tensor& scaled_ref = g.at(name + "/scaled_model_inputs");
  const Tensor& prev_ref = g.at(name + "/prev_samples");
  size_t draws = 0, current = 0;
  NoiseFn noise = no_noise();
  if (has_noise) {
    noise = [&](const Shape& shape) {
      ++draws;
      Tensor z = row(g.at(name + "/step_noise"), static_cast<int64_t>(current));
      EXPECT_EQ(shape, z.shape());
      return z;
    };
  }
  // torch: x = x0 * init_noise_sigma (float32).
  Tensor x = scaled(g.at(name + "/x0"), s->init_noise_sigma());
  double err_scaled = 0, err_prev = 0;
  for (size_t i = 0; i < s->num_steps(); ++i) {
    current = i;
    const Tensor in = s->scale_model_input(x, i);
    err_scaled = std::max(err_scaled, rel_err(in, row(scaled_ref, static_cast<int64_t>(i))));
    x = s->step(row(outputs, static_cast<int64_t>(i)), i, x, noise);
    err_prev = std::max(err_prev, rel_err(x, row(prev_ref, static_cast<int64_t>(i))));
  }
  EXPECT_EQ(draws, has_noise ? s->num_steps() : 0u) << name;
  EXPECT_LE(err_scaled, 1e-5) << name;
  EXPECT_LE(err_prev, 1e-5) << name;
  std::cout << "[ rel err  ] " << name << ": timesteps " << err_t << ", sigmas " << err_sigma << ", init_noise_sigma "
            << err_init << ", scaled_model_inputs " << err_scaled << ", prev_samples " << err_prev << "\n";
}

INSTANTIATE_TEST_SUITE_P(Golden, SchedulerGolden, ::testing::ValuesIn(case_names()),
                         [](const auto& p) { return testing::test_name(p.param); });

TEST(SchedulerGoldenManifest, HasTheFourteenDocumentedCases) { EXPECT_EQ(case_names().size(), 14u); }

TEST(SchedulerTrainingSchedule, BetasAndAlphasCumprodMatchDiffusers) {
  for (const auto& name : sched::scheduler_names()) {
    auto s = make_scheduler(name, config_with());
    const double eb = rel_err(s->betas(), golden().at("betas"));
    const double ea = rel_err(s->alphas_cumprod(), golden().at("alphas_cumprod"));
    EXPECT_LE(eb, 1e-6) << name;
    EXPECT_LE(ea, 1e-6) << name;
    if (name == "pndm") std::cout << "[ rel err  ] betas " << eb << ", alphas_cumprod " << ea << "\n";
  }
}

TEST(SchedulerTrainingSchedule, LinearAndCosineSchedulesFollowTheirFormulas) {
  auto lin =
      make_scheduler("ddim", config_with({{"beta_schedule", "linear"}, {"beta_start", 0.0001}, {"beta_end", 0.02}}));
  ASSERT_EQ(lin->betas().size(), 1000u);
  for (size_t i = 0; i < 1000; ++i) EXPECT_NEAR(lin->betas()[i], 0.0001 + i * (0.02 - 0.0001) / 999, 1e-6 * 0.02);
  auto cos = make_scheduler("ddim", config_with({{"beta_schedule", "squaredcos_cap_v2"}}));
  auto alpha_bar = [](double t) { return std::pow(std::cos((t + 0.008) / 1.008 * std::numbers::pi / 2), 2); };
  for (size_t i = 0; i < 1000; ++i) {
    const double expected = std::min(1 - alpha_bar((i + 1) / 1000.0) / alpha_bar(i / 1000.0), 0.999);
    EXPECT_NEAR(cos->betas()[i], expected, 1e-6 * expected) << i;
  }
  double acc = 1;
  for (size_t i = 0; i < 1000; ++i) {
    acc *= 1 - static_cast<double>(cos->betas()[i]);
    EXPECT_NEAR(cos->alphas_cumprod()[i], acc, 1e-6 * acc + 1e-12) << i;
  }
}

TEST(SchedulerTrainingSchedule, TrainedBetasReplaceTheSchedule) {
  nlohmann::json list = nlohmann::json::array();
  for (int64_t i = 0; i < 1000; ++i) list.push_back(golden().at("betas").item(i));
  auto s = make_scheduler("euler", config_with({{"trained_betas", list}, {"beta_schedule", "linear"}}));
  EXPECT_LE(rel_err(s->alphas_cumprod(), golden().at("alphas_cumprod")), 1e-6);
  try {
    make_scheduler("euler", config_with({{"trained_betas", {0.1, 0.2}}}));
    FAIL() << "expected an Error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("trained_betas"), std::string::npos) << e.what();
  }
}

// ---- v_prediction: one step from a sample built from known x0 and eps must land on the ODE's exact solution
// (every scheduler here is exact for a constant x0 on its first step).

struct OneStepCase {
  std::string scheduler;
  // The sample at the first step for x0 and eps, the v target for them, and the exact next sample.
  std::function<void(const Scheduler&, double x0, double eps, double* sample, double* v, double* expected)> derive;
};

double acp(int64_t t) {
  return t >= 0 ? golden().at("alphas_cumprod").item(t)
                : golden().at("alphas_cumprod").item(0);  // set_alpha_to_one false
}

// Variance-preserving form (DDIM, PNDM): x_t = sqrt(a) x0 + sqrt(1 - a) eps, v = sqrt(a) eps - sqrt(1 - a) x0.
void vp_derive(int64_t t, int64_t t_prev, double x0, double eps, double* sample, double* v, double* expected) {
  const double a = acp(t), ap = acp(t_prev);
  *sample = std::sqrt(a) * x0 + std::sqrt(1 - a) * eps;
  *v = std::sqrt(a) * eps - std::sqrt(1 - a) * x0;
  *expected = std::sqrt(ap) * x0 + std::sqrt(1 - ap) * eps;
}
// Variance-exploding form (Euler, LMS): x = x0 + sigma eps; the UNet sees x / sqrt(sigma^2 + 1), whose v is
// (eps - sigma x0) / sqrt(sigma^2 + 1).
void ve_sample(double sigma, double x0, double eps, double* sample, double* v) {
  *sample = x0 + sigma * eps;
  *v = (eps - sigma * x0) / std::sqrt(sigma * sigma + 1);
}

class VPredictionOneStep : public ::testing::TestWithParam<std::string> {};

TEST_P(VPredictionOneStep, LandsOnTheExactSolution) {
  const std::string name = GetParam();
  auto s = make_scheduler(name, config_with({{"prediction_type", "v_prediction"}}));
  constexpr int kSteps = 10;
  s->set_timesteps(kSteps);
  const Shape shape = {1, 4, 4, 4};
  const Tensor x0 = testing::random_tensor(shape, 1), eps = testing::random_tensor(shape, 2, -2, 2);
  Tensor sample = Tensor::empty(shape), v = Tensor::empty(shape), expected = Tensor::empty(shape);
  for (int64_t i = 0; i < x0.numel(); ++i) {
    const double a = x0.data<float>()[i], e = eps.data<float>()[i];
    double xs, vs, ex;
    if (name == "ddim" || name == "pndm") {
      const auto t = static_cast<int64_t>(s->timesteps()[0]);
      vp_derive(t, t - 1000 / kSteps, a, e, &xs, &vs, &ex);
    } else if (name == "dpmpp_2m") {
      // DPM works on the VP sample with alpha = 1 / sqrt(sigma^2 + 1), sigma_t = sigma * alpha.
      const double s0 = s->sigmas()[0], s1 = s->sigmas()[1];
      const double a0 = 1 / std::sqrt(s0 * s0 + 1), a1 = 1 / std::sqrt(s1 * s1 + 1);
      xs = a0 * a + s0 * a0 * e;
      vs = a0 * e - s0 * a0 * a;
      ex = a1 * a + s1 * a1 * e;
    } else {
      const double s0 = s->sigmas()[0], s1 = s->sigmas()[1];
      ve_sample(s0, a, e, &xs, &vs);
      double next_sigma = s1;
      if (name == "euler_a") {  // with zero noise, euler_a lands at sigma_down
        const double up = std::sqrt(s1 * s1 * (s0 * s0 - s1 * s1) / (s0 * s0));
        next_sigma = std::sqrt(s1 * s1 - up * up);
      }
      ex = a + next_sigma * e;
    }
    sample.data<float>()[i] = static_cast<float>(xs);
    v.data<float>()[i] = static_cast<float>(vs);
    expected.data<float>()[i] = static_cast<float>(ex);
  }
  NoiseFn zeros = [](const Shape& sh) { return Tensor::zeros(sh); };
  const Tensor prev = s->step(v, 0, sample, zeros);
  EXPECT_LE(rel_err(prev, expected), 1e-5) << name;
  // The same step with the epsilon parameterisation (another formula in every scheduler) must agree.
  auto se = make_scheduler(name, config_with({{"prediction_type", "epsilon"}}));
  se->set_timesteps(kSteps);
  EXPECT_LE(rel_err(se->step(eps, 0, sample, zeros), expected), 1e-5) << name;
}

INSTANTIATE_TEST_SUITE_P(Schedulers, VPredictionOneStep,
                         ::testing::Values("ddim", "pndm", "euler", "euler_a", "lms", "dpmpp_2m"));

// ---- timestep_spacing, against values worked out from diffusers' formulas by hand.

std::vector<double> timesteps_of(const std::string& name, const nlohmann::json& overrides, int steps) {
  auto s = make_scheduler(name, config_with(overrides));
  s->set_timesteps(steps);
  return s->timesteps();
}

TEST(SchedulerTimesteps, LeadingSpacing) {
  // arange(N) * (1000 // N) + steps_offset, descending; PNDM repeats the second.
  EXPECT_EQ(timesteps_of("pndm", {}, 4), (std::vector<double>{751, 501, 501, 251, 1}));
  EXPECT_EQ(timesteps_of("pndm", {}, 1), (std::vector<double>{1}));
  EXPECT_EQ(timesteps_of("pndm", {}, 2), (std::vector<double>{501, 1, 1}));
  EXPECT_EQ(timesteps_of("ddim", {}, 4), (std::vector<double>{751, 501, 251, 1}));
  EXPECT_EQ(timesteps_of("ddim", {}, 3), (std::vector<double>{667, 334, 1}));
  EXPECT_EQ(timesteps_of("ddim", {{"steps_offset", 0}}, 3), (std::vector<double>{666, 333, 0}));
  EXPECT_EQ(timesteps_of("euler", {{"timestep_spacing", "leading"}}, 4), (std::vector<double>{751, 501, 251, 1}));
  // DPM spaces N + 1 points with 1000 // (N + 1) and drops the last.
  EXPECT_EQ(timesteps_of("dpmpp_2m", {{"timestep_spacing", "leading"}}, 4), (std::vector<double>{801, 601, 401, 201}));
}

TEST(SchedulerTimesteps, LinspaceSpacing) {
  // np.linspace(0, 999, N): DDIM/PNDM round half to even (499.5 -> 500), Euler-type keep the fractions.
  EXPECT_EQ(timesteps_of("ddim", {{"timestep_spacing", "linspace"}}, 4), (std::vector<double>{999, 666, 333, 0}));
  EXPECT_EQ(timesteps_of("ddim", {{"timestep_spacing", "linspace"}}, 3), (std::vector<double>{999, 500, 0}));
  EXPECT_EQ(timesteps_of("pndm", {{"timestep_spacing", "linspace"}}, 3), (std::vector<double>{999, 500, 500, 0}));
  EXPECT_EQ(timesteps_of("euler", {}, 5), (std::vector<double>{999, 749.25, 499.5, 249.75, 0}));
  EXPECT_EQ(timesteps_of("lms", {}, 3), (std::vector<double>{999, 499.5, 0}));
  EXPECT_EQ(timesteps_of("euler_a", {}, 1), (std::vector<double>{0}));
  // DPM: np.linspace(0, 999, N + 1).round() descending without the 0: 999, 799.2, 599.4, 399.6, 199.8.
  EXPECT_EQ(timesteps_of("dpmpp_2m", {}, 5), (std::vector<double>{999, 799, 599, 400, 200}));
}

TEST(SchedulerTimesteps, TrailingSpacing) {
  // round(arange(1000, 0, -1000 / N)) - 1.
  EXPECT_EQ(timesteps_of("ddim", {{"timestep_spacing", "trailing"}}, 4), (std::vector<double>{999, 749, 499, 249}));
  EXPECT_EQ(timesteps_of("ddim", {{"timestep_spacing", "trailing"}}, 3), (std::vector<double>{999, 666, 332}));
  EXPECT_EQ(timesteps_of("pndm", {{"timestep_spacing", "trailing"}}, 4),
            (std::vector<double>{999, 749, 749, 499, 249}));
  EXPECT_EQ(timesteps_of("euler", {{"timestep_spacing", "trailing"}}, 4), (std::vector<double>{999, 749, 499, 249}));
  EXPECT_EQ(timesteps_of("dpmpp_2m", {{"timestep_spacing", "trailing"}}, 4), (std::vector<double>{999, 749, 499, 249}));
  // numpy's arange takes ceil(1000 / (1000 / 61)) = ceil(61.00000000000001) = 62 values, the last rounding to
  // 0: diffusers' Euler gets a 62nd timestep -1 (sigma clamps to the first training sigma); DDIM would index
  // alphas_cumprod[-1], so it is refused.
  const std::vector<double> t = timesteps_of("euler", {{"timestep_spacing", "trailing"}}, 61);
  ASSERT_EQ(t.size(), 62u);
  EXPECT_EQ(t.back(), -1);
  EXPECT_THROW(timesteps_of("ddim", {{"timestep_spacing", "trailing"}}, 61), Error);
}

TEST(SchedulerTimesteps, EulerInitNoiseSigmaDependsOnSpacing) {
  auto lin = make_scheduler("euler", config_with());
  lin->set_timesteps(10);
  const double sigma_max = lin->sigmas()[0];
  EXPECT_FLOAT_EQ(lin->init_noise_sigma(), sigma_max);
  auto lead = make_scheduler("euler", config_with({{"timestep_spacing", "leading"}}));
  lead->set_timesteps(10);
  EXPECT_FLOAT_EQ(lead->init_noise_sigma(), std::sqrt(lead->sigmas()[0] * lead->sigmas()[0] + 1));
}

TEST(SchedulerTimesteps, SetTimestepsResetsState) {
  for (const auto& name : sched::scheduler_names()) {
    auto s = make_scheduler(name, config_with());
    const Shape shape = {1, 4, 2, 2};
    const Tensor mo = testing::random_tensor(shape, 3), x = testing::random_tensor(shape, 4);
    NoiseFn zeros = [](const Shape& sh) { return Tensor::zeros(sh); };
    s->set_timesteps(5);
    const Tensor first = s->step(mo, 0, x, zeros);
    s->step(mo, 1, first, zeros);
    s->set_timesteps(5);
    EXPECT_EQ(max_abs_diff(s->step(mo, 0, x, zeros), first), 0.0) << name;
  }
}

TEST(SchedulerSigmas, KarrasSigmasFollowTheFormula) {
  // sigma_i = (max^(1/7) + i / (N - 1) * (min^(1/7) - max^(1/7)))^7; Euler and LMS span the interpolated sigmas
  // of their linspace timesteps (999 .. 0, i.e. the whole training range here), DPM the training sigmas.
  const auto& acp_ref = golden().at("alphas_cumprod");
  auto train_sigma = [&](int64_t t) { return std::sqrt((1 - acp_ref.item(t)) / acp_ref.item(t)); };
  const double lo = train_sigma(0), hi = train_sigma(999);
  for (const std::string name : {"euler", "lms", "dpmpp_2m_karras"}) {
    auto s = make_scheduler(name, config_with({{"use_karras_sigmas", true}}));
    constexpr int kSteps = 7;
    s->set_timesteps(kSteps);
    ASSERT_EQ(s->sigmas().size(), kSteps + 1u) << name;
    EXPECT_EQ(s->sigmas().back(), 0.0) << name;
    for (int i = 0; i < kSteps; ++i) {
      const double r = static_cast<double>(i) / (kSteps - 1);
      const double expected = std::pow(std::pow(hi, 1 / 7.0) + r * (std::pow(lo, 1 / 7.0) - std::pow(hi, 1 / 7.0)), 7);
      EXPECT_NEAR(s->sigmas()[i], expected, 1e-6 * expected) << name << " sigma " << i;
      // The timestep is where the log-linearly interpolated training sigma equals sigma_i (DPM rounds it).
      const double t = s->timesteps()[i];
      const auto j = std::min<int64_t>(static_cast<int64_t>(std::floor(t)), 998);
      const double w = t - j;
      const double at_t = std::exp((1 - w) * std::log(train_sigma(j)) + w * std::log(train_sigma(j + 1)));
      if (name == "dpmpp_2m_karras") {
        EXPECT_EQ(t, std::round(t)) << name;
        EXPECT_NEAR(at_t, expected, 0.02 * expected) << name << " timestep " << i;
      } else {
        EXPECT_NEAR(at_t, expected, 1e-5 * expected) << name << " timestep " << i;
      }
    }
  }
}

TEST(SchedulerSigmas, DpmFinalSigmaMin) {
  auto s = make_scheduler("dpmpp_2m", config_with({{"final_sigmas_type", "sigma_min"}}));
  s->set_timesteps(20);
  const double a0 = golden().at("alphas_cumprod").item(0);
  EXPECT_FLOAT_EQ(s->sigmas().back(), std::sqrt((1 - a0) / a0));
}

TEST(SchedulerNoise, EulerDrawsButIgnoresItsNoise) {
  const Shape shape = {1, 4, 2, 2};
  const Tensor mo = testing::random_tensor(shape, 5), x0 = testing::random_tensor(shape, 6);
  Tensor outs[2];
  for (int k = 0; k < 2; ++k) {
    auto s = make_scheduler("euler", config_with());
    s->set_timesteps(3);
    int draws = 0;
    NoiseFn noise = [&](const Shape& sh) {
      ++draws;
      return k == 0 ? Tensor::zeros(sh) : testing::random_tensor(sh, 7 + draws);
    };
    Tensor x = x0;
    for (size_t i = 0; i < s->num_steps(); ++i) x = s->step(mo, i, x, noise);
    EXPECT_EQ(draws, 3);
    outs[k] = x;
  }
  EXPECT_EQ(max_abs_diff(outs[0], outs[1]), 0.0);
}

// ---- names and errors

TEST(SchedulerFactory, NamesAndConfigClasses) {
  EXPECT_EQ(sched::scheduler_names().size(), 7u);
  for (const auto& name : sched::scheduler_names()) EXPECT_EQ(make_scheduler(name, config_with())->name(), name);
  EXPECT_EQ(sched::scheduler_name_for_config(config_with()), "pndm");
  const std::map<std::string, std::string> classes = {{"DDIMScheduler", "ddim"},
                                                      {"EulerDiscreteScheduler", "euler"},
                                                      {"EulerAncestralDiscreteScheduler", "euler_a"},
                                                      {"LMSDiscreteScheduler", "lms"},
                                                      {"DPMSolverMultistepScheduler", "dpmpp_2m"}};
  for (const auto& [cls, name] : classes)
    EXPECT_EQ(sched::scheduler_name_for_config(config_with({{"_class_name", cls}})), name);
  EXPECT_EQ(sched::scheduler_name_for_config(
                config_with({{"_class_name", "DPMSolverMultistepScheduler"}, {"use_karras_sigmas", true}})),
            "dpmpp_2m_karras");
}

// Expects `f` to throw an Error whose message contains every one of `parts`.
template <typename F>
void expect_error(F&& f, const std::vector<std::string>& parts) {
  try {
    f();
    ADD_FAILURE() << "expected an Error mentioning " << parts.front();
  } catch (const Error& e) {
    for (const auto& p : parts) EXPECT_NE(std::string(e.what()).find(p), std::string::npos) << e.what();
  }
}

TEST(SchedulerErrors, UnknownNamesAndClasses) {
  expect_error([] { make_scheduler("heun", config_with()); }, {"heun", "dpmpp_2m_karras"});
  expect_error(
      [] {
        sched::scheduler_name_for_config(config_with({{"_class_name", "UniPCMultistepScheduler"}}));
      },
      {kConfigPath, "UniPCMultistepScheduler"});
  expect_error(
      [] {
        sched::scheduler_name_for_config(
            config_with({{"_class_name", "DPMSolverMultistepScheduler"}, {"algorithm_type", "sde-dpmsolver++"}}));
      },
      {kConfigPath, "algorithm_type", "sde-dpmsolver++"});
}

TEST(SchedulerErrors, UnsupportedConfigValuesNameTheKey) {
  const std::vector<std::tuple<std::string, nlohmann::json, std::string>> cases = {
      {"ddim", {{"beta_schedule", "cosine"}}, "beta_schedule"},
      {"euler", {{"timestep_spacing", "uniform"}}, "timestep_spacing"},
      {"pndm", {{"prediction_type", "sample"}}, "prediction_type"},
      {"euler_a", {{"prediction_type", "sample"}}, "prediction_type"},
      {"lms", {{"prediction_type", "x0"}}, "prediction_type"},
      {"ddim", {{"thresholding", true}}, "thresholding"},
      {"dpmpp_2m", {{"thresholding", true}}, "thresholding"},
      {"euler", {{"interpolation_type", "log_linear"}}, "interpolation_type"},
      {"euler", {{"rescale_betas_zero_snr", true}}, "rescale_betas_zero_snr"},
      {"pndm", {{"skip_prk_steps", false}}, "skip_prk_steps"},
      {"dpmpp_2m", {{"final_sigmas_type", "denoise_to_zero"}}, "final_sigmas_type"},
      {"dpmpp_2m", {{"variance_type", "learned_range"}}, "variance_type"},
      {"dpmpp_2m", {{"use_lu_lambdas", true}}, "use_lu_lambdas"},
      {"ddim", {{"clip_sample", "yes"}}, "clip_sample"},
      {"ddim", {{"num_train_timesteps", 1}}, "num_train_timesteps"},
  };
  for (const auto& c : cases)  // (no structured bindings: clang 14 cannot capture them)
    expect_error([&] { make_scheduler(std::get<0>(c), config_with(std::get<1>(c))); },
                 {kConfigPath, "'" + std::get<2>(c) + "'"});
}

TEST(SchedulerErrors, KeysTheClassDoesNotKnowAreIgnored) {
  // from_config semantics: PNDM has no thresholding or clip_sample, Euler no set_alpha_to_one.
  EXPECT_NO_THROW(make_scheduler("pndm", config_with({{"thresholding", true}, {"clip_sample", true}})));
  EXPECT_NO_THROW(make_scheduler("euler", config_with({{"skip_prk_steps", false}, {"thresholding", true}})));
}

TEST(SchedulerErrors, BadCalls) {
  for (const auto& name : sched::scheduler_names()) {
    auto s = make_scheduler(name, config_with());
    const Shape shape = {1, 4, 2, 2};
    const Tensor t = Tensor::zeros(shape);
    NoiseFn zeros = [](const Shape& sh) { return Tensor::zeros(sh); };
    EXPECT_THROW(s->step(t, 0, t, zeros), Error) << name << ": step before set_timesteps";
    expect_error([&] { s->set_timesteps(0); }, {"num_inference_steps 0"});
    expect_error([&] { s->set_timesteps(1001); }, {"num_inference_steps 1001"});
    s->set_timesteps(4);
    expect_error([&] { s->step(t, 1, t, zeros); }, {"out of order"});
    expect_error([&] { s->step(Tensor::zeros({1, 4, 2, 3}), 0, t, zeros); }, {"does not match"});
    EXPECT_THROW(s->scale_model_input(t, s->num_steps()), Error) << name;
    if (s->needs_noise()) expect_error([&] { s->step(t, 0, t, NoiseFn()); }, {"NoiseFn"});
  }
}

}  // namespace
}  // namespace taiyi
