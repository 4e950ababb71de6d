"""dualenc.serve: the API through HTTP against the real app on loopback (parity with
`dualenc.search` and with `rerank_run`), bad requests as 4xx JSON lines, dynamic batching that
never compiles after warm-up under concurrent load, a client that disconnects mid-request, and the
page in headless Chromium (tests/serve_browser_test.py)."""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import json
import socket
import threading
import time

import httpx
import numpy as np
import pytest
from serve_fixtures import BAD_REQUESTS, CONFIG, LiveServer, save_tiny_ce
from tiny_data import save_tiny_bert, write_beir

from dualenc.data.beir import load_corpus
from dualenc.inference import rerank
from dualenc.inference.encode import beir_doc_text
from dualenc.retrieval.search import Searcher, build_index
from dualenc.serve import SearchEngine, create_app
from dualenc.serve.batcher import DynamicBatcher, QueueFull
from dualenc.serve.engine import Query
from dualenc.serve.snippets import matcher, query_terms, snippet
from dualenc.tokenization import tokenize


@pytest.fixture(scope="module")
def built(tmp_path_factory, minilm_path):
    root = tmp_path_factory.mktemp("serve")
    (root / "beir").mkdir()
    beir = write_beir(root / "beir")
    model = save_tiny_bert(root / "model", minilm_path, seed=5)
    ce = save_tiny_ce(root / "ce", minilm_path)
    build_index("exact", str(beir / "corpus.jsonl"), str(root / "ix"), model=str(model))
    build_index("bm25", str(beir / "corpus.jsonl"), str(root / "bm25"))
    return {"beir": beir, "ix": root / "ix", "bm25": root / "bm25", "ce": ce}


@pytest.fixture(scope="module")
def engine(built):
    e = SearchEngine(str(built["ix"]), rerank_model=str(built["ce"]), config=CONFIG)
    e.warm_up()
    return e


@pytest.fixture(scope="module")
def server(engine):
    with LiveServer(create_app(engine)) as s:
        yield s


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server.url, timeout=30) as c:
        yield c


def _search(client, **body):
    r = client.post("/search", json=body)
    assert r.status_code == 200, r.text
    return r.json()


def test_search_matches_dualenc_search(client, built):
    """The API's hits are `dualenc.search`'s (same ids, scores), with title, snippet and marks."""
    ref = Searcher(str(built["ix"]))
    corpus = load_corpus(built["beir"] / "corpus.jsonl", allow_empty=True)
    for q in ("apple river", "tiger piano 12", "silver"):
        want = ref.search(q, 7)
        got = _search(client, query=q, k=7, rerank=False)
        assert [h["doc_id"] for h in got["hits"]] == [d for d, _ in want]
        np.testing.assert_allclose(
            [h["score"] for h in got["hits"]], [s for _, s in want], atol=1e-5
        )
        for rank, h in enumerate(got["hits"], 1):
            doc = corpus[h["doc_id"]]
            assert (h["rank"], h["first_stage_rank"], h["rerank_score"]) == (rank, rank, None)
            assert h["title"] == (doc.title or "") and h["snippet"] == " ".join(doc.text.split())
            terms = query_terms(q)
            for a, b in h["marks"]:
                assert h["snippet"][a:b].lower() in terms
        assert set(got["timing"]) == {"queue_ms", "encode_ms", "search_ms", "rerank_ms", "total_ms"}
        assert got["timing"]["rerank_ms"] == 0 and not got["reranked"]


