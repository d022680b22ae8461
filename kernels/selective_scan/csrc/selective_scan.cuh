// Selective scan (docs/model.md §4.3), forward and backward kernels.
//
// One warp owns one (batch, channel) row and walks the sequence in chunks of 256 steps
// (32 lanes x 8 consecutive steps); the d_state-1 forward of long rows gives a row to a block
// instead (scan_fwd_row_block_kernel).  A chunk is scanned in three levels:
//   1. each lane folds its 8 steps into one affine map h -> P h + H (sequentially, in registers);
//   2. the 32 lane maps are composed with a Kogge-Stone scan over __shfl_up_sync;
//   3. each lane applies the exclusive prefix to the chunk's carry-in state and replays its steps.
// The state is carried from chunk to chunk in registers.  Forward writes the state entering every
// chunk (Bt*C*N*L/256 floats, 0.1 % of the traffic) so that backward can recompute h chunk by
// chunk while it runs the adjoint recurrence  dh_t = C_t dy_t + exp(dt_{t+1} A) dh_{t+1}
// from the last chunk to the first with the mirror-image scan over __shfl_down_sync.
//
// Backward: du, ddelta are written per element; dA, dD, ddelta_bias are reduced per warp and
// written per (batch, channel); dB, dC are summed over the warps of a block (all warps of a block
// share one (batch, group)) in shared memory and added to an fp32 buffer with atomicAdd (float4
// atomics on sm_90 when the rows are 16-byte aligned).  One more small kernel then sums the
// partials over the batch and, for 16-bit inputs, converts dB and dC to the input dtype.
#pragma once

#include <cuda.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "selective_scan.h"

namespace segman_scan {

constexpr float kLog2e = 1.4426950408889634f;
constexpr unsigned kFull = 0xffffffffu;


__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T> __device__ __forceinline__ T from_float(float x);
template <> __device__ __forceinline__ float from_float<float>(float x) { return x; }
template <> __device__ __forceinline__ __half from_float<__half>(float x) { return __float2half_rn(x); }
template <> __device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}

// ------------------------------------------------------------------------------------------------
// Loads and stores of kItems consecutive steps per lane
// ------------------------------------------------------------------------------------------------

// kItems raw elements in registers: loads are issued a chunk ahead and converted when used.
template <typename T>
struct alignas(16) Raw {
  T e[kItems];
};

// kVec: the row is 16-byte aligned at every multiple of kItems, so full groups move as 16-byte
// vectors.  kStream: data read once (u, delta, dy) bypasses L1 and is evicted first from L2,
// leaving the cache to B and C, which every warp of a group reads.
// With kVec the length is a multiple of kItems, so a lane's group is either full or absent.
template <typename T, bool kVec, bool kStream>
__device__ __forceinline__ void load_raw(Raw<T>& r, const T* p, int valid) {
  if (kVec) {
    if (valid <= 0) {
#pragma unroll
      for (int j = 0; j < kItems; ++j) r.e[j] = T(0.f);
      return;
    }
    constexpr int kVecs = sizeof(T) * kItems / 16;
#pragma unroll
    for (int i = 0; i < kVecs; ++i) {
      const uint4* src = reinterpret_cast<const uint4*>(p) + i;
      reinterpret_cast<uint4*>(r.e)[i] = kStream ? __ldcs(src) : __ldg(src);
    }
  } else {
#pragma unroll
    for (int j = 0; j < kItems; ++j) r.e[j] = j < valid ? p[j] : T(0.f);
  }
}

template <typename T>
__device__ __forceinline__ void to_floats(const Raw<T>& r, float (&out)[kItems]) {
#pragma unroll
  for (int j = 0; j < kItems; ++j) out[j] = to_float(r.e[j]);
}

// bf16 is the top half of an fp32: one shift or one mask per element (the generic conversion
// spends two instructions on every odd one).
__device__ __forceinline__ void to_floats(const Raw<__nv_bfloat16>& r, float (&out)[kItems]) {
  const uint32_t* w = reinterpret_cast<const uint32_t*>(r.e);
#pragma unroll
  for (int i = 0; i < kItems / 2; ++i) {
    out[2 * i] = __uint_as_float(w[i] << 16);
    out[2 * i + 1] = __uint_as_float(w[i] & 0xffff0000u);
  }
}

template <typename T, bool kVec>
__device__ __forceinline__ void load_items(const T* p, int valid, float (&out)[kItems]) {
  Raw<T> r;
  load_raw<T, kVec, false>(r, p, valid);
  to_floats(r, out);
}

