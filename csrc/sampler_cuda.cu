// CUDA side of the sampler's update: one thread per element. No torch headers, so this file builds
// the same against a CPU-only or a CUDA libtorch.
#include "sampler.h"

#include <cuda_runtime.h>

#include <algorithm>

namespace irt4 {
namespace {

__global__ void sampler_update_kernel(const float* __restrict__ x, const float* __restrict__ c_pred,
                                      const float* __restrict__ noise_pred, const float* __restrict__ z,
                                      float* __restrict__ out, int64_t numel, UpdateCoefficients coef) {
  const int64_t stride = static_cast<int64_t>(blockDim.x) * gridDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < numel; i += stride) {
    out[i] = x[i] + (coef.x_coef * x[i] + coef.c_coef * c_pred[i] + coef.noise_coef * noise_pred[i] + coef.sigma * z[i]);
  }
}

}  // namespace

std::string sampler_update_cuda(const float* x, const float* c_pred, const float* noise_pred, const float* z,
                                float* out, int64_t numel, UpdateCoefficients coef, int device,
                                std::uintptr_t stream) {
  if (numel == 0) {
    return {};
  }
  int previous_device = 0;
  cudaError_t status = cudaGetDevice(&previous_device);
  if (status == cudaSuccess && previous_device != device) {
    status = cudaSetDevice(device);
  }
  if (status != cudaSuccess) {
    return cudaGetErrorString(status);
  }
  constexpr int kThreads = 256;
  // Enough blocks to fill any current GPU; the grid-stride loop covers the rest.
  const int64_t blocks = std::min<int64_t>((numel + kThreads - 1) / kThreads, 65536);
  sampler_update_kernel<<<static_cast<unsigned int>(blocks), kThreads, 0, reinterpret_cast<cudaStream_t>(stream)>>>(
      x, c_pred, noise_pred, z, out, numel, coef);
  status = cudaGetLastError();
  if (previous_device != device) {
    cudaSetDevice(previous_device);
  }
  return status == cudaSuccess ? std::string() : std::string(cudaGetErrorString(status));
}

}  // namespace irt4
