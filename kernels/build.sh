#!/usr/bin/env bash
# Builds kernels/build/libnemotron_edge_ops.so, the native CPU kernels for the nemotron_edge custom ops.
#
#   bash kernels/build.sh            # fetch headers if needed, compile if the source changed
#   FORCE=1 bash kernels/build.sh    # recompile anyway
#
# The onnxruntime pip wheel ships no C/C++ headers. They come from Debian trixie's libonnxruntime-dev,
# downloaded with apt-get into a private APT folder under kernels/build/ (nothing is installed
# system-wide) using the Debian mirror this machine's APT already uses; ORT_INCLUDE_DIR=/path/to/include
# skips the download. The headers' C API version must be >= 17 (KernelContext_ParallelFor); any newer
# ONNX Runtime loads the library (the C API is versioned).
#
# Portable code: no -march=native. CXXFLAGS_ARCH (default: empty = x86-64 baseline) adds target flags,
# e.g. CXXFLAGS_ARCH="-march=x86-64-v3" for AVX2/FMA machines.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
build="$here/build"
src="$here/nemotron_edge_ops.cc"
out="$build/libnemotron_edge_ops.so"
mkdir -p "$build"

# ---- headers ----------------------------------------------------------------------------------------
include="${ORT_INCLUDE_DIR:-$build/ort-dev/usr/include/onnxruntime}"
if [[ ! -f "$include/onnxruntime_lite_custom_op.h" ]]; then
  [[ -n "${ORT_INCLUDE_DIR:-}" ]] && { echo "build.sh: no ONNX Runtime headers in $ORT_INCLUDE_DIR" >&2; exit 1; }
  command -v apt-get >/dev/null || { echo "build.sh: apt-get not found; set ORT_INCLUDE_DIR" >&2; exit 1; }
  # The Debian mirror APT is configured with here (deb822 .sources or one-line sources.list).
  mirror="${DEBIAN_MIRROR:-$(cat /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '/^URIs:/ {print $2}' | grep -v security | grep '/debian/*$' | head -n1 || true)}"
  [[ -z "$mirror" ]] && mirror="$(cat /etc/apt/sources.list 2>/dev/null | awk '$1 == "deb" {print $2}' | grep -v security | grep '/debian/*$' | head -n1 || true)"
  [[ -z "$mirror" ]] && { echo "build.sh: no Debian mirror in the APT sources; set DEBIAN_MIRROR" >&2; exit 1; }
  apt="$build/apt"
  mkdir -p "$apt/lists/partial" "$apt/archives/partial"
  echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $mirror trixie main" > "$apt/sources.list"
  opts=(-o "Dir::Etc::sourcelist=$apt/sources.list" -o Dir::Etc::sourceparts=- -o "Dir::State::Lists=$apt/lists"
        -o "Dir::Cache=$apt" -o "Dir::Cache::archives=$apt/archives" -o Dir::State::status=/dev/null
        -o Debug::NoLocking=1 -o APT::Sandbox::User=root -o APT::Architecture=amd64 -qq)
  echo "build.sh: fetching libonnxruntime-dev (trixie) headers from $mirror"
  apt-get "${opts[@]}" update
  (cd "$apt/archives" && apt-get "${opts[@]}" download libonnxruntime-dev)
  rm -rf "$build/ort-dev"
  dpkg -x "$(ls "$apt"/archives/libonnxruntime-dev_*.deb | head -n1)" "$build/ort-dev"
fi
api_version="$(awk '/#define ORT_API_VERSION/ {print $3}' "$include/onnxruntime_c_api.h")"
if (( api_version < 17 )); then
  echo "build.sh: headers have ORT_API_VERSION $api_version; need >= 17" >&2; exit 1
fi

# ---- compile ----------------------------------------------------------------------------------------
if [[ -z "${FORCE:-}" && -f "$out" && "$out" -nt "$src" && "$out" -nt "${BASH_SOURCE[0]}" ]]; then
  echo "build.sh: $out is up to date (ORT C API $api_version)"; exit 0
fi
# -fopenmp-simd: honour `#pragma omp simd` (vectorised reductions) without the OpenMP runtime.
# -fno-trapping-math: lets GCC if-convert the clamp in exp_approx so the SiLU loop vectorises
# (we never read floating-point exception flags).
# -fvisibility=hidden: export RegisterCustomOps only.
${CXX:-g++} -std=c++17 -O3 -fPIC -shared -fvisibility=hidden -fopenmp-simd -fno-trapping-math ${CXXFLAGS_ARCH:-} \
  -I"$include" "$src" -o "$out.tmp"
mv "$out.tmp" "$out"
echo "build.sh: built $out (ORT C API $api_version)"
