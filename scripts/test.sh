#!/usr/bin/env bash
# The README's test command: make a virtualenv, install vatt with its test and TensorFlow extras, run the suite.
set -euo pipefail
cd "$(dirname "$0")/.."
# The search page is tested in a real headless browser: Debian's chromium and its WebDriver.
if ! command -v chromedriver >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
fi
python3 -m venv .venv
. .venv/bin/activate
pip install -q --upgrade pip
# The CPU build of torch first: a bare `torch` requirement would pull a multi-GB CUDA build.
pip install -q torch==2.13.0
pip install -q -e ".[tf,dev]"
python -m pytest -q "$@"
