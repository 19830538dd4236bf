#!/usr/bin/env bash
# Fetch, here (where PyPI can be reached), the wheels scripts/gpu-check.sh installs on the offline GPU machine,
# into .whl/ (git-ignored), and lay them out so that each device call carries under its 64 MiB limit.
#
# What the GPU machine lacks (its package list: /work/.library/device/KINDS.md):
#   onnxruntime-gpu   it has the CPU-only onnxruntime 1.30. 1.31.1 is a CUDA 13 build (its CUDA provider
#                     needs libcublas.so.13, libcudart.so.13, libcurand.so.10; cuDNN 9 from nvidia-cudnn-cu13),
#                     which the machine's torch 2.11+cu130 brings. Its other needs (flatbuffers, numpy,
#                     packaging, protobuf) are there.
#   cryptography      the exporter imports it (bundle signing); cffi and pycparser are its needs.
#
# Layout: .whl/N/ folders, each under PART_MIB. A wheel larger than that is cut (`split`) into
# NAME.part-00, NAME.part-01, ... one part per folder; gpu-check.sh --wheels .whl glues them back in order.
# Each call also carries the working tree (about 17 MiB with the demo checkpoint and bundle), hence parts
# of 40 MiB rather than 60.
# On the GPU machine: one call per folder while it stays warm (carry [".whl/1"], then [".whl/2"], ...:
# a carried folder stays there between calls), the last one running
#   bash scripts/gpu-check.sh --wheels .whl
set -euo pipefail
cd "$(dirname "$0")/.."

PART_MIB=40
WHEELS=(onnxruntime-gpu==1.31.1 cryptography==50.0.2 cffi==2.1.1 pycparser==3.12 llguidance==1.9.1)
PY=${PYTHON:-python3}

rm -rf .whl
mkdir -p .whl/download
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_34_x86_64 --platform manylinux_2_31_x86_64 --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
    --platform any -d .whl/download "${WHEELS[@]}"

folder=1
room=$((PART_MIB * 1024 * 1024))
limit=$room
for whl in $(ls -Sr .whl/download/*.whl); do  # smallest first: they share folder 1, then the parts
    size=$(stat -c %s "$whl")
    name=$(basename "$whl")
    if (( size > limit )); then
        if (( room < limit )); then folder=$((folder + 1)); fi  # parts start in a folder of their own
        split -b "${PART_MIB}m" -d "$whl" ".whl/download/$name.part-"
        for part in .whl/download/"$name".part-*; do
            mkdir -p ".whl/$folder" && mv "$part" ".whl/$folder/" && folder=$((folder + 1))
        done
        room=$limit
    else
        # Small wheels share the current folder while it has room.
        if (( size > room )); then folder=$((folder + 1)); room=$limit; fi
        mkdir -p ".whl/$folder" && cp "$whl" ".whl/$folder/"
        room=$((room - size))
    fi
done
rm -rf .whl/download
du -sh .whl/*/ | sed 's/^/carry /'