template <typename T, bool kVec>
__device__ __forceinline__ void store_items(T* p, int valid, const float (&in)[kItems]) {
  Raw<T> r;
#pragma unroll
  for (int j = 0; j < kItems; ++j) r.e[j] = from_float<T>(in[j]);
  if (kVec) {
    if (valid <= 0) return;
    constexpr int kVecs = sizeof(T) * kItems / 16;
#pragma unroll
    for (int i = 0; i < kVecs; ++i) reinterpret_cast<uint4*>(p)[i] = reinterpret_cast<const uint4*>(r.e)[i];
  } else {
#pragma unroll
    for (int j = 0; j < kItems; ++j)
      if (j < valid) p[j] = r.e[j];
  }
}

// A chunk of fp32 values on the vector path, one warp: lane l holds steps 8l .. 8l + 7 of the chunk
// at out.  Stored so that each of the two store instructions writes 512 contiguous bytes (steps
// 128 i + 4 l .. + 3 from lane 16 i + l / 2, swapped in with shuffles) rather than every other 16
// bytes of 1 KB (the backward's du and ddelta for fp32 inputs: 2-4 % faster on an H100; the
// forward's fp32 output measured slower this way, docs/performance.md).  Steps from `left` on
// are skipped.
__device__ __forceinline__ void store_chunk_coalesced(float* out, const float (&y)[kItems], int lane, int left) {
  static_assert(kItems == 8, "two 512-byte stores per warp");
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    const int owner = 16 * i + (lane >> 1);
    float v[4];
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      const float lo = __shfl_sync(kFull, y[k], owner);
      const float hi = __shfl_sync(kFull, y[4 + k], owner);
      v[k] = (lane & 1) ? hi : lo;
    }
    const int step = 128 * i + 4 * lane;
    if (step < left)  // one 16-byte store (written in C++, nvcc split it into four scalar ones)
      asm volatile("st.global.v4.f32 [%0], {%1, %2, %3, %4};" ::"l"(out + step), "f"(v[0]), "f"(v[1]), "f"(v[2]),
                   "f"(v[3]) : "memory");
  }
}

// Whether item j of a lane's group lies inside the sequence (valid = steps left from the group's
// first).  With kVec a group is full or absent, so one comparison serves every item.  Steps past
// the end get the step size dt = 0, so exp(dt A) = 1 and dt u B = 0 (u, B, C and dy load as 0
// there): they leave the state and its adjoint unchanged, and the scans need no masks.
template <bool kVec>
__device__ __forceinline__ bool in_sequence(int j, int valid) {
  return kVec ? valid > 0 : j < valid;
}

// ------------------------------------------------------------------------------------------------
// Math
// ------------------------------------------------------------------------------------------------

// 2^x with the hardware approximation (relative error ~2^-22; results below 2^-126 flush to 0).
__device__ __forceinline__ float fast_exp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

