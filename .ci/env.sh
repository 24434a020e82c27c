# Sourced by .ci/test and .ci/job: prepares a virtual environment outside the repo and sets $PY.
#   No ComfyUI found -> host-free venv: CPU torch 2.13.0 + Sprint's and the tests' requirements.
#   ComfyUI found ($COMFYUI_PATH, or Sprint in ComfyUI/custom_nodes/) -> host venv: torch and
#   torchvision (ComfyUI imports torchvision; its wheels need the CUDA build of torch, which also
#   runs on CPU) + ComfyUI's requirements (without torchaudio, plus requests).
# Venvs live in ${SPRINT_CACHE:-~/.cache/sprint}; a stamp skips pip when nothing changed.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=${SPRINT_CACHE:-$HOME/.cache/sprint}
mkdir -p "$CACHE"

HOST=""
for cand in "${COMFYUI_PATH:-}" "$ROOT/../.."; do
  if [ -n "$cand" ] && [ -f "$cand/comfy/model_management.py" ] && [ -f "$cand/nodes.py" ]; then
    HOST=$(cd "$cand" && pwd); break
  fi
done

reqs=$(mktemp)
trap 'rm -f "$reqs"' EXIT
cat "$ROOT/requirements.txt" "$ROOT/tests/requirements.txt" > "$reqs"
if [ -n "$HOST" ]; then
  VENV="$CACHE/venv-host"
  torch_spec="torch torchvision"
  grep -vE '^\s*(torch|torchvision|torchaudio)\s*$' "$HOST/requirements.txt" >> "$reqs"
  echo requests >> "$reqs"
else
  VENV="$CACHE/venv-cpu"
  torch_spec="torch==2.13.0"
fi

stamp=$( (echo "$torch_spec"; cat "$reqs") | sha256sum | cut -c1-16)
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
if [ "$(cat "$VENV/.sprint-stamp" 2>/dev/null)" != "$stamp" ]; then
  echo "setting up $VENV (host: ${HOST:-none}) ..." >&2
  "$VENV/bin/pip" install -q $torch_spec >&2
  "$VENV/bin/pip" install -q -r "$reqs" >&2
  echo "$stamp" > "$VENV/.sprint-stamp"
fi
PY="$VENV/bin/python"
if [ -n "$HOST" ]; then export COMFYUI_PATH="$HOST"; fi
