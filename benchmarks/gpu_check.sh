#!/usr/bin/env bash
# The GPU check (`make bench-gpu`): random-weight Kosmos-2 (1.66 B parameters) and Stable
# Diffusion 1.5 (1.07 B) at the real checkpoints' sizes, served in fp16 by `unfragile serve`
# over gRPC; writes gpu.* entries into benchmarks/results.json and RESULTS.md (docs/gpu.md).
#
#   benchmarks/gpu_check.sh                          # on a CUDA machine
#   benchmarks/gpu_check.sh --device cpu --quick     # scaled-down models on the CPU (smoke run)
#   benchmarks/gpu_check.sh --results /tmp/r.json    # write elsewhere; --help lists every option
#
# Python environment, the first that works:
#   1. $PYTHON, when set: an interpreter that already has the project's requirements and torch;
#   2. $VENV (default .venv) when it has them and its torch sees the GPU (or --device cpu);
#   3. installing into $VENV: from the wheels in $WHEELS (offline), or, when the package indexes
#      answer, `make setup` with the CUDA torch of $GPU_TORCH_SPEC (the Makefile's TORCH_SPEC).
# Exit codes: 0 done, 2 no CUDA device, 3 requirements missing and not installable here.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
PYTHON_BIN=${PYTHON_BIN:-python3.11}
GPU_TORCH_SPEC=${GPU_TORCH_SPEC:-"torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"}
WHEELS=${WHEELS:-}

device=cuda
prev=""
for arg in "$@"; do
  case "$arg" in
    --device=*) device=${arg#--device=} ;;
    -h|--help) device=cpu ;;  # the options are listed without a GPU
    *) if [ "$prev" = "--device" ]; then device=$arg; fi ;;
  esac
  prev=$arg
done
cuda=1
if [ "$device" = cpu ]; then cuda=0; fi

say() { echo "[gpu-check] $*" >&2; }

# 0 when $1 has the project's runtime requirements (and, for cuda, its torch sees a GPU).
ready() {
  [ -x "$1" ] || return 1
  "$1" - "$cuda" >/dev/null 2>&1 <<'PY'
import importlib.util
import sys

if any(importlib.util.find_spec(m) is None for m in ("diffusers", "grpc", "pydantic_settings", "torch", "transformers")):
    sys.exit(1)
if sys.argv[1] == "1":
    import torch

    sys.exit(0 if torch.cuda.is_available() else 1)
PY
}

torch_name() {  # "torch==2.13.0" out of a spec such as "torch==2.13.0 --index-url URL"
  local word
  for word in $GPU_TORCH_SPEC; do
    case "$word" in torch*) echo "$word"; return ;; esac
  done
  echo torch
}

torch_index() {  # the URL after --index-url in the spec, if any
  local word prev=""
  for word in $GPU_TORCH_SPEC; do
    if [ "$prev" = "--index-url" ]; then echo "$word"; return; fi
    prev=$word
  done
}

online() {  # PyPI (and, for cuda, the torch index) answer within a few seconds
  local urls=("https://pypi.org/simple/pip/")
  if [ $cuda = 1 ] && [ -n "$(torch_index)" ]; then urls+=("$(torch_index)"); fi
  python3 - "${urls[@]}" >/dev/null 2>&1 <<'PY'
import sys
import urllib.request

for url in sys.argv[1:]:
    urllib.request.urlopen(url, timeout=5).close()
PY
}

needs() {  # $1: why nothing could be set up
  local gpu="" index="" spec="" wheels
  wheels=$(torch_name)
  if [ $cuda = 1 ]; then
    gpu=" (a CUDA build)"
    index=" and $(torch_index)"
    spec=" TORCH_SPEC=\"$GPU_TORCH_SPEC\""
    wheels="$GPU_TORCH_SPEC --extra-index-url https://pypi.org/simple"
  fi
  cat >&2 <<MSG
[gpu-check] cannot run: $1.
[gpu-check] It needs Python 3.11 with torch$gpu and this repository's requirements. Provide one of:
[gpu-check]   - PYTHON=/path/to/python: an interpreter that has them (\`pip install -e .\` of this repository);
[gpu-check]   - network access to pypi.org$index: this script then runs \`make setup$spec\` into $VENV;
[gpu-check]   - WHEELS=DIR, a folder of wheels made on a machine with network:
[gpu-check]       pip download -d DIR $wheels
[gpu-check]       pip download -d DIR . setuptools wheel grpcio-tools==1.85.1 mypy-protobuf==5.1.0
MSG
  exit 3
}

install_venv() {  # non-zero at the first failing step (pip says why)
  local py="$VENV/bin/python"
  [ -x "$py" ] || "$PYTHON_BIN" -m venv "$VENV" || return 1
  if [ -n "$WHEELS" ]; then
    say "installing from the wheels in $WHEELS (offline)"
    "$py" -m pip install -q --no-index --find-links "$WHEELS" "$(torch_name)" || return 1
    "$py" -m pip install -q --no-index --find-links "$WHEELS" --config-settings editable_mode=compat -e . \
      || return 1
  elif ! online; then
    needs "$VENV is not usable, no package index is reachable and no WHEELS folder was given"
  elif [ $cuda = 1 ]; then
    if "$py" -c "import torch" >/dev/null 2>&1; then
      say "replacing torch $("$py" -c 'import torch; print(torch.__version__)') in $VENV with: $GPU_TORCH_SPEC"
      "$py" -m pip uninstall -q -y torch || return 1
    fi
    make setup VENV="$VENV" TORCH_SPEC="$GPU_TORCH_SPEC" || return 1
    # make skips pip when $VENV/.installed is newer than pyproject.toml: then install torch directly
    # shellcheck disable=SC2086  # the spec is several words on purpose (e.g. --index-url URL)
    "$py" -c "import torch" >/dev/null 2>&1 || "$py" -m pip install -q $GPU_TORCH_SPEC || return 1
  else
    make setup VENV="$VENV" || return 1
  fi
}

if [ $cuda = 1 ] && ! nvidia-smi -L >/dev/null 2>&1; then
  say "no CUDA GPU visible (nvidia-smi -L failed); for the CPU smoke run use: $0 --device cpu --quick"
  exit 2
fi

if [ -n "${PYTHON:-}" ]; then
  if ! ready "$PYTHON"; then
    if [ $cuda = 1 ]; then needs "PYTHON=$PYTHON lacks the requirements, or its torch sees no GPU"; fi
    needs "PYTHON=$PYTHON lacks the requirements"
  fi
  py=$PYTHON
else
  py="$VENV/bin/python"
  if ! ready "$py"; then
    say "$VENV is missing or incomplete, or its torch sees no GPU: installing"
    install_venv || needs "installing into $VENV failed (the messages above say why)"
    ready "$py" || needs "$VENV still lacks the requirements, or its torch sees no GPU, after installing"
  fi
fi

# The gRPC stubs are build output (unfragile/, not committed): generate them when missing.
if [ ! -f unfragile/visionlanguage/v1/visionlanguage_pb2.py ]; then "$py" -m services.core.protogen >&2; fi
exec "$py" -m benchmarks.gpu.check "$@"