// 1/d with the hardware approximation (at most 1 ulp off; subnormal results flush to 0).
__device__ __forceinline__ float fast_rcp(float d) {
  float r;
  asm("rcp.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(d));
  return r;
}

// log(1 + z) for z in [0, 1]: 2 atanh(s) with s = z / (2 + z) <= 1/3, as 2 s p(s^2) with p the
// degree-4 minimax fit of atanh(s) / s (fit error 4e-9; 2e-7 relative in fp32 arithmetic).
__device__ __forceinline__ float log1p_unit(float z) {
  const float s = z * fast_rcp(2.f + z);
  const float s2 = s * s;
  float p = 0.14095783233642578f;
  p = fmaf(p, s2, 0.13978831470012665f);
  p = fmaf(p, s2, 0.2001255750656128f);
  p = fmaf(p, s2, 0.33333155512809753f);
  p = fmaf(p, s2, 1.f);
  return 2.f * s * p;
}

// softplus(x) = max(x, 0) + log(1 + exp(-|x|)), which equals x in fp32 above the threshold 20 of
// softplus threshold (20), so no branch is needed; with dsoftplus also its derivative sigmoid(x).
__device__ __forceinline__ float softplus(float x, float* dsoftplus = nullptr) {
  const float z = fast_exp2(-fabsf(x) * kLog2e);  // exp(-|x|); below 2^-126 it is 0
  if (dsoftplus) *dsoftplus = (x >= 0.f ? 1.f : z) * fast_rcp(1.f + z);
  return fmaxf(x, 0.f) + log1p_unit(z);
}

// The step sizes of a lane's kItems steps from their raw values: dt = softplus(raw + bias), or
// raw + bias without softplus (then dstep = 1); dt = 0 past the end of the sequence (exp(0 A) = 1
// and dt u B = 0 there: the scans need no masks).  The softplus branch is uniform over the launch
// and taken once for all items, so that their independent chains interleave.
template <bool kVec>
__device__ __forceinline__ void step_sizes(float (&dt)[kItems], float bias, bool with_softplus, int valid,
                                           float (*dstep)[kItems] = nullptr) {
  if (with_softplus) {
#pragma unroll
    for (int j = 0; j < kItems; ++j) dt[j] = softplus(dt[j] + bias, dstep ? &(*dstep)[j] : nullptr);
  } else {
#pragma unroll
    for (int j = 0; j < kItems; ++j) {
      dt[j] += bias;
      if (dstep) (*dstep)[j] = 1.f;
    }
  }
#pragma unroll
  for (int j = 0; j < kItems; ++j) dt[j] = in_sequence<kVec>(j, valid) ? dt[j] : 0.f;
}

// ------------------------------------------------------------------------------------------------
// Forward
// ------------------------------------------------------------------------------------------------

// Where the inputs of row (batch b, channel c of group g) start: u, delta, and the group's B, C.
template <typename T>
struct RowInputs {
  const T* u;
  const T* delta;
  const T* B;
  const T* C;
};

template <typename T>
__device__ __forceinline__ RowInputs<T> row_inputs(const ScanParams& p, int b, int g, int c) {
  return {static_cast<const T*>(p.u) + b * p.u_b + c * p.u_c, static_cast<const T*>(p.delta) + b * p.d_b + c * p.d_c,
          static_cast<const T*>(p.B) + b * p.B_b + g * p.B_g, static_cast<const T*>(p.C) + b * p.C_b + g * p.C_g};
}

// A lane's raw u, delta, B and C (state 0) at one chunk: the kernels load them a chunk ahead of use.
template <typename T>
struct ChunkInputs {
  Raw<T> u, delta, B, C;
};

// Loads the steps from t (valid of them in the row) of each input; u and delta are streamed.
template <typename T, bool kVec>
__device__ __forceinline__ void load_chunk(ChunkInputs<T>& r, const RowInputs<T>& in, int t, int valid) {
  load_raw<T, kVec, true>(r.u, in.u + t, valid);
  load_raw<T, kVec, true>(r.delta, in.delta + t, valid);
  load_raw<T, kVec, false>(r.B, in.B + t, valid);
  load_raw<T, kVec, false>(r.C, in.C + t, valid);
}

// Level 1: folds a lane's steps into the map h -> P h + H, keeping each step's decay a = exp(dt A)
// and input bv = dt u B for the replay.
__device__ __forceinline__ void fold_steps(const float (&dt)[kItems], const float (&uv)[kItems],
                                           const float (&Bv)[kItems], float A2, float (&a)[kItems],
                                           float (&bv)[kItems], float& P, float& H) {
  P = 1.f;
  H = 0.f;
#pragma unroll
  for (int j = 0; j < kItems; ++j) {
    a[j] = fast_exp2(dt[j] * A2);
    bv[j] = dt[j] * uv[j] * Bv[j];
    H = a[j] * H + bv[j];
    P *= a[j];
  }
}

// Level 2: the inclusive scan of the warp's lane maps (earlier lanes first).
__device__ __forceinline__ void scan_lane_maps(float& P, float& H, int lane) {
#pragma unroll
  for (int off = 1; off < 32; off <<= 1) {
    const float Pu = __shfl_up_sync(kFull, P, off);
    const float Hu = __shfl_up_sync(kFull, H, off);
    if (lane >= off) {
      H = P * Hu + H;
      P = P * Pu;
    }
  }
}

// The state just before a lane's first step: the maps of the lanes before it (the inclusive scan
// shifted by one lane) applied to h_chunk, the state entering the warp's chunk.
__device__ __forceinline__ float lane_entry_state(float P, float H, float h_chunk, int lane) {
  float Pe = __shfl_up_sync(kFull, P, 1);
  float He = __shfl_up_sync(kFull, H, 1);
  if (lane == 0) { Pe = 1.f; He = 0.f; }
  return Pe * h_chunk + He;
}

// Level 3: from the inclusive lane maps and the state entering the warp's chunk, replays the lane's
// steps and adds C_t h_t to y.
__device__ __forceinline__ void replay_steps(float P, float H, float h_chunk, int lane, const float (&a)[kItems],
                                             const float (&bv)[kItems], const float (&Cv)[kItems],
                                             float (&y)[kItems]) {
  float h = lane_entry_state(P, H, h_chunk, lane);
#pragma unroll
  for (int j = 0; j < kItems; ++j) {
    h = a[j] * h + bv[j];
    y[j] += Cv[j] * h;
  }
}

template <typename T, int kN, bool kVec, int kWarps, int kMinBlocks>
__global__ void __launch_bounds__(kWarps * 32, kMinBlocks)
scan_fwd_kernel(const ScanParams p) {
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int cin = blockIdx.x * kWarps + warp;
  if (cin >= p.dg) return;  // no block-level synchronisation in the forward
  const int g = blockIdx.y;
  const int b = blockIdx.z;
  const int c = g * p.dg + cin;
  const int n_state = p.n_state;
  const int64_t row = static_cast<int64_t>(b) * p.channels + c;

  const RowInputs<T> in = row_inputs<T>(p, b, g, c);
  float* out = p.out + row * p.length;
  float* states = p.states + row * p.n_chunks * n_state;

  float A2[kN], carry[kN];
#pragma unroll
  for (int n = 0; n < kN; ++n) {
    A2[n] = n < n_state ? p.A[c * n_state + n] * kLog2e : 0.f;
    carry[n] = 0.f;
  }
  const float Dc = p.D ? p.D[c] : 0.f;
  const float bias = p.bias ? p.bias[c] : 0.f;

  // software pipeline: the raw data of chunk i+1 is in flight while chunk i is computed
  ChunkInputs<T> cur;
  load_chunk<T, kVec>(cur, in, lane * kItems, p.length - lane * kItems);
  for (int chunk = 0; chunk < p.n_chunks; ++chunk) {
    const int t0 = chunk * kChunk + lane * kItems;
    const int valid = p.length - t0;
    ChunkInputs<T> next;
    if (chunk + 1 < p.n_chunks) load_chunk<T, kVec>(next, in, t0 + kChunk, valid - kChunk);
    if (lane == 0) {
#pragma unroll
      for (int n = 0; n < kN; ++n)
        if (n < n_state) states[chunk * n_state + n] = carry[n];
    }
    float uv[kItems], dt[kItems], y[kItems];
    to_floats(cur.u, uv);
    to_floats(cur.delta, dt);
    step_sizes<kVec>(dt, bias, p.softplus, valid);
#pragma unroll
    for (int j = 0; j < kItems; ++j) y[j] = Dc * uv[j];
#pragma unroll
    for (int n = 0; n < kN; ++n) {
      if (n >= n_state) break;
      float Bv[kItems], Cv[kItems], a[kItems], bv[kItems];
      if (n == 0) {
        to_floats(cur.B, Bv);
        to_floats(cur.C, Cv);
      } else {
        load_items<T, kVec>(in.B + n * p.B_n + t0, valid, Bv);
        load_items<T, kVec>(in.C + n * p.C_n + t0, valid, Cv);
      }
      float P, H;
      fold_steps(dt, uv, Bv, A2[n], a, bv, P, H);
      scan_lane_maps(P, H, lane);
      replay_steps(P, H, carry[n], lane, a, bv, Cv, y);
      carry[n] = __shfl_sync(kFull, P * carry[n] + H, 31);
    }
    store_items<float, kVec>(out + t0, valid, y);
    cur = next;
  }
}

// d_state 1, long rows: one block per (batch, channel) row.  Each step the kWarps warps scan
// kWarps consecutive chunks at once (warp w: chunk kWarps·step + w), so a block streams kWarps
// chunks of each input in one go (a chunk: 512 bytes of bf16, 1 KB of fp32) where a warp streams
// one; the warps' chunk maps are composed through shared memory (one barrier per step,
// double-buffered) into each warp's carry-in and the carry of the next step.  On an H100 this beats
// one warp per row by 3-8 % at SegMAN-S's L = 64² and 128² (docs/performance.md); at L = 32² (four
// chunks) it does not, and the host keeps that case on scan_fwd_kernel.  Warps past the last chunk
// scan identity maps (dt = 0) and store nothing.
template <typename T, bool kVec, int kWarps, int kMinBlocks>
__global__ void __launch_bounds__(kWarps * 32, kMinBlocks)
scan_fwd_row_block_kernel(const ScanParams p) {
  __shared__ float2 warp_maps[2][kWarps];  // (P, H) of each warp's chunk, per step parity
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int g = blockIdx.y;
  const int b = blockIdx.z;
  const int c = g * p.dg + blockIdx.x;
  const int64_t row = static_cast<int64_t>(b) * p.channels + c;

  const RowInputs<T> in = row_inputs<T>(p, b, g, c);
  float* out = p.out + row * p.length;
  float* states = p.states + row * p.n_chunks;
  const float A2 = p.A[c] * kLog2e;
  const float Dc = p.D ? p.D[c] : 0.f;
  const float bias = p.bias ? p.bias[c] : 0.f;

  constexpr int kStep = kWarps * kChunk;
  const int steps = (p.length + kStep - 1) / kStep;
  const int first = warp * kChunk + lane * kItems;  // this lane's first step within a block step
  ChunkInputs<T> cur;
  load_chunk<T, kVec>(cur, in, first, p.length - first);
  float carry = 0.f;  // the state entering this step's first chunk (every warp holds it)
  for (int step = 0; step < steps; ++step) {
    const int t0 = step * kStep + first;
    const int valid = p.length - t0;
    ChunkInputs<T> next;
    if (step + 1 < steps) load_chunk<T, kVec>(next, in, t0 + kStep, valid - kStep);
    float uv[kItems], dt[kItems], Bv[kItems], Cv[kItems], a[kItems], bv[kItems], y[kItems];
    to_floats(cur.u, uv);
    to_floats(cur.delta, dt);
    to_floats(cur.B, Bv);
    to_floats(cur.C, Cv);
    step_sizes<kVec>(dt, bias, p.softplus, valid);
#pragma unroll
    for (int j = 0; j < kItems; ++j) y[j] = Dc * uv[j];
    float P, H;
    fold_steps(dt, uv, Bv, A2, a, bv, P, H);
    scan_lane_maps(P, H, lane);
    if (lane == 31) warp_maps[step & 1][warp] = make_float2(P, H);
    __syncthreads();  // the other parity's slots are rewritten only after the next barrier
    float h_warp = carry;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) {
      if (w == warp) h_warp = carry;
      const float2 m = warp_maps[step & 1][w];
      carry = m.x * carry + m.y;
    }
    const int chunk = step * kWarps + warp;
    if (lane == 0 && chunk < p.n_chunks) states[chunk] = h_warp;
    replay_steps(P, H, h_warp, lane, a, bv, Cv, y);
    store_items<float, kVec>(out + t0, valid, y);
    cur = next;
  }
}

