#!/usr/bin/env python3
"""Baseline for the search-sink benchmark: what a user would otherwise write.

Consumes Avro single-object encoded `EnrichedChange` events from Kafka
(confluent-kafka), decodes them with fastavro, and bulk-indexes one history
document per event into `<prefix>-changes-YYYY.MM` with opensearch-py's bulk
helpers (`parallel_bulk`, or `streaming_bulk` with --threads 1), op_type
`create`, `_id` = event id (a 409 duplicate counts as success). The document
is the one the Rust sink writes to its history index
(sinks/src/search/documents.rs, `ChangeDoc`); the Rust sink's package-state
and host updates are not done here.

Stops after --count events have been indexed, commits the offsets of what it
consumed, and prints one line of JSON to stdout:
  {"events", "seconds", "events_per_s", "cpu_seconds", "peak_rss_kib", ...}
`seconds` runs from the first message received (after the group join) to
the offset commit; cpu_seconds and peak_rss_kib cover the whole process.
"""

import argparse
import io
import json
import os
import re
import resource
import sys
import time
from datetime import datetime, timedelta, timezone

import fastavro
from confluent_kafka import Consumer, KafkaError, TopicPartition
from opensearchpy import OpenSearch, helpers
from opensearchpy.exceptions import RequestError

HERE = os.path.dirname(os.path.abspath(__file__))
SCHEMA_PATH = os.path.join(HERE, "..", "..", "schemas", "avro", "EnrichedChange", "v1.avsc")

MAGIC = b"\xc3\x01"
HEADER_LEN = 10
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
ONE_US = timedelta(microseconds=1)

TYPE_OF_ACTION = {"install": "installation", "remove": "deletion", "obsolete": "deletion"}
DIGITS = re.compile(r"[0-9]+")


def load_schema(path):
    with open(path) as f:
        parsed = fastavro.parse_schema(json.load(f))
    pcf = fastavro.schema.to_parsing_canonical_form(parsed)
    # fastavro's hex is in single-object header order (little endian), the
    # same as schemas/avro/FINGERPRINTS.
    fp = bytes.fromhex(fastavro.schema.fingerprint(pcf, "CRC-64-AVRO"))
    return parsed, MAGIC + fp


def ts(dt):
    """RFC 3339 with microseconds, like the Rust sink (`...T..:..:...ffffffZ`)."""
    return dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def micros(dt):
    return (dt - EPOCH) // ONE_US


def pad_digits(s):
    return DIGITS.sub(lambda m: m.group().lstrip("0").rjust(10, "0"), s)


def package_doc(p):
    epoch = p["epoch"]
    d = {"name": p["name"]}
    if epoch is not None:
        d["epoch"] = epoch
    d["version"] = p["version"]
    d["release"] = p["release"]
    d["architecture"] = p["arch"]
    e = epoch if epoch is not None else 0
    d["evr"] = f"{e}:{p['version']}-{p['release']}"
    d["evr_sort"] = f"{pad_digits(str(e))}:{pad_digits(p['version'])}-{pad_digits(p['release'])}"
    if p["repo"] is not None:
        d["repo"] = p["repo"]
    if p["vendor"] is not None:
        d["vendor"] = p["vendor"]
    if p["buildtime"] is not None:
        d["buildtime"] = ts(p["buildtime"])
    if p["install_time"] is not None:
        d["installed"] = ts(p["install_time"])
    if p["size"] is not None:
        d["size"] = p["size"]
    if p["digest"] is not None:
        d["checksum"] = p["digest"]
    return d


