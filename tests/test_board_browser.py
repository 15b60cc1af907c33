"""The topic board and the report in a real browser: headless Chromium (Debian package),
driven by Playwright's Python package (no browser download: ``executable_path``).

The board test runs a worker against the conftest broker and redis-server with the hashing
encoder, streams the demo corpus in two halves and checks that the page shows the topics,
updates when the second half (which brings the bird-flu story) arrives, and logs no console
error. Screenshots go to ``$BOARD_SHOTS`` (default /tmp/board-shots) and must not be blank.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from conftest import corpus_rows, create_topic
from stream.services import Service

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
SHOTS = Path(os.environ.get("BOARD_SHOTS", "/tmp/board-shots"))

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not Path(CHROMIUM).exists() and not shutil.which("chromium"),
                       reason=f"no Chromium at {CHROMIUM} (Debian: apt-get install chromium; "
                              "make system-deps)"),
]
sync_api = pytest.importorskip("playwright.sync_api", reason="needs the playwright package "
                               "(pip install playwright; never 'playwright install')")


def not_blank(path: Path) -> float:
    """Pixel standard deviation of a screenshot (a blank page is ~0)."""
    import matplotlib.image

    img = matplotlib.image.imread(str(path))
    return float(np.asarray(img)[..., :3].std())


@pytest.fixture
def browser():  # type: ignore[no-untyped-def]
    with sync_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM if Path(CHROMIUM).exists()
                               else shutil.which("chromium"), headless=True,
                               args=["--no-sandbox", "--disable-gpu"])
        try:
            yield b
        finally:
            b.close()


def produce(kafka: Service, topic: str, rows: list[dict[str, str]]) -> None:
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=kafka.url, linger_ms=10)
    for row in rows:
        producer.send(topic, key=row["id"].encode(),
                      value=json.dumps({"id": row["id"], "text": row["text"]}).encode())
    producer.flush()
    producer.close()


def watch_console(page) -> list[str]:  # type: ignore[no-untyped-def]
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    return errors


def test_board_of_a_running_worker_shows_and_updates_the_topics(
        kafka: Service, redis_server: Service, names: dict[str, str], browser) -> None:  # type: ignore[no-untyped-def]
    from stream.app import build_worker
    from stream.board import TopicBoard
    from stream.config import load_config
    from stream.http import StatusServer

    SHOTS.mkdir(parents=True, exist_ok=True)
    rows = corpus_rows()
    create_topic(kafka, names["input"], 4)
    produce(kafka, names["input"], rows[:200])
    cfg = load_config(env={}, overrides=dict(
        brokers=kafka.url, redis_url=redis_server.url, model=names["model"],
        input_topic=names["input"], assignments_topic=names["assignments"],
        events_topic=names["events"], dlq_topic=names["dlq"], group_id=names["group"],
        encoder="hashing", session_timeout_ms=6000, max_wait_ms=200, batch_size=64,
        max_macro_topics=6))
    built = build_worker(cfg)
    worker = built.worker
    server = StatusServer("127.0.0.1", 0, CollectorRegistry(), alive=lambda: True,
                          ready=lambda: True,
                          board=TopicBoard(worker.store, cfg.topic_params(), cfg.max_macro_topics,
                                           20, model=cfg.model)).start()
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while worker.stats.docs < 200 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert worker.stats.docs == 200
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        errors = watch_console(page)
        page.goto(f"http://127.0.0.1:{server.port}/")
        page.wait_for_selector("article.topic", timeout=15000)
        page.wait_for_function("document.getElementById('status').textContent.includes('200 documents')",
                               timeout=15000)
        first = page.locator("article.topic").all_inner_texts()
        assert len(first) == 20 and page.locator("section.group").count() >= 1
        assert page.locator("svg.spark").count() == 20
        text = " ".join(first).lower()
        assert any(w in text for w in ("wildfire", "strike", "port", "chip", "rover", "cup"))
        assert "flu" not in text  # the bird-flu story only starts after document 300
        page.screenshot(path=str(SHOTS / "board-200.png"), full_page=False)
        # more documents arrive: the page refreshes itself and shows them
        produce(kafka, names["input"], rows[200:])
        deadline = time.monotonic() + 60
        while worker.stats.docs < len(rows) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert worker.stats.docs == len(rows)
        page.wait_for_function(
            f"document.getElementById('status').textContent.includes('{len(rows)} documents')",
            timeout=20000)
        # sort by growth: the page asks the server again and shows the growth order
        page.select_option("#sort", "growth")
        page.uncheck("#group")
        page.wait_for_timeout(1500)
        growth = [float(x.replace("+", "")) for x in
                  page.locator("article.topic .growth b").all_inner_texts()]
        assert growth and growth == sorted(growth, reverse=True)
        assert page.locator("article.topic.is-emerging").count() >= 1
        page.check("#group")
        page.screenshot(path=str(SHOTS / "board-400-growth.png"), full_page=False)
        # the search box filters by keyword, over every topic: the late bird-flu story is there
        page.fill("#q", "flu")
        page.wait_for_function("[...document.querySelectorAll('article.topic')].length > 0 && "
                               "[...document.querySelectorAll('article.topic .kw')].every("
                               "e => e.innerText.toLowerCase().includes('flu'))", timeout=15000)
        page.screenshot(path=str(SHOTS / "board-search-flu.png"), full_page=False)
        assert errors == []
        for shot in ("board-200.png", "board-400-growth.png", "board-search-flu.png"):
            assert not_blank(SHOTS / shot) > 0.05, shot
    finally:
        worker.stop()
        thread.join(30)
        server.close()
        built.close()


def test_report_opens_with_its_figures(tmp_path: Path, browser) -> None:  # type: ignore[no-untyped-def]
    from stream.cli import main

    SHOTS.mkdir(parents=True, exist_ok=True)
    corpus = Path(__file__).resolve().parent.parent / "stream" / "demo_corpus.jsonl"
    out = tmp_path / "report"
    assert main(["cluster", str(corpus), "--encoder", "hashing", "--out",
                 str(tmp_path / "asg.jsonl"), "--report", str(out)]) == 0
    for name in ("report.html", "topic_map.png", "timeline.png", "drift.png"):
        assert (out / name).is_file(), name
    page = browser.new_page(viewport={"width": 1300, "height": 1000})
    errors = watch_console(page)
    page.goto((out / "report.html").as_uri())
    widths = page.eval_on_selector_all("img", "imgs => imgs.map(i => i.naturalWidth)")
    assert len(widths) == 3 and all(w > 300 for w in widths)
    assert page.locator("table tbody tr").count() >= 10
    page.screenshot(path=str(SHOTS / "report.png"), full_page=True)
    assert errors == []
    assert not_blank(SHOTS / "report.png") > 0.05


def test_the_page_stays_responsive_with_5000_clusters(browser) -> None:  # type: ignore[no-untyped-def]
    """A model of 5,000 active clusters: the page renders its topics, the largest number it
    offers (200) and a keyword search each answer within a second, with no console errors."""
    from stream.bench_board import synthetic_model
    from stream.board import TopicBoard
    from stream.http import StatusServer
    from stream.state.memory import MemoryStore
    from stream.topics import TopicParams

    params = TopicParams()
    state, topics = synthetic_model(5000, params=params)
    store = MemoryStore(half_life=params.half_life)
    store.import_state(state, topics, {})
    board = TopicBoard(store, params, default_n=50, model="big")
    server = StatusServer("127.0.0.1", 0, CollectorRegistry(), alive=lambda: True,
                          ready=lambda: True, board=board).start()
    try:
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        errors = watch_console(page)
        page.goto(f"http://127.0.0.1:{server.port}/")
        page.wait_for_selector("article.topic", timeout=15000)  # the first view is built here
        assert "5,000 clusters" in page.inner_text("#status").replace("\u202f", ",")

        def timed(action, ready: str) -> float:  # type: ignore[no-untyped-def]
            start = time.perf_counter()
            action()
            page.wait_for_function(ready, timeout=5000)
            return time.perf_counter() - start

        shown = "document.querySelectorAll('article.topic').length"
        assert timed(lambda: page.select_option("#n", "200"), f"{shown} == 200") < 1.0
        word = page.inner_text("article.topic .kw").split(",")[0].strip()
        every = (f"[...document.querySelectorAll('article.topic .kw')]"
                 f".every((k) => k.textContent.includes({json.dumps(word)}))")
        assert not page.evaluate(every)  # before the search, other topics are shown too
        assert timed(lambda: page.fill("#q", word),
                     f"{shown} > 0 && {every}") < 1.5  # 250 ms of typing pause included
        assert errors == []
    finally:
        server.close()