// ------------------------------------------------------------------------------------------------
// Backward
// ------------------------------------------------------------------------------------------------

// dB[k] += sum over warps of red[0][w][k], dC likewise from red[1], for k < len.
template <int kWarps>
__device__ __forceinline__ void add_block_sums_scalar(const float (&red)[2][kWarps][kChunk], float* dB, float* dC,
                                                      int len) {
  for (int i = threadIdx.x; i < 2 * kChunk; i += kWarps * 32) {
    const int which = i / kChunk, k = i % kChunk;
    if (k < len) {
      float s = 0.f;
#pragma unroll
      for (int w = 0; w < kWarps; ++w) s += red[which][w][k];
      atomicAdd((which ? dC : dB) + k, s);
    }
  }
}

// The same; with kVec (len and the rows are multiples of kItems floats, 16-byte aligned) sm_90 adds
// four steps per atomic.
template <int kWarps, bool kVec>
__device__ __forceinline__ void add_block_sums(const float (&red)[2][kWarps][kChunk], float* dB, float* dC,
                                               int len) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  if constexpr (kVec) {
    for (int i = threadIdx.x; i < 2 * kChunk / 4; i += kWarps * 32) {
      const int which = i / (kChunk / 4), k = (i % (kChunk / 4)) * 4;
      if (k < len) {
        float4 s = make_float4(0.f, 0.f, 0.f, 0.f);
#pragma unroll
        for (int w = 0; w < kWarps; ++w) {
          const float4 r = *reinterpret_cast<const float4*>(&red[which][w][k]);
          s.x += r.x; s.y += r.y; s.z += r.z; s.w += r.w;
        }
        atomicAdd(reinterpret_cast<float4*>((which ? dC : dB) + k), s);
      }
    }
  } else {
    add_block_sums_scalar<kWarps>(red, dB, dC, len);
  }
