"""Workstation subcommands: `nemotron-edge synth` (synthetic checkpoints), `nemotron-edge export` (bundles) and
`nemotron-edge train-demo` (the embedded demo model)."""

from __future__ import annotations

import argparse
import importlib.util
import sys

EXPORT_DEPENDENCIES = ("torch", "onnx", "onnxscript", "safetensors", "tqdm")


def register(sub: argparse._SubParsersAction) -> None:
    from nemotron_export.presets import PRESETS

    p = sub.add_parser("synth", help="write a synthetic Hugging Face checkpoint (random weights, real tokenizer)")
    p.add_argument("--preset", required=True, choices=sorted(PRESETS))
    p.add_argument("--out", required=True, help="output directory (must not exist or be empty)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-tokenizer", action="store_true", help="write no tokenizer files")
    p.set_defaults(func=_synth)

    p = sub.add_parser("train-demo", help="train the small demo model from scratch on the CPU (robot-assistant tasks)")
    p.add_argument("--out", required=True, help="checkpoint directory to create")
    p.add_argument("--minutes", type=float, default=50.0, help="training time; the learning rate decays over it")
    p.add_argument("--steps", type=int, help="train this many steps instead of for --minutes")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--resume", action="store_true", help="continue an interrupted run from OUT.partial/")
    p.set_defaults(func=_train_demo)

    p = sub.add_parser("export", help="export a Hugging Face checkpoint to a nemotron-edge bundle")
    p.add_argument("checkpoint", help="checkpoint directory (config.json + safetensors)")
    p.add_argument("--out", required=True, help="bundle directory to create")
    p.add_argument("--weights", default="fp32", choices=["fp32", "fp16", "bf16", "int8", "int4"])
    p.add_argument("--group-size", type=int, default=None,
                   help="int8: the quantization block size (default 128). int4: the byte budget, the size of "
                        "uniform int4 at this group size (default 32: 5 bits a weight with float32 scales); each "
                        "projection gets int4 at group 32/64/128 (or this size) or int8 at group 128, planned by "
                        "its measured sensitivity within that budget")
    p.add_argument("--calibration", choices=["corpus", "random"], default=None,
                   help="int4: what the plan and GPTQ are fitted on: the shipped text corpus through the "
                        "checkpoint's tokenizer, or random tokens (default: corpus when the checkpoint has a "
                        "tokenizer, random otherwise)")
    p.add_argument("--no-gptq", action="store_true",
                   help="int4: round each projection to nearest (with a clip search) instead of GPTQ; the plan "
                        "is still calibrated. Much faster, less accurate")
    p.add_argument("--no-quantize-lm-head", action="store_true",
                   help="keep lm_head unquantized in int8/int4 bundles (default: quantized like the projections)")
    p.add_argument("--accuracy-level", type=int, default=None, choices=[0, 1, 2, 3, 4],
                   help="int8/int4: MatMulNBits accuracy_level on the CPU provider. 4 (default) quantizes the "
                        "activations to int8 per block, ONNX Runtime's fast integer kernels; 0 computes in "
                        "float32, exact but far slower (8-bit blocks are dequantized on every call)")
    p.add_argument("--max-batch", type=int, default=8)
    p.add_argument("--max-context", type=int, default=4096)
    p.add_argument("--resume", action="store_true",
                   help="continue the interrupted export in OUT.partial/ from its last finished layer (same "
                        "checkpoint and options; a fresh export when there is none)")
    p.add_argument("--sign-key", metavar="KEY",
                   help="Ed25519 private key (PEM, `openssl genpkey -algorithm ed25519`): sign the manifest "
                        "(manifest.sig), so devices with the public key as --trusted-key accept the bundle")
    p.set_defaults(func=_export)


GROUP_SIZE_BY_FORMAT = {"int4": 32, "int8": 128}  # the block size `export` uses when --group-size is not given


def _missing_exporter(command: str) -> bool:
    """True (after saying how to install it) when the `export` extra is not installed."""
    missing = [m for m in EXPORT_DEPENDENCIES if importlib.util.find_spec(m) is None]
    if missing:
        print(f"nemotron-edge {command}: the exporter is not installed here (missing: {', '.join(missing)}). "
              "Install it with: pip install 'nemotron-edge[export]' torch==2.13.0", file=sys.stderr)
    return bool(missing)


def _synth(args: argparse.Namespace) -> int:
    if _missing_exporter("synth"):
        return 2
    from nemotron_export.synth import synth

    out = synth(args.preset, args.out, seed=args.seed, with_tokenizer=not args.no_tokenizer, progress=True)
    print(f"wrote {args.preset} checkpoint to {out}")
    return 0


def _train_demo(args: argparse.Namespace) -> int:
    if _missing_exporter("train-demo"):
        return 2
    from nemotron_export.demo_model.train import TrainOptions, train_demo

    opts = TrainOptions(minutes=args.minutes, steps=args.steps, seed=args.seed, threads=args.threads)
    print(f"wrote the demo checkpoint to {train_demo(args.out, opts, resume=args.resume)}")
    return 0


def _export(args: argparse.Namespace) -> int:
    if _missing_exporter("export"):
        return 2
    from edge_runtime.bundle.signature import KeyFileError, key_id, load_signing_key
    from nemotron_export.bundle import ExportOptions, export_bundle
    from nemotron_export.checkpoint import CheckpointError
    from nemotron_export.onnx_graph import WeightFormat
    from edge_runtime.bundle.model_config import ConfigError

    try:
        # Read before the export's minutes, so a bad key fails at once.
        signing_key = load_signing_key(args.sign_key) if args.sign_key else None
        fmt = WeightFormat(
            kind=args.weights, group_size=args.group_size or GROUP_SIZE_BY_FORMAT.get(args.weights, 32),
            quantize_lm_head=not args.no_quantize_lm_head,
            **({} if args.accuracy_level is None else {"accuracy_level": args.accuracy_level}),
        )
        out = export_bundle(args.checkpoint, args.out,
                            ExportOptions(weights=fmt, max_batch=args.max_batch, max_context=args.max_context,
                                          calibration=args.calibration, gptq=not args.no_gptq),
                            signing_key=signing_key, resume=args.resume)
    except (CheckpointError, ConfigError, KeyFileError, ValueError, FileExistsError) as e:
        print(f"nemotron-edge export: {e}", file=sys.stderr)
        return 2
    signed = f", signed by key {key_id(signing_key.public_key())}" if signing_key else ""
    print(f"wrote bundle to {out}{signed}")
    return 0
