// The Python boundary of irt4._C: checks every tensor against what the kernels assume, then calls
// the CPU loop or the CUDA launcher. Only irt4/engine imports this module.
#include <torch/extension.h>
#include <torch/version.h>

#include <string>

#include "engine.h"
#include "sampler.h"

namespace py = pybind11;

namespace {

using irt4::shape_str;

void check_like_x(const at::Tensor& tensor, const char* name, const at::Tensor& x) {
  if (tensor.scalar_type() != at::kFloat) {
    throw py::type_error(std::string(name) + " must be float32, got " + std::string(c10::toString(tensor.scalar_type())));
  }
  if (!tensor.sizes().equals(x.sizes())) {
    throw py::value_error(std::string(name) + " has shape " + shape_str(tensor) + ", expected " + shape_str(x) +
                          " (the shape of x)");
  }
  if (tensor.device() != x.device()) {
    throw py::value_error(std::string(name) + " is on " + tensor.device().str() + ", expected " + x.device().str() +
                          " (the device of x)");
  }
  if (!tensor.is_contiguous()) {
    throw py::value_error(std::string(name) + " must be contiguous");
  }
}

at::Tensor sampler_update(const at::Tensor& x, const at::Tensor& c_pred, const at::Tensor& noise_pred, double t,
                          double s, const at::Tensor& z, std::uintptr_t stream) {
  check_like_x(x, "x", x);
  check_like_x(c_pred, "c_pred", x);
  check_like_x(noise_pred, "noise_pred", x);
  check_like_x(z, "z", x);
  if (!(t > 0.0)) {
    throw py::value_error("t must be > 0 (the update divides by sqrt(t)), got " + std::to_string(t));
  }
  const irt4::UpdateCoefficients coef = irt4::update_coefficients(t, s);
  at::Tensor out = at::empty_like(x);
  if (x.is_cpu()) {
    irt4::sampler_update_cpu(x.data_ptr<float>(), c_pred.data_ptr<float>(), noise_pred.data_ptr<float>(),
                             z.data_ptr<float>(), out.data_ptr<float>(), x.numel(), coef);
    return out;
  }
#ifdef IRT4_WITH_CUDA
  if (x.is_cuda()) {
    const std::string error =
        irt4::sampler_update_cuda(x.data_ptr<float>(), c_pred.data_ptr<float>(), noise_pred.data_ptr<float>(),
                                  z.data_ptr<float>(), out.data_ptr<float>(), x.numel(), coef, x.get_device(), stream);
    if (!error.empty()) {
      throw std::runtime_error("sampler_update CUDA kernel failed: " + error);
    }
    return out;
  }
#else
  (void)stream;
  if (x.is_cuda()) {
    throw py::value_error(
        "x is on " + x.device().str() +
        " but irt4._C was built without CUDA kernels; rebuild where nvcc is found (IRT4_WITH_CUDA=ON)");
  }
#endif
  throw py::value_error("x is on " + x.device().str() + ", expected a cpu or cuda tensor");
}

bool with_cuda() {
#ifdef IRT4_WITH_CUDA
  return true;
#else
  return false;
#endif
}

bool with_tensorrt() {
#ifdef IRT4_WITH_TENSORRT
  return true;
#else
  return false;
#endif
}

// The three networks of an engine directory, in GraphSpec order: cond_encoder, unet_step, vae_decoder.
std::unique_ptr<irt4::Engine> make_aoti_engine(const std::string& cond_encoder, const std::string& unet_step,
                                               const std::string& vae_decoder) {
  return std::make_unique<irt4::Engine>(std::make_unique<irt4::AotiNetwork>(cond_encoder),
                                        irt4::Denoiser(std::make_unique<irt4::AotiNetwork>(unet_step)),
                                        std::make_unique<irt4::AotiNetwork>(vae_decoder));
}

#ifdef IRT4_WITH_TENSORRT
using Names = std::vector<std::string>;

// plans: the three .plan files; inputs/outputs: each graph's tensor names, from its GraphSpec.
std::unique_ptr<irt4::Engine> make_tensorrt_engine(const std::vector<std::string>& plans,
                                                   const std::vector<Names>& inputs,
                                                   const std::vector<Names>& outputs, int device) {
  if (plans.size() != 3 || inputs.size() != 3 || outputs.size() != 3) {
    throw py::value_error("a TensorRT engine needs 3 plans with their input and output names");
  }
  return std::make_unique<irt4::Engine>(
      irt4::make_tensorrt_network(plans[0], inputs[0], outputs[0], device),
      irt4::Denoiser(irt4::make_tensorrt_network(plans[1], inputs[1], outputs[1], device)),
      irt4::make_tensorrt_network(plans[2], inputs[2], outputs[2], device));
}
#endif

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "irt4's C++/CUDA engine; use it through irt4.engine, which owns this boundary";
  m.def("sampling_schedule", &irt4::sampling_schedule, py::arg("steps"), py::arg("eps") = 1e-4,
        py::arg("denoise") = true, "(t, s) for every network call of the sampler, computed in double");
  m.def("sampler_update", &sampler_update, py::arg("x"), py::arg("c_pred"), py::arg("noise_pred"), py::arg("t"),
        py::arg("s"), py::arg("z"), py::arg("stream") = 0,
        "One sampler step from t to t - s on contiguous float32 tensors; stream is a cudaStream_t for CUDA inputs");
  m.def("with_cuda", &with_cuda, "Whether the CUDA kernels were compiled in");
  m.def("with_tensorrt", &with_tensorrt, "Whether the TensorRT networks were compiled in");
  m.attr("torch_version") = TORCH_VERSION;

  py::class_<irt4::Engine>(m, "Engine",
                           "The C++ sampling loop over three compiled networks; build it with aoti_engine or "
                           "tensorrt_engine")
      .def("sample_latents", &irt4::Engine::sample_latents, py::arg("cond"), py::arg("initial"),
           py::arg("step_noise"), py::arg("steps"), py::arg("eps"), py::arg("denoise"), py::arg("stream") = 0,
           py::call_guard<py::gil_scoped_release>(),
           "cond, initial x and every step's z (float32, contiguous, one device) -> scaled latents at t = 0")
      .def("decode", &irt4::Engine::decode, py::arg("latents"), py::arg("stream") = 0,
           py::call_guard<py::gil_scoped_release>(), "scaled latents -> radio maps in [0, 1] (B, 1, H, W)");
  m.def("aoti_engine", &make_aoti_engine, py::arg("cond_encoder"), py::arg("unet_step"), py::arg("vae_decoder"),
        "An Engine over three AOTInductor packages (.pt2)");
#ifdef IRT4_WITH_TENSORRT
  m.def("tensorrt_engine", &make_tensorrt_engine, py::arg("plans"), py::arg("inputs"), py::arg("outputs"),
        py::arg("device"), "An Engine over three TensorRT plans");
#endif
}