#else
  add_block_sums_scalar<kWarps>(red, dB, dC, len);
#endif
}

template <typename T, int kN, bool kVec, int kWarps, int kMinBlocks>
__global__ void __launch_bounds__(kWarps * 32, kMinBlocks)
scan_bwd_kernel(const ScanParams p) {
  __shared__ __align__(16) float red[2][kWarps][kChunk];
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int cin_raw = blockIdx.x * kWarps + warp;
  const bool active = cin_raw < p.dg;       // inactive warps still join the block barriers
  const int cin = active ? cin_raw : 0;
  const int g = blockIdx.y;
  const int b = blockIdx.z;
  const int c = g * p.dg + cin;
  const int n_state = p.n_state;
  const int64_t row = static_cast<int64_t>(b) * p.channels + c;

  const RowInputs<T> in = row_inputs<T>(p, b, g, c);
  const float* dout = p.dout + b * p.o_b + c * p.o_c;
  const float* states = p.states + row * p.n_chunks * n_state;
  T* du_out = static_cast<T*>(p.du) + row * p.length;
  T* ddelta_out = static_cast<T*>(p.ddelta) + row * p.length;
  const int64_t gl = (static_cast<int64_t>(b) * p.groups + g) * n_state * p.length;

  float A[kN], A2[kN], dh_next[kN], a_next[kN], dA_acc[kN];
#pragma unroll
  for (int n = 0; n < kN; ++n) {
    A[n] = n < n_state ? p.A[c * n_state + n] : 0.f;
    A2[n] = A[n] * kLog2e;
    dh_next[n] = 0.f;   // dh at the first step of the chunk after this one
    a_next[n] = 1.f;    // exp(dt A) at that step
    dA_acc[n] = 0.f;
  }
  const float Dc = p.D ? p.D[c] : 0.f;
  const float bias = p.bias ? p.bias[c] : 0.f;
  float dD_acc = 0.f, dbias_acc = 0.f;

  // software pipeline over the chunks (last to first)
  ChunkInputs<T> cur;
  Raw<float> rg;
  float rh0;
  {
    const int chunk = p.n_chunks - 1;
    const int t0 = chunk * kChunk + lane * kItems;
    const int valid = active ? p.length - t0 : 0;
    load_chunk<T, kVec>(cur, in, t0, valid);
    load_raw<float, kVec, true>(rg, dout + t0, valid);
    rh0 = active ? states[chunk * n_state] : 0.f;
  }
  for (int chunk = p.n_chunks - 1; chunk >= 0; --chunk) {
    const int t0 = chunk * kChunk + lane * kItems;
    const int valid = active ? p.length - t0 : 0;
    ChunkInputs<T> next;
    Raw<float> ng;
    float nh0 = 0.f;
    if (chunk > 0) {
      const int tp = t0 - kChunk;
      const int valid_prev = active ? kItems : 0;  // every chunk before the last one is full
      load_chunk<T, kVec>(next, in, tp, valid_prev);
      load_raw<float, kVec, true>(ng, dout + tp, valid_prev);
      nh0 = active ? states[(chunk - 1) * n_state] : 0.f;
    }
    float uv[kItems], sig[kItems], dt[kItems], go[kItems], du[kItems], ddt[kItems];
    to_floats(cur.u, uv);
    to_floats(cur.delta, dt);
    to_floats(rg, go);
    step_sizes<kVec>(dt, bias, p.softplus, valid, &sig);
#pragma unroll
    for (int j = 0; j < kItems; ++j) {
      du[j] = Dc * go[j];
      ddt[j] = 0.f;
      dD_acc += go[j] * uv[j];
    }
#pragma unroll
    for (int n = 0; n < kN; ++n) {
      if (n >= n_state) break;
      float Bv[kItems], Cv[kItems], a[kItems], bv[kItems], hs[kItems];
      float h0;
      if (n == 0) {
        to_floats(cur.B, Bv);
        to_floats(cur.C, Cv);
        h0 = rh0;
      } else {
        load_items<T, kVec>(in.B + n * p.B_n + t0, valid, Bv);
        load_items<T, kVec>(in.C + n * p.C_n + t0, valid, Cv);
        h0 = active ? states[chunk * n_state + n] : 0.f;
      }
      // ---- recompute h inside the chunk from the saved entering state
      float P, H;
      fold_steps(dt, uv, Bv, A2[n], a, bv, P, H);
      scan_lane_maps(P, H, lane);
      const float h_in = lane_entry_state(P, H, h0, lane);
      {
        float h = h_in;
#pragma unroll
        for (int j = 0; j < kItems; ++j) {
          h = a[j] * h + bv[j];
          hs[j] = h;
        }
      }
      // ---- adjoint: dh_t = C_t dy_t + a_{t+1} dh_{t+1}
      float an = __shfl_down_sync(kFull, a[0], 1);  // a at the next lane's first step
      if (lane == 31) an = a_next[n];
      // lane map: dh(first step) = V + Q * dh(next lane's first step)
      float Q = an, V = go[kItems - 1] * Cv[kItems - 1];
#pragma unroll
      for (int j = kItems - 2; j >= 0; --j) {
        V = go[j] * Cv[j] + a[j + 1] * V;
        Q = a[j + 1] * Q;
      }
      // inclusive suffix scan (later lanes first)
#pragma unroll
      for (int off = 1; off < 32; off <<= 1) {
        const float Qd = __shfl_down_sync(kFull, Q, off);
        const float Vd = __shfl_down_sync(kFull, V, off);
        if (lane + off < 32) {
          V = V + Q * Vd;
          Q = Q * Qd;
        }
      }
      const float Vn = __shfl_down_sync(kFull, V, 1);
      const float Qn = __shfl_down_sync(kFull, Q, 1);
      float d = lane == 31 ? dh_next[n] : Vn + Qn * dh_next[n];  // dh at the next lane's first step
      float* redB = red[0][warp] + lane * kItems;
      float* redC = red[1][warp] + lane * kItems;
      float dA_local = 0.f;
#pragma unroll
      for (int j = kItems - 1; j >= 0; --j) {
        const float a_after = j == kItems - 1 ? an : a[j + 1];
        d = go[j] * Cv[j] + a_after * d;                      // dh_t
        const float hp = a[j] * (j == 0 ? h_in : hs[j - 1]);  // exp(dt_t A) h_{t-1}
        const float ddt_dh = d * dt[j];
        du[j] += ddt_dh * Bv[j];
        ddt[j] += d * (A[n] * hp + Bv[j] * uv[j]);
        dA_local += ddt_dh * hp;
        redB[j] = ddt_dh * uv[j];
        redC[j] = go[j] * hs[j];
      }
      dA_acc[n] += dA_local;
      dh_next[n] = __shfl_sync(kFull, d, 0);
      a_next[n] = __shfl_sync(kFull, a[0], 0);
      // ---- dB, dC: sum over the block's warps, then one atomicAdd per step (per 4 steps on the
      // vector path: every block of a (batch, group) adds to the same addresses, and fewer, wider
      // atomics queue less at L2)
      __syncthreads();
      float* dB = p.dB + gl + static_cast<int64_t>(n) * p.length + chunk * kChunk;
      float* dC = p.dC + gl + static_cast<int64_t>(n) * p.length + chunk * kChunk;
      const int chunk_len = min(kChunk, p.length - chunk * kChunk);
      add_block_sums<kWarps, kVec>(red, dB, dC, chunk_len);
      __syncthreads();
    }
#pragma unroll
    for (int j = 0; j < kItems; ++j) {
      ddt[j] *= sig[j];
      dbias_acc += ddt[j];  // 0 past the end (the adjoint is 0 there)
    }
    if (active) {
      if constexpr (kVec && std::is_same_v<T, float>) {
        const int left = p.length - chunk * kChunk;
        store_chunk_coalesced(du_out + chunk * kChunk, du, lane, left);
        store_chunk_coalesced(ddelta_out + chunk * kChunk, ddt, lane, left);
      } else {
        store_items<T, kVec>(du_out + t0, valid, du);
        store_items<T, kVec>(ddelta_out + t0, valid, ddt);
      }
    }
    cur = next;
    rg = ng;
    rh0 = nh0;
  }
  // ---- per-(batch, channel) partial sums
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) {
    dD_acc += __shfl_xor_sync(kFull, dD_acc, off);
    dbias_acc += __shfl_xor_sync(kFull, dbias_acc, off);
#pragma unroll
    for (int n = 0; n < kN; ++n) dA_acc[n] += __shfl_xor_sync(kFull, dA_acc[n], off);
  }
  if (active && lane == 0) {
    const int64_t part = b * p.part_b;
#pragma unroll
    for (int n = 0; n < kN; ++n)
      if (n < n_state) p.partials[part + c * n_state + n] = dA_acc[n];
    p.partials[part + p.channels * n_state + c] = dD_acc;
    p.partials[part + p.channels * (n_state + 1) + c] = dbias_acc;
  }
}

