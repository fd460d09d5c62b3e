// Python bindings of the CUDA kernels (module fastwsss._C): tensor checks, the current stream, launch.
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/extension.h>

#include <vector>

#include "ops.h"

namespace {

void check(cudaError_t status, const char* what) {
  TORCH_CHECK(status == cudaSuccess, what, " failed: ", cudaGetErrorString(status));
}

void check_f32_cuda(const torch::Tensor& t, const char* name) {
  TORCH_CHECK(t.is_cuda(), name, " must be a CUDA tensor");
  TORCH_CHECK(t.scalar_type() == torch::kFloat32, name, " must be float32, got ", t.scalar_type());
  TORCH_CHECK(t.is_contiguous(), name, " must be contiguous");
}

torch::Tensor cam_norm(torch::Tensor cams, double eps) {
  check_f32_cuda(cams, "cams");
  TORCH_CHECK(cams.dim() == 4, "cams must be (B, K, H, W), got ", cams.sizes());
  const c10::cuda::CUDAGuard guard(cams.device());
  auto out = torch::empty_like(cams);
  const long planes = cams.size(0) * cams.size(1);
  const long n = cams.size(2) * cams.size(3);
  check(fastwsss::cam_norm_f32(cams.data_ptr<float>(), out.data_ptr<float>(), planes, n, static_cast<float>(eps),
                               c10::cuda::getCurrentCUDAStream().stream()),
        "cam_norm kernel");
  return out;
}

// launch: 0 = persistent where the device supports cooperative launches, else per step; 1 = per step;
// 2 = persistent or an error.
torch::Tensor random_walk_steps(torch::Tensor x, torch::Tensor weights, std::vector<int64_t> dy,
                                std::vector<int64_t> dx, int64_t steps, int64_t launch) {
  check_f32_cuda(x, "x");
  check_f32_cuda(weights, "weights");
  TORCH_CHECK(x.dim() == 4 && weights.dim() == 4, "x (B, K, h, w) and weights (B, T, h, w) expected");
  TORCH_CHECK(weights.size(0) == x.size(0) && weights.size(2) == x.size(2) && weights.size(3) == x.size(3),
              "weights ", weights.sizes(), " do not match x ", x.sizes());
  TORCH_CHECK(static_cast<int64_t>(dy.size()) == weights.size(1) && dx.size() == dy.size(),
              "need one (dy, dx) offset per tap");
  TORCH_CHECK(steps >= 0, "steps must be >= 0");
  TORCH_CHECK(launch >= 0 && launch <= 2, "launch must be 0 (auto), 1 (per step) or 2 (persistent), got ", launch);
  const c10::cuda::CUDAGuard guard(x.device());
  auto out = x.clone();
  auto scratch = torch::empty_like(x);
  auto offsets = torch::tensor(dy, torch::dtype(torch::kInt32)).to(x.device());
  auto offsets_x = torch::tensor(dx, torch::dtype(torch::kInt32)).to(x.device());
  const int taps = static_cast<int>(weights.size(1));
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();
  cudaError_t status = cudaErrorNotSupported;
  if (launch != 1) {
    status = fastwsss::random_walk_steps_persistent_f32(
        out.data_ptr<float>(), scratch.data_ptr<float>(), weights.data_ptr<float>(), offsets.data_ptr<int>(),
        offsets_x.data_ptr<int>(), taps, static_cast<int>(x.size(0)), static_cast<int>(x.size(1)),
        static_cast<int>(x.size(2)), static_cast<int>(x.size(3)), steps, stream);
    if (status == cudaErrorNotSupported && launch == 0) {
      (void)cudaGetLastError();  // clear the error state before the per-step fallback
    }
  }
  if (launch == 1 || (launch == 0 && status == cudaErrorNotSupported)) {
    status = fastwsss::random_walk_steps_f32(out.data_ptr<float>(), scratch.data_ptr<float>(),
                                             weights.data_ptr<float>(), offsets.data_ptr<int>(),
                                             offsets_x.data_ptr<int>(), taps, static_cast<int>(x.size(0)),
                                             static_cast<int>(x.size(1)), static_cast<int>(x.size(2)),
                                             static_cast<int>(x.size(3)), steps, stream);
  }
  check(status, launch == 1 ? "random walk kernel (per-step launches)" : "random walk kernel");
  return out;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "fastwsss hand-written CUDA kernels (see csrc/)";
  m.def("cam_norm", &cam_norm, "relu + per-plane max-normalise of (B, K, H, W) fp32 CAMs");
  m.def("random_walk_steps", &random_walk_steps, "random-walk steps in the gather form of kernels/random_walk.py",
        pybind11::arg("x"), pybind11::arg("weights"), pybind11::arg("dy"), pybind11::arg("dx"), pybind11::arg("steps"),
        pybind11::arg("launch") = 0);
}
