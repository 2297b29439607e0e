#!/usr/bin/env bash
# The README's test command: make a virtualenv, install vatt with its test extra, run the suite.
# TensorFlow is not needed; the one test that cross-checks our checkpoint reader against TensorFlow's
# runs when it is installed (VATT_TEST_EXTRAS=tf,dev adds it, as .ci/run does) and skips otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
. .venv/bin/activate
pip install -q --upgrade pip
# The CPU build of torch first: a bare `torch` requirement would pull a multi-GB CUDA build.
pip install -q torch==2.13.0
pip install -q -e ".[${VATT_TEST_EXTRAS:-dev}]"
python -m pytest -q "$@"