// The dB, dC cast's share of finalize_bwd_kernel's items: none for fp32 inputs, else one per
// element, or per 4 elements with kVec.
template <typename T, bool kVec>
__host__ __device__ constexpr int64_t cast_items(int64_t count) {
  return std::is_same_v<T, float> ? 0 : (kVec ? count / 4 : count);
}

// After the backward kernel, one launch for what remains: dB, dC from the fp32 accumulators to the
// input dtype (16-bit inputs; count elements, a multiple of 4 when kVec) and the sums over the
// batch of the per-(batch, channel) partials of dA, dD, d_bias.
template <typename T, bool kVec>
__global__ void finalize_bwd_kernel(const float* dBC, T* dBC_out, int64_t count, const float* partials,
                                    float* sums, int batch, int64_t part_b) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t vecs = cast_items<T, kVec>(count);
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < vecs + part_b; i += stride) {
    if (i < vecs) {
      if constexpr (!std::is_same_v<T, float>) {
        if constexpr (kVec) {
          const float4 v = reinterpret_cast<const float4*>(dBC)[i];
          union { T e[4]; uint2 bits; } out = {{from_float<T>(v.x), from_float<T>(v.y), from_float<T>(v.z),
                                               from_float<T>(v.w)}};
          reinterpret_cast<uint2*>(dBC_out)[i] = out.bits;
        } else {
          dBC_out[i] = from_float<T>(dBC[i]);
        }
      }
    } else {
      const int64_t k = i - vecs;
      float s = 0.f;
      for (int b = 0; b < batch; ++b) s += partials[b * part_b + k];
      sums[k] = s;
    }
  }
}

