"""The precision probe: what each kind of machine resolves ``auto`` to, and every consumer of it
(encoders, the vLLM engines of the judge and the agents' LLM, training) following it."""

import json

import numpy as np
import pytest

from lrat_ray.infra import hardware
from lrat_ray.infra.errors import LratError

HEAD = "processor\t: 0\nvendor_id\t: {vendor}\nmodel name\t: {model}\nflags\t\t: {flags}\n\nprocessor\t: 1\n"
COMMON = "fpu vme de pse tsc msr pae mce cx8 apic sep mtrr sse sse2 ssse3 sse4_1 sse4_2 avx f16c"
CPUS = {  # flag sets as /proc/cpuinfo writes them
    "avx2": ("AuthenticAMD", "AMD EPYC 7B12", COMMON + " fma avx2 bmi1 bmi2"),
    "avx512": ("GenuineIntel", "Intel(R) Xeon(R) Platinum 8259CL", COMMON + " fma avx2 avx512f avx512dq avx512_vnni"),
    "avx512_bf16": ("AuthenticAMD", "AMD EPYC 9B14", COMMON + " fma avx2 avx512f avx512_vnni avx512_bf16"),
    "amx": (
        "GenuineIntel",
        "Intel(R) Xeon(R) Platinum 8481C",
        COMMON + " fma avx2 avx512f avx512_vnni amx_bf16 amx_tile amx_int8",
    ),
}
NATIVE = {"avx2": False, "avx512": False, "avx512_bf16": True, "amx": True}


def fake_cpu(kind: str, tmp_path) -> hardware.CpuInfo:
    vendor, model, flags = CPUS[kind]
    path = tmp_path / f"cpuinfo-{kind}"
    path.write_text(HEAD.format(vendor=vendor, model=model, flags=flags) + "flags\t\t: nothing\n")
    return hardware.cpu_info(str(path))


@pytest.fixture
def auto(monkeypatch):
    """auto really resolves by the hardware (the suite pins it to fp32 otherwise)."""
    monkeypatch.setenv(hardware.ENV, "auto")
    monkeypatch.setattr(hardware, "_cuda_bf16", lambda: False)


@pytest.mark.parametrize("kind", sorted(CPUS))
def test_probe_reads_model_and_flags_and_resolves_auto(kind, tmp_path, auto):
    cpu = fake_cpu(kind, tmp_path)
    assert cpu.model == CPUS[kind][1] and "sse2" in cpu.flags and "nothing" not in cpu.flags  # first processor
    assert cpu.bf16_native is NATIVE[kind]
    assert hardware.fast_bf16("cpu", cpu) is NATIVE[kind]
    assert hardware.resolve_bf16(None, "cpu", cpu) is NATIVE[kind]
    assert hardware.resolve_bf16(True, "cpu", cpu) is True and hardware.resolve_bf16(False, "cpu", cpu) is False
    assert hardware.engine_dtype("auto", 0, cpu) == ("bfloat16" if NATIVE[kind] else "float32")
    assert hardware.engine_dtype("float32", 0, cpu) == "float32"  # an explicit dtype wins
    assert hardware.engine_dtype("auto", 1, cpu) == "auto"  # GPU engines: the checkpoint's bf16


def test_cuda_resolves_by_the_gpu_whatever_the_cpu(tmp_path, monkeypatch, auto):
    avx2 = fake_cpu("avx2", tmp_path)
    monkeypatch.setattr(hardware, "_cuda_bf16", lambda: True)
    assert hardware.fast_bf16("cuda", avx2) and hardware.fast_bf16("cuda:1", avx2)
    assert not hardware.fast_bf16("cpu", avx2)
    monkeypatch.setattr(hardware, "_cuda_bf16", lambda: False)  # e.g. a V100: no bf16
    assert not hardware.fast_bf16("cuda", avx2)


def test_override_forces_either_path_and_rejects_typos(tmp_path, monkeypatch):
    amx, avx2 = fake_cpu("amx", tmp_path), fake_cpu("avx2", tmp_path)
    monkeypatch.setenv(hardware.ENV, "fp32")
    assert not hardware.fast_bf16("cpu", amx) and hardware.engine_dtype("auto", 0, amx) == "float32"
    assert hardware.resolve_bf16(True, "cpu", amx)  # explicit beats the override too
    monkeypatch.setenv(hardware.ENV, "bf16")
    assert hardware.fast_bf16("cpu", avx2)
    monkeypatch.setenv(hardware.ENV, "fp16")
    with pytest.raises(ValueError, match="LRAT_PRECISION"):
        hardware.fast_bf16("cpu", avx2)


def test_unreadable_cpuinfo_is_an_unknown_cpu_on_fp32(tmp_path, auto):
    cpu = hardware.cpu_info(str(tmp_path / "missing"))
    assert cpu.model == "unknown" and not cpu.flags and not hardware.fast_bf16("cpu", cpu)