def test_rerank_matches_rerank_run(client, engine, built):
    """Reranked hits: the cross-encoder's order and scores over the first stage's top 8, as
    `rerank.rerank_run` computes them; each hit keeps its first-stage rank and score."""
    ref = Searcher(str(built["ix"]))
    corpus = load_corpus(built["beir"] / "corpus.jsonl", allow_empty=True)
    docs = {d: beir_doc_text(x) for d, x in corpus.items()}
    q = "garden rocket"
    first = dict(ref.search(q, CONFIG.depth(True)))
    want = rerank.rerank_run(engine.reranker, {"q": first}, {"q": q}, docs, top_k=8, progress=False)
    want = sorted(want["q"].items(), key=lambda x: -x[1])[:10]
    got = _search(client, query=q, k=10)  # rerank defaults to on when a CE is loaded
    assert got["reranked"] and got["timing"]["rerank_ms"] > 0
    assert [h["doc_id"] for h in got["hits"]] == [d for d, _ in want]
    np.testing.assert_allclose(
        [h["rerank_score"] for h in got["hits"][:8]], [s for _, s in want[:8]], atol=1e-4
    )
    ranks = {d: r for r, d in enumerate(first, 1)}
    assert [h["first_stage_rank"] for h in got["hits"]] == [ranks[h["doc_id"]] for h in got["hits"]]
    assert sorted(h["first_stage_rank"] for h in got["hits"][:8]) == list(range(1, 9))
    assert [h["first_stage_rank"] for h in got["hits"][8:]] == [9, 10]  # the tail keeps its order


def test_packed_query_encoding_equals_padded(built):
    """Packed query rows (short queries sharing rows of the cheapest length, long ones sharing
    rows of their bucket, more rows than one call takes) embed every query as the padded path
    does, in input order, with no compile after warm-up."""
    cfg = dataclasses.replace(
        CONFIG, length_buckets=(8, 16, 32), pack_row_length=16, pack_segments=3
    )
    packed = SearchEngine(str(built["ix"]), config=cfg)
    padded = SearchEngine(str(built["ix"]), config=dataclasses.replace(cfg, pack_row_length=0))
    assert packed.queries.packed and not padded.queries.packed
    words = "fever cough children vitamin bone density trial outcome risk".split()
    texts = [" ".join(words[: 1 + (i * 7) % 30 % len(words)] * (1 + i % 4)) for i in range(30)]
    lengths = {len(s) for s in tokenize(packed.searcher.encoder.tokenizer, texts, 32)}
    assert min(lengths) <= 8 and max(lengths) > 16  # both groups, several row lengths
    want = padded.queries.encode(texts)
    packed.warm_up()  # compiles are counted process-wide: after the padded engine's
    got = packed.queries.encode(texts)
    np.testing.assert_allclose(got, want, atol=2e-6)
    assert len({tuple(r) for r in got.round(5).tolist()}) > 10  # distinct rows, not one repeated
    assert packed.compiles_since_ready() == 0


def test_batch_endpoint_equals_single_queries(client):
    qs = ["apple", "ocean violin desert", "meadow 30"]
    r = client.post("/search/batch", json={"queries": qs, "k": 5, "rerank": True})
    assert r.status_code == 200, r.text
    for q, res in zip(qs, r.json()["results"], strict=True):
        solo = _search(client, query=q, k=5, rerank=True)
        assert res["query"] == q
        assert [h["doc_id"] for h in res["hits"]] == [h["doc_id"] for h in solo["hits"]]
        np.testing.assert_allclose(
            [h["score"] for h in res["hits"]], [h["score"] for h in solo["hits"]], atol=1e-4
        )


def test_info_and_healthz(client, built):
    info = client.get("/info").json()
    assert info["index_kind"] == "exact" and info["corpus_size"] == 61 and info["dim"] == 32
    assert info["model"] and info["rerank_model"] == str(built["ce"]) and info["rerank_top"] == 8
    assert info["limits"]["max_k"] == 20 and info["batching"]["batch_buckets"] == [1, 2, 4, 8]
    assert info["compiles"]["warm_up"] > 0 and info["batching"]["packed"]
    assert sum(info["served"]["batch_sizes"].values()) == info["served"]["batches"]
    assert gc.get_freeze_count() > 0  # the app froze what was loaded: no 270 ms full GCs
    assert client.get("/healthz").json()["status"] == "ok"
    assert client.get("/openapi.json").json()["paths"]["/search"]["post"]["requestBody"]
    page = client.get("/")
    assert page.status_code == 200 and "/static/app.js" in page.text
    assert client.get("/static/app.js").status_code == 200


