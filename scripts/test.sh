#!/usr/bin/env bash
# The README's test command: make a virtualenv, install vatt with its test extra, run the suite.
# TensorFlow is not needed; the one test that cross-checks our checkpoint reader against TensorFlow's
# runs when it is installed (VATT_TEST_EXTRAS=tf,dev adds it, as .ci/run does) and skips otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."
# The search page is tested in a real headless browser: Debian's chromium and its WebDriver.
if ! command -v chromedriver >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
fi
python3 -m venv .venv
. .venv/bin/activate
pip install -q --upgrade pip
# torch first, pinned: the CI machines' pip finds a local CPU wheel of this version. From PyPI alone a bare
# `torch` requirement would pull the multi-GB CUDA build (see the README's Quickstart for the CPU index).
pip install -q torch==2.13.0
pip install -q -e ".[${VATT_TEST_EXTRAS:-dev}]"
python -m pytest -q "$@"
