"""Serving throughput: aggregate generated tokens/s through the HTTP API at 1, 8 and 32 concurrent
streaming clients, on one in-process server (uvicorn in a thread) over a random cpu-tiny model.

Every request is a streaming /v1/completions call that generates exactly --max-tokens tokens (ignore_eos),
greedy; each client sends --rounds requests one after another. tok/s = all completion tokens (from the
usage chunk) / wall time from the first request to the last [DONE]; the levels alternate --repeats times
and each keeps its best run, which damps other programs' load on a shared machine. The figure that
matters is the ratio 32 clients : 1 client, which continuous batching should make large (target >= 6x
on cpu-tiny).

    python bench/serve.py                    # about 1-2 minutes on 2 cores
    python bench/serve.py --clients 1 4 16 --max-tokens 32
    python bench/serve.py --vllm .venv-interop/bin/python   # + vLLM's server as the peer (several minutes)
    python bench/serve.py --structured       # the cost of constrained decoding (needs llguidance)

With --structured, every level runs twice on the same server, alternating: streaming /v1/chat/completions
calls with the thinking closed at once (thinking_budget 0), plain and with a json_schema response_format
(constrained decoding: a grammar mask per stream per step); `structured_ratio_C` in the JSON is the
constrained tok/s over the plain one at C clients. Through HTTP the ratio also weighs the answers' text: a
random model's free text is full of bytes that complete no character, so it streams fewer chunks than its
constrained (valid UTF-8) JSON, and on a small CPU model the server is bound by its HTTP side. So the decode
cost alone is measured too, on the engine without HTTP (`structured_engine_ratio_C`: the same requests,
--max-clients streams at once, constrained against plain, alternating, best of --repeats + 1).

With --vllm PYTHON (an interpreter whose environment has vLLM, e.g. the .venv-interop that
scripts/interop.sh makes), the model is the cpu-vllm preset instead (MLA widths vLLM's kernels take), saved
as a checkpoint; vLLM's OpenAI server is started on it as a subprocess in bf16 (its CPU MoE kernels take
no fp32), and `r1lab serve` in fp32 and in bf16, each in its own process (the load generator stays in
this one), one after another: each side at its best precision on this CPU, r1lab's best against vLLM's
at every client level (`vs_vllm_C` in the JSON).

Prints a table, then as the last line one JSON object.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time

import httpx
import torch

CORPUS = ["What is 4821 + 1379? <think>\n1+9=10, write 0 carry 1\n</think>\nThe answer is \\boxed{6200}.",
          "Solve for x: 3x + 7 = 22. Subtract 7, divide by 3, so x = 5.",
          "The quick brown fox jumps over the lazy dog."] * 50


# an object whose string never has to end: the grammar stays engaged for every one of --max-tokens tokens
SCHEMA = {"type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"]}


async def one_request(http: httpx.AsyncClient, url: str, prompt: str, max_tokens: int,
                      mode: str = "text") -> tuple[int, float]:
    """(completion tokens, time to first token) of one streaming request. mode: text (/v1/completions), chat or
    json (/v1/chat/completions, the thinking closed at once; json: constrained to SCHEMA)."""
    body = {"max_tokens": max_tokens, "temperature": 0, "ignore_eos": True, "stream": True,
            "stream_options": {"include_usage": True}}
    if mode == "text":
        body["prompt"] = prompt
    else:
        body.update(messages=[{"role": "user", "content": prompt}], thinking_budget=0)
        if mode == "json":
            body["response_format"] = {"type": "json_schema", "json_schema": {"name": "a", "schema": SCHEMA}}
    started, ttft, tokens = time.perf_counter(), None, 0
    path = "/v1/completions" if mode == "text" else "/v1/chat/completions"
    async with http.stream("POST", url + path, json=body) as r:
        r.raise_for_status()
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk["choices"] and ttft is None:
                ttft = time.perf_counter() - started
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
    return tokens, ttft or 0.0


async def load(url: str, clients: int, rounds: int, max_tokens: int, mode: str = "text") -> dict:
    async def client(i: int) -> list[tuple[int, float]]:
        return [await one_request(http, url, f"Question {i}.{k}: what is {i} + {k}?", max_tokens, mode)
                for k in range(rounds)]

    limits = httpx.Limits(max_connections=clients + 4, max_keepalive_connections=clients + 4)
    async with httpx.AsyncClient(timeout=300, limits=limits) as http:
        started = time.perf_counter()
        results = await asyncio.gather(*(client(i) for i in range(clients)))
        seconds = time.perf_counter() - started
    done = [r for per_client in results for r in per_client]
    tokens = sum(t for t, _ in done)
    assert tokens == clients * rounds * max_tokens, f"expected {clients * rounds * max_tokens} tokens, got {tokens}"
    return {"clients": clients, "requests": len(done), "tokens": tokens, "seconds": seconds, "tok_s": tokens / seconds,
            "ttft_ms": 1000 * statistics.median(t for _, t in done)}


def best_of(url: str, args, best: dict[int, dict], structured: dict[int, dict] | None = None) -> None:
    """Run every client level --repeats times against the server at `url`, keeping each level's best run;
    with `structured`, the level runs as plain chat (into `best`) and constrained (into `structured`)."""
    modes = [("chat", best), ("json", structured)] if structured is not None else [("text", best)]
    for mode, _ in modes:
        asyncio.run(load(url, 2, 1, 8, mode))  # warm-up: first forward passes, connections, the grammar tokenizer
    for _ in range(args.repeats):
        for clients in args.clients:
            for mode, into in modes:
                row = asyncio.run(load(url, clients, args.rounds, args.max_tokens, mode))
                if clients not in into or row["tok_s"] > into[clients]["tok_s"]:
                    into[clients] = row


def r1lab_server(model, tokenizer, name: str, args, dtype: torch.dtype,
                 structured: dict[int, dict] | None = None) -> dict[int, dict]:
    """Best rows per client level with r1lab's server (in this process) on `model` in `dtype` (and the
    constrained rows into `structured`, when given)."""
    from r1lab.engine import Engine
    from r1lab.serve import create_app
    from r1lab.serve.cli import ServerThread

    engine = Engine(model.to(dtype), tokenizer, max_running=max(args.clients))
    engine.start()
    best: dict[int, dict] = {}
    try:
        with ServerThread(create_app(engine, tokenizer, name)) as server:
            best_of(server.url, args, best, structured)
    finally:
        engine.stop()
    return best


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def subprocess_server(cmd: list[str], port: int, log_path, args, env=None) -> dict[int, dict]:
    """Best rows per client level with a server started by `cmd` (listening on `port`) in its own process."""
    import subprocess

    url = f"http://127.0.0.1:{port}"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            deadline = time.time() + 900
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"{cmd[:3]} exited ({proc.returncode}); its log: {log_path}")
                try:
                    if httpx.get(url + "/health", timeout=2).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.time() > deadline:
                    raise RuntimeError(f"{cmd[:3]} did not come up in 900 s; its log: {log_path}")
                time.sleep(1)
            best: dict[int, dict] = {}
            best_of(url, args, best)
            return best
        finally:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()


def peer_run(python: str, folder, args) -> tuple[dict[int, dict], dict[str, dict[int, dict]]]:
    """vLLM's OpenAI server (run by `python`, bf16) and `r1lab serve` in fp32 and in bf16 on `folder`, each a
    separate process (the load generator in this one), one after another: (vLLM's rows, r1lab's by dtype)."""
    import os
    import sys

    port = free_port()
    env = dict(os.environ, VLLM_CPU_KVCACHE_SPACE=os.environ.get("VLLM_CPU_KVCACHE_SPACE", "2"))
    vllm = subprocess_server([python, "-m", "vllm.entrypoints.openai.api_server", "--model", str(folder),
                              "--served-model-name", "m", "--dtype", "bfloat16", "--host", "127.0.0.1", "--port",
                              str(port), "--max-model-len", "512", "--max-num-seqs", str(max(args.clients)),
                              "--seed", "0"], port, folder / "vllm.log", args, env)
    ours = {}
    for dtype in ("float32", "bfloat16"):
        port = free_port()
        ours[dtype] = subprocess_server([sys.executable, "-m", "r1lab.cli", "serve", str(folder), "--port", str(port),
                                         "--dtype", dtype, "--max-running", str(max(args.clients))],
                                        port, folder / f"r1lab-{dtype}.log", args)
    return vllm, ours


def engine_ratio(model, tokenizer, args, streams: int) -> tuple[float, float]:
    """(plain, constrained) decode tok/s of `streams` sequences on the engine itself: the thinking closed at once
    (a budget of 0), then --max-tokens tokens free or constrained to SCHEMA, greedy, ignoring EOS."""
    from r1lab.engine import Engine, SamplingParams
    from r1lab.engine.constraint import Grammars, ThinkingBudget

    engine = Engine(model, tokenizer, max_running=streams)
    vocab = model.config.vocab_size
    grammars = Grammars(tokenizer, vocab)
    grammar = grammars.compile(f"start: {grammars.json_schema(SCHEMA)}\n")
    prompts = [tokenizer.apply_chat_template([{"role": "user", "content": f"Question {i}: what is {i} + 1?"}],
                                             add_generation_prompt=True) for i in range(streams)]
    end = tokenizer.end_think_token_id
    best = {False: 0.0, True: 0.0}
    for _ in range(args.repeats + 1):
        for constrained in (False, True):
            params = [SamplingParams(max_tokens=args.max_tokens, temperature=0, ignore_eos=True, constraint=(
                grammars.constraint(grammar, thinking=True, think_id=None, end_think_id=end, budget=0) if constrained
                else ThinkingBudget(vocab, thinking=True, think_id=None, end_think_id=end, budget=0))) for _ in prompts]
            started = time.perf_counter()
            outs = engine.generate(prompts, params)
            tok_s = sum(len(o.token_ids) for o in outs) / (time.perf_counter() - started)
            best[constrained] = max(best[constrained], tok_s)
    return best[False], best[True]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--rounds", type=int, default=3, help="requests per client, one after another")
    ap.add_argument("--repeats", type=int, default=2, help="runs per level (alternating); the best is kept")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--structured", action="store_true",
                    help="chat requests, plain against constrained to a JSON schema (the cost of constrained decoding)")
    ap.add_argument("--vllm", default=None, metavar="PYTHON",
                    help="also serve with vLLM (its OpenAI server, run by this interpreter) as the peer, on cpu-vllm")
    args = ap.parse_args()

    import tempfile
    from pathlib import Path

    from r1lab.model import Transformer, preset, save_checkpoint
    from r1lab.tokenizer import train_tokenizer

    if args.threads:
        torch.set_num_threads(args.threads)
    tokenizer = train_tokenizer(CORPUS, vocab_size=512)
    name = "cpu-vllm" if args.vllm else "cpu-tiny"
    torch.manual_seed(0)
    model = Transformer(preset(name, vocab_size=max(512, tokenizer.vocab_size))).eval()
    peer: dict[int, dict] = {}
    if args.vllm:
        with tempfile.TemporaryDirectory() as tmp:
            peer, by_dtype = peer_run(args.vllm, save_checkpoint(model, tokenizer, Path(tmp) / name), args)
        best = {c: max((rows[c] for rows in by_dtype.values()), key=lambda r: r["tok_s"]) for c in args.clients}
        for c in args.clients:
            best[c]["dtype"] = next(d for d, rows in by_dtype.items() if rows[c] is best[c])
    else:
        structured: dict[int, dict] | None = {} if args.structured else None
        best = r1lab_server(model, tokenizer, name, args, torch.float32, structured)
    rows = [best[c] for c in args.clients]

    base = rows[0]["tok_s"]
    print(f"\nserve throughput, {name} (random), {args.max_tokens} tokens per request, greedy, streaming, "
          f"torch threads {torch.get_num_threads()}, best of {args.repeats}")
    print(f"{'clients':>8} {'requests':>9} {'tokens':>7} {'seconds':>8} {'tok/s':>8} {'x vs 1':>7} {'TTFT ms':>8}"
          + (f" {'r1lab dtype':>12} {'vLLM tok/s':>11} {'vs vLLM':>8}" if peer else ""))
    for r in rows:
        vs = (f" {r['dtype']:>12} {peer[r['clients']]['tok_s']:>11.1f} {r['tok_s'] / peer[r['clients']]['tok_s']:>7.2f}x"
              if peer else "")
        print(f"{r['clients']:>8} {r['requests']:>9} {r['tokens']:>7} {r['seconds']:>8.2f} {r['tok_s']:>8.1f} "
              f"{r['tok_s'] / base:>7.2f} {r['ttft_ms']:>8.0f}{vs}")
    by_clients = {r["clients"]: r["tok_s"] for r in rows}
    summary = {"bench": "serve", "max_tokens": args.max_tokens, "rounds": args.rounds, "repeats": args.repeats}
    for c, tok_s in by_clients.items():
        summary[f"tok_s_{c}"] = round(tok_s, 1)
    for c, row in peer.items():
        summary[f"vllm_tok_s_{c}"] = round(row["tok_s"], 1)
        summary[f"vs_vllm_{c}"] = round(by_clients[c] / row["tok_s"], 2)
        summary[f"r1lab_dtype_{c}"] = best[c]["dtype"]
    if 1 in by_clients and 32 in by_clients:
        summary["scaling_1_to_32"] = round(by_clients[32] / by_clients[1], 2)
    if not args.vllm and structured:
        streams = max(args.clients)
        plain, constrained = engine_ratio(model, tokenizer, args, streams)
        print(f"engine alone, {streams} streams: plain {plain:.1f} tok/s, json {constrained:.1f} tok/s, "
              f"ratio {constrained / plain:.3f}")
        summary[f"engine_plain_tok_s_{streams}"] = round(plain, 1)
        summary[f"engine_json_tok_s_{streams}"] = round(constrained, 1)
        summary[f"structured_engine_ratio_{streams}"] = round(constrained / plain, 3)
        summary["mode"] = "chat"
        print(f"{'clients':>8} {'plain tok/s':>12} {'json tok/s':>11} {'ratio':>6}   (json_schema constrained)")
        for c in args.clients:
            ratio = structured[c]["tok_s"] / by_clients[c]
            print(f"{c:>8} {by_clients[c]:>12.1f} {structured[c]['tok_s']:>11.1f} {ratio:>6.3f}")
            summary[f"json_tok_s_{c}"] = round(structured[c]["tok_s"], 1)
            summary[f"structured_ratio_{c}"] = round(ratio, 3)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
