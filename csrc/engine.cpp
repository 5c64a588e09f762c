// The sampling loop of engine.h and its AOTInductor network.
#include "engine.h"

#include <ATen/ATen.h>
#include <torch/csrc/inductor/aoti_package/model_package_loader.h>

#include <sstream>
#include <stdexcept>

#include "sampler.h"

namespace irt4 {

std::string shape_str(const at::Tensor& tensor) {
  std::ostringstream out;
  out << tensor.sizes();
  return out.str();
}

namespace {

void check_float_on(const at::Tensor& tensor, const char* name, const at::Device& device) {
  if (tensor.scalar_type() != at::kFloat) {
    throw std::invalid_argument(std::string(name) + " must be float32, got " +
                                std::string(c10::toString(tensor.scalar_type())));
  }
  if (tensor.device() != device) {
    throw std::invalid_argument(std::string(name) + " is on " + tensor.device().str() + ", expected " +
                                device.str() + " (the device of cond)");
  }
  if (!tensor.is_contiguous()) {
    throw std::invalid_argument(std::string(name) + " must be contiguous");
  }
}

// x + update(t, s) into a new tensor, with the kernels of sampler.h on x's device.
at::Tensor update(const at::Tensor& x, const at::Tensor& c_pred, const at::Tensor& noise_pred, const at::Tensor& z,
                  double t, double s, std::uintptr_t stream) {
  const UpdateCoefficients coef = update_coefficients(t, s);
  at::Tensor out = at::empty_like(x);
  if (x.is_cpu()) {
    sampler_update_cpu(x.data_ptr<float>(), c_pred.data_ptr<float>(), noise_pred.data_ptr<float>(),
                       z.data_ptr<float>(), out.data_ptr<float>(), x.numel(), coef);
    return out;
  }
#ifdef IRT4_WITH_CUDA
  const std::string error =
      sampler_update_cuda(x.data_ptr<float>(), c_pred.data_ptr<float>(), noise_pred.data_ptr<float>(),
                          z.data_ptr<float>(), out.data_ptr<float>(), x.numel(), coef, x.get_device(), stream);
  if (!error.empty()) {
    throw std::runtime_error("sampler_update CUDA kernel failed: " + error);
  }
  return out;
#else
  (void)stream;
  throw std::invalid_argument("x is on " + x.device().str() +
                              " but irt4._C was built without CUDA kernels; rebuild where nvcc is found");
#endif
}

}  // namespace

AotiNetwork::AotiNetwork(const std::string& package_path)
    : loader_(std::make_unique<torch::inductor::AOTIModelPackageLoader>(package_path, "model")) {}

AotiNetwork::~AotiNetwork() = default;

std::vector<at::Tensor> AotiNetwork::run(const std::vector<at::Tensor>& inputs, std::uintptr_t stream) {
  // On CUDA the package launches on the given stream; a null handle means the current stream.
  return loader_->run(inputs, reinterpret_cast<void*>(stream));
}

std::pair<at::Tensor, at::Tensor> Denoiser::run(const at::Tensor& x_t, const at::Tensor& t,
                                                const std::vector<at::Tensor>& cond_features, std::uintptr_t stream) {
  std::vector<at::Tensor> inputs{x_t, t};
  inputs.insert(inputs.end(), cond_features.begin(), cond_features.end());
  std::vector<at::Tensor> outputs = network_->run(inputs, stream);
  if (outputs.size() != 2) {
    throw std::runtime_error("the denoiser returned " + std::to_string(outputs.size()) +
                             " tensors, expected 2 (c_pred, noise_pred)");
  }
  for (at::Tensor& output : outputs) {
    if (!output.sizes().equals(x_t.sizes()) || output.scalar_type() != at::kFloat) {
      throw std::runtime_error("the denoiser returned " + shape_str(output) + " " +
                               std::string(c10::toString(output.scalar_type())) + ", expected float32 " +
                               shape_str(x_t) + " (the shape of x_t)");
    }
    output = output.contiguous();
  }
  return {outputs[0], outputs[1]};
}

at::Tensor Engine::sample_latents(const at::Tensor& cond, const at::Tensor& initial, const at::Tensor& step_noise,
                                  int64_t steps, double eps, bool denoise, std::uintptr_t stream) {
  const at::Device device = cond.device();
  check_float_on(cond, "cond", device);
  check_float_on(initial, "initial", device);
  check_float_on(step_noise, "step_noise", device);
  const std::vector<std::pair<double, double>> schedule = sampling_schedule(steps, eps, denoise);
  const int64_t batch = cond.size(0);
  if (initial.dim() != 4 || initial.size(0) != batch) {
    throw std::invalid_argument("initial has shape " + shape_str(initial) + ", expected (" +
                                std::to_string(batch) + ", C, h, w) (the batch of cond)");
  }
  if (step_noise.dim() != 5 || step_noise.size(0) != static_cast<int64_t>(schedule.size()) ||
      !step_noise[0].sizes().equals(initial.sizes())) {
    throw std::invalid_argument("step_noise has shape " + shape_str(step_noise) + ", expected (" +
                                std::to_string(schedule.size()) + ", " + shape_str(initial).substr(1) +
                                " (one draw per network call of the schedule)");
  }
  const std::vector<at::Tensor> cond_features = cond_encoder_->run({cond}, stream);
  at::Tensor x = initial;
  for (size_t i = 0; i < schedule.size(); ++i) {
    const auto [t, s] = schedule[i];
    const at::Tensor time = at::full({batch}, t, cond.options());
    const auto [c_pred, noise_pred] = denoiser_.run(x, time, cond_features, stream);
    x = update(x, c_pred, noise_pred, step_noise[static_cast<int64_t>(i)], t, s, stream);
  }
  return x;
}

at::Tensor Engine::decode(const at::Tensor& latents, std::uintptr_t stream) {
  check_float_on(latents, "latents", latents.device());
  std::vector<at::Tensor> outputs = vae_decoder_->run({latents}, stream);
  if (outputs.size() != 1) {
    throw std::runtime_error("the VAE decoder returned " + std::to_string(outputs.size()) + " tensors, expected 1");
  }
  return outputs[0];
}

}  // namespace irt4
