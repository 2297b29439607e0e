#!/usr/bin/env bash
# The README's test command: make a virtualenv, install vatt with its test and TensorFlow extras, run the suite.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
. .venv/bin/activate
pip install -q --upgrade pip
# torch first, pinned: the CI machines' pip finds a local CPU wheel of this version. From PyPI alone a bare
# `torch` requirement would pull the multi-GB CUDA build (see the README's Quickstart for the CPU index).
pip install -q torch==2.13.0
pip install -q -e ".[tf,dev]"
python -m pytest -q "$@"
