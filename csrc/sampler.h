// The sampler's schedule and per-step update (spec: "Decoupled diffusion", sampler); the reference
// is irt4/diffusion/schedule.py. Plain C++ with raw pointers, so sampler_cuda.cu needs no torch.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace irt4 {

// (t, s) for every network call: the time before the step and the step size.
std::vector<std::pair<double, double>> sampling_schedule(int64_t steps, double eps, bool denoise);

// out = x + (x_coef * x + c_coef * c_pred + noise_coef * noise_pred + sigma * z), elementwise. The
// increment is added to x last so the rounding of the coefficients only touches the (small) increment.
struct UpdateCoefficients {
  float x_coef;
  float c_coef;
  float noise_coef;
  float sigma;
};

// Computed in double from (t, s), rounded to float once.
UpdateCoefficients update_coefficients(double t, double s);

void sampler_update_cpu(const float* x, const float* c_pred, const float* noise_pred, const float* z,
                        float* out, int64_t numel, UpdateCoefficients coef);

#ifdef IRT4_WITH_CUDA
// Launches on `stream` (a cudaStream_t, 0 for the default stream) of CUDA device `device`; all
// pointers are device memory there. Returns an empty string on success, the CUDA error otherwise.
std::string sampler_update_cuda(const float* x, const float* c_pred, const float* noise_pred, const float* z,
                                float* out, int64_t numel, UpdateCoefficients coef, int device,
                                std::uintptr_t stream);
#endif

}  // namespace irt4
