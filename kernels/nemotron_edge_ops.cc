// Native CPU kernels for the nemotron-edge custom ONNX ops (domain `nemotron_edge`, version 1).
//
// Every bundle ships these ops as model-local ONNX functions with standard-op bodies (export/ops.py);
// ONNX Runtime prefers a registered kernel to a function body, so registering this library with
// SessionOptions.register_custom_ops_library(path) replaces each op by one node without re-export.
// The math follows export/ssm.py (the reference); see kernels/README.md.
//
// Shapes: b batch, t tokens, c channels, k conv kernel, h heads, p head dim, g groups, n state size.
// Types:  T = float or float16 (Ort::Float16_t); dt, A, the SSM states and the SSM outputs are float32.
//         float16 inputs are widened to float32 and all arithmetic is float32.
//
// Built against the C API version of the headers in use (ORT_API_VERSION); a newer runtime serves
// older API versions, so one build works with any runtime at least as new as those headers.

#define ORT_API_MANUAL_INIT
#include "onnxruntime_cxx_api.h"
#undef ORT_API_MANUAL_INIT
#include "onnxruntime_lite_custom_op.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <mutex>
#include <string>
#include <type_traits>
#include <vector>

namespace {

using Ort::Custom::Tensor;
using Half = Ort::Float16_t;

// The hot loops are compiled three times, for baseline x86-64 (SSE2), x86-64-v3 (AVX2, FMA) and x86-64-v4
// (AVX-512); the loader picks the best clone the CPU supports (GCC function multiversioning), so one build stays portable.
// They are not inlined, which also keeps their __restrict promises visible to the vectoriser.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(NEMOTRON_EDGE_NO_CLONES)
#define HOT __attribute__((noinline, target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define HOT __attribute__((noinline))
#endif

// ---- small helpers ---------------------------------------------------------------------------------

inline float to_f32(float v) { return v; }
inline float to_f32(Half v) { return v.ToFloat(); }
template <typename T> inline T from_f32(float v);
template <> inline float from_f32<float>(float v) { return v; }
template <> inline Half from_f32<Half>(float v) { return Half(v); }

// A float32 view of an input: the tensor's own data when T is float, else a widened copy in `scratch`.
template <typename T>
const float* as_f32(const Tensor<T>& in, std::vector<float>& scratch) {
  if constexpr (std::is_same_v<T, float>) {
    return in.Data();
  } else {
    const T* src = in.Data();
    scratch.resize(static_cast<size_t>(in.NumberOfElement()));
    for (size_t i = 0; i < scratch.size(); ++i) scratch[i] = to_f32(src[i]);
    return scratch.data();
  }
}

inline Ort::Status invalid(const std::string& op, const std::string& msg) {
  return Ort::Status((op + ": " + msg).c_str(), ORT_INVALID_ARGUMENT);
}

inline bool rank_is(const std::vector<int64_t>& shape, size_t rank) { return shape.size() == rank; }

// The node's attribute `name` (int64 or float), or `absent` when the node does not have it.
template <typename V>
V attribute_or(const OrtApi* api, const OrtKernelInfo* info, const char* name, V absent) {
  static_assert(std::is_same_v<V, int64_t> || std::is_same_v<V, float>, "int64 and float attributes only");
  V v = absent;
  OrtStatus* st = nullptr;
  if constexpr (std::is_same_v<V, float>)
    st = api->KernelInfoGetAttribute_float(info, name, &v);
  else
    st = api->KernelInfoGetAttribute_int64(info, name, &v);
  if (st) {
    api->ReleaseStatus(st);
    return absent;
  }
  return v;
}

// Runs fn(i) for i in [0, total) on the session's intra-op thread pool (inline when it has one thread),
// or inline when there is no context or the whole job touches fewer than `min_work` floats, where
// waking pool threads costs more than the work saves. One decode step of the `small` model
// (b*h*p*n = 82k state floats) is above it: splitting its heads over 2 threads was ~5% faster a token.
template <typename Fn>
void parallel_for(OrtKernelContext* ctx, size_t total, size_t work, Fn& fn) {
  constexpr size_t min_work = size_t{1} << 15;
  if (ctx == nullptr || work < min_work || total < 2) {
    for (size_t i = 0; i < total; ++i) fn(i);
    return;
  }
  auto trampoline = [](void* data, size_t i) { (*static_cast<Fn*>(data))(i); };
  Ort::KernelContext(ctx).ParallelFor(trampoline, total, 0, &fn);
}

// Shape inference shared by CausalConv1d, SsmStep and SsdChunkScan: output 0 has the shape of input 0 (element type TY),
// output 1 the shape of the state input `state_index` (element type TS). A shape with an unknown rank
// or an unnamed unknown dimension is left to ONNX Runtime (ORT would read -1 as a real size).
inline bool fully_known(const Ort::ShapeInferContext::Shape& shape) {
  if (shape.empty()) return false;
  for (const auto& d : shape)
    if (d.IsInt() ? d.AsInt() < 0 : (d.AsSym() == nullptr || d.AsSym()[0] == '\0')) return false;
  return true;
}

template <ONNXTensorElementDataType TY, ONNXTensorElementDataType TS, size_t state_index>
Ort::Status infer_like_inputs(Ort::ShapeInferContext& ctx) {
  if (ctx.GetInputCount() <= state_index) return Ort::Status{nullptr};
  const auto& y = ctx.GetInputShape(0);
  const auto& s = ctx.GetInputShape(state_index);
  if (fully_known(y)) {
    Ort::Status st = ctx.SetOutputShape(0, y, TY);
    if (!st.IsOK()) return st;
  }
  if (fully_known(s)) return ctx.SetOutputShape(1, s, TS);
  return Ort::Status{nullptr};
}

template <typename T> constexpr ONNXTensorElementDataType onnx_type();
template <> constexpr ONNXTensorElementDataType onnx_type<float>() { return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT; }
template <> constexpr ONNXTensorElementDataType onnx_type<Half>() { return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16; }
constexpr ONNXTensorElementDataType kF32 = ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;

// ---- the SSM recurrence for one (batch row, head), shared by SsmStep and SsdChunkScan ----------------
//
// state [p, n] float32 read from `in` and written to `out` (which may be the same buffer), x [p], B, C [n],
// for one token:
//   s[i, :] = exp(dt * A) * s[i, :] + (x[i] * dt) * B        (s = decay * s + dt x (outer) B)
//   y[i]    = s[i, :] . C + D * x[i]
// The state of one head (p*n floats, 16 KiB for p = n = 64) stays in L1 across the tokens of a scan.
HOT void ssm_token(const float* in, float* out, const float* x, float dt, float A, const float* B,
                   const float* C, float D, float* y, int64_t p, int64_t n) {
  const float decay = std::exp(dt * A);
  for (int64_t i = 0; i < p; ++i) {
    const float* s = in + i * n;
    float* so = out + i * n;
    const float xdt = x[i] * dt;
    float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
    for (int64_t j = 0; j < n; ++j) {
      const float v = s[j] * decay + xdt * B[j];
      so[j] = v;
      acc += v * C[j];
    }
    y[i] = acc + D * x[i];
  }
}

// The same recurrence for one token on a transposed state st [n, p] (updated in place), for scans:
// along p, the update and the output y = s . C + D x are both plain vector loops, where the [p, n]
// layout needs a horizontal sum per row and token (measured: a 512-token scan of one small-model layer
// 10-16 ms in [p, n], 4 ms transposed, AVX-512, one thread). u, acc [p] are scratch.
HOT void ssm_token_transposed(float* __restrict st, float* __restrict u, float* __restrict acc, const float* __restrict x,
                              float dt, float A, const float* __restrict B, const float* __restrict C, float D,
                              float* __restrict y, int64_t p, int64_t n) {
  const float decay = std::exp(dt * A);
  for (int64_t i = 0; i < p; ++i) {
    u[i] = x[i] * dt;
    acc[i] = D * x[i];
  }
  for (int64_t j = 0; j < n; ++j) {
    float* r = st + j * p;
    const float b = B[j], c = C[j];
#pragma omp simd
    for (int64_t i = 0; i < p; ++i) {
      const float v = r[i] * decay + u[i] * b;
      r[i] = v;
      acc[i] += v * c;
    }
  }
  std::memcpy(y, acc, sizeof(float) * p);
}

// dst [cols, rows] = src [rows, cols]^T
inline void transpose(const float* src, float* dst, int64_t rows, int64_t cols) {
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t j = 0; j < cols; ++j) dst[j * rows + i] = src[i * cols + j];
}