def test_bf16_option_reads_auto_and_booleans_from_yaml(tmp_path):
    from lrat_ray.infra.config import resolve
    from lrat_ray.stages.index import IndexConfig

    given = {"corpus": ["c.jsonl"], "output": "out"}
    for text, value in (("auto", None), ("true", True), ("off", False)):
        (tmp_path / "c.yaml").write_text(f"bf16: {text}\n")
        assert resolve(IndexConfig, given, str(tmp_path / "c.yaml")).bf16 is value
    assert IndexConfig(**given).bf16 is None  # the default is auto
    (tmp_path / "c.yaml").write_text("bf16: maybe\n")
    with pytest.raises(LratError, match="bf16"):
        resolve(IndexConfig, given, str(tmp_path / "c.yaml"))


def test_vllm_engines_of_judge_and_agents_follow_the_cpu(tmp_path, monkeypatch, auto):
    """The judge's ray.data.llm engine and the agents' Ray Serve LLM get float32 on an AVX2-only CPU
    and bfloat16 where bf16 is native; the judge report names what it used and the CPU."""
    from lrat_ray.serving.llm import LLMServeConfig, llm_config
    from lrat_ray.stages.judge import JudgeConfig
    from lrat_ray.stages.judge.backends import BACKENDS, vllm_processor_config

    judge = JudgeConfig(pairs="p", output="o", backend="vllm", model="tiny", gpus_per_replica=0)
    cpus = {kind: fake_cpu(kind, tmp_path) for kind in CPUS}
    monkeypatch.setattr("lrat_ray.models.tiny_llm.resolve_llm", lambda name: "/some/model")
    for kind, dtype in (("avx2", "float32"), ("amx", "bfloat16")):
        monkeypatch.setattr(hardware, "cpu_info", lambda path=None, cpu=cpus[kind]: cpu)
        assert vllm_processor_config(judge, "/some/model").engine_kwargs["dtype"] == dtype
        assert llm_config(LLMServeConfig(gpus_per_replica=0)).engine_kwargs["dtype"] == dtype
        report = BACKENDS["vllm"].precision(judge)
        assert report["dtype"] == dtype and report["hardware"]["cpu"] == CPUS[kind][1]
        assert report["hardware"]["bf16_native"] is NATIVE[kind]
    pinned = JudgeConfig(pairs="p", output="o", backend="vllm", model="tiny", gpus_per_replica=0, dtype="bfloat16")
    assert vllm_processor_config(pinned, "/some/model").engine_kwargs["dtype"] == "bfloat16"  # AVX2, asked for


def test_index_in_one_precision_searched_in_the_other(ray_session, msmarco_slice, tmp_path, monkeypatch):
    """Precision is not part of the vector-compatibility rule: an fp32 index searched by a bf16
    query encoder (and a bf16 index by an fp32 one) loads, records what built it, and ranks as the
    same-precision search does up to rounding."""
    from lrat_ray.serving.search import load_retriever
    from lrat_ray.stages.index import IndexConfig, run_index

    corpus = tmp_path / "corpus.jsonl"  # the judged passages and some others: bf16 is emulated on AVX2 machines
    corpus.write_text("\n".join((msmarco_slice / "corpus.jsonl").read_text().split("\n")[:40]) + "\n")
    corpus = str(corpus)
    queries = [json.loads(l)["text"] for l in (msmarco_slice / "queries.jsonl").read_text().split("\n") if l.strip()]
    queries += ["axon terminal", "definition of environment", "symptoms of a heart attack"]
    ranked, stored = {}, {}
    for built in (False, True):
        out = tmp_path / f"bf16-{built}"
        manifest = run_index(
            IndexConfig(corpus=[corpus], output=str(out), workers=1, bf16=built, document_max_length=64)
        )
        assert manifest["bf16"] is built and manifest["hardware"][0]["cpu"] == hardware.cpu_info().model
        stored[built] = np.load(out / manifest["shards"][0]["name"] / "embeddings.npy")
        for searched in ("fp32", "bf16"):
            monkeypatch.setenv(hardware.ENV, searched)
            loaded = load_retriever(str(out))  # refuses an incompatible encoder: it must not refuse here
            assert loaded.encoder.bf16 is (searched == "bf16")
            hits = loaded.index.search(loaded.encoder.encode_queries(queries), 10)
            ranked[built, searched] = [[d for d, _ in h] for h in hits]
    same = ranked[False, "fp32"]
    for combination, lists in ranked.items():
        overlap = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(same, lists)])
        top1 = np.mean([a[0] == b[0] for a, b in zip(same, lists)])
        assert overlap >= 0.8 and top1 >= 0.7, (combination, overlap, top1)
    assert not np.array_equal(stored[False], stored[True])  # bf16 really ran, and only rounding differs
    assert (stored[False] * stored[True]).sum(axis=1).min() > 0.99