def change_doc(c, event_id):
    """The history document of one EnrichedChange (decoded by fastavro)."""
    e = c["enrichment"]
    h = c["host"]
    t = c["transaction"]
    action = c["action"].lower()
    doc = {
        "@timestamp": ts(c["event_time"]),
        "event": {
            "id": event_id,
            "action": action,
            "kind": "event",
            "category": ["package"],
            "type": [TYPE_OF_ACTION.get(action, "change")],
            "created": ts(e["routed_at"]),
            "dataset": "pkgstream.changes",
        },
        "host": {
            "id": h["machine_id"],
            "name": h["hostname"],
            "architecture": h["arch"],
            "os": {"platform": h["os_id"], "version": h["os_version"]},
        },
        "package": package_doc(c["package"]),
    }
    if t["login_user"] is not None:
        doc["user"] = {"name": t["login_user"]}
    if t["command_line"] is not None:
        doc["process"] = {"command_line": t["command_line"]}
    if e["tags"]:
        doc["labels"] = e["tags"]
    doc["event_time_us"] = micros(c["event_time"])
    ext = {
        "source": c["source"].lower(),
        "hostgroup": e["hostgroup"],
        "environment": e["environment"],
    }
    if e["owner"] is not None:
        ext["owner"] = e["owner"]
    if e["datacenter"] is not None:
        ext["datacenter"] = e["datacenter"]
    ext["known_host"] = e["known_host"]
    ext["outside_maintenance_window"] = e["outside_maintenance_window"]
    ext["unexplained_rpm"] = e["unexplained_rpm"]
    if c["replaced"] is not None:
        ext["replaced"] = package_doc(c["replaced"])
    tx = {"rpm_tid": t["rpm_tid"]}
    if t["history_id"] is not None:
        tx["history_id"] = t["history_id"]
    if t["start_time"] is not None:
        tx["start"] = ts(t["start_time"])
    ext["transaction"] = tx
    doc["pkgstream"] = ext
    return doc


