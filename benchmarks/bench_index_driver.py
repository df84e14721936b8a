"""Driver memory of ``lrat index`` as the corpus grows 10x: sharded build vs what the driver held before.

Writes N and 10N synthetic corpus lines (SciFact abstracts cut to 300 characters, each id unique,
one JSONL file, so the big one is read in byte ranges) and, in a fresh process per measurement,
reports the process's peak resident memory (VmHWM):

* ``lrat index``: ``run_index`` (2 encoder actors, 4 shards, documents up to 32 tokens so that
  encoding stays short): the driver plans pieces and adds up counts; tasks and actors read, encode
  and build;
* ``in driver``: the corpus as Python lists plus every vector in one array, which is what the
  driver held before the sharded build (the baseline; no encoding, the vectors are zeros).

Usage: ``python benchmarks/bench_index_driver.py [--docs 10000]``
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from lrat_ray.infra.hardware import summary_line

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
CHILD = """
import json, sys, time
mode, corpus, out = sys.argv[1:4]
started = time.time()
if mode == "lrat index":
    from lrat_ray.stages.index import IndexConfig, run_index
    count = run_index(IndexConfig(corpus=[corpus], output=out, workers=2, shards=4, document_max_length=32,
                                  split_bytes=4 << 20))["count"]
else:
    import numpy as np
    from lrat_ray.core.corpus import document_text, iter_documents
    ids, titles, texts, searchable = [], [], [], []
    for doc_id, record in iter_documents([corpus]):
        ids.append(doc_id); titles.append(record.get("title") or ""); texts.append(record.get("text") or "")
        searchable.append(document_text(record))
    vectors = np.zeros((len(ids), 384), dtype=np.float32)
    vectors[:] = 1.0  # touched, as encoded vectors would be
    count = len(ids)
peak = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM"))
print(json.dumps({"documents": count, "peak_mb": peak / 1024, "seconds": time.time() - started}))
"""


def write_corpus(path: Path, count: int) -> None:
    source = [json.loads(line) for line in (DATA / "scifact-beir" / "corpus.jsonl").read_text().splitlines() if line]
    with path.open("w") as fh:
        for i in range(count):
            doc = source[i % len(source)]
            fh.write(json.dumps({"_id": f"d{i}", "title": doc["title"], "text": doc["text"][:300]}) + "\n")


def measure(mode: str, corpus: Path, out: Path) -> dict:
    reply = subprocess.run([sys.executable, "-c", CHILD, mode, str(corpus), str(out)], capture_output=True, text=True)
    if reply.returncode:
        raise SystemExit(reply.stderr[-3000:])
    return json.loads(reply.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--docs", type=int, default=10000)
    args = parser.parse_args()
    print(summary_line(), flush=True)  # figures depend on it: bf16 native or emulated
    sizes = (args.docs, 10 * args.docs)
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for count in sizes:
            corpus = tmp / f"corpus-{count}.jsonl"
            write_corpus(corpus, count)
            for mode in ("lrat index", "in driver"):
                rows[count, mode] = result = measure(mode, corpus, tmp / f"index-{count}")
                print(
                    f"{count} documents ({corpus.stat().st_size / 1e6:.0f} MB), {mode}: driver peak "
                    f"{result['peak_mb']:.0f} MB, {result['seconds']:.0f} s",
                    flush=True,
                )
    print(f"\n{time.strftime('%Y-%m-%d')}: peak resident memory (VmHWM) of the driver process")
    print("\n| documents | lrat index: driver peak MB | seconds | in driver (before): peak MB |\n|---:|---:|---:|---:|")
    for count in sizes:
        ours, before = rows[count, "lrat index"], rows[count, "in driver"]
        print(f"| {count} | {ours['peak_mb']:.0f} | {ours['seconds']:.0f} | {before['peak_mb']:.0f} |")
    growth = rows[sizes[1], "lrat index"]["peak_mb"] / rows[sizes[0], "lrat index"]["peak_mb"]
    base = rows[sizes[1], "in driver"]["peak_mb"] / rows[sizes[0], "in driver"]["peak_mb"]
    print(f"\ndriver peak at 10x the corpus: lrat index {growth:.2f}x, in driver (before) {base:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
