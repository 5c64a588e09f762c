// The Python boundary of irt4._C: checks every tensor against what the kernels assume, then calls
// the CPU loop or the CUDA launcher. Only irt4/engine imports this module.
#include <torch/extension.h>
#include <torch/version.h>

#include <sstream>
#include <string>

#include "sampler.h"

namespace py = pybind11;

namespace {

std::string shape_str(const at::Tensor& tensor) {
  std::ostringstream out;
  out << tensor.sizes();
  return out.str();
}

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

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "irt4's C++/CUDA engine; use it through irt4.engine, which owns this boundary";
  m.def("sampling_schedule", &irt4::sampling_schedule, py::arg("steps"), py::arg("eps") = 1e-4,
        py::arg("denoise") = true, "(t, s) for every network call of the sampler, computed in double");
  m.def("sampler_update", &sampler_update, py::arg("x"), py::arg("c_pred"), py::arg("noise_pred"), py::arg("t"),
        py::arg("s"), py::arg("z"), py::arg("stream") = 0,
        "One sampler step from t to t - s on contiguous float32 tensors; stream is a cudaStream_t for CUDA inputs");
  m.def("with_cuda", &with_cuda, "Whether the CUDA kernels were compiled in");
  m.attr("torch_version") = TORCH_VERSION;
}
