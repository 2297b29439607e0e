"""A local search page over an index: type a sentence or upload a sound, click a result to play the moment.

    vatt serve my_index                       # http://127.0.0.1:8000
    vatt serve my_index --port 9000 --open    # another port; open the page in a browser
    vatt serve my_index --host 0.0.0.0        # reachable from other machines (serves the indexed files!)

Needs FastAPI and uvicorn (`pip install -e ".[search]"`). Only the files of the index are served.
"""
from __future__ import annotations

import argparse
import importlib.util
import socket
import threading
import webbrowser

from vatt.index import Index


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = __doc__.split("\n", 1)[1]
    parser.add_argument("index", help="an index folder written by `vatt index`")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    parser.add_argument("--model", help="the model folder, if it is no longer where the index was built from")
    parser.add_argument("--vocab", help="word vocabulary for text queries, if the model folder has no vocab.txt")
    parser.add_argument("--device", default="cpu", help="torch device for the queries (default cpu)")
    parser.add_argument("--open", action="store_true", help="open the page in the default browser")


def check_port(host: str, port: int) -> None:
    """Fail with a clear message when the address cannot be listened on (in use, or not this machine's)."""
    if not 0 < port < 65536:
        raise ValueError(f"--port must be between 1 and 65535, got {port}")
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        try:
            s.bind((host, port))
        except OSError as e:
            raise ValueError(f"cannot listen on {host}:{port} ({e.strerror}); is another server using it? "
                             f"Choose another with --port") from None


def serve(index, host: str, port: int, open_browser: bool = False, log=print) -> None:
    # The search extra (FastAPI, uvicorn) is optional: `run` says what to install when it is missing.
    import uvicorn

    from vatt.index.serve import make_app

    check_port(host, port)
    url = f"http://{host}:{port}/"
    log(f"serving {index.dir} ({len(index)} windows) at {url} - Ctrl-C stops")
    if open_browser:
        threading.Timer(1.0, webbrowser.open, args=(url,)).start()
    uvicorn.run(make_app(index), host=host, port=port, log_level="warning")


def run(args: argparse.Namespace) -> int:
    missing = [m for m in ("fastapi", "uvicorn", "multipart") if importlib.util.find_spec(m) is None]
    if missing:
        raise ImportError(f"vatt serve needs {', '.join(missing)}: pip install 'vatt[search]' "
                          f"(in a checkout: pip install -e \".[search]\")")

    check_port(args.host, args.port)
    index = Index.open(args.index, model_path=args.model, device=args.device, vocab=args.vocab)
    index.model  # load it now: a missing or different model is an error before the server starts
    serve(index, args.host, args.port, args.open)
    return 0