// Host-side launchers: pick d_state bucket and vector path.
// d_state 1 comes in two register budgets (fwd_min_blocks / bwd_min_blocks in selective_scan.h);
// the host picks one per launch (selective_scan.cpp, default_high_fwd).
template <typename T, int kN, bool kVec>
void launch_fwd_n(const ScanParams& p, cudaStream_t stream) {
  dim3 grid((p.dg + kFwdWarps - 1) / kFwdWarps, p.groups, p.batch);
  if constexpr (kN == 1) {
    if (p.fwd_row_blocks) {
      const dim3 rows(p.dg, p.groups, p.batch);
      if (p.n_chunks >= kRowBlockWideChunks)
        scan_fwd_row_block_kernel<T, kVec, 8, 3><<<rows, 8 * 32, 0, stream>>>(p);
      else
        scan_fwd_row_block_kernel<T, kVec, 4, 6><<<rows, 4 * 32, 0, stream>>>(p);
    } else if (p.high_occupancy_fwd)
      scan_fwd_kernel<T, kN, kVec, kFwdWarps, fwd_min_blocks(true, sizeof(T))><<<grid, kFwdWarps * 32, 0, stream>>>(p);
    else
      scan_fwd_kernel<T, kN, kVec, kFwdWarps, fwd_min_blocks(false, sizeof(T))><<<grid, kFwdWarps * 32, 0, stream>>>(p);
  } else {
    scan_fwd_kernel<T, kN, kVec, kFwdWarps, 1><<<grid, kFwdWarps * 32, 0, stream>>>(p);
  }
}

