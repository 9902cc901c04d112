"""Generate the Python gRPC stubs (with .pyi) from protos/ — build output, never committed.

Run as ``python -m services.core.protogen`` (``make protos``); ``pip install`` runs it too.
Output lands in ``unfragile/`` at the repository root, so generated imports such as
``from unfragile.common.v1 import common_pb2`` resolve.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def generate(root: Path = ROOT) -> list[Path]:
    import grpc_tools
    from grpc_tools import protoc  # build-time dependency only

    proto_root = root / "protos"
    protos = sorted(proto_root.rglob("*.proto"))
    include = str(Path(grpc_tools.__file__).parent / "_proto")
    args = ["protoc", f"-I{proto_root}", f"-I{include}", f"--python_out={root}", f"--pyi_out={root}",
            f"--grpc_python_out={root}", *map(str, protos)]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed; see the messages above")
    return protos


def main() -> None:
    protos = generate()
    print(f"generated stubs for {len(protos)} proto files into {ROOT / 'unfragile'}", file=sys.stderr)


if __name__ == "__main__":
    main()
