// CPU side of the sampler: the schedule, the step coefficients and the elementwise update.
#include "sampler.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <stdexcept>

namespace irt4 {

std::vector<std::pair<double, double>> sampling_schedule(int64_t steps, double eps, bool denoise) {
  if (steps < 1) {
    throw std::invalid_argument("steps must be >= 1, got " + std::to_string(steps));
  }
  // The same double operations in the same order as the reference, so the results match exactly.
  const double step = 1.0 / static_cast<double>(steps);
  std::vector<double> sizes(static_cast<size_t>(steps), step);
  if (denoise) {
    if (!(0.0 < eps && eps < step)) {
      throw std::invalid_argument("eps must lie in (0, 1/steps) = (0, " + std::to_string(step) + "), got " +
                                  std::to_string(eps));
    }
    sizes.back() = step - eps;
    sizes.push_back(eps);
  }
  std::vector<std::pair<double, double>> schedule;
  schedule.reserve(sizes.size());
  double t = 1.0;
  for (size_t i = 0; i < sizes.size(); ++i) {
    // The last call takes whatever time is left, so the walk ends exactly at t = 0.
    const double s = (i + 1 == sizes.size()) ? t : sizes[i];
    schedule.emplace_back(t, s);
    t = t - s;
  }
  return schedule;
}

UpdateCoefficients update_coefficients(double t, double s) {
  // x0 = x - C t - sqrt(t) n and C <- -x0 turn mean = x - C s - (s / sqrt(t)) n into
  // x + s x - s t C - s (sqrt(t) + 1 / sqrt(t)) n.
  const double sqrt_t = std::sqrt(t);
  const double sigma = std::sqrt(std::max(s * (t - s) / t, 0.0));
  return {static_cast<float>(s), static_cast<float>(-s * t),
          static_cast<float>(-s * (sqrt_t + 1.0 / sqrt_t)), static_cast<float>(sigma)};
}

void sampler_update_cpu(const float* x, const float* c_pred, const float* noise_pred, const float* z,
                        float* out, int64_t numel, UpdateCoefficients coef) {
  constexpr int64_t kGrainSize = 1 << 15;
  at::parallel_for(0, numel, kGrainSize, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      out[i] = x[i] + (coef.x_coef * x[i] + coef.c_coef * c_pred[i] + coef.noise_coef * noise_pred[i] + coef.sigma * z[i]);
    }
  });
}

}  // namespace irt4
