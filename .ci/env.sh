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

# Browser tier (with a host): Debian's chromium and npm's playwright-core, never a downloaded
# browser. playwright-core goes into the cache folder; chromium is a system package, installed
# only when asked (SPRINT_INSTALL_BROWSER=1, as .ci/run does) and said so. Without them the tier
# skips with one line.
if [ -n "$HOST" ]; then
  export SPRINT_NODE_MODULES="${SPRINT_NODE_MODULES:-$CACHE/node/node_modules}"
  if [ ! -f "$SPRINT_NODE_MODULES/playwright-core/index.mjs" ] && command -v npm >/dev/null; then
    echo "installing npm's playwright-core into $(dirname "$SPRINT_NODE_MODULES") (for the browser tier) ..." >&2
    PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm install -s --no-audit --no-fund --prefix "$(dirname "$SPRINT_NODE_MODULES")" \
      playwright-core@1.65.1 >&2 || echo "npm could not install playwright-core: the browser tier will skip" >&2
  fi
  if [ ! -x /usr/bin/chromium ]; then
    if [ "${SPRINT_INSTALL_BROWSER:-}" = 1 ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
      echo "SPRINT_INSTALL_BROWSER=1: installing Debian's chromium system-wide with apt-get ..." >&2
      { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; } >/dev/null 2>&1 \
        || echo "apt-get could not install chromium: the browser tier will skip" >&2
    else
      echo "no /usr/bin/chromium: the browser tier will skip (apt-get install chromium, or SPRINT_INSTALL_BROWSER=1 as root)" >&2
    fi
  fi
fi
