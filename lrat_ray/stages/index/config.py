"""``IndexConfig``: every option of ``lrat index``."""

from __future__ import annotations

from dataclasses import dataclass

from lrat_ray.infra.config import ActorPool, checked, option
from lrat_ray.models.encoder import EncoderOptions
from lrat_ray.stages.index.faiss_index import INDEX_TYPES


@dataclass(kw_only=True)
@checked
class IndexConfig(EncoderOptions, ActorPool):
    """Options of ``lrat index`` (the encoder options and actor pool are shared with other stages)."""

    corpus: list[str] = option(help="corpus files: BEIR JSONL (_id/docid, title, text) or Parquet", path=True)
    output: str = option(help="index directory to write (local or URI; '{version}' is replaced by the version key)")
    shards: int = option(
        0,
        minimum=0,
        help="index shards (0: one per encoder actor). A shard is what one actor "
        "builds, one resubmission keeps and one server process holds: size it "
        "to a server's memory",
    )
    index_type: str = option("flat", choices=INDEX_TYPES, help="flat (exact), ivf or hnsw")
    nlist: int = option(1024, help="ivf: number of inverted lists per shard (capped at shard size/39)")
    nprobe: int = option(32, help="ivf: lists searched per query")
    hnsw_m: int = option(32, help="hnsw: graph degree")
    ef_search: int = option(128, help="hnsw: search breadth")
    faiss_gpu: bool = option(False, help="build and search with GPU FAISS (needs the gpu extra)", runtime=True)
    gpus_per_worker: float = option(0.0, help="GPUs per encoder actor (0 on CPU machines)", runtime=True)
    batch_size: int = option(64, minimum=1, help="documents per forward pass", runtime=True)
    split_bytes: int = option(
        64 << 20,
        minimum=1,
        runtime=True,
        help="corpus JSONL files larger than this are read in line-aligned byte ranges by several tasks",
    )
    strict: bool = option(False, help="stop at the first corpus record without id or text")

    def index_params(self) -> dict:
        return {
            "type": self.index_type,
            "nlist": self.nlist,
            "nprobe": self.nprobe,
            "hnsw_m": self.hnsw_m,
            "ef_search": self.ef_search,
        }
