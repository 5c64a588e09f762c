// The C++ sampling engine: the condition encoder once, the N + 1 denoiser calls with the per-step
// update of sampler.h in between, the VAE decoder at the end (spec: "Sampler"; the reference loop is
// irt4/diffusion/sampler.py). The networks are compiled elsewhere (irt4-build-engine) and loaded here
// behind one interface, so the loop is the same for every backend. The noise comes in as tensors
// (contracts.md: "Sampling, noise and backends"): nothing here draws random numbers.
#pragma once

#include <ATen/Tensor.h>

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace torch::inductor {
class AOTIModelPackageLoader;
}

namespace irt4 {

// "[2, 3, 80, 80]": a tensor's shape for error messages (engine.cpp, bindings.cpp).
std::string shape_str(const at::Tensor& tensor);

// One compiled graph: tensors in the order its GraphSpec declares them (irt4/export/onnx.py), tensors
// out. `stream` is a cudaStream_t for CUDA networks (0: the default stream), ignored on the CPU.
class Network {
 public:
  virtual ~Network() = default;
  virtual std::vector<at::Tensor> run(const std::vector<at::Tensor>& inputs, std::uintptr_t stream) = 0;
};

// An AOTInductor package (.pt2, torch._inductor.aoti_compile_and_package) loaded through libtorch; it
// runs on the device it was compiled for.
class AotiNetwork : public Network {
 public:
  explicit AotiNetwork(const std::string& package_path);
  ~AotiNetwork() override;
  std::vector<at::Tensor> run(const std::vector<at::Tensor>& inputs, std::uintptr_t stream) override;

 private:
  std::unique_ptr<torch::inductor::AOTIModelPackageLoader> loader_;
};

#ifdef IRT4_WITH_TENSORRT
// A serialized TensorRT engine (.plan) with one optimization profile over the batch range. Inputs are
// bound by the names of the GraphSpec; outputs are allocated as torch tensors on the engine's GPU.
std::unique_ptr<Network> make_tensorrt_network(const std::string& plan_path, std::vector<std::string> input_names,
                                               std::vector<std::string> output_names, int device);
#endif

// The UNet step: (x_t, t, cond_features) -> (C, noise), float32 in and out, whatever precision the
// network computes in.
class Denoiser {
 public:
  explicit Denoiser(std::unique_ptr<Network> network) : network_(std::move(network)) {}
  std::pair<at::Tensor, at::Tensor> run(const at::Tensor& x_t, const at::Tensor& t,
                                        const std::vector<at::Tensor>& cond_features, std::uintptr_t stream);

 private:
  std::unique_ptr<Network> network_;
};

class Engine {
 public:
  Engine(std::unique_ptr<Network> cond_encoder, Denoiser denoiser, std::unique_ptr<Network> vae_decoder)
      : cond_encoder_(std::move(cond_encoder)), denoiser_(std::move(denoiser)), vae_decoder_(std::move(vae_decoder)) {}

  // cond (B, Cc, H, W), initial (B, C, h, w), step_noise (calls, B, C, h, w): float32, contiguous, on
  // the engine's device; returns the scaled latents (B, C, h, w) at t = 0.
  at::Tensor sample_latents(const at::Tensor& cond, const at::Tensor& initial, const at::Tensor& step_noise,
                            int64_t steps, double eps, bool denoise, std::uintptr_t stream);
  // Scaled latents -> radio maps in [0, 1] (B, 1, H, W).
  at::Tensor decode(const at::Tensor& latents, std::uintptr_t stream);

 private:
  std::unique_ptr<Network> cond_encoder_;
  Denoiser denoiser_;
  std::unique_ptr<Network> vae_decoder_;
};

}  // namespace irt4