// ---- CausalConv1d -----------------------------------------------------------------------------------
//
// x [b, t, c] T, conv_state [b, c, k-1] T, weight [c, k] T, bias [c] T, lengths [b] int64
//   -> y [b, t, c] T, new_state [b, c, k-1] T.
// full = concat(conv_state, x^T) [b, c, k-1+t];  y[:, i, ch] = silu(bias[ch] + sum_j weight[ch, j] * full[ch, i+j]);
// new_state[:, ch, m] = full[ch, lengths + m]  (the k-1 inputs ending at the row's last valid token).
// The attribute `channels` (= c) exists for ONNX Conv's static group count; here it is only checked.

// exp(v) for |v| < 87 to ~2 ulp, branch-free so loops over it vectorise (libm's expf does not):
// v = m ln2 + f, |f| <= ln2/2; exp(f) by a degree-6 polynomial (Cephes expf); 2^m through the exponent bits.
inline float exp_approx(float v) {
  v = v < -87.0f ? -87.0f : (v > 87.0f ? 87.0f : v);
  const float m = (v * 1.44269504089f + 12582912.0f) - 12582912.0f;  // round to nearest (1.5 * 2^23 trick)
  const float f = (v - m * 0.693359375f) + m * 2.12194440e-4f;        // v - m ln2, ln2 split in two parts
  float p = 1.9875691500e-4f;
  p = p * f + 1.3981999507e-3f;
  p = p * f + 8.3334519073e-3f;
  p = p * f + 4.1665795894e-2f;
  p = p * f + 1.6666665459e-1f;
  p = p * f + 5.0000001201e-1f;
  p = p * f * f + f + 1.0f;
  const int32_t bits = (static_cast<int32_t>(m) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return p * scale;
}

// a[:] = silu(a[:]) = a * sigmoid(a) = a / (1 + exp(-a)), over one row of c channels; e [c] is scratch.
// Two loops on purpose: with the division in the exp loop, GCC specialises the clamped branch into
// a / exp(87), which yields denormals (very slow) in every vector lane.
HOT void silu_inplace(float* __restrict a, float* __restrict e, int64_t c) {
  for (int64_t ch = 0; ch < c; ++ch) e[ch] = exp_approx(-a[ch]);
  for (int64_t ch = 0; ch < c; ++ch) a[ch] = a[ch] / (1.0f + e[ch]);
}

// acc[ch] = bias[ch] + w[ch, :k-1] . st[ch, :] + w[ch, k-1] * x[ch]: one token's depthwise conv over c channels,
// state st [c, k-1] and weight w [c, k] row-major. Mamba-2's kernel size 4 gets constant strides, which the
// vectoriser turns into whole-vector loads and shuffles across channels; other sizes loop per channel.
HOT void conv_token_k4(const float* __restrict x, const float* __restrict st, const float* __restrict w,
                       const float* __restrict bias, float* __restrict acc, int64_t c) {
  for (int64_t ch = 0; ch < c; ++ch)
    acc[ch] = bias[ch] + w[4 * ch] * st[3 * ch] + w[4 * ch + 1] * st[3 * ch + 1] + w[4 * ch + 2] * st[3 * ch + 2] +
              w[4 * ch + 3] * x[ch];
}

inline void conv_token(const float* __restrict x, const float* __restrict st, const float* __restrict w,
                       const float* __restrict bias, float* __restrict acc, int64_t c, int64_t km1) {
  if (km1 == 3) return conv_token_k4(x, st, w, bias, acc, c);
  for (int64_t ch = 0; ch < c; ++ch) {
    const float* s = st + ch * km1;
    const float* wc = w + ch * (km1 + 1);
    float a = bias[ch] + wc[km1] * x[ch];
    for (int64_t j = 0; j < km1; ++j) a += wc[j] * s[j];
    acc[ch] = a;
  }
}

// acc[:] += w[:] * src[:] over c channels (one tap of the depthwise convolution).
HOT void fma_row(float* __restrict acc, const float* __restrict w, const float* __restrict src, int64_t c) {
  for (int64_t ch = 0; ch < c; ++ch) acc[ch] += w[ch] * src[ch];
}

template <typename T>
struct CausalConv1d {
  CausalConv1d(const OrtApi* api, const OrtKernelInfo* info)
      : channels_(attribute_or(api, info, "channels", int64_t{-1})) {}
  int64_t channels_;  // the node's `channels`, -1 if absent (nothing to check)

  Ort::Status Compute(OrtKernelContext* ctx, const Tensor<T>& x_in, const Tensor<T>& state_in, const Tensor<T>& weight_in,
                      const Tensor<T>& bias_in, const Tensor<int64_t>& lengths_in, Tensor<T>& y_out,
                      Tensor<T>& state_out) {
    const auto& xs = x_in.Shape();
    const auto& ss = state_in.Shape();
    const auto& ws = weight_in.Shape();
    if (!rank_is(xs, 3) || !rank_is(ss, 3) || !rank_is(ws, 2) || !rank_is(bias_in.Shape(), 1) ||
        !rank_is(lengths_in.Shape(), 1))
      return invalid("CausalConv1d", "expected x [b,t,c], conv_state [b,c,k-1], weight [c,k], bias [c], lengths [b]");
    const int64_t b = xs[0], t = xs[1], c = xs[2], km1 = ss[2], k = ws[1];
    if (ss[0] != b || ss[1] != c || ws[0] != c || k != km1 + 1 || bias_in.Shape()[0] != c ||
        lengths_in.Shape()[0] != b)
      return invalid("CausalConv1d", "inconsistent shapes");
    if (channels_ >= 0 && channels_ != c) return invalid("CausalConv1d", "attribute channels differs from x's channels");
    const int64_t* lengths = lengths_in.Data();
    for (int64_t r = 0; r < b; ++r)
      if (lengths[r] < 0 || lengths[r] > t) return invalid("CausalConv1d", "lengths must lie in [0, t]");

    std::vector<float> sx, sst, sw, sb;
    const float* x = as_f32(x_in, sx);          // [b, t, c]
    const float* st = as_f32(state_in, sst);    // [b, c, k-1]
    const float* w = as_f32(weight_in, sw);     // [c, k]
    const float* bias = as_f32(bias_in, sb);    // [c]
    T* y = y_out.Allocate({b, t, c});
    T* ns = state_out.Allocate({b, c, km1});

    run(ctx, x, st, w, bias, lengths, y, ns, b, t, c, k);
    return Ort::Status{nullptr};
  }

  // x [b, t, c], st [b, c, k-1], w [c, k], bias [c] (float32 views) -> y [b, t, c], ns [b, c, k-1].
  // `ctx` null: run on the calling thread.
  static void run(OrtKernelContext* ctx, const float* x, const float* st, const float* w, const float* bias,
                  const int64_t* lengths, T* y, T* ns, int64_t b, int64_t t, int64_t c, int64_t k) {
    const int64_t km1 = k - 1;
    // full[r, ch, j] = the state for j < k-1, else x[r, j-(k-1), ch]; sc = &state[r, ch, 0], xc = &x[r, 0, ch]
    auto full = [km1, c](const float* sc, const float* xc, int64_t j) { return j < km1 ? sc[j] : xc[(j - km1) * c]; };
    // Short chunks (decode) read `full` per channel. Long chunks (prefill) vectorise over channels:
    // weight^T [k, c] and state^T [b, k-1, c] make every column of `full` a contiguous row of c floats.
    // Then every output token depends on these copies and x only, so blocks of tokens run on the
    // thread pool; the new state (which may overwrite conv_state in place) is written after them all.
    if (t == 1 && std::all_of(lengths, lengths + b, [](int64_t n) { return n == 1; })) {
      one_token(x, st, w, bias, y, ns, b, c, k);
      return;
    }
    const bool by_rows = t > 8;
    if (by_rows) {
      std::vector<float> wt(k * c), head(b * km1 * c);
      transpose(w, wt.data(), c, k);
      for (int64_t r = 0; r < b; ++r) transpose(st + r * c * km1, head.data() + r * km1 * c, c, km1);
      constexpr int64_t kBlock = 16;  // tokens per job
      const int64_t blocks = (t + kBlock - 1) / kBlock;
      auto job = [&](size_t rb) {
        const int64_t r = rb / blocks, first = (rb % blocks) * kBlock, last = std::min(t, first + kBlock);
        auto column = [&](int64_t j) { return j < km1 ? &head[(r * km1 + j) * c] : x + (r * t + (j - km1)) * c; };
        std::vector<float> row(c), e(c);
        for (int64_t i = first; i < last; ++i) {
          T* yrow = y + (r * t + i) * c;
          float* acc = std::is_same_v<T, float> ? reinterpret_cast<float*>(yrow) : row.data();  // float: in place
          std::memcpy(acc, bias, sizeof(float) * c);
          for (int64_t j = 0; j < k; ++j) fma_row(acc, &wt[j * c], column(i + j), c);
          finish_row(acc, yrow, e.data(), c);
        }
      };
      parallel_for(ctx, static_cast<size_t>(b * blocks), static_cast<size_t>(b * t * c), job);
    } else {
      std::vector<float> row(c), e(c);
      for (int64_t r = 0; r < b; ++r)
        for (int64_t i = 0; i < t; ++i) {
          T* yrow = y + (r * t + i) * c;
          float* acc = std::is_same_v<T, float> ? reinterpret_cast<float*>(yrow) : row.data();
          for (int64_t ch = 0; ch < c; ++ch) {
            const float *sc = st + (r * c + ch) * km1, *xc = x + r * t * c + ch, *wc = w + ch * k;
            float a = bias[ch];
            for (int64_t j = 0; j < k; ++j) a += wc[j] * full(sc, xc, i + j);
            acc[ch] = a;
          }
          finish_row(acc, yrow, e.data(), c);
        }
    }
    for (int64_t r = 0; r < b; ++r)
      for (int64_t ch = 0; ch < c; ++ch) {
        const float *sc = st + (r * c + ch) * km1, *xc = x + r * t * c + ch;
        for (int64_t m = 0; m < km1; ++m) ns[(r * c + ch) * km1 + m] = from_f32<T>(full(sc, xc, lengths[r] + m));
      }
  }

  // One valid token per row (every decode step): the generic per-channel loop above branches per tap
  // between state and x and ran at a third of a MambaDecodeStep's SSM time (perf, small model). The new
  // state is written after every row's outputs, so ns may be st (in place).
  static void one_token(const float* x, const float* st, const float* w, const float* bias, T* y, T* ns,
                        int64_t b, int64_t c, int64_t k) {
    const int64_t km1 = k - 1;
    std::vector<float> row(c), e(c);
    for (int64_t r = 0; r < b; ++r) {
      T* yrow = y + r * c;
      float* acc = std::is_same_v<T, float> ? reinterpret_cast<float*>(yrow) : row.data();
      conv_token(x + r * c, st + r * c * km1, w, bias, acc, c, km1);
      finish_row(acc, yrow, e.data(), c);
    }
    // The state moves left by one element over each row's whole [c, k-1] block, then x fills every (k-1)-th
    // slot: one memmove (overlap-safe, so ns may be st) instead of a loop per channel.
    for (int64_t r = 0; r < b && km1 > 0; ++r) {
      const float* sr = st + r * c * km1;
      T* nr = ns + r * c * km1;
      if constexpr (std::is_same_v<T, float>) {
        std::memmove(nr, sr + 1, sizeof(float) * (c * km1 - 1));
      } else {
        for (int64_t i = 0; i + 1 < c * km1; ++i) nr[i] = from_f32<T>(sr[i + 1]);
      }
      for (int64_t ch = 0; ch < c; ++ch) nr[ch * km1 + km1 - 1] = from_f32<T>(x[r * c + ch]);
    }
  }

  // SiLU of one token's pre-activations `acc` [c], then rounded into its output row unless that is `acc`.
  static void finish_row(float* acc, T* yrow, float* e, int64_t c) {
    silu_inplace(acc, e, c);
    if constexpr (!std::is_same_v<T, float>)
      for (int64_t ch = 0; ch < c; ++ch) yrow[ch] = from_f32<T>(acc[ch]);
  }

  static Ort::Status InferOutputShape(Ort::ShapeInferContext& ctx) {
    return infer_like_inputs<onnx_type<T>(), onnx_type<T>(), 1>(ctx);
  }
};

// Checks the SSM input shapes: SsdChunkScan (`scan`) has [b, t, ...] where SsmStep has [b, ...].
struct SsmDims { int64_t b, t, h, p, g, n; };

inline Ort::Status ssm_dims(const char* op, bool scan, const std::vector<int64_t>& xs, const std::vector<int64_t>& dts,
                            const std::vector<int64_t>& as, const std::vector<int64_t>& bs,
                            const std::vector<int64_t>& cs, const std::vector<int64_t>& ds,
                            const std::vector<int64_t>& ss, SsmDims& d) {
  const size_t o = scan ? 1 : 0;  // offset of the head dims after [b] or [b, t]
  if (!rank_is(xs, 3 + o) || !rank_is(dts, 2 + o) || !rank_is(as, 1) || !rank_is(bs, 3 + o) || cs != bs ||
      !rank_is(ds, 1) || !rank_is(ss, 4))
    return invalid(op, "unexpected input ranks");
  d = {xs[0], scan ? xs[1] : 1, xs[1 + o], xs[2 + o], bs[1 + o], bs[2 + o]};
  const bool ok = dts[0] == d.b && (!scan || dts[1] == d.t) && dts[1 + o] == d.h && as[0] == d.h &&
                  bs[0] == d.b && (!scan || bs[1] == d.t) && ds[0] == d.h && d.g > 0 && d.h % d.g == 0 &&
                  ss[0] == d.b && ss[1] == d.h && ss[2] == d.p && ss[3] == d.n;
  return ok ? Ort::Status{nullptr} : invalid(op, "inconsistent shapes");
}

// ---- SsmStep ----------------------------------------------------------------------------------------
//
// x [b, h, p] T, dt [b, h] f32, A [h] f32, B, C [b, g, n] T, D [h] T, state [b, h, p, n] f32
//   -> y [b, h, p] f32, new_state [b, h, p, n] f32.   Head hd uses group hd / (h / g).
template <typename T>
struct SsmStep {
  SsmStep(const OrtApi*, const OrtKernelInfo*) {}

  Ort::Status Compute(OrtKernelContext* ctx, const Tensor<T>& x_in, const Tensor<float>& dt_in,
                      const Tensor<float>& A_in, const Tensor<T>& B_in, const Tensor<T>& C_in, const Tensor<T>& D_in,
                      const Tensor<float>& state_in, Tensor<float>& y_out, Tensor<float>& state_out) {
    SsmDims d;
    Ort::Status st = ssm_dims("SsmStep", false, x_in.Shape(), dt_in.Shape(), A_in.Shape(), B_in.Shape(),
                              C_in.Shape(), D_in.Shape(), state_in.Shape(), d);
    if (!st.IsOK()) return st;
    std::vector<float> sx, sB, sC, sD;
    const float* x = as_f32(x_in, sx);
    const float* B = as_f32(B_in, sB);
    const float* C = as_f32(C_in, sC);
    const float* D = as_f32(D_in, sD);
    const float* dt = dt_in.Data();
    const float* A = A_in.Data();
    float* y = y_out.Allocate({d.b, d.h, d.p});
    const float* s_in = state_in.Data();
    float* s = state_out.Allocate({d.b, d.h, d.p, d.n});

    const int64_t r = d.h / d.g;
    auto head = [&](size_t bh) {  // one (row, head): bh = row * h + head
      const int64_t row = bh / d.h, hd = bh % d.h, grp = row * d.g + hd / r;
      const int64_t state = bh * d.p * d.n;
      ssm_token(s_in + state, s + state, x + bh * d.p, dt[bh], A[hd], B + grp * d.n, C + grp * d.n, D[hd],
                y + bh * d.p, d.p, d.n);
    };
    parallel_for(ctx, static_cast<size_t>(d.b * d.h), static_cast<size_t>(d.b * d.h * d.p * d.n), head);
    return Ort::Status{nullptr};
  }

  static Ort::Status InferOutputShape(Ort::ShapeInferContext& ctx) { return infer_like_inputs<kF32, kF32, 6>(ctx); }
};

// ---- SsdChunkScan -----------------------------------------------------------------------------------
//
// x [b, t, h, p] T, dt [b, t, h] f32, A [h] f32, B, C [b, t, g, n] T, D [h] T, initial_state [b, h, p, n] f32
//   -> y [b, t, h, p] f32, final_state [b, h, p, n] f32.
// The function body evaluates the recurrence chunk-wise (state space duality, `chunk_size` tokens a
// chunk); this kernel runs the same recurrence token by token per (row, head), which is exact up to
// float32 rounding and needs no chunk size. Right padding has dt = 0: the state passes through unchanged.
template <typename T>
struct SsdChunkScan {
  SsdChunkScan(const OrtApi*, const OrtKernelInfo*) {}

  Ort::Status Compute(OrtKernelContext* ctx, const Tensor<T>& x_in, const Tensor<float>& dt_in,
                      const Tensor<float>& A_in, const Tensor<T>& B_in, const Tensor<T>& C_in, const Tensor<T>& D_in,
                      const Tensor<float>& state_in, Tensor<float>& y_out, Tensor<float>& state_out) {
    SsmDims d;
    Ort::Status st = ssm_dims("SsdChunkScan", true, x_in.Shape(), dt_in.Shape(), A_in.Shape(), B_in.Shape(),
                              C_in.Shape(), D_in.Shape(), state_in.Shape(), d);
    if (!st.IsOK()) return st;
    std::vector<float> sx, sB, sC, sD;
    const float* x = as_f32(x_in, sx);   // [b, t, h, p]
    const float* B = as_f32(B_in, sB);   // [b, t, g, n]
    const float* C = as_f32(C_in, sC);
    const float* D = as_f32(D_in, sD);   // [h]
    const float* dt = dt_in.Data();      // [b, t, h]
    const float* A = A_in.Data();        // [h]
    float* y = y_out.Allocate({d.b, d.t, d.h, d.p});
    const float* s_in = state_in.Data();
    float* s = state_out.Allocate({d.b, d.h, d.p, d.n});
    const size_t state_size = d.p * d.n;  // one head's state

    const int64_t r = d.h / d.g;
    auto head = [&](size_t bh) {  // one (row, head) over all tokens, its state kept hot and transposed
      const int64_t row = bh / d.h, hd = bh % d.h, grp = hd / r;
      std::vector<float> st(state_size), u(d.p), acc(d.p);
      transpose(s_in + bh * state_size, st.data(), d.p, d.n);
      for (int64_t i = 0; i < d.t; ++i) {
        const int64_t tok = row * d.t + i;  // index of (row, token)
        const int64_t bg = (tok * d.g + grp) * d.n;
        const int64_t th = tok * d.h + hd;  // index of (row, token, head)
        ssm_token_transposed(st.data(), u.data(), acc.data(), x + th * d.p, dt[th], A[hd], B + bg, C + bg, D[hd],
                             y + th * d.p, d.p, d.n);
      }
      transpose(st.data(), s + bh * state_size, d.n, d.p);
    };
    parallel_for(ctx, static_cast<size_t>(d.b * d.h), static_cast<size_t>(d.b * d.t * d.h * d.p * d.n), head);
    return Ort::Status{nullptr};
  }

  static Ort::Status InferOutputShape(Ort::ShapeInferContext& ctx) { return infer_like_inputs<kF32, kF32, 6>(ctx); }
};

// ---- MambaDecodeStep --------------------------------------------------------------------------------
//
// The whole Mamba-2 mixer between in_proj and out_proj for one token (i = inner = h*p, c = i + 2*g*n):
// zxbcdt [b, 1, i + c + h] T (z | xBC | dt_raw), conv_state [b, c, k-1] T, conv_weight [c, k] T,
// conv_bias [c] T, dt_bias [h] f32, A [h] f32, D [h] T, norm_weight [i] f32, ssm_state [b, h, p, n] f32
//   -> y [b, 1, i] T, new_conv_state [b, c, k-1] T, new_ssm_state [b, h, p, n] f32.
// xBC goes through CausalConv1d's code (rounded to T, as the function body's CausalConv1d output is),
// dt = clamp(softplus(dt_raw + dt_bias), dt_min, dt_max), the heads through ssm_token, and then
// y = RMSNorm over n_groups slices of (ssm output * silu(z)), times norm_weight.

// The gated RMSNorm of one group of q channels of one token:
//   out[i] = (s[i] * silu(z[i])) / sqrt(mean_q((s * silu(z))^2) + eps) * w[i].
// z arrives in `gated` [q], which is overwritten; e [q] is scratch.
HOT void gated_rms_norm(const float* __restrict s, float* __restrict gated, float* __restrict e,
                        const float* __restrict w, float* __restrict out, int64_t q, float eps) {
  silu_inplace(gated, e, q);
  float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
  for (int64_t i = 0; i < q; ++i) {
    gated[i] *= s[i];
    sum += gated[i] * gated[i];
  }
  const float denom = std::sqrt(sum / static_cast<float>(q) + eps);
  for (int64_t i = 0; i < q; ++i) out[i] = gated[i] / denom * w[i];
}

// softplus(v) = log(1 + exp(v)), without overflow for large v.
inline float softplus(float v) { return v > 0.0f ? v + std::log1p(std::exp(-v)) : std::log1p(std::exp(v)); }

template <typename T>
struct MambaDecodeStep {
  MambaDecodeStep(const OrtApi* api, const OrtKernelInfo* info) {
    channels_ = attribute_or(api, info, "channels", int64_t{-1});
    n_groups_ = attribute_or(api, info, "n_groups", int64_t{-1});
    epsilon_ = attribute_or(api, info, "epsilon", -1.0f);
    dt_min_ = attribute_or(api, info, "dt_min", 0.0f);
    dt_max_ = attribute_or(api, info, "dt_max", std::numeric_limits<float>::infinity());
  }
  int64_t channels_, n_groups_;  // -1 if absent
  float epsilon_, dt_min_, dt_max_;  // epsilon -1 if absent

  struct Dims { int64_t b, i, c, k, h, p, g, n; };

  // Checks every input's shape against the others; the message names the first input that does not fit.
  Ort::Status dims(const std::vector<int64_t>& zs, const std::vector<int64_t>& css, const std::vector<int64_t>& ws,
                   const std::vector<int64_t>& bs, const std::vector<int64_t>& dtbs, const std::vector<int64_t>& as,
                   const std::vector<int64_t>& ds, const std::vector<int64_t>& nws, const std::vector<int64_t>& sss,
                   Dims& d) const {
    auto bad = [](const std::string& msg) { return invalid("MambaDecodeStep", msg); };
    if (n_groups_ <= 0) return bad("attribute n_groups missing or not positive");
    if (epsilon_ < 0.0f) return bad("attribute epsilon missing or negative");
    if (!rank_is(nws, 1)) return bad("norm_weight must be [inner]");
    if (!rank_is(dtbs, 1)) return bad("dt_bias must be [h]");
    if (!rank_is(ws, 2)) return bad("conv_weight must be [c, k]");
    d.i = nws[0];
    d.h = dtbs[0];
    d.c = ws[0];
    d.k = ws[1];
    d.g = n_groups_;
    if (channels_ >= 0 && channels_ != d.c) return bad("attribute channels differs from conv_weight's channels");
    if (d.h <= 0 || d.i % d.h != 0 || d.h % d.g != 0 || d.i % d.g != 0 || d.c <= d.i || (d.c - d.i) % (2 * d.g) != 0)
      return bad("norm_weight [inner], dt_bias [h] and conv_weight [inner + 2*g*n, k] do not fit n_groups g");
    d.p = d.i / d.h;
    d.n = (d.c - d.i) / (2 * d.g);
    if (!rank_is(zs, 3) || zs[1] != 1 || zs[2] != d.i + d.c + d.h)
      return bad("zxbcdt must be [b, 1, inner + c + h] (one token of z | xBC | dt_raw)");
    d.b = zs[0];
    if (!rank_is(css, 3) || css[0] != d.b || css[1] != d.c || css[2] != d.k - 1)
      return bad("conv_state must be [b, c, k-1]");
    if (!rank_is(bs, 1) || bs[0] != d.c) return bad("conv_bias must be [c]");
    if (!rank_is(as, 1) || as[0] != d.h) return bad("A must be [h]");
    if (!rank_is(ds, 1) || ds[0] != d.h) return bad("D must be [h]");
    if (!rank_is(sss, 4) || sss[0] != d.b || sss[1] != d.h || sss[2] != d.p || sss[3] != d.n)
      return bad("ssm_state must be [b, h, inner/h, (c-inner)/(2*n_groups)]");
    return Ort::Status{nullptr};
  }

  Ort::Status Compute(OrtKernelContext* ctx, const Tensor<T>& zxbcdt_in, const Tensor<T>& conv_state_in,
                      const Tensor<T>& weight_in, const Tensor<T>& bias_in, const Tensor<float>& dt_bias_in,
                      const Tensor<float>& A_in, const Tensor<T>& D_in, const Tensor<float>& norm_weight_in,
                      const Tensor<float>& ssm_state_in, Tensor<T>& y_out, Tensor<T>& conv_state_out,
                      Tensor<float>& ssm_state_out) {
    Dims d;
    Ort::Status st = dims(zxbcdt_in.Shape(), conv_state_in.Shape(), weight_in.Shape(), bias_in.Shape(),
                          dt_bias_in.Shape(), A_in.Shape(), D_in.Shape(), norm_weight_in.Shape(),
                          ssm_state_in.Shape(), d);
    if (!st.IsOK()) return st;
    std::vector<float> sz, scs, sw, sb, sD;
    const float* zx = as_f32(zxbcdt_in, sz);        // [b, i + c + h]
    const float* cs = as_f32(conv_state_in, scs);   // [b, c, k-1]
    const float* w = as_f32(weight_in, sw);         // [c, k]
    const float* bias = as_f32(bias_in, sb);        // [c]
    const float* D = as_f32(D_in, sD);              // [h]
    const float* dt_bias = dt_bias_in.Data();       // [h]
    const float* A = A_in.Data();                   // [h]
    const float* norm_w = norm_weight_in.Data();    // [i]
    const float* s_in = ssm_state_in.Data();        // [b, h, p, n]
    T* y = y_out.Allocate({d.b, 1, d.i});
    T* ncs = conv_state_out.Allocate({d.b, d.c, d.k - 1});
    float* s = ssm_state_out.Allocate({d.b, d.h, d.p, d.n});
    const int64_t row = d.i + d.c + d.h;  // one row of zxbcdt

    // Per row (rows on the thread pool): the conv (into xbc [b, c], rounded to T like CausalConv1d's
    // output) and dt [b, h].
    std::vector<float> xbc(d.b * d.c), dt(d.b * d.h);
    auto conv_row = [&](size_t r) {
      const int64_t one = 1;
      const float* zr = zx + r * row;
      std::vector<T> conv_y(d.c);
      CausalConv1d<T>::run(nullptr, zr + d.i, cs + r * d.c * (d.k - 1), w, bias, &one, conv_y.data(),
                           ncs + r * d.c * (d.k - 1), 1, 1, d.c, d.k);
      for (int64_t ch = 0; ch < d.c; ++ch) xbc[r * d.c + ch] = to_f32(conv_y[ch]);
      for (int64_t hd = 0; hd < d.h; ++hd) {
        const float v = softplus(zr[d.i + d.c + hd] + dt_bias[hd]);
        dt[r * d.h + hd] = v < dt_min_ ? dt_min_ : (v > dt_max_ ? dt_max_ : v);
      }
    };
    parallel_for(ctx, static_cast<size_t>(d.b), static_cast<size_t>(d.b * d.c * d.k), conv_row);

    // The heads: x = xBC[hd*p : (hd+1)*p], B and C of the head's group, into ssm_y [b, i].
    std::vector<float> ssm_y(d.b * d.i);
    const int64_t heads_per_group = d.h / d.g;
    auto head = [&](size_t bh) {  // one (row, head): bh = row * h + head
      const int64_t r = bh / d.h, hd = bh % d.h, grp = hd / heads_per_group;
      const float* xr = &xbc[r * d.c];
      const int64_t state = bh * d.p * d.n;
      ssm_token(s_in + state, s + state, xr + hd * d.p, dt[bh], A[hd], xr + d.i + grp * d.n,
                xr + d.i + (d.g + grp) * d.n, D[hd], &ssm_y[bh * d.p], d.p, d.n);
    };
    parallel_for(ctx, static_cast<size_t>(d.b * d.h), static_cast<size_t>(d.b * d.h * d.p * d.n), head);

    // Gated RMSNorm per (row, group) of q = i / g channels.
    const int64_t q = d.i / d.g;
    std::vector<float> gated(q), e(q), out(q);
    for (int64_t r = 0; r < d.b; ++r) {
      for (int64_t grp = 0; grp < d.g; ++grp) {
        const int64_t at = grp * q;
        std::memcpy(gated.data(), zx + r * row + at, sizeof(float) * q);  // z
        gated_rms_norm(&ssm_y[r * d.i + at], gated.data(), e.data(), norm_w + at, out.data(), q, epsilon_);
        for (int64_t j = 0; j < q; ++j) y[r * d.i + at + j] = from_f32<T>(out[j]);
      }
    }
    return Ort::Status{nullptr};
  }

  // y [b, 1, inner] T (inner from norm_weight), new_conv_state like conv_state, new_ssm_state like ssm_state.
  static Ort::Status InferOutputShape(Ort::ShapeInferContext& ctx) {
    if (ctx.GetInputCount() < 9) return Ort::Status{nullptr};
    auto y = ctx.GetInputShape(0);
    const auto& nw = ctx.GetInputShape(7);
    if (y.size() == 3 && nw.size() == 1) {
      y[2] = nw[0];
      if (fully_known(y)) {
        Ort::Status st = ctx.SetOutputShape(0, y, onnx_type<T>());
        if (!st.IsOK()) return st;
      }
    }
    const auto& cs = ctx.GetInputShape(1);
    if (fully_known(cs)) {
      Ort::Status st = ctx.SetOutputShape(1, cs, onnx_type<T>());
      if (!st.IsOK()) return st;
    }
    const auto& ss = ctx.GetInputShape(8);
    if (fully_known(ss)) return ctx.SetOutputShape(2, ss, kF32);
    return Ort::Status{nullptr};
  }
};

// ---- registration -----------------------------------------------------------------------------------

// ---- DecodeAttention --------------------------------------------------------------------------------
//
// One decode token of attention over a K/V cache updated in place (the function body is ONNX Runtime's
// GroupQueryAttention, whose CPU kernel multiplies each query head by the whole cache on its own):
//   q [b, 1, hq*d] T, k, v [b, 1, hkv*d] T, past_key, past_value [b, hkv, C, d] T, seqlens_k [b] int32 (each
//   row's past length: where its new K/V goes), total_sequence_length [] int32
//   -> out [b, 1, hq*d] T, present_key, present_value [b, hkv, C, d] T.
// present_* may be the memory of past_* (the runtime binds them so): the new row is written there and the
// rest left alone. Each (row, K/V head) is one job: K and V are read once for the hq/hkv query heads that
// share them, which is what makes a long cache cheap.

// scores[i, j] = q[i, :] . K[j, :] for the `rep` query rows q [rep, d] and keys K [n, d].
HOT void attention_scores(const float* __restrict q, const float* __restrict K, float* __restrict scores,
                          int64_t rep, int64_t n, int64_t d) {
  for (int64_t j = 0; j < n; ++j) {
    const float* kj = K + j * d;
    for (int64_t i = 0; i < rep; ++i) {
      const float* qi = q + i * d;
      float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
      for (int64_t e = 0; e < d; ++e) acc += qi[e] * kj[e];
      scores[i * n + j] = acc;
    }
  }
}

// acc[i, :] = sum_j p[i, j] V[j, :] for the `rep` probability rows p [rep, n] and values V [n, d].
HOT void attention_values(const float* __restrict p, const float* __restrict V, float* __restrict acc,
                          int64_t rep, int64_t n, int64_t d) {
  std::fill(acc, acc + rep * d, 0.0f);
  for (int64_t j = 0; j < n; ++j) {
    const float* vj = V + j * d;
    for (int64_t i = 0; i < rep; ++i) {
      const float w = p[i * n + j];
      float* a = acc + i * d;
#pragma omp simd
      for (int64_t e = 0; e < d; ++e) a[e] += w * vj[e];
    }
  }
}

template <typename T>
struct DecodeAttention {
  DecodeAttention(const OrtApi* api, const OrtKernelInfo* info) {
    num_heads_ = attribute_or(api, info, "num_heads", int64_t{-1});
    kv_num_heads_ = attribute_or(api, info, "kv_num_heads", int64_t{-1});
    scale_ = attribute_or(api, info, "scale", 0.0f);
  }
  int64_t num_heads_, kv_num_heads_;
  float scale_;  // 0: 1/sqrt(d), as GroupQueryAttention

  Ort::Status Compute(OrtKernelContext* ctx, const Tensor<T>& q_in, const Tensor<T>& k_in, const Tensor<T>& v_in,
                      const Tensor<T>& past_key, const Tensor<T>& past_value, const Tensor<int32_t>& seqlens_in,
                      const Tensor<int32_t>& /*total_sequence_length*/, Tensor<T>& out_t, Tensor<T>& key_out,
                      Tensor<T>& value_out) {
    auto bad = [](const std::string& msg) { return invalid("DecodeAttention", msg); };
    const int64_t hq = num_heads_, hkv = kv_num_heads_;
    if (hq <= 0 || hkv <= 0 || hq % hkv != 0) return bad("attributes num_heads and kv_num_heads must be positive, kv_num_heads dividing num_heads");
    const auto& ks = past_key.Shape();
    if (!rank_is(ks, 4) || ks[1] != hkv || past_value.Shape() != ks) return bad("past_key and past_value must be [b, kv_num_heads, C, d]");
    const int64_t b = ks[0], C = ks[2], d = ks[3], rep = hq / hkv;
    const auto& qs = q_in.Shape();
    if (!rank_is(qs, 3) || qs[0] != b || qs[1] != 1 || qs[2] != hq * d) return bad("q must be [b, 1, num_heads * d] (one token)");
    const std::vector<int64_t> kv_shape{b, 1, hkv * d};
    if (k_in.Shape() != kv_shape || v_in.Shape() != kv_shape) return bad("k and v must be [b, 1, kv_num_heads * d]");
    if (seqlens_in.Shape() != std::vector<int64_t>{b}) return bad("seqlens_k must be [b]");
    const int32_t* pos = seqlens_in.Data();
    for (int64_t r = 0; r < b; ++r)
      if (pos[r] < 0 || pos[r] >= C) return bad("seqlens_k: a row's position is outside the cache's capacity");
    const float scale = scale_ != 0.0f ? scale_ : 1.0f / std::sqrt(static_cast<float>(d));
    const T* q = q_in.Data();
    const T* k = k_in.Data();
    const T* v = v_in.Data();
    T* out = out_t.Allocate({b, 1, hq * d});
    T* K = key_out.Allocate(ks);
    T* V = value_out.Allocate(ks);
    const size_t cache = static_cast<size_t>(b * hkv * C * d) * sizeof(T);
    if (K != past_key.Data()) std::memcpy(K, past_key.Data(), cache);  // not in place: start from the past
    if (V != past_value.Data()) std::memcpy(V, past_value.Data(), cache);

    size_t work = 0;
    for (int64_t r = 0; r < b; ++r) work += static_cast<size_t>((pos[r] + 1) * hkv * d * 2);
    auto job = [&](size_t i) {  // one (row, K/V head): i = row * hkv + head
      const int64_t r = static_cast<int64_t>(i) / hkv, g = static_cast<int64_t>(i) % hkv, n = pos[r] + 1;
      T* Kr = K + i * C * d;
      T* Vr = V + i * C * d;
      std::copy(k + (r * hkv + g) * d, k + (r * hkv + g + 1) * d, Kr + pos[r] * d);
      std::copy(v + (r * hkv + g) * d, v + (r * hkv + g + 1) * d, Vr + pos[r] * d);
      std::vector<float> qf(rep * d), scores(rep * n), acc(rep * d), kf, vf;
      const T* qr = q + (r * hq + g * rep) * d;  // the rep query heads of K/V head g
      for (int64_t e = 0; e < rep * d; ++e) qf[e] = to_f32(qr[e]) * scale;
      const float* Kf;
      const float* Vf;
      if constexpr (std::is_same_v<T, float>) {
        Kf = Kr, Vf = Vr;
      } else {
        kf.resize(n * d), vf.resize(n * d);
        for (int64_t e = 0; e < n * d; ++e) kf[e] = to_f32(Kr[e]), vf[e] = to_f32(Vr[e]);
        Kf = kf.data(), Vf = vf.data();
      }
      attention_scores(qf.data(), Kf, scores.data(), rep, n, d);
      for (int64_t h = 0; h < rep; ++h) {  // softmax of each query head's row
        float* s = scores.data() + h * n;
        const float top = *std::max_element(s, s + n);
        float sum = 0.0f;
        for (int64_t j = 0; j < n; ++j) sum += (s[j] = std::exp(s[j] - top));
        const float inv = 1.0f / sum;
        for (int64_t j = 0; j < n; ++j) s[j] *= inv;
      }
      attention_values(scores.data(), Vf, acc.data(), rep, n, d);
      T* o = out + (r * hq + g * rep) * d;
      for (int64_t e = 0; e < rep * d; ++e) o[e] = from_f32<T>(acc[e]);
    };
    parallel_for(ctx, static_cast<size_t>(b * hkv), work, job);
    return Ort::Status{nullptr};
  }
};

constexpr const char* kDomain = "nemotron_edge";
constexpr const char* kCpu = "CPUExecutionProvider";

// The op definitions and the domain must outlive every session that uses them: keep them for the
// life of the process (ORT does not take ownership).
struct Registry {
  std::vector<std::unique_ptr<Ort::Custom::OrtLiteCustomOp>> ops;
  Ort::CustomOpDomain domain{kDomain};

  template <template <typename> class Op>
  void add(const char* name) {
    ops.emplace_back(Ort::Custom::CreateLiteCustomOp<Op<float>>(name, kCpu));
    domain.Add(ops.back().get());
    ops.emplace_back(Ort::Custom::CreateLiteCustomOp<Op<Half>>(name, kCpu));
    domain.Add(ops.back().get());
  }
};

}  // namespace

