// A TensorRT engine as an engine.h Network (TensorRT 10 C++ API: deserializeCudaEngine, tensors bound
// by name with setInputShape / setTensorAddress, enqueueV3 on the caller's stream). Compiled only when
// CMake finds TensorRT (IRT4_WITH_TENSORRT); never compiled or run on the machines this was written on.
#include <ATen/ATen.h>
#include <NvInfer.h>
#include <cuda_runtime_api.h>

#include <fstream>
#include <iostream>
#include <iterator>
#include <stdexcept>

#include "engine.h"

namespace irt4 {

namespace {

class Logger : public nvinfer1::ILogger {
 public:
  void log(Severity severity, const char* message) noexcept override {
    if (severity <= Severity::kWARNING) {
      std::cerr << "irt4 TensorRT: " << message << std::endl;
    }
  }
};

Logger& logger() {
  static Logger instance;
  return instance;
}

at::ScalarType torch_type(nvinfer1::DataType type, const std::string& name) {
  switch (type) {
    case nvinfer1::DataType::kFLOAT:
      return at::kFloat;
    case nvinfer1::DataType::kHALF:
      return at::kHalf;
    case nvinfer1::DataType::kBF16:
      return at::kBFloat16;
    default:
      throw std::runtime_error("TensorRT tensor " + name + " has a data type irt4 does not bind");
  }
}

class TensorRTNetwork : public Network {
 public:
  TensorRTNetwork(const std::string& plan_path, std::vector<std::string> input_names,
                  std::vector<std::string> output_names, int device)
      : input_names_(std::move(input_names)), output_names_(std::move(output_names)), device_(device) {
    std::ifstream file(plan_path, std::ios::binary);
    if (!file) {
      throw std::invalid_argument("cannot read the TensorRT engine " + plan_path);
    }
    const std::vector<char> plan((std::istreambuf_iterator<char>(file)), std::istreambuf_iterator<char>());
    cudaSetDevice(device_);
    runtime_.reset(nvinfer1::createInferRuntime(logger()));
    engine_.reset(runtime_->deserializeCudaEngine(plan.data(), plan.size()));
    if (!engine_) {
      throw std::runtime_error(plan_path + " does not deserialize (built by another TensorRT version or for "
                               "another GPU?); rebuild it with irt4-build-engine");
    }
    context_.reset(engine_->createExecutionContext());
    if (!context_) {
      throw std::runtime_error("cannot create a TensorRT execution context for " + plan_path);
    }
  }

  std::vector<at::Tensor> run(const std::vector<at::Tensor>& inputs, std::uintptr_t stream) override {
    if (inputs.size() != input_names_.size()) {
      throw std::invalid_argument("TensorRT network got " + std::to_string(inputs.size()) + " inputs, expected " +
                                  std::to_string(input_names_.size()));
    }
    for (size_t i = 0; i < inputs.size(); ++i) {
      const char* name = input_names_[i].c_str();
      const at::Tensor& input = inputs[i];
      nvinfer1::Dims dims{};
      dims.nbDims = static_cast<int32_t>(input.dim());
      for (int64_t d = 0; d < input.dim(); ++d) {
        dims.d[d] = input.size(d);
      }
      if (!context_->setInputShape(name, dims) || !context_->setTensorAddress(name, input.data_ptr())) {
        throw std::invalid_argument("TensorRT rejected input " + input_names_[i] +
                                    " (outside the engine's batch range?)");
      }
    }
    std::vector<at::Tensor> outputs;
    for (const std::string& name : output_names_) {
      const nvinfer1::Dims dims = context_->getTensorShape(name.c_str());
      std::vector<int64_t> shape(dims.d, dims.d + dims.nbDims);
      at::Tensor output = at::empty(shape, at::TensorOptions()
                                               .dtype(torch_type(engine_->getTensorDataType(name.c_str()), name))
                                               .device(at::kCUDA, device_));
      context_->setTensorAddress(name.c_str(), output.data_ptr());
      outputs.push_back(output);
    }
    if (!context_->enqueueV3(reinterpret_cast<cudaStream_t>(stream))) {
      throw std::runtime_error("TensorRT enqueueV3 failed");
    }
    for (at::Tensor& output : outputs) {
      output = output.to(at::kFloat);  // the loop's state and update are float32 (engine.h)
    }
    return outputs;
  }

 private:
  std::vector<std::string> input_names_;
  std::vector<std::string> output_names_;
  int device_;
  std::unique_ptr<nvinfer1::IRuntime> runtime_;
  std::unique_ptr<nvinfer1::ICudaEngine> engine_;
  std::unique_ptr<nvinfer1::IExecutionContext> context_;
};

}  // namespace

std::unique_ptr<Network> make_tensorrt_network(const std::string& plan_path, std::vector<std::string> input_names,
                                               std::vector<std::string> output_names, int device) {
  return std::make_unique<TensorRTNetwork>(plan_path, std::move(input_names), std::move(output_names), device);
}

}  // namespace irt4
