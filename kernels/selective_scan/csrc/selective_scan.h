// Host-visible declarations of the selective-scan launchers (no CUDA device code here, so the
// C++ binding compiles with the host compiler).
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace segman_scan {

constexpr int kItems = 8;                 // consecutive steps per lane
constexpr int kChunk = 32 * kItems;       // steps per warp iteration (state saved per chunk)
constexpr int kMaxState = 16;

// Launch shape (selective_scan.cuh): warps per block, and for d_state 1 the blocks per SM that
// the register budget must allow.  "High occupancy" caps registers (a few bytes spill) so that
// more rows are resident at once.
constexpr int kFwdWarps = 4;
constexpr int kBwdWarps = 4;
constexpr int fwd_min_blocks(bool high, int elem_size) {
  return high ? (elem_size == 4 ? 6 : 8) : (elem_size == 4 ? 5 : 6);
}
constexpr int bwd_min_blocks(bool high) { return high ? 4 : 3; }
// d_state 1 forward on long rows: one block per row (scan_fwd_row_block_kernel) from this many
// chunks on (vector path, default mode), with 8 instead of 4 warps from kRowBlockWideChunks on.
constexpr int kRowBlockMinChunks = 8;
constexpr int kRowBlockWideChunks = 32;

struct ScanParams {
  const void* u;
  const void* delta;
  const float* A;        // (C, N) contiguous, fp32
  const void* B;
  const void* C;
  const float* D;        // (C,) fp32 or nullptr
  const float* bias;     // (C,) fp32 or nullptr
  const float* dout;     // backward only: (Bt, C, L) fp32, last dim contiguous
  float* out;            // forward: (Bt, C, L) fp32 contiguous
  float* states;         // (Bt, C, n_chunks, N) fp32: state entering each chunk
  void* du;              // backward: (Bt, C, L) contiguous, input dtype
  void* ddelta;
  float* dB;             // (Bt, G, N, L) fp32 contiguous, zero-initialised
  float* dC;
  // Per-(batch, channel) partials (Bt, part_b) fp32, every entry written: dA at [b, c * N + n],
  // dD at [b, C * N + c], d_bias at [b, C * (N + 1) + c]; and their sums over the batch (part_b,).
  float* partials;
  float* sums;
  int64_t part_b;
  void* dB_out;          // 16-bit inputs: dB then dC in the input dtype, (2, Bt, G, N, L)
  int64_t u_b, u_c, d_b, d_c, B_b, B_g, B_n, C_b, C_g, C_n, o_b, o_c;
  int batch, channels, groups, dg, n_state, length, n_chunks;
  bool softplus;
  bool high_occupancy_fwd, high_occupancy_bwd;  // d_state 1 register budgets (selective_scan.cuh)
  bool fwd_row_blocks;   // d_state 1 forward: one block per row instead of one warp per row
};

// vec: every row of u, delta, B, C (and dout) starts 16-byte aligned and the length is a multiple
// of kItems, so full groups of kItems steps load and store as 16-byte vectors.
void launch_fwd_f32(const ScanParams& p, bool vec, cudaStream_t stream);
void launch_fwd_f16(const ScanParams& p, bool vec, cudaStream_t stream);
void launch_fwd_bf16(const ScanParams& p, bool vec, cudaStream_t stream);
void launch_bwd_f32(const ScanParams& p, bool vec, cudaStream_t stream);
void launch_bwd_f16(const ScanParams& p, bool vec, cudaStream_t stream);
void launch_bwd_bf16(const ScanParams& p, bool vec, cudaStream_t stream);

}  // namespace segman_scan
