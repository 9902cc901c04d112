#!/usr/bin/env bash
# The GPU check (`make bench-gpu`): random-weight Kosmos-2 (1.66 B parameters) and Stable
# Diffusion 1.5 (1.07 B) at the real checkpoints' sizes, served in fp16 by `unfragile serve`
# over gRPC; writes benchmarks/gpu/results.json and RESULTS.md with the card's name, driver
# and torch/CUDA versions (docs/gpu.md).
#
#   benchmarks/gpu_check.sh                          # on a CUDA machine
#   benchmarks/gpu_check.sh --device cpu --quick     # scaled-down models on the CPU (smoke run)
#   benchmarks/gpu_check.sh --results /tmp/r.json    # write elsewhere; --help lists every option
#
# Python environment, the first that works:
#   1. $PYTHON, when set: an interpreter that already has the project's requirements and torch;
#   2. $VENV (default .venv-gpu) when it has them and its torch sees the GPU (or --device cpu);
#   3. a venv made at $VENV from $PYTHON_BIN (default python3) with --system-site-packages, so
#      the torch already installed there (GPU images ship a CUDA build) is used as it is when
#      it sees the GPU; the project's extras and the stub generator are installed beside it,
#      with torch held at that version. A torch is installed only when asked: INSTALL_TORCH=SPEC
#      (e.g. "torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"). WHEELS=DIR
#      installs from a folder of wheels instead of the package indexes (offline).
# The measuring run is limited to GPU_CHECK_TIMEOUT seconds (default 540); it stops measuring
# 30 s before that and writes what it has.
# Exit codes: 0 done, 2 no CUDA device, 3 requirements missing and not installed, 4 out of time.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv-gpu}
PYTHON_BIN=${PYTHON_BIN:-python3}
INSTALL_TORCH=${INSTALL_TORCH:-}
WHEELS=${WHEELS:-}
GPU_CHECK_TIMEOUT=${GPU_CHECK_TIMEOUT:-540}
EXTRAS=".[visionlanguage,diffusion]"
STUB_TOOLS=(grpcio-tools==1.85.1 mypy-protobuf==5.1.0)  # the versions pyproject.toml builds the stubs with

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

# torch in $1 imports and (for cuda) sees a GPU; prints its version.
torch_version() {
  "$1" - "$cuda" 2>/dev/null <<'PY'
import sys

import torch

if sys.argv[1] == "1" and not torch.cuda.is_available():
    sys.exit(1)
print(torch.__version__)
PY
}

# 0 when $1 has everything the check imports (and, for cuda, its torch sees a GPU).
ready() {
  [ -x "$1" ] || command -v "$1" >/dev/null 2>&1 || return 1
  torch_version "$1" >/dev/null || return 1
  "$1" - >/dev/null 2>&1 <<'PY'
import importlib.util
import sys

needed = ("diffusers", "transformers", "accelerate", "peft", "safetensors", "PIL", "grpc", "grpc_health",
          "grpc_reflection", "grpc_tools", "google.protobuf", "pydantic_settings", "prometheus_client", "typer")
sys.exit(1 if any(importlib.util.find_spec(m) is None for m in needed) else 0)
PY
}

needs() {  # $1: why nothing could be set up
  local gpu=""
  if [ $cuda = 1 ]; then gpu=" that sees the GPU"; fi
  cat >&2 <<MSG
[gpu-check] cannot run: $1.
[gpu-check] It needs Python >= 3.11 with torch$gpu and this repository's extras. Provide one of:
[gpu-check]   - a python3 with torch$gpu (GPU images ship one): the script makes $VENV on top of it;
[gpu-check]   - INSTALL_TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128" (a CUDA
[gpu-check]     build for your driver) to install one into $VENV;
[gpu-check]   - PYTHON=/path/to/python: an interpreter that has everything (\`pip install -e '$EXTRAS'\`
[gpu-check]     and ${STUB_TOOLS[*]});
[gpu-check]   - WHEELS=DIR, a folder of wheels made on a machine with network:
[gpu-check]       pip download -d DIR . ${STUB_TOOLS[*]} setuptools wheel
MSG
  exit 3
}

pip_install() {  # pip install into the venv, offline from $WHEELS when given
  local py="$VENV/bin/python"
  if [ -n "$WHEELS" ]; then
    "$py" -m pip install -q --no-index --find-links "$WHEELS" "$@"
  else
    "$py" -m pip install -q "$@"
  fi
}

install_venv() {  # non-zero at the first failing step (pip says why)
  local py="$VENV/bin/python" version constraints
  if [ ! -x "$py" ]; then
    command -v "$PYTHON_BIN" >/dev/null 2>&1 || needs "$PYTHON_BIN is not installed"
    say "making $VENV from $PYTHON_BIN ($("$PYTHON_BIN" --version 2>&1)) with its site packages"
    "$PYTHON_BIN" -m venv --system-site-packages "$VENV" || return 1
  fi
  if ! version=$(torch_version "$py"); then
    if [ -z "$INSTALL_TORCH" ]; then
      needs "$PYTHON_BIN has no torch$([ $cuda = 1 ] && echo ' that sees a GPU'), and INSTALL_TORCH is not set"
    fi
    say "installing $INSTALL_TORCH into $VENV"
    # shellcheck disable=SC2086  # the spec is several words on purpose (e.g. --index-url URL)
    pip_install $INSTALL_TORCH || return 1
    version=$(torch_version "$py") || needs "the torch installed from INSTALL_TORCH does not import or sees no GPU"
  fi
  say "using torch $version; installing the project's extras beside it"
  constraints="$VENV/torch-constraint.txt"
  echo "torch==$version" >"$constraints"  # pip never replaces the torch found
  pip_install -c "$constraints" --config-settings editable_mode=compat -e "$EXTRAS" "${STUB_TOOLS[@]}" || return 1
}

if [ $cuda = 1 ] && ! nvidia-smi -L >/dev/null 2>&1; then
  say "no CUDA GPU visible (nvidia-smi -L failed); for the CPU smoke run use: $0 --device cpu --quick"
  exit 2
fi

if [ -n "${PYTHON:-}" ]; then
  ready "$PYTHON" || needs "PYTHON=$PYTHON lacks the requirements$([ $cuda = 1 ] && echo ', or its torch sees no GPU')"
  py=$PYTHON
else
  py="$VENV/bin/python"
  if ! ready "$py"; then
    say "$VENV is missing or incomplete: setting it up"
    install_venv || needs "installing into $VENV failed (the messages above say why)"
    ready "$py" || needs "$VENV still lacks the requirements after installing"
  fi
fi

# The gRPC stubs are build output (unfragile/, not committed): generate them when missing.
if [ ! -f unfragile/visionlanguage/v1/visionlanguage_pb2.py ]; then "$py" -m services.core.protogen >&2; fi
# The check stops itself 30 s before the limit and writes what it measured; `timeout` is the backstop.
status=0
timeout --kill-after=20 "$GPU_CHECK_TIMEOUT" "$py" -m benchmarks.gpu.check \
  --deadline-s "$((GPU_CHECK_TIMEOUT - 30))" "$@" || status=$?
if [ $status = 124 ] || [ $status = 137 ]; then
  say "the check ran past GPU_CHECK_TIMEOUT=${GPU_CHECK_TIMEOUT}s and was stopped"
  exit 4
fi
exit $status
