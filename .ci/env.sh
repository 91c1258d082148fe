# Source me: activates a virtual environment kept outside the clone, keyed by the hash of
# requirements.txt, building it when missing (about 2 minutes from the local wheels), and
# installs this checkout into it in editable mode.
_req_hash=$(sha256sum requirements.txt | cut -c1-16)
TIEDLAB_VENV="${TIEDLAB_VENV:-$HOME/.cache/tiedlab/venv-$_req_hash}"
if [ ! -x "$TIEDLAB_VENV/bin/python" ] || [ ! -f "$TIEDLAB_VENV/.complete" ]; then
  echo "building $TIEDLAB_VENV from requirements.txt" >&2
  rm -rf "$TIEDLAB_VENV"
  python3 -m venv "$TIEDLAB_VENV"
  "$TIEDLAB_VENV/bin/python" -m pip install -q --upgrade "setuptools>=68" wheel 2>&1 | grep -v "is ignored" || true
  "$TIEDLAB_VENV/bin/python" -m pip install -q -r requirements.txt 2>&1 | grep -v "is ignored" || true
  "$TIEDLAB_VENV/bin/python" -c "import torch, torchvision, torch_geometric, transformers, lightly, hydra" \
    && touch "$TIEDLAB_VENV/.complete"
fi
# shellcheck source=/dev/null
source "$TIEDLAB_VENV/bin/activate"
python -m pip install -q --no-deps --no-build-isolation -e . 2>&1 | grep -v "is ignored" || true
python -c "import tiedlab.core" || { echo "tiedlab failed to install into $TIEDLAB_VENV" >&2; exit 1; }
# The same run-time defaults as the Makefile, so the README's commands work after `source .ci/env.sh` too.
export TIEDLAB_DATA="${TIEDLAB_DATA:-$(cd .. && pwd)/shared/data}"
export HF_HUB_OFFLINE=1
export WANDB_MODE="${WANDB_MODE:-disabled}"
