"""Shared pieces of the serve tests: a small serving config, a tiny cross-encoder, uvicorn on a
loopback port in a thread, and the bad-request table (input, path, body, status, field, and words
the error line must hold)."""

from __future__ import annotations

import json
import socket
import threading
import time

import torch
import transformers
import uvicorn
from tiny_data import copy_minilm_tokenizer

from dualenc.serve import ServeConfig

CONFIG = ServeConfig(
    max_k=20,
    max_batch=8,
    batch_buckets=(1, 2, 4, 8),
    length_buckets=(16, 32),
    rerank_top=8,
    rerank_batch=16,
    max_query_chars=500,
    max_body_bytes=16 * 1024,
    max_batch_queries=16,
)


def save_tiny_ce(path, minilm_path, seed: int = 3):
    """A random 1-layer BertForSequenceClassification (1 label) with the MiniLM tokenizer."""
    torch.manual_seed(seed)
    cfg = transformers.BertConfig(
        vocab_size=30522,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        num_labels=1,
        max_position_embeddings=64,
        initializer_range=0.5,  # distinct logits per pair
    )
    transformers.BertForSequenceClassification(cfg).eval().save_pretrained(path)
    return copy_minilm_tokenizer(minilm_path, path)


class LiveServer:
    """uvicorn serving `app` on a free loopback port, in a thread of this process."""

    def __init__(self, app):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        cfg = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="error")
        self.server = uvicorn.Server(cfg)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        for _ in range(200):
            if self.server.started:
                return self
            time.sleep(0.05)
        raise RuntimeError("server did not start")

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(10)


BIG = 1 << 20
BAD_REQUESTS = [  # (what, path, body bytes, status, field, words in the error)
    ("malformed JSON", "/search", b'{"query": "apple", ', 400, None, "malformed JSON at line 1"),
    ("not an object", "/search", b'["apple"]', 400, None, "JSON object"),
    ("no query", "/search", b"{}", 422, "query", "required"),
    ("empty query", "/search", b'{"query": ""}', 422, "query", "at least 1 character"),
    ("blank query", "/search", b'{"query": "  \\t"}', 422, "query", "empty or blank"),
    ("query not a string", "/search", b'{"query": 5}', 422, "query", "valid string"),
    ("k = 0", "/search", b'{"query": "a", "k": 0}', 422, "k", "greater than or equal to 1"),
    ("k = 1000", "/search", b'{"query": "a", "k": 1000}', 422, "k", "less than or equal to 20"),
    ("k a string", "/search", b'{"query": "a", "k": "10"}', 422, "k", "valid integer"),
    ("rerank not a bool", "/search", b'{"query": "a", "rerank": "yes"}', 422, "rerank", "boolean"),
    ("unknown field", "/search", b'{"query": "a", "model": "/etc"}', 422, "model", "unknown"),
    ("query too long", "/search", json.dumps({"query": "a" * 501}).encode(), 422, "query", "501"),
    ("1 MB query", "/search", json.dumps({"query": "a" * BIG}).encode(), 413, None, "exceeds"),
    ("non-UTF-8 bytes", "/search", b'{"query": "\xff\xfe"}', 400, None, "not UTF-8 (byte 11"),
    ("empty body", "/search", b"", 400, None, "malformed JSON"),
    ("no queries", "/search/batch", b'{"queries": []}', 422, "queries", "at least 1 item"),
    ("a blank query", "/search/batch", b'{"queries": ["a", ""]}', 422, "queries.1", "at least"),
    (
        "17 queries",
        "/search/batch",
        json.dumps({"queries": ["a"] * 17}).encode(),
        422,
        "queries",
        "17 items",
    ),
]
