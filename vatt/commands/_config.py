"""Shared by `vatt pretrain` and `vatt finetune`: read the YAML config with `--set` overrides, or say why not."""
from __future__ import annotations

import argparse
import sys
from typing import Any, Callable


def load_or_report(command: str, load_config: Callable[..., Any], error_type: type[Exception],
                   args: argparse.Namespace) -> tuple[Any, int | None]:
    """(config, None) to go on, or (None, exit code) when the config is bad or `--print-config` was asked."""
    try:
        config = load_config(args.config, args.overrides)
    except (error_type, FileNotFoundError) as e:
        print(f"vatt {command}: config error: {e}", file=sys.stderr)
        return None, 2
    if args.print_config:
        import yaml
        print(yaml.safe_dump(config.to_dict(), sort_keys=False), end="")
        return None, 0
    return config, None
