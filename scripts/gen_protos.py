"""Generate the Python gRPC code for protos/pq/v1 into the package pq.v1 with grpcio-tools."""

from __future__ import annotations

import sys
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"


def generate(out_dir: Path = ROOT) -> list[Path]:
    """Compile every .proto under protos/ into out_dir and return the .proto files compiled."""
    proto_files = sorted(PROTO_ROOT.rglob("*.proto"))
    if not proto_files:
        raise FileNotFoundError(f"no .proto files under {PROTO_ROOT}")
    # grpc_tools ships the well-known types (google/protobuf/*.proto) inside its package.
    well_known = Path(protoc.__file__).resolve().parent / "_proto"
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{well_known}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *[str(p) for p in proto_files],
    ]
    status = protoc.main(args)
    if status != 0:
        raise RuntimeError(f"protoc failed with exit status {status}")
    for package_dir in {(out_dir / p.relative_to(PROTO_ROOT)).parent for p in proto_files}:
        for directory in [package_dir, *package_dir.relative_to(out_dir).parents]:
            init = out_dir / directory / "__init__.py" if directory != Path(".") else None
            if init is not None:
                # Rewritten on every run: install.sh compares the .proto files with its time stamp.
                init.write_text('"""Generated protobuf and gRPC code; do not edit."""\n')
    return proto_files


if __name__ == "__main__":
    compiled = generate()
    sys.stdout.write(f"generated Python code for {len(compiled)} proto files\n")
