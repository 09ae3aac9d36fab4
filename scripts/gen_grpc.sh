#!/usr/bin/env bash
# Regenerates the committed Python modules of the gRPC service from its .proto:
#   src/shipyard/protocol/grpc/inference_pb2.py, inference_pb2.pyi, inference_pb2_grpc.py
#
#   bash scripts/gen_grpc.sh
#
# Why a throwaway venv with an old grpcio-tools: generated code demands a protobuf
# runtime at least as new as the protoc that wrote it (and newer grpcio-tools add the
# same check for grpcio). grpcio-tools 1.62 writes protobuf 4.25-era code, which runs on
# every runtime shipyard[grpc] allows (protobuf 4 to 7, grpcio >= 1.60).
#
# Why a private descriptor pool: tritonclient, KServe and MLServer register their own
# copies of the same "inference.*" messages in protobuf's default pool, and a second
# definition of a symbol there is an import error. Message names never go on the wire
# (only the service path does), so shipyard keeps its copy in a pool of its own and
# lives in one process with any of them.
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=src/shipyard/protocol/grpc
VENV="${TMPDIR:-/tmp}/shipyard-protoc"
PY="${PYTHON:-python3}"

if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c "import grpc_tools" 2>/dev/null; then
  "$PY" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check "grpcio-tools==1.62.3"
fi

"$VENV/bin/python" -m grpc_tools.protoc -Isrc \
  --python_out=src --pyi_out=src --grpc_python_out=src \
  "$OUT/inference.proto"

"$VENV/bin/python" - "$OUT/inference_pb2.py" <<'EOF'
import sys
path = sys.argv[1]
text = open(path).read()
old = "DESCRIPTOR = _descriptor_pool.Default().AddSerializedFile("
new = ("# shipyard: a private pool, so other copies of inference.* (tritonclient, KServe) can coexist\n"
       "_POOL = _descriptor_pool.DescriptorPool()\n"
       "DESCRIPTOR = _POOL.AddSerializedFile(")
assert text.count(old) == 1, "protoc output changed: update scripts/gen_grpc.sh"
open(path, "w").write(text.replace(old, new))
EOF

echo "regenerated $OUT/inference_pb2.py, inference_pb2.pyi and inference_pb2_grpc.py"
