"""`mmadapt serve MODEL [--index RAG_DIR] [--host 127.0.0.1] [--port 8000] [--api-key KEY]`: parse, build the
engine and the app, run uvicorn."""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import sys

from mmadapt.errors import ConfigError

logger = logging.getLogger(__name__)
API_KEY_ENV = "MMADAPT_API_KEY"


def run_cli(args: argparse.Namespace) -> int:
    import uvicorn

    from mmadapt.serve.app import create_app
    from mmadapt.serve.engine import ChatEngine, EngineConfig

    if not 1 <= args.port <= 65535:
        raise ConfigError(f"--port {args.port}: valid ports are 1..65535")
    api_key = args.api_key or os.environ.get(API_KEY_ENV) or None
    config = EngineConfig(max_batch_size=args.max_batch_size, batch_window_ms=args.batch_window_ms,
                          batch_max_wait_ms=args.batch_max_wait_ms,
                          max_queue=args.max_queue, max_tokens_limit=args.max_tokens_limit, k=args.k,
                          retrieval_mode=args.retrieval_mode)
    engine = ChatEngine.from_directory(args.model, index=args.index, config=config, name=args.name,
                                       trust_remote_code=args.trust_remote_code)
    if api_key is None and not _loopback(args.host):
        logger.warning("serving on %s without an API key: anyone who can reach it can use it (set --api-key or %s)",
                       args.host, API_KEY_ENV)
    logger.info("serving %r on http://%s:%d/v1 (context %d tokens, batches up to %d)", engine.name, args.host,
                args.port, engine.context_length, config.max_batch_size)
    # The decoding thread holds the GIL between torch ops; the default 5 ms switch interval would let the
    # event loop (taking requests, sending answers) in only that often, spreading arrivals over several batches.
    sys.setswitchinterval(0.0005)
    try:
        uvicorn.run(create_app(engine, api_key), host=args.host, port=args.port, log_level="warning")
    finally:
        engine.close()
    return 0


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def add_cli(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="serve a model behind the OpenAI Chat Completions API (with RAG citations)")
    p.add_argument("model", help="an mmadapt checkpoint, a Hugging Face VLM or a Hugging Face causal LM directory")
    p.add_argument("--index", help="a RAG index directory: each request retrieves and the answer cites its passages")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-key", help=f"require `Authorization: Bearer KEY` on every route (or set {API_KEY_ENV})")
    p.add_argument("--name", help="the model id clients send (default: the model directory's name)")
    p.add_argument("--max-batch-size", type=int, default=16, help="requests decoded together at most")
    p.add_argument("--batch-window-ms", type=float, default=5.0,
                   help="a batch waits this long after each arrival for another request")
    p.add_argument("--batch-max-wait-ms", type=float, default=50.0, help="and this long at most in all")
    p.add_argument("--max-queue", type=int, default=64, help="waiting requests beyond this get 503")
    p.add_argument("--max-tokens-limit", type=int, default=1024, help="the largest max_tokens a request may ask")
    p.add_argument("--k", type=int, default=3, help="passages retrieved per request (with --index)")
    p.add_argument("--retrieval-mode", default="dense", choices=("dense", "lexical", "hybrid"))
    p.add_argument("--trust-remote-code", action="store_true",
                   help="allow the model's own Python code to run (never enabled by the model directory itself)")
    p.set_defaults(func=run_cli)
