#!/usr/bin/env bash
# Creates one venv per peer quantizer (they pin conflicting onnx/onnxruntime/numpy versions).
# Usage: benchmarks/peers/setup_venvs.sh [DIR] [TOOL ...]   (DIR default: $DEPLOYC_PEERS_DIR or REPO/.peers)
# Idempotent: a venv is rebuilt only when its package spec below changes (stamp file holds the spec).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
dir="${1:-${DEPLOYC_PEERS_DIR:-$repo/.peers}}"
shift || true
python="${PYTHON:-$(command -v python3.11 || command -v python3)}"

# torch 2.13.0 is the local CPU wheel; every later pip call repeats the pin so no resolver swaps it
# for a multi-GB CUDA build (modelopt, olive and INC all depend on torch or pull it in).
TORCH="torch==2.13.0"
declare -A SPEC=(
  [ort]="onnxruntime==1.32.0 onnx==1.23.2 numpy"
  [modelopt]="nvidia-modelopt[onnx]==0.47.0"
  # olive-ai 0.13.0 imports requests (telemetry exporter) without declaring it.
  [olive]="olive-ai[cpu]==0.13.0 onnxruntime==1.32.0 requests"
  # onnx-neural-compressor 1.0 imports prettytable and scipy without declaring them.
  [inc]="onnx-neural-compressor==1.0 prettytable scipy"
  # NNCF's OpenVINO backend: nncf.quantize(ov.convert_model(onnx_path), ...); onnxruntime to score its graphs too.
  [nncf]="nncf==3.4.0 openvino==2026.4.1 onnx==1.23.2 onnxruntime==1.32.0"
)
tools=("$@")
[ ${#tools[@]} -eq 0 ] && tools=(ort modelopt olive inc)

# pip warns once per package about the empty local index folders configured on these machines; drop that.
quiet_pip() { "$1/bin/python" -m pip install --quiet "${@:2}" 2> >(grep -v "is ignored" >&2); }

mkdir -p "$dir"
for tool in "${tools[@]}"; do
  venv="$dir/$tool"
  stamp="$venv/.deployc-peer-spec"
  want="$TORCH | ${SPEC[$tool]}"
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    echo "[$tool] up to date ($venv)"
    continue
  fi
  echo "[$tool] creating $venv: ${SPEC[$tool]}"
  rm -rf "$venv"
  "$python" -m venv "$venv"
  quiet_pip "$venv" --upgrade pip
  quiet_pip "$venv" "$TORCH"
  # shellcheck disable=SC2086  # the spec is a word list on purpose
  quiet_pip "$venv" ${SPEC[$tool]} "$TORCH"
  echo "$want" > "$stamp"
done

# Record what each venv actually resolved to (the peers' own versions and the runtime under them).
{
  echo "# written by setup_venvs.sh on $(date -u +%Y-%m-%d); python $("$python" -V 2>&1 | cut -d' ' -f2)"
  for tool in ort modelopt olive inc nncf; do
    [ -x "$dir/$tool/bin/python" ] || continue
    printf '%s: ' "$tool"
    "$dir/$tool/bin/python" -m pip list --format=freeze 2>/dev/null \
      | grep -i -E '^(onnxruntime(-gpu)?|onnx|numpy|torch|nvidia-modelopt|olive-ai|onnx-neural-compressor|nncf|openvino|onnx[-_]graphsurgeon|neural-compressor)==' \
      | tr '\n' ' '
    echo
  done
} > "$here/versions.txt"
cat "$here/versions.txt"
