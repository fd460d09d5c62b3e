// Python bindings of the CUDA kernels (module fastwsss._C): tensor checks, the current stream, launch.
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/extension.h>

#include <algorithm>
#include <cstdlib>
#include <vector>

#include "ops.h"

namespace {

void check(cudaError_t status, const char* what) {
  TORCH_CHECK(status == cudaSuccess, what, " failed: ", cudaGetErrorString(status));
}

void check_cuda(const torch::Tensor& t, const char* name) {
  TORCH_CHECK(t.is_cuda(), name, " must be a CUDA tensor");
  TORCH_CHECK(t.is_contiguous(), name, " must be contiguous");
}

void check_f32_cuda(const torch::Tensor& t, const char* name) {
  check_cuda(t, name);
  TORCH_CHECK(t.scalar_type() == torch::kFloat32, name, " must be float32, got ", t.scalar_type());
}

// Planes per launch: at most the grid's 65535; for large planes, as many as fit in a third of the L2, so that
// the two reads of a plane (its maximum, then the scaling) meet in the cache rather than in memory.
long planes_per_launch(long planes, long plane_bytes, int l2_bytes) {
  long most = 65535;
  if (l2_bytes > 0 && plane_bytes >= 64 * 1024 && planes * plane_bytes > l2_bytes / 3) {
    most = std::max(1L, std::min(most, static_cast<long>(l2_bytes / 3) / plane_bytes));
  }
  return std::min(most, planes);
}

template <typename T>
void launch_cam_norm(const torch::Tensor& cams, torch::Tensor& out, long planes, long n, float eps, int sms,
                     int l2_bytes, cudaStream_t stream) {
  const long per_launch = planes_per_launch(planes, n * static_cast<long>(sizeof(T)), l2_bytes);
  // A group of g planes uses g * chunks(g) <= 2 sms + g partial maxima (cam_norm_chunks).
  const long scratch = std::max(per_launch * fastwsss::cam_norm_chunks(per_launch, n, sms), 2L * sms + per_launch);
  auto partial = torch::empty({scratch}, cams.options().dtype(torch::kFloat32));
  for (long first = 0; first < planes; first += per_launch) {
    const long count = std::min(per_launch, planes - first);
    check(fastwsss::cam_norm<T>(reinterpret_cast<const T*>(cams.data_ptr()) + first * n,
                                reinterpret_cast<T*>(out.data_ptr()) + first * n, partial.data_ptr<float>(), count, n,
                                eps, sms, stream),
          "cam_norm kernel");
  }
}

// fp32, fp16 and bf16 (B, K, H, W) maps in their own dtype: no fp32 copy.
torch::Tensor cam_norm(torch::Tensor cams, double eps) {
  check_cuda(cams, "cams");
  TORCH_CHECK(cams.dim() == 4, "cams must be (B, K, H, W), got ", cams.sizes());
  const c10::cuda::CUDAGuard guard(cams.device());
  auto out = torch::empty_like(cams);
  const long planes = cams.size(0) * cams.size(1);
  const long n = cams.size(2) * cams.size(3);
  if (planes == 0 || n == 0) return out;
  int sms = 0;
  int l2_bytes = 0;
  const int device = cams.device().index();
  check(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device), "reading the SM count");
  check(cudaDeviceGetAttribute(&l2_bytes, cudaDevAttrL2CacheSize, device), "reading the L2 size");
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();
  const float e = static_cast<float>(eps);
  switch (cams.scalar_type()) {
    case torch::kFloat32: launch_cam_norm<float>(cams, out, planes, n, e, sms, l2_bytes, stream); break;
    case torch::kFloat16: launch_cam_norm<__half>(cams, out, planes, n, e, sms, l2_bytes, stream); break;
    case torch::kBFloat16: launch_cam_norm<__nv_bfloat16>(cams, out, planes, n, e, sms, l2_bytes, stream); break;
    default: TORCH_CHECK(false, "cams must be float32, float16 or bfloat16, got ", cams.scalar_type());
  }
  return out;
}

