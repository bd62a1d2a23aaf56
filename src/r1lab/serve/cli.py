"""`r1lab serve CKPT`: the OpenAI-compatible API and the chat page, served by uvicorn.

    r1lab serve runs/speedrun/final --port 8000 --api-key secret
    curl http://127.0.0.1:8000/v1/chat/completions -H 'Authorization: Bearer secret' \\
         -d '{"messages": [{"role": "user", "content": "What is 12 + 34?"}], "stream": true}'
"""
from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
import threading
import time
from pathlib import Path

from ..engine.precision import add_dtype_argument
from ..engine.speculative import add_speculative_arguments, drafter_from_args
from ..model.checkpoint import CheckpointError


def add_serve_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="checkpoint folder (ours, or a Hugging Face DeepseekV3 folder)")
    p.add_argument("--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-key", default=os.environ.get("R1LAB_API_KEY"),
                   help="require 'Authorization: Bearer KEY' on /v1/* (default: $R1LAB_API_KEY, else no key)")
    p.add_argument("--max-request-bytes", type=int, default=2 * 2**20,
                   help="largest request body accepted (default 2 MiB); larger ones get 413 before being read")
    p.add_argument("--max-running", type=int, default=64, help="sequences decoded together in one batch")
    p.add_argument("--max-waiting", type=int, default=128, help="sequences queued beyond the batch before 429")
    p.add_argument("--max-model-len", type=int, default=None, help="context length (default: the model's)")
    p.add_argument("--model-name", default=None, help="model id in the API (default: the checkpoint folder's name)")
    p.add_argument("--chat-template", default=None, metavar="FILE.jinja",
                   help="use this Jinja chat template instead of the checkpoint's (e.g. one that renders tools)")
    p.add_argument("--thinking-budget", type=int, default=None,
                   help="close every answer's thinking after this many tokens (a request's thinking_budget overrides it)")
    add_dtype_argument(p)
    add_speculative_arguments(p)
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads for the model on CPU (default: torch's count less one, left to the HTTP side: "
                        "with every core in the model's matmuls, 32 streaming clients got 1.0-1.35k tok/s on 2 cores "
                        "against 1.7-2.1k with one core left free, bench/serve.py's load)")


def run_serve(args) -> int:
    import torch
    import uvicorn

    from ..engine import Engine
    from ..engine.precision import load_for_serving
    from .app import create_app

    _log_to_stderr()
    if not (Path(args.checkpoint) / "tokenizer.json").is_file():
        raise CheckpointError(f"{args.checkpoint} has no tokenizer.json; the server needs the tokenizer next to the "
                              "weights (copy it in, e.g. from the run's tokenizer folder)")
    model, tokenizer = load_for_serving(args.checkpoint, args.dtype)
    if args.chat_template:
        if not hasattr(tokenizer, "with_template"):
            raise CheckpointError("--chat-template needs a checkpoint with a Hugging Face tokenizer; r1lab's own "
                                  "tokenizer has its template (with tools) built in")
        tokenizer = tokenizer.with_template(Path(args.chat_template).read_text())
    if next(model.parameters()).device.type == "cpu":
        torch.set_num_threads(args.threads or max(1, torch.get_num_threads() - 1))
    name = args.model_name or Path(args.checkpoint).resolve().name
    engine = Engine(model, tokenizer, max_running=args.max_running, max_model_len=args.max_model_len,
                    drafter=drafter_from_args(args, next(model.parameters()).device))
    app = create_app(engine, tokenizer, name, api_key=args.api_key, max_waiting=args.max_waiting,
                     max_body_bytes=args.max_request_bytes, thinking_budget=args.thinking_budget)
    engine.start()
    logging.getLogger("r1lab.serve").info("serving %s as '%s' at http://%s:%d%s", args.checkpoint, name, args.host,
                                          args.port, " (API key required)" if args.api_key else "")
    try:
        uvicorn.run(app, host=args.host, port=args.port, access_log=False, log_level="info",
                    timeout_graceful_shutdown=2)
    finally:
        engine.stop()
    return 0


def _log_to_stderr() -> None:
    logger = logging.getLogger("r1lab.serve")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)


class ServerThread:
    """uvicorn serving `app` from a background thread on a free loopback port (tests, benchmarks).

        with ServerThread(app) as server:
            httpx.get(server.url + "/health")
    """

    def __init__(self, app, host: str = "127.0.0.1"):
        import uvicorn

        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, 0))
        self.url = f"http://{host}:{self.sock.getsockname()[1]}"
        config = uvicorn.Config(app, log_level="warning", access_log=False, timeout_graceful_shutdown=1)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> "ServerThread":
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the server thread did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.sock.close()
