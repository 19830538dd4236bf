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

#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <type_traits>
#include <vector>

namespace {

using Ort::Custom::Tensor;
using Half = Ort::Float16_t;

// The hot loops are compiled twice, for baseline x86-64 (SSE2) and for x86-64-v3 (AVX2, FMA); the
// loader picks the clone the CPU supports (GCC function multiversioning), so one build stays portable.
// They are not inlined, which also keeps their __restrict promises visible to the vectoriser.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(NEMOTRON_EDGE_NO_CLONES)
#define HOT __attribute__((noinline, target_clones("arch=x86-64-v3", "default")))
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

// Runs fn(i) for i in [0, total) on the session's intra-op thread pool (inline when it has one thread),
// or inline when the whole job touches fewer than `min_work` floats: waking pool threads costs more
// than, e.g., one decode step of a small model (b*h*p*n = 82k).
template <typename Fn>
void parallel_for(OrtKernelContext* ctx, size_t total, size_t work, Fn& fn) {
  constexpr size_t min_work = size_t{1} << 18;
  if (work < min_work || total < 2) {
    for (size_t i = 0; i < total; ++i) fn(i);
    return;
  }
  auto trampoline = [](void* data, size_t i) { (*static_cast<Fn*>(data))(i); };
  Ort::KernelContext(ctx).ParallelFor(trampoline, total, 0, &fn);
}

// Shape inference shared by all three ops: output 0 has the shape of input 0 (element type TY),
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

// acc[:] += w[:] * src[:] over c channels (one tap of the depthwise convolution).
HOT void fma_row(float* __restrict acc, const float* __restrict w, const float* __restrict src, int64_t c) {
  for (int64_t ch = 0; ch < c; ++ch) acc[ch] += w[ch] * src[ch];
}

template <typename T>
struct CausalConv1d {
  CausalConv1d(const OrtApi* api, const OrtKernelInfo* info) {
    int64_t v = 0;
    if (OrtStatus* st = api->KernelInfoGetAttribute_int64(info, "channels", &v))
      api->ReleaseStatus(st);  // no attribute: nothing to check
    else
      channels_ = v;
  }
  int64_t channels_ = -1;  // the node's `channels`, -1 if absent

  Ort::Status Compute(const Tensor<T>& x_in, const Tensor<T>& state_in, const Tensor<T>& weight_in,
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

    run(x, st, w, bias, lengths, y, ns, b, t, c, k);
    return Ort::Status{nullptr};
  }

  // x [b, t, c], st [b, c, k-1], w [c, k], bias [c] (float32 views) -> y [b, t, c], ns [b, c, k-1].
  static void run(const float* x, const float* st, const float* w, const float* bias, const int64_t* lengths,
                  T* y, T* ns, int64_t b, int64_t t, int64_t c, int64_t k) {
    const int64_t km1 = k - 1;
    // full[r, ch, j] = the state for j < k-1, else x[r, j-(k-1), ch]; sc = &state[r, ch, 0], xc = &x[r, 0, ch]
    auto full = [km1, c](const float* sc, const float* xc, int64_t j) { return j < km1 ? sc[j] : xc[(j - km1) * c]; };
    // Short chunks (decode) read `full` per channel. Long chunks (prefill) vectorise over channels:
    // weight^T [k, c] and state^T [k-1, c] make every column of `full` a contiguous row of c floats.
    const bool by_rows = t > 8;
    std::vector<float> wt(by_rows ? k * c : 0), head(by_rows ? km1 * c : 0), row(c), e(c);
    if (by_rows)
      for (int64_t ch = 0; ch < c; ++ch)
        for (int64_t j = 0; j < k; ++j) wt[j * c + ch] = w[ch * k + j];

    for (int64_t r = 0; r < b; ++r) {
      if (by_rows)
        for (int64_t ch = 0; ch < c; ++ch)
          for (int64_t j = 0; j < km1; ++j) head[j * c + ch] = st[(r * c + ch) * km1 + j];
      auto column = [&](int64_t j) { return j < km1 ? &head[j * c] : x + (r * t + (j - km1)) * c; };

      for (int64_t i = 0; i < t; ++i) {
        T* yrow = y + (r * t + i) * c;
        float* acc = std::is_same_v<T, float> ? reinterpret_cast<float*>(yrow) : row.data();  // float: in place
        if (by_rows) {
          std::memcpy(acc, bias, sizeof(float) * c);
          for (int64_t j = 0; j < k; ++j) fma_row(acc, &wt[j * c], column(i + j), c);
        } else {
          for (int64_t ch = 0; ch < c; ++ch) {
            const float *sc = st + (r * c + ch) * km1, *xc = x + r * t * c + ch, *wc = w + ch * k;
            float a = bias[ch];
            for (int64_t j = 0; j < k; ++j) a += wc[j] * full(sc, xc, i + j);
            acc[ch] = a;
          }
        }
        silu_inplace(acc, e.data(), c);
        if constexpr (!std::is_same_v<T, float>)
          for (int64_t ch = 0; ch < c; ++ch) yrow[ch] = from_f32<T>(acc[ch]);
      }
      for (int64_t ch = 0; ch < c; ++ch) {
        const float *sc = st + (r * c + ch) * km1, *xc = x + r * t * c + ch;
        for (int64_t m = 0; m < km1; ++m) ns[(r * c + ch) * km1 + m] = from_f32<T>(full(sc, xc, lengths[r] + m));
      }
    }
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
    auto head = [&](size_t bh) {  // one (row, head) over all tokens, its state kept hot
      const int64_t row = bh / d.h, hd = bh % d.h, grp = hd / r;
      float* state = s + bh * state_size;
      if (d.t == 0) std::memcpy(state, s_in + bh * state_size, sizeof(float) * state_size);
      for (int64_t i = 0; i < d.t; ++i) {
        const int64_t tok = row * d.t + i;  // index of (row, token)
        const int64_t bg = (tok * d.g + grp) * d.n;
        const int64_t th = tok * d.h + hd;  // index of (row, token, head)
        ssm_token(i == 0 ? s_in + bh * state_size : state, state, x + th * d.p, dt[th], A[hd], B + bg, C + bg,
                  D[hd], y + th * d.p, d.p, d.n);
      }
    };
    parallel_for(ctx, static_cast<size_t>(d.b * d.h), static_cast<size_t>(d.b * d.t * d.h * d.p * d.n), head);
    return Ort::Status{nullptr};
  }

  static Ort::Status InferOutputShape(Ort::ShapeInferContext& ctx) { return infer_like_inputs<kF32, kF32, 6>(ctx); }
};

// ---- registration -----------------------------------------------------------------------------------

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
