"""Regenerate the Python gRPC code in edge_runtime/api/ from proto/nemotron_edge/v1/edge.proto.

Run `python -m edge_runtime.api.regen` after editing the .proto. Needs grpcio-tools (a dev/test dependency,
imported only here, only when run); the generated code itself needs only protobuf and grpcio.

protoc names the generated module after the proto's path, so the _grpc file imports
`from nemotron_edge.v1 import edge_pb2`; that package does not exist at run time, so the import is
rewritten to `from edge_runtime.api import edge_pb2`.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

API_DIR = Path(__file__).resolve().parent
PROTO_ROOT = API_DIR.parents[1] / "proto"
PROTO_FILE = "nemotron_edge/v1/edge.proto"
GENERATED = ("edge_pb2.py", "edge_pb2.pyi", "edge_pb2_grpc.py")
_PROTOC_IMPORT = "from nemotron_edge.v1 import edge_pb2"
_PACKAGE_IMPORT = "from edge_runtime.api import edge_pb2"


def regenerate(out_dir: Path, proto_root: Path = PROTO_ROOT) -> list[Path]:
    """Generate GENERATED into `out_dir` from `proto_root`/PROTO_FILE; return their paths."""
    from grpc_tools import protoc  # dev dependency: only the regeneration needs it

    if not (proto_root / PROTO_FILE).is_file():
        raise FileNotFoundError(f"{proto_root / PROTO_FILE}: no such file (run from a source checkout)")
    with tempfile.TemporaryDirectory() as tmp:
        rc = protoc.main([
            "grpc_tools.protoc",
            f"-I{proto_root}",
            f"--python_out={tmp}",
            f"--pyi_out={tmp}",
            f"--grpc_python_out={tmp}",
            PROTO_FILE,
        ])
        if rc != 0:
            raise RuntimeError(f"protoc failed on {proto_root / PROTO_FILE} (exit {rc})")
        generated = Path(tmp) / Path(PROTO_FILE).parent
        out_dir.mkdir(parents=True, exist_ok=True)
        written = []
        for name in GENERATED:
            text = (generated / name).read_text()
            if name == "edge_pb2_grpc.py":
                if _PROTOC_IMPORT not in text:
                    raise RuntimeError(f"{name}: protoc no longer writes {_PROTOC_IMPORT!r}; update regen.py")
                text = text.replace(_PROTOC_IMPORT, _PACKAGE_IMPORT)
            (out_dir / name).write_text(text)
            written.append(out_dir / name)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m edge_runtime.api.regen", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=API_DIR, help=f"output folder (default {API_DIR})")
    args = parser.parse_args(argv)
    for path in regenerate(args.out):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