def changes_template(prefix):
    """The index template the Rust sink installs for `<prefix>-changes-*`
    (sinks/src/search/setup.rs, without the lifecycle policy)."""
    kw = {"type": "keyword"}
    package = {"properties": {
        "name": kw, "epoch": {"type": "integer"}, "version": kw, "release": kw,
        "architecture": kw, "evr": kw, "evr_sort": kw, "repo": kw, "vendor": kw,
        "buildtime": {"type": "date"}, "installed": {"type": "date"},
        "size": {"type": "long"}, "checksum": kw,
    }}
    host = {"properties": {
        "id": kw, "name": kw, "architecture": kw,
        "os": {"properties": {"platform": kw, "version": kw}},
    }}
    enrichment = {"properties": {
        "hostgroup": kw, "environment": kw, "owner": kw, "datacenter": kw,
        "known_host": {"type": "boolean"}, "source": kw, "action": kw, "event_id": kw,
        "outside_maintenance_window": {"type": "boolean"},
        "unexplained_rpm": {"type": "boolean"},
        "replaced": package,
        "transaction": {"properties": {
            "rpm_tid": {"type": "long"}, "history_id": {"type": "long"}, "start": {"type": "date"},
        }},
    }}
    mappings = {
        "date_detection": False,
        "dynamic_templates": [{"labels": {
            "path_match": "labels.*", "match_mapping_type": "string",
            "mapping": {"type": "keyword"},
        }}],
        "properties": {
            "@timestamp": {"type": "date"},
            "event_time_us": {"type": "long"},
            "event": {"properties": {
                "id": kw, "action": kw, "kind": kw, "category": kw, "type": kw,
                "created": {"type": "date"}, "dataset": kw,
            }},
            "host": host,
            "package": package,
            "user": {"properties": {"name": kw}},
            "process": {"properties": {"command_line": {"type": "keyword", "ignore_above": 4096}}},
            "labels": {"type": "object"},
            "pkgstream": enrichment,
        },
    }
    return {
        "index_patterns": [f"{prefix}-changes-*"],
        "priority": 200,
        "template": {
            "settings": {"number_of_shards": 1, "number_of_replicas": 0},
            "mappings": mappings,
        },
        "_meta": {"managed_by": "pkgstream benches/python/baseline_sink.py"},
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--brokers", required=True)
    ap.add_argument("--topic", required=True)
    ap.add_argument("--url", required=True, help="OpenSearch URL, e.g. http://127.0.0.1:9200")
    ap.add_argument("--index-prefix", required=True)
    ap.add_argument("--count", type=int, required=True, help="stop after this many events are indexed")
    ap.add_argument("--group", required=True, help="Kafka consumer group")
    ap.add_argument("--chunk", type=int, default=5000, help="documents per bulk request")
    ap.add_argument("--threads", type=int, default=2, help="bulk threads (1 = streaming_bulk)")
    ap.add_argument("--max-chunk-bytes", type=int, default=8 << 20,
                    help="bytes per bulk request (default 8 MiB, as the Rust sink)")
    ap.add_argument("--idle-timeout", type=float, default=30.0,
                    help="give up after this many seconds without a message")
    ap.add_argument("--no-template", action="store_true",
                    help="do not install the `<prefix>-changes` index template when it is missing")
    args = ap.parse_args()

    schema, header = load_schema(SCHEMA_PATH)
    client = OpenSearch(hosts=[args.url], timeout=60, pool_maxsize=max(4, args.threads + 1))
    if not args.no_template:
        try:
            client.indices.put_index_template(
                name=f"{args.index_prefix}-changes",
                body=changes_template(args.index_prefix),
                create=True,
            )
        except RequestError as e:  # already there (e.g. the Rust sink's): keep it
            if "already exists" not in str(e):
                raise

    consumer = Consumer({
        "bootstrap.servers": args.brokers,
        "group.id": args.group,
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
    })
    consumer.subscribe([args.topic])

    state = {"t0": None, "yielded": 0, "undecodable": 0, "kafka_errors": 0}
    offsets = {}  # partition -> next offset to commit

    def actions():
        last_msg = time.monotonic()
        while state["yielded"] < args.count:
            msgs = consumer.consume(num_messages=min(1000, args.count - state["yielded"]), timeout=0.5)
            now = time.monotonic()
            if not msgs:
                if now - last_msg > args.idle_timeout:
                    print(f"baseline_sink: no message for {args.idle_timeout}s, stopping at "
                          f"{state['yielded']} of {args.count}", file=sys.stderr)
                    return
                continue
            last_msg = now
            if state["t0"] is None:
                state["t0"] = now
            for m in msgs:
                if m.error():
                    if m.error().code() != KafkaError._PARTITION_EOF:
                        state["kafka_errors"] += 1
                        print(f"baseline_sink: kafka error: {m.error()}", file=sys.stderr)
                    continue
                offsets[m.partition()] = m.offset() + 1
                v = m.value()
                try:
                    if v is None or len(v) < HEADER_LEN or v[:HEADER_LEN] != header:
                        raise ValueError("not a single-object EnrichedChange v1")
                    c = fastavro.schemaless_reader(io.BytesIO(v[HEADER_LEN:]), schema, None)
                    event_id = c["event_id"].hex()
                    et = c["event_time"]
                    doc = change_doc(c, event_id)
                except Exception:  # noqa: BLE001 - anything undecodable is skipped
                    state["undecodable"] += 1
                    continue
                state["yielded"] += 1
                yield {
                    "_op_type": "create",
                    "_index": f"{args.index_prefix}-changes-{et.year:04d}.{et.month:02d}",
                    "_id": event_id,
                    "_source": doc,
                }

    common = dict(
        chunk_size=args.chunk,
        max_chunk_bytes=args.max_chunk_bytes,
        raise_on_error=False,
        raise_on_exception=False,
    )
    if args.threads <= 1:
        results = helpers.streaming_bulk(client, actions(), **common)
    else:
        results = helpers.parallel_bulk(
            client, actions(), thread_count=args.threads, queue_size=args.threads, **common
        )

    indexed = created = duplicates = 0
    errors = {}
    first_errors = []
    for ok, item in results:
        info = next(iter(item.values()))
        status = info.get("status")
        if ok:
            indexed += 1
            created += 1
        elif status == 409:
            indexed += 1
            duplicates += 1
        else:
            key = str(status)
            errors[key] = errors.get(key, 0) + 1
            if len(first_errors) < 5:
                first_errors.append({"_id": info.get("_id"), "status": status,
                                     "error": str(info.get("error"))[:500]})

    if offsets:
        consumer.commit(
            offsets=[TopicPartition(args.topic, p, o) for p, o in sorted(offsets.items())],
            asynchronous=False,
        )
    t1 = time.monotonic()
    consumer.close()

    seconds = (t1 - state["t0"]) if state["t0"] is not None else 0.0
    ru = resource.getrusage(resource.RUSAGE_SELF)
    n_err = sum(errors.values())
    if n_err:
        print(f"baseline_sink: {n_err} bulk item errors by status {errors}; first: "
              f"{json.dumps(first_errors)}", file=sys.stderr)
    if state["undecodable"]:
        print(f"baseline_sink: {state['undecodable']} undecodable messages skipped", file=sys.stderr)
    print(json.dumps({
        "events": indexed,
        "seconds": round(seconds, 3),
        "events_per_s": round(indexed / seconds, 1) if seconds > 0 else 0.0,
        "cpu_seconds": round(ru.ru_utime + ru.ru_stime, 3),
        "peak_rss_kib": ru.ru_maxrss,
        "created": created,
        "duplicates": duplicates,
        "errors": n_err,
        "undecodable": state["undecodable"],
    }), flush=True)
    return 0 if indexed >= args.count and n_err == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