@pytest.mark.parametrize(
    "what,path,body,status,field,words", BAD_REQUESTS, ids=[b[0] for b in BAD_REQUESTS]
)
def test_bad_requests_are_4xx_json_naming_the_field(client, what, path, body, status, field, words):
    r = client.post(path, content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == status, r.text
    err = r.json()
    assert set(err) == {"error", "field"} and err["field"] == field
    assert words in err["error"] and "Traceback" not in r.text and "\n" not in err["error"]
    if field:
        assert err["error"].startswith(f"field '{field}': ")
    assert client.get("/healthz").status_code == 200  # still serving


def test_wrong_method_and_path_are_json(client):
    r = client.get("/search")
    assert r.status_code == 405 and r.json()["error"] == "Method Not Allowed"
    r = client.get("/nope")
    assert r.status_code == 404 and r.json()["error"] == "Not Found"


def test_concurrent_load_batches_without_compiling(server, client):
    """64 concurrent requests (mixed lengths, k, rerank, batch requests) are all answered, as
    each is answered alone, in shared batches, and not one XLA compile happens after warm-up."""
    words = "apple river stone cloud tiger piano garden rocket silver forest castle ocean".split()
    rng = np.random.default_rng(0)
    bodies = []
    for i in range(64):
        n = int(rng.integers(1, 25))  # 1..24 words: both length buckets
        q = " ".join(rng.choice(words, n))
        bodies.append({"query": q, "k": int(rng.integers(1, 21)), "rerank": bool(i % 2)})
    solo = [_search(client, **b) for b in bodies[:8]]
    before = client.get("/info").json()

    async def fire():
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as c:
            reqs = [c.post("/search", json=b) for b in bodies]
            reqs.append(c.post("/search/batch", json={"queries": [b["query"] for b in bodies[:9]]}))
            return await asyncio.gather(*reqs)

    out = asyncio.run(fire())
    assert [r.status_code for r in out] == [200] * len(out)
    for want, got in zip(solo, out, strict=False):
        got = got.json()
        assert [h["doc_id"] for h in got["hits"]] == [h["doc_id"] for h in want["hits"]]
        np.testing.assert_allclose(
            [h["score"] for h in got["hits"]], [h["score"] for h in want["hits"]], atol=1e-4
        )
    after = client.get("/info").json()
    # process-wide count: the references other tests computed here compiled before `before`
    assert after["compiles"]["since_ready"] == before["compiles"]["since_ready"]
    served = after["served"]["queries"] - before["served"]["queries"]
    batches = after["served"]["batches"] - before["served"]["batches"]
    assert served == 64 + 9 and batches < served  # requests shared batches
    assert max(r.json().get("batch_size", 0) for r in out[:64]) > 1


def test_client_disconnecting_mid_request(server, client):
    """A client that sends half a body, or a whole one and leaves before the answer, costs the
    server nothing: it keeps answering."""
    host, port = "127.0.0.1", server.port
    with socket.create_connection((host, port)) as s:  # half a body, then gone
        s.sendall(
            b"POST /search HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b'Content-Length: 400\r\n\r\n{"query": "app'
        )
    for _ in range(5):  # whole requests, closed before the response
        with socket.create_connection((host, port)) as s:
            body = json.dumps({"query": "tiger " * 20, "k": 20, "rerank": True}).encode()
            s.sendall(
                b"POST /search HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
            )
    time.sleep(0.5)
    assert client.get("/healthz").json()["status"] == "ok"
    assert _search(client, query="apple", k=3)["hits"]


def test_batcher_survives_failures_and_drops_cancelled_requests():
    seen = []

    def process(items):
        seen.append([x for x, _ in items])
        if any(x == "boom" for x, _ in items):
            raise RuntimeError("boom")
        return [x.upper() for x, _ in items]

    b = DynamicBatcher(process, max_batch=4, max_wait_s=0.05)
    futs = [b.submit(x) for x in ("a", "b", "c")]
    futs[1].cancel()  # its client went away before the batch ran
    b.start()
    assert futs[0].result(5) == "A" and futs[2].result(5) == "C"
    assert seen == [["a", "c"]]
    with pytest.raises(RuntimeError):
        b.submit("boom").result(5)
    assert b.submit("d").result(5) == "D" and b.alive()
    b.close()
    assert not b.alive()
    full = DynamicBatcher(process, max_batch=4, max_wait_s=0.0, max_queue=2)  # not started
    full.submit("x"), full.submit("y")
    with pytest.raises(QueueFull):  # the app answers 503 "server busy"
        full.submit("z")


def test_batcher_respond_stage_overlaps_the_next_batch():
    """With a respond stage, batch 2 is processed while batch 1 is still being responded to
    (the device work of one batch overlaps the Python of the previous one); a failing respond
    fails its batch only."""
    events, release = [], threading.Event()

    def process(items):
        events.append(("process", [x for x, _ in items]))
        return [x for x, _ in items]

    def respond(xs):
        if xs == ["slow"]:
            release.wait(5)  # held until batch 2 has been processed
        if xs == ["bad"]:
            raise ValueError("respond failed")
        events.append(("respond", xs))
        return [x.upper() for x in xs]

    b = DynamicBatcher(process, respond=respond, max_batch=4, max_wait_s=0.0)
    b.start()
    first = b.submit("slow")
    time.sleep(0.2)  # batch 1 processed, its respond waiting
    second = b.submit("next")
    for _ in range(100):
        if ("process", ["next"]) in events:
            break
        time.sleep(0.02)
    assert ("process", ["next"]) in events and not first.done()  # overlapped
    release.set()
    assert first.result(5) == "SLOW" and second.result(5) == "NEXT"
    with pytest.raises(ValueError):
        b.submit("bad").result(5)
    assert b.submit("ok").result(5) == "OK" and b.alive()
    b.close()
    assert not b.alive()


def test_hybrid_ranks_each_stage(built):
    """With a BM25 index beside the dense one, hits are fused as `fuse` ranks them and carry
    their rank in each stage."""
    from dualenc.index.fusion import fuse

    e = SearchEngine(str(built["ix"]), bm25_index=str(built["bm25"]), config=CONFIG)
    q = "apple river"
    (res,) = e.process([(Query(q, 10, False), 0.0)])
    dense = dict(Searcher(str(built["ix"])).search(q, CONFIG.max_k))
    lex = dict(Searcher(str(built["bm25"])).search(q, CONFIG.max_k))
    want = list(fuse({"q": lex}, {"q": dense}, "minmax", 1.0)["q"])[:10]
    assert [h["doc_id"] for h in res["hits"]] == want
    for h in res["hits"]:
        d = h["doc_id"]
        assert h["stage_ranks"]["dense"] == (list(dense).index(d) + 1 if d in dense else None)
        assert h["stage_ranks"]["bm25"] == (list(lex).index(d) + 1 if d in lex else None)
    assert e.info()["index_kind"] == "hybrid"
    lexical = SearchEngine(str(built["bm25"]), config=CONFIG)  # a BM25 index alone
    lexical.warm_up()
    (res,) = lexical.process([(Query(q, 10, False), 0.0)])
    assert [(h["doc_id"], h["score"]) for h in res["hits"]] == list(lex.items())[:10]


def test_snippet_window_and_marks():
    text = "Filler words here. " * 30 + "Fever and fevers in children with fever. " + "More. " * 40
    terms = query_terms("what causes fever in children?")
    assert terms == {"causes", "fever", "children"}
    snip, marks = snippet(text, matcher(terms), width=120)
    assert snip.startswith("… ") and snip.endswith(" …") and len(snip) <= 150
    assert [snip[a:b] for a, b in marks] == ["Fever", "fevers", "children", "fever"]
    # short terms match whole words only; long ones also start words; no terms: no marks
    assert snippet("dna dnase DNA fevered", matcher(frozenset({"dna", "fever"}))) == (
        "dna dnase DNA fevered",
        [[0, 3], [10, 13], [14, 21]],
    )
    assert snippet("a b c", matcher(query_terms("the of"))) == ("a b c", [])


@pytest.mark.parametrize(
    "text",
    [
        "xfever fever Fever FEVERS _fever fever_x 2fever fever2 dnadna dna-dna DNA. déjà-fever",
        "İstanbul fever and dna: a lower case longer than its upper case (İ -> i̇)",
        "Ωmega fever ωmega ΣΊΣΥΦΟΣ dna2 (dna) [fever] fever-fever — fevered.",
    ],
)
def test_snippet_matcher_equals_the_word_boundary_regex(text):
    """The fast matcher (lower-cased text, no leading assertion, in-word starts dropped) finds
    exactly what the plain IGNORECASE regex anchored at word starts finds."""
    m = matcher(frozenset({"fever", "dna", "ωmega", "σίσυφος"}))
    want = [x.span() for x in m.ignorecase.finditer(text)]
    assert m.spans(text) == want and want


BROWSER_HINT = (
    "headless Chromium and its WebDriver are needed: apt-get install chromium chromium-driver "
    "(Debian/Ubuntu); selenium comes with `make setup`"
)


def _chrome():
    """A headless Chromium driven by selenium, or a skip (a failure under CI=true) saying what
    to install."""
    import shutil

    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not browser or not driver:
        pytest.skip(BROWSER_HINT)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = browser
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1000,900"):
        opts.add_argument(arg)
    opts.add_argument("--disable-dev-shm-usage")
    return webdriver.Chrome(service=Service(driver), options=opts)


def test_page_in_headless_chromium(server, built, tmp_path):
    """The browser types a query; the result list shows the top hit `dualenc.search` finds
    (reranked: the cross-encoder's first), query terms marked, latency shown; a screenshot is
    saved (also to $DUALENC_SCREENSHOT_DIR when set)."""
    import os
    import shutil

    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    q = "apple river"
    want = _search(httpx.Client(base_url=server.url), query=q, k=10)["hits"]
    first = Searcher(str(built["ix"])).search(q, 1)[0][0]
    assert {h["first_stage_rank"] for h in want if h["doc_id"] == first} == {1}
    drv = _chrome()
    try:
        drv.get(server.url + "/")
        WebDriverWait(drv, 20).until(lambda d: "documents" in d.find_element(By.ID, "info").text)
        box = drv.find_element(By.ID, "query")
        box.send_keys(q, Keys.ENTER)
        WebDriverWait(drv, 20).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#results li"))
        items = drv.find_elements(By.CSS_SELECTOR, "#results li")
        assert [li.get_attribute("data-doc-id") for li in items] == [h["doc_id"] for h in want]
        assert "first stage #" in items[0].text and "cross-encoder #1" in items[0].text
        marks = {m.text.lower() for m in drv.find_elements(By.CSS_SELECTOR, "#results mark")}
        assert marks and marks <= {"apple", "river"}
        assert " ms " in drv.find_element(By.ID, "status").text
        shot = tmp_path / "serve_page.png"
        assert drv.save_screenshot(str(shot)) and shot.stat().st_size > 1000
        if os.environ.get("DUALENC_SCREENSHOT_DIR"):
            shutil.copy(shot, os.path.join(os.environ["DUALENC_SCREENSHOT_DIR"], shot.name))
    finally:
        drv.quit()


def test_cli_bad_input_is_one_line_exit_2(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "XLA_FLAGS": "", "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(repo)}
    for args, words in (
        ([], "field 'index': --index DIR is required"),
        (["--index", str(tmp_path)], "not an index directory (manifest.json missing)"),
        (["--index", str(tmp_path), "--port", "0"], "field 'port': must be in 1..65535"),
        (["--index", str(tmp_path), "--max_k", "x"], "--max_k"),
    ):
        r = subprocess.run(
            [sys.executable, "-m", "dualenc.serve", *args],
            cwd=repo,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert r.returncode == 2, r.stderr
        assert words in r.stderr and "Traceback" not in r.stderr
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr
