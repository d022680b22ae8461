// Python bindings of the selective-scan CUDA kernels (module segman_selective_scan._C).
//
//   fwd(u, delta, A, B, C, D, delta_bias, softplus) -> (out, states)
//   bwd(u, delta, A, B, C, D, delta_bias, dout, states, softplus)
//       -> (du, ddelta, dA, dB, dC, dD, ddelta_bias)
//
// Shapes (docs/model.md §4.3): u, delta (Bt, G*Dg, L) in fp32/fp16/bf16; A (G*Dg, N) fp32; B, C
// (Bt, G, N, L) in u's dtype; D, delta_bias (G*Dg,) fp32 or None; N <= 16.  The last dimension of
// u, delta, B, C, dout must have stride 1 (other strides are free).  out is fp32; states
// (Bt, G*Dg, ceil(L/256), N) fp32 holds the state entering each 256-step chunk.  Gradients: du,
// ddelta, dB, dC (Bt, G, N, L) in the input dtype (dB, dC accumulate in fp32); dA (C, N), dD,
// ddelta_bias (C,) fp32.
#include <torch/extension.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <optional>
#include <tuple>

#include "selective_scan.h"

namespace {

using segman_scan::ScanParams;

// Kernel variants of d_state 1, for tests and benchmarks.  Forward: 0 = the measured default
// (docs/performance.md), 1 / 2 = one warp per row with the low / high occupancy register budget,
// 3 = one block per row (fwd_min_blocks and scan_fwd_row_block_kernel in selective_scan.cuh).
// Backward: 0 = default, 1 = low, 2 = high occupancy.  d_state > 1 always runs one warp per row.
int g_fwd_mode = 0;
int g_bwd_mode = 0;

void set_kernel_modes(int fwd_mode, int bwd_mode) {
  TORCH_CHECK(fwd_mode >= 0 && fwd_mode <= 3 && bwd_mode >= 0 && bwd_mode <= 2,
              "segman_selective_scan.set_kernel_modes: forward modes are 0 (default), 1 (warp per row, low "
              "occupancy), 2 (warp per row, high occupancy), 3 (block per row); backward modes 0, 1 (low), 2 (high)");
  g_fwd_mode = fwd_mode;
  g_bwd_mode = bwd_mode;
}

std::tuple<int, int> get_kernel_modes() { return {g_fwd_mode, g_bwd_mode}; }

int multiprocessors(const at::Tensor& t) {
  static int cached[64] = {0};
  const int dev = t.get_device();
  if (dev < 0 || dev >= 64) return 0;
  if (!cached[dev]) cudaDeviceGetAttribute(&cached[dev], cudaDevAttrMultiProcessorCount, dev);
  return cached[dev];
}

// Measured on an H100 (docs/performance.md): the high-occupancy forward wins only when the rows
// (one warp each) fit on the GPU at once with it but not without it, which removes a mostly empty
// second wave (SegMAN-S stage 1 in bf16: 1.52x -> 1.26x the floor); elsewhere its spills cost more.
// The backward runs 16 warps per SM instead of 12 for 16-bit inputs (SegMAN-S shapes: 1.31-1.46x
// -> 1.21-1.36x the floor), and keeps its registers for fp32 (1.17-1.20x -> 1.28-1.33x with it).
bool default_high_fwd(const at::Tensor& u) {
  const int elem = u.element_size();
  if (elem != 2) return false;
  const int64_t rows = u.size(0) * u.size(1);
  const int64_t sms = multiprocessors(u);
  const int64_t low = sms * segman_scan::fwd_min_blocks(false, elem) * segman_scan::kFwdWarps;
  const int64_t high = sms * segman_scan::fwd_min_blocks(true, elem) * segman_scan::kFwdWarps;
  return rows > low && rows <= high;
}

bool default_high_bwd(const at::Tensor& u) { return u.element_size() == 2; }

bool aligned16(const at::Tensor& t) {
  return reinterpret_cast<std::uintptr_t>(t.data_ptr()) % 16 == 0;
}

void check_input(const at::Tensor& t, const char* name, const at::Tensor& like) {
  TORCH_CHECK(t.is_cuda(), "segman_selective_scan: ", name, " must be a CUDA tensor");
  TORCH_CHECK(t.device() == like.device(), "segman_selective_scan: ", name, " is on ", t.device(),
              ", u on ", like.device());
  TORCH_CHECK(t.stride(-1) == 1 || t.size(-1) == 1, "segman_selective_scan: ", name,
              " must have a contiguous last dimension");
}

struct Checked {
  int batch, channels, groups, dg, n_state, length;
};

Checked check_all(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A, const at::Tensor& B,
                  const at::Tensor& C, const std::optional<at::Tensor>& D,
                  const std::optional<at::Tensor>& bias) {
  TORCH_CHECK(u.dim() == 3, "segman_selective_scan: u must be (batch, channels, length)");
  TORCH_CHECK(B.dim() == 4, "segman_selective_scan: B must be (batch, groups, d_state, length)");
  const auto st = u.scalar_type();
  TORCH_CHECK(st == at::kFloat || st == at::kHalf || st == at::kBFloat16,
              "segman_selective_scan: u must be float32, float16 or bfloat16, got ", st);
  for (auto* t : {&delta, &B, &C})
    TORCH_CHECK(t->scalar_type() == st, "segman_selective_scan: u, delta, B, C must share one dtype");
  check_input(u, "u", u);
  check_input(delta, "delta", u);
  check_input(B, "B", u);
  check_input(C, "C", u);
  Checked k;
  k.batch = u.size(0);
  k.channels = u.size(1);
  k.length = u.size(2);
  k.groups = B.size(1);
  k.n_state = B.size(2);
  TORCH_CHECK(k.groups > 0 && k.channels % k.groups == 0, "segman_selective_scan: channels % groups != 0");
  k.dg = k.channels / k.groups;
  TORCH_CHECK(k.n_state >= 1 && k.n_state <= segman_scan::kMaxState,
              "segman_selective_scan: d_state must be in [1, 16], got ", k.n_state);
  TORCH_CHECK(delta.sizes() == u.sizes(), "segman_selective_scan: delta must have u's shape");
  TORCH_CHECK(B.size(0) == k.batch && B.size(3) == k.length, "segman_selective_scan: bad B shape");
  TORCH_CHECK(C.sizes() == B.sizes(), "segman_selective_scan: C must have B's shape");
  TORCH_CHECK(A.scalar_type() == at::kFloat && A.is_contiguous() && A.dim() == 2 &&
                  A.size(0) == k.channels && A.size(1) == k.n_state,
              "segman_selective_scan: A must be contiguous float32 (channels, d_state)");
  TORCH_CHECK(A.device() == u.device(), "segman_selective_scan: A must be on u's device");
  for (auto* t : {&D, &bias}) {
    if (t->has_value()) {
      const auto& v = t->value();
      TORCH_CHECK(v.scalar_type() == at::kFloat && v.is_contiguous() && v.dim() == 1 &&
                      v.size(0) == k.channels && v.device() == u.device(),
                  "segman_selective_scan: D and delta_bias must be contiguous float32 (channels,) on u's device");
    }
  }
  return k;
}

ScanParams make_params(const Checked& k, const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A,
                       const at::Tensor& B, const at::Tensor& C, const std::optional<at::Tensor>& D,
                       const std::optional<at::Tensor>& bias, bool softplus) {
  ScanParams p{};
  p.u = u.data_ptr();
  p.delta = delta.data_ptr();
  p.A = A.data_ptr<float>();
  p.B = B.data_ptr();
  p.C = C.data_ptr();
  p.D = D.has_value() ? D->data_ptr<float>() : nullptr;
  p.bias = bias.has_value() ? bias->data_ptr<float>() : nullptr;
  p.u_b = u.stride(0);
  p.u_c = u.stride(1);
  p.d_b = delta.stride(0);
  p.d_c = delta.stride(1);
  p.B_b = B.stride(0);
  p.B_g = B.stride(1);
  p.B_n = B.stride(2);
  p.C_b = C.stride(0);
  p.C_g = C.stride(1);
  p.C_n = C.stride(2);
  p.batch = k.batch;
  p.channels = k.channels;
  p.groups = k.groups;
  p.dg = k.dg;
  p.n_state = k.n_state;
  p.length = k.length;
  p.n_chunks = (k.length + segman_scan::kChunk - 1) / segman_scan::kChunk;
  p.softplus = softplus;
  p.high_occupancy_fwd = g_fwd_mode == 0 ? default_high_fwd(u) : g_fwd_mode == 2;
  p.high_occupancy_bwd = g_bwd_mode == 0 ? default_high_bwd(u) : g_bwd_mode == 2;
  return p;
}

// Every row start is 16-byte aligned and the length is a multiple of kItems.
bool can_vectorise(const ScanParams& p, std::initializer_list<const at::Tensor*> tensors,
                   std::initializer_list<int64_t> strides) {
  if (p.length % segman_scan::kItems) return false;
  for (const at::Tensor* t : tensors)
    if (!aligned16(*t)) return false;
  for (int64_t s : strides)
    if (s % segman_scan::kItems) return false;
  return true;
}

std::tuple<at::Tensor, at::Tensor> fwd(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A,
                                       const at::Tensor& B, const at::Tensor& C,
                                       const std::optional<at::Tensor>& D,
                                       const std::optional<at::Tensor>& delta_bias, bool softplus) {
  const Checked k = check_all(u, delta, A, B, C, D, delta_bias);
  const c10::cuda::CUDAGuard guard(u.device());
  ScanParams p = make_params(k, u, delta, A, B, C, D, delta_bias, softplus);
  auto f32 = u.options().dtype(at::kFloat);
  at::Tensor out = at::empty({k.batch, k.channels, k.length}, f32);
  at::Tensor states = at::empty({k.batch, k.channels, p.n_chunks, k.n_state}, f32);
  if (out.numel() == 0) return {out, states};
  p.out = out.data_ptr<float>();
  p.states = states.data_ptr<float>();
  const bool vec = can_vectorise(p, {&u, &delta, &B, &C},
                                 {p.u_b, p.u_c, p.d_b, p.d_c, p.B_b, p.B_g, p.B_n, p.C_b, p.C_g, p.C_n});
  p.fwd_row_blocks = k.n_state == 1 &&
                     (g_fwd_mode == 3 || (g_fwd_mode == 0 && vec && p.n_chunks >= segman_scan::kRowBlockMinChunks));
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();
  switch (u.scalar_type()) {
    case at::kFloat: segman_scan::launch_fwd_f32(p, vec, stream); break;
    case at::kHalf: segman_scan::launch_fwd_f16(p, vec, stream); break;
    default: segman_scan::launch_fwd_bf16(p, vec, stream); break;
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {out, states};
}

std::vector<std::optional<at::Tensor>> bwd(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A,
                                           const at::Tensor& B, const at::Tensor& C,
                                           const std::optional<at::Tensor>& D,
                                           const std::optional<at::Tensor>& delta_bias, const at::Tensor& dout,
                                           const at::Tensor& states, bool softplus) {
  const Checked k = check_all(u, delta, A, B, C, D, delta_bias);
  TORCH_CHECK(dout.scalar_type() == at::kFloat && dout.sizes() == u.sizes(),
              "segman_selective_scan: dout must be float32 with u's shape");
  check_input(dout, "dout", u);
  const c10::cuda::CUDAGuard guard(u.device());
  ScanParams p = make_params(k, u, delta, A, B, C, D, delta_bias, softplus);
  TORCH_CHECK(states.is_contiguous() && states.scalar_type() == at::kFloat && states.dim() == 4 &&
                  states.size(0) == k.batch && states.size(1) == k.channels && states.size(2) == p.n_chunks &&
                  states.size(3) == k.n_state,
              "segman_selective_scan: states must be the contiguous float32 tensor returned by fwd");
  auto f32 = u.options().dtype(at::kFloat);
  at::Tensor du = at::empty({k.batch, k.channels, k.length}, u.options());
  at::Tensor ddelta = at::empty({k.batch, k.channels, k.length}, u.options());
  // dB and dC accumulate (atomics) in one zeroed fp32 buffer.  After the scan kernel a second one
  // sums the per-(batch, channel) partials of dA, dD, d_bias over the batch and, for 16-bit
  // inputs, writes dB and dC in the input dtype: at small shapes each launch (memset, sum, cast)
  // is a noticeable share of the backward's time, so there are three in all.
  at::Tensor dBC = at::zeros({2, k.batch, k.groups, k.n_state, k.length}, f32);
  const int64_t nc = static_cast<int64_t>(k.channels) * k.n_state;
  at::Tensor partials = at::empty({k.batch, nc + 2 * k.channels}, f32);
  at::Tensor sums = at::empty({nc + 2 * k.channels}, f32);
  at::Tensor dBC_out = u.element_size() == 2 ? at::empty(dBC.sizes(), u.options()) : dBC;
  if (du.numel() == 0) {
    sums.zero_();
    dBC_out.zero_();
  } else {
    p.sums = sums.data_ptr<float>();
    p.dB_out = dBC_out.data_ptr();
    p.dout = dout.data_ptr<float>();
    p.o_b = dout.stride(0);
    p.o_c = dout.stride(1);
    p.states = states.data_ptr<float>();
    p.du = du.data_ptr();
    p.ddelta = ddelta.data_ptr();
    p.dB = dBC.data_ptr<float>();
    p.dC = p.dB + dBC.stride(0);
    p.partials = partials.data_ptr<float>();
    p.part_b = partials.stride(0);
    const bool vec = can_vectorise(p, {&u, &delta, &B, &C, &dout},
                                   {p.u_b, p.u_c, p.d_b, p.d_c, p.B_b, p.B_g, p.B_n, p.C_b, p.C_g, p.C_n,
                                    p.o_b, p.o_c});
    cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();
    switch (u.scalar_type()) {
      case at::kFloat: segman_scan::launch_bwd_f32(p, vec, stream); break;
      case at::kHalf: segman_scan::launch_bwd_f16(p, vec, stream); break;
      default: segman_scan::launch_bwd_bf16(p, vec, stream); break;
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  std::vector<std::optional<at::Tensor>> grads = {
      du, ddelta, sums.narrow(0, 0, nc).view({k.channels, k.n_state}), dBC_out[0], dBC_out[1], std::nullopt,
      std::nullopt};
  if (D.has_value()) grads[5] = sums.narrow(0, nc, k.channels);
  if (delta_bias.has_value()) grads[6] = sums.narrow(0, nc + k.channels, k.channels);
  return grads;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "SegMAN selective scan: CUDA forward and backward";
  m.def("fwd", &fwd, "selective scan forward -> (out fp32, chunk states)", py::arg("u"), py::arg("delta"),
        py::arg("A"), py::arg("B"), py::arg("C"), py::arg("D"), py::arg("delta_bias"), py::arg("softplus"));
  m.def("bwd", &bwd, "selective scan backward -> (du, ddelta, dA, dB, dC, dD, ddelta_bias)", py::arg("u"),
        py::arg("delta"), py::arg("A"), py::arg("B"), py::arg("C"), py::arg("D"), py::arg("delta_bias"),
        py::arg("dout"), py::arg("states"), py::arg("softplus"));
  m.def("set_kernel_modes", &set_kernel_modes,
        "d_state-1 kernel variants, for tests and benchmarks: forward 0 default, 1 / 2 one warp per row with the low "
        "/ high occupancy register budget, 3 one block per row; backward 0 default, 1 low, 2 high occupancy",
        py::arg("fwd_mode"), py::arg("bwd_mode"));
  m.def("get_kernel_modes", &get_kernel_modes, "current (fwd_mode, bwd_mode)");
  m.attr("CHUNK") = segman_scan::kChunk;
  m.attr("MAX_D_STATE") = segman_scan::kMaxState;
}
