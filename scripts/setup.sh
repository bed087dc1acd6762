#!/usr/bin/env bash
# Installs everything vidpipe and its tests need on a Debian machine: system packages (apt) and a Python
# venv in .venv with the pinned dependencies (dev extra included), then fetches the default model weights.
# Safe to run again: it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
  redis-server                                  # local Redis for runs without redis.url, and for tests
  python3-gi gir1.2-gst-rtsp-server-1.0         # the RTSP test server (Debian's /usr/bin/python3 + GStreamer)
  gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-bad
  chromium                                      # web app browser tests (Playwright drives /usr/bin/chromium)
  mosquitto openssl                             # MQTT broker (and a TLS certificate) for the MQTT sink tests
)
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if ((${#missing[@]})); then
  echo "setup: installing system packages: ${missing[*]}"
  SUDO=""
  if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $($PYTHON --version)"
  "$PYTHON" -m venv .venv
fi
echo "setup: installing Python dependencies (torch is a large download the first time)"
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[dev]'
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[ray]'  # executor: ray and its tests
# Reference implementations used by tests and benchmarks only. facenet-pytorch declares torch<2.3, which
# would downgrade torch, so it goes in without its declared dependencies (it runs fine on this torch).
.venv/bin/python -m pip install -q --disable-pip-version-check --no-deps facenet-pytorch==2.6.0
.venv/bin/python -m pip install -q --disable-pip-version-check requests==2.32.3 tqdm==4.67.1
echo "setup: fetching model weights into the cache (checked by sha256)"
# Weights that exist only upstream (YOLOX-Nano, NanoDet-m, MiniFASNet) are downloaded by URL; a machine
# without internet (CI here) takes the same files, sha256-checked, from the shared data beside the checkout.
if [ -z "${VIDPIPE_MODEL_MIRROR:-}" ] && [ -d ../shared/data/weights ]; then
  VIDPIPE_MODEL_MIRROR="$(cd ../shared/data/weights && pwd)"
  export VIDPIPE_MODEL_MIRROR
fi
.venv/bin/python run_pipeline.py models fetch >/dev/null
echo "setup: done"