extern "C" {

// Entry point called by SessionOptions.register_custom_ops_library / RegisterCustomOpsLibrary.
__attribute__((visibility("default"))) OrtStatus* ORT_API_CALL RegisterCustomOps(OrtSessionOptions* options,
                                                                                const OrtApiBase* api_base) {
  const OrtApi* api = api_base->GetApi(ORT_API_VERSION);
  if (api == nullptr) {  // a runtime older than these headers: report it through the oldest API
    const OrtApi* v1 = api_base->GetApi(1);
    return v1->CreateStatus(ORT_FAIL, "nemotron_edge_ops: ONNX Runtime is older than the C API it was built for");
  }
  Ort::InitApi(api);

  static std::mutex mutex;
  static std::unique_ptr<Registry> registry;
  std::lock_guard<std::mutex> lock(mutex);
  try {
    if (!registry) {
      auto reg = std::make_unique<Registry>();
      reg->add<CausalConv1d>("CausalConv1d");
      reg->add<SsmStep>("SsmStep");
      reg->add<SsdChunkScan>("SsdChunkScan");
      reg->add<MambaDecodeStep>("MambaDecodeStep");
      reg->add<DecodeAttention>("DecodeAttention");
      registry = std::move(reg);
    }
    return api->AddCustomOpDomain(options, registry->domain);
  } catch (const Ort::Exception& e) {
    return api->CreateStatus(e.GetOrtErrorCode(), e.what());
  } catch (const std::exception& e) {
    return api->CreateStatus(ORT_FAIL, e.what());
  }
}

}  // extern "C"