template <typename T, int kN, bool kVec>
void launch_bwd_n(const ScanParams& p, cudaStream_t stream) {
  dim3 grid((p.dg + kBwdWarps - 1) / kBwdWarps, p.groups, p.batch);
  if constexpr (kN == 1) {
    if (p.high_occupancy_bwd)
      scan_bwd_kernel<T, kN, kVec, kBwdWarps, bwd_min_blocks(true)><<<grid, kBwdWarps * 32, 0, stream>>>(p);
    else
      scan_bwd_kernel<T, kN, kVec, kBwdWarps, bwd_min_blocks(false)><<<grid, kBwdWarps * 32, 0, stream>>>(p);
  } else {
    scan_bwd_kernel<T, kN, kVec, kBwdWarps, 1><<<grid, kBwdWarps * 32, 0, stream>>>(p);
  }
}

template <typename T>
void launch_finalize_bwd(const ScanParams& p, bool vec, cudaStream_t stream) {
  const int64_t count = 2 * static_cast<int64_t>(p.batch) * p.groups * p.n_state * p.length;
  const int64_t items = (vec ? cast_items<T, true>(count) : cast_items<T, false>(count)) + p.part_b;
  const int threads = 256;
  const int blocks = static_cast<int>(std::min<int64_t>((items + threads - 1) / threads, 65535));
  T* out = static_cast<T*>(p.dB_out);
  auto* kernel = vec ? finalize_bwd_kernel<T, true> : finalize_bwd_kernel<T, false>;
  kernel<<<blocks, threads, 0, stream>>>(p.dB, out, count, p.partials, p.sums, p.batch, p.part_b);
}

#define SEGMAN_SCAN_DISPATCH_N(LAUNCH, T, p, vec, stream)                      \
  do {                                                                          \
    const int n_ = (p).n_state;                                                 \
    if (vec) {                                                                  \
      if (n_ == 1) LAUNCH<T, 1, true>(p, stream);                               \
      else if (n_ <= 2) LAUNCH<T, 2, true>(p, stream);                          \
      else if (n_ <= 4) LAUNCH<T, 4, true>(p, stream);                          \
      else if (n_ <= 8) LAUNCH<T, 8, true>(p, stream);                          \
      else LAUNCH<T, 16, true>(p, stream);                                      \
    } else {                                                                    \
      if (n_ == 1) LAUNCH<T, 1, false>(p, stream);                              \
      else if (n_ <= 2) LAUNCH<T, 2, false>(p, stream);                         \
      else if (n_ <= 4) LAUNCH<T, 4, false>(p, stream);                         \
      else if (n_ <= 8) LAUNCH<T, 8, false>(p, stream);                         \
      else LAUNCH<T, 16, false>(p, stream);                                     \
    }                                                                           \
  } while (0)

// Defines launch_fwd_<SUFFIX> / launch_bwd_<SUFFIX> (declared in selective_scan.h) for dtype T.
#define SEGMAN_SCAN_INSTANTIATE(T, SUFFIX)                                      \
  void launch_fwd_##SUFFIX(const ScanParams& p, bool vec, cudaStream_t s) {     \
    SEGMAN_SCAN_DISPATCH_N(launch_fwd_n, T, p, vec, s);                         \
  }                                                                             \
  void launch_bwd_##SUFFIX(const ScanParams& p, bool vec, cudaStream_t s) {     \
    SEGMAN_SCAN_DISPATCH_N(launch_bwd_n, T, p, vec, s);                         \
    launch_finalize_bwd<T>(p, vec, s);                                          \
  }

}  // namespace segman_scan