fastwsss::WalkTaps make_taps(const std::vector<int64_t>& dy, const std::vector<int64_t>& dx) {
  TORCH_CHECK(dy.size() == dx.size(), "need one (dy, dx) offset per tap");
  TORCH_CHECK(!dy.empty() && dy.size() <= static_cast<size_t>(fastwsss::kMaxTaps), "1 to ", fastwsss::kMaxTaps,
              " taps supported, got ", dy.size());
  fastwsss::WalkTaps taps{};
  taps.count = static_cast<int>(dy.size());
  for (size_t t = 0; t < dy.size(); ++t) {
    TORCH_CHECK(std::abs(dy[t]) <= 64 && std::abs(dx[t]) <= 64, "tap offsets beyond 64 pixels are not supported");
    taps.dy[t] = static_cast<int>(dy[t]);
    taps.dx[t] = static_cast<int>(dx[t]);
    taps.reach = std::max({taps.reach, static_cast<int>(std::abs(dy[t])), static_cast<int>(std::abs(dx[t]))});
  }
  return taps;
}

// launch: 0 = persistent where a cooperative launch succeeds, else per step; 1 = per step; 2 = persistent or
// an error.
torch::Tensor random_walk_steps(torch::Tensor x, torch::Tensor weights, std::vector<int64_t> dy,
                                std::vector<int64_t> dx, int64_t steps, int64_t launch) {
  check_f32_cuda(x, "x");
  check_f32_cuda(weights, "weights");
  TORCH_CHECK(weights.device() == x.device(), "weights are on ", weights.device(), ", x on ", x.device());
  TORCH_CHECK(x.dim() == 4 && weights.dim() == 4, "x (B, K, h, w) and weights (B, T, h, w) expected");
  TORCH_CHECK(weights.size(0) == x.size(0) && weights.size(2) == x.size(2) && weights.size(3) == x.size(3),
              "weights ", weights.sizes(), " do not match x ", x.sizes());
  TORCH_CHECK(static_cast<int64_t>(dy.size()) == weights.size(1), "need one (dy, dx) offset per tap");
  TORCH_CHECK(steps >= 0, "steps must be >= 0");
  TORCH_CHECK(launch >= 0 && launch <= 2, "launch must be 0 (auto), 1 (per step) or 2 (persistent), got ", launch);
  const fastwsss::WalkTaps taps = make_taps(dy, dx);
  const c10::cuda::CUDAGuard guard(x.device());
  auto out = x.clone();
  auto scratch = torch::empty_like(x);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();
  const int b = static_cast<int>(x.size(0)), k = static_cast<int>(x.size(1));
  const int h = static_cast<int>(x.size(2)), w = static_cast<int>(x.size(3));
  cudaError_t status = cudaErrorNotSupported;
  if (launch != 1) {
    status = fastwsss::random_walk_steps_persistent_f32(out.data_ptr<float>(), scratch.data_ptr<float>(),
                                                        weights.data_ptr<float>(), taps, b, k, h, w, steps, stream);
    if (status != cudaSuccess && launch == 0) {
      (void)cudaGetLastError();  // any launch failure (not supported, too many blocks, ...): per-step fallback
    }
  }
  if (launch == 1 || (launch == 0 && status != cudaSuccess)) {
    status = fastwsss::random_walk_steps_f32(out.data_ptr<float>(), scratch.data_ptr<float>(),
                                             weights.data_ptr<float>(), taps, b, k, h, w, steps, stream);
  }
  check(status, launch == 1 ? "random walk kernel (per-step launches)" : "random walk kernel");
  return out;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "fastwsss hand-written CUDA kernels (see csrc/)";
  m.def("cam_norm", &cam_norm, "relu + per-plane max-normalise of (B, K, H, W) fp32/fp16/bf16 CAMs");
  m.def("random_walk_steps", &random_walk_steps, "random-walk steps in the gather form of kernels/random_walk.py",
        pybind11::arg("x"), pybind11::arg("weights"), pybind11::arg("dy"), pybind11::arg("dx"), pybind11::arg("steps"),
        pybind11::arg("launch") = 0);
}
