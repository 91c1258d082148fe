# Source me. Two layers, so that every checkout runs its own code:
#   1. the dependency environment, outside the clone: the pinned requirements.txt and nothing else, keyed by
#      the hash of requirements.txt and the Python version, built once (about 2 minutes from the local wheels)
#      and only read after that, so any number of clones share it safely;
#   2. this checkout's own environment in .venv/ (gitignored): a light venv that sees layer 1 through a .pth
#      file and holds this checkout, and only it, installed in editable mode with its console commands.
# Sourcing it in one clone never changes what another clone runs (tests/paradigms/test_environment.py).
_tiedlab_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
_tiedlab_py="$(command -v python3)"
_tiedlab_key="$(cat "$_tiedlab_root/requirements.txt" <("$_tiedlab_py" -c 'import sys; print(sys.version)') \
  | sha256sum | cut -c1-16)"
# Computed for this clone's requirements.txt on every source (never inherited from an earlier source in the same
# shell); $TIEDLAB_DEPS_ROOT moves the folder that holds the dependency environments.
export TIEDLAB_DEPS="${TIEDLAB_DEPS_ROOT:-$HOME/.cache/tiedlab}/deps-$_tiedlab_key"

_tiedlab_env_setup() {
  local deps="$TIEDLAB_DEPS" root="$_tiedlab_root"
  mkdir -p "$(dirname "$deps")"
  # Layer 1, under a lock: two clones building it at once would interleave their pip runs.
  (
    flock 9
    if [ ! -f "$deps/.complete" ]; then
      echo "building $deps from requirements.txt" >&2
      rm -rf "$deps"
      "$_tiedlab_py" -m venv "$deps" || exit 1
      "$deps/bin/python" -m pip install -q --upgrade "setuptools>=68" wheel 2>&1 | grep -v "is ignored"
      [ "${PIPESTATUS[0]}" -eq 0 ] || exit 1
      "$deps/bin/python" -m pip install -q -r "$root/requirements.txt" 2>&1 | grep -v "is ignored"
      [ "${PIPESTATUS[0]}" -eq 0 ] || exit 1
      (cd / && "$deps/bin/python" -I -c "import torch, torchvision, torch_geometric, transformers, lightly, hydra") \
        || exit 1
      touch "$deps/.complete"
    fi
  ) 9>"$deps.lock" || { echo "could not build the dependency environment $deps" >&2; return 1; }
  # -I and cd /: a folder named tiedlab in the current directory or on PYTHONPATH must not count.
  if (cd / && "$deps/bin/python" -I -c "import tiedlab") 2>/dev/null; then
    echo "$deps has a tiedlab installed in it; it must hold dependencies only (delete it to rebuild)" >&2
    return 1
  fi
  # Layer 2, rebuilt when the checkout moved, the dependency environment changed or pyproject.toml or setup.py
  # changed.
  local venv="$root/.venv" site stamp
  stamp="$(printf '%s\n%s\n' "$root" "$deps" | cat - "$root/pyproject.toml" "$root/setup.py" | sha256sum | cut -c1-16)"
  (
    flock 9
    if [ "$(cat "$venv/.tiedlab-stamp" 2>/dev/null)" != "$stamp" ]; then
      rm -rf "$venv"
      "$deps/bin/python" -m venv --without-pip "$venv" || exit 1
      site="$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
      # addsitedir (not a bare path) so the dependencies' own .pth files are processed too.
      echo "import site; site.addsitedir('$("$deps/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')')" \
        > "$site/_tiedlab_deps.pth"
      (cd "$root" && "$venv/bin/python" -m pip install -q --no-deps --no-build-isolation -e . 2>&1 \
        | grep -v "is ignored"; exit "${PIPESTATUS[0]}") || exit 1
      # the installed tiedlab must be this checkout's (not a folder that happens to be on the path)
      (cd / && "$venv/bin/python" -I -c "import sys, tiedlab.core as c; sys.exit(not c.__file__.startswith('$root/'))") \
        || exit 1
      echo "$stamp" > "$venv/.tiedlab-stamp"
    fi
  ) 9>"$root/.venv.lock" || { echo "tiedlab failed to install into $venv" >&2; return 1; }
}

if _tiedlab_env_setup; then
  # shellcheck source=/dev/null
  source "$_tiedlab_root/.venv/bin/activate"
  # The same run-time defaults as the Makefile, so the README's commands work after `source .ci/env.sh` too.
  export TIEDLAB_DATA="${TIEDLAB_DATA:-$(cd "$_tiedlab_root/.." && pwd)/shared/data}"
  export HF_HUB_OFFLINE=1
  export WANDB_MODE="${WANDB_MODE:-disabled}"
else
  false
fi
