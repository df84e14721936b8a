"""Stage outputs: immutable, versioned directories with a manifest; a resubmitted job skips work.

Clusters resubmit jobs (a retried RayJob, a pipeline run twice, a driver that died after its
last write). So every stage started from the ``lrat`` command or a ``jobs/`` entrypoint goes
through :func:`run_stage`, which gives its output directory these rules:

* The stage's **version key** hashes the stage name, the lrat version, every option that shapes
  the result, and a fingerprint of every input path (a finished stage output contributes its own
  key, so keys chain along the pipeline; other inputs their file names, sizes and times). Options
  marked ``runtime`` in the config (workers, resources, cluster address) are left out: running on
  more machines does not make a new version.
* ``{version}`` in ``--output`` is replaced by the key, so ``s3://bucket/lrat/mine/{version}``
  gives content-addressed directories that never overwrite each other.
* The stage's result is recorded once, by :func:`run_stage`: ``OUTPUT/report.json`` (what the run
  function returned: counts, skips, timings); stages do not write it themselves.
  ``OUTPUT/_lrat_stage.json`` is written last: stage, key, config, input fingerprints, versions,
  hardware and the name of the report. A directory with it is finished: the same key returns the
  recorded result without running anything; another key is refused (outputs are immutable).
* ``OUTPUT/_lrat_stage.started.json`` claims the directory first (:mod:`lrat_ray.infra.claims`): a second
  run while the first is alive is refused, naming it. Once that run is gone (it failed, or was
  killed) a rerun with the same key goes on where it stopped (each stage resumes its own work:
  mining's staged groups, training checkpoints, the flywheel's finished stages), and a run with
  another key (the corrected command) clears what it left and starts afresh.
* Stages that need local files (FAISS, the trained model, the flywheel's server) run in a local
  scratch directory when the output is remote, and the finished directory is uploaded before the
  manifest is written.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import platform
import socket
import sys
import time
from collections.abc import Callable
from typing import Any, TypeVar

from lrat_ray import __version__
from lrat_ray.infra import storage
from lrat_ray.infra.claims import CLAIM, Claim, clear_output
from lrat_ray.infra.config import runtime_options
from lrat_ray.infra.errors import LratError
from lrat_ray.infra.hardware import describe

log = logging.getLogger(__name__)
VERSION_PLACEHOLDER = "{version}"
REPORT = "report.json"  # the stage's result, written once by run_stage
C = TypeVar("C")
# Model names, not paths, even where a directory of that name happens to exist (lrat_ray.models).
MODEL_NAMES = ("embedded", "tiny")


@dataclasses.dataclass
class StageResult:
    result: Any
    output: str
    key: str
    skipped: bool


def input_fingerprint(value: Any) -> Any:
    """Fingerprint of a path option: a path's content, or the value itself for a name that is not
    a path (a Hugging Face model name, ``embedded``)."""
    if isinstance(value, list):
        return [input_fingerprint(v) for v in value]
    if not isinstance(value, str) or value in MODEL_NAMES or not storage.exists(value):
        return value
    return storage.fingerprint(value)


def content_of(config: Any) -> dict:
    """The options that shape a stage's result, with input paths replaced by fingerprints."""
    content = {}
    for f in dataclasses.fields(config):
        if f.name == "output" or f.metadata.get("runtime"):
            continue
        value = getattr(config, f.name)
        if f.metadata.get("section"):
            runtime = runtime_options(f.metadata["section"]())
            value = {k: v for k, v in value.items() if k not in runtime}
        content[f.name] = input_fingerprint(value) if f.metadata.get("path") else value
    return content


def stage_key(stage: str, config: Any) -> str:
    return _key(stage, content_of(config))


def _key(stage: str, content: dict) -> str:
    blob = json.dumps([stage, __version__, content], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def read_json(uri: str) -> dict | None:
    return json.loads(storage.read_bytes(uri)) if storage.exists(uri) else None


def run_stage(stage: str, config: C, run: Callable[[C], Any], local_only: bool = False) -> StageResult:
    """Run ``run(config)`` under the rules above; ``config.output`` names the directory. A config
    with a ``storage_path`` option (training's checkpoints) gets ``OUTPUT.ray`` when unset: beside
    the final output, so checkpoints outlive a scratch directory and every node reaches them; one
    with a ``run_name`` gets ``<stage>-<key>``, the same for a resubmitted job, which therefore
    resumes from the checkpoints the killed one left."""
    content = content_of(config)  # lists every input once: they may be many files on object storage
    key = _key(stage, content)
    output = config.output.replace(VERSION_PLACEHOLDER, key)
    config = dataclasses.replace(config, output=output)
    if getattr(config, "storage_path", False) is None:
        config = dataclasses.replace(config, storage_path=default_storage_path(output))
    if getattr(config, "run_name", False) is None:  # stable: a resubmitted job finds its checkpoints
        config = dataclasses.replace(config, run_name=run_name(stage, key))
    finished = read_json(storage.join(output, storage.STAGE_MANIFEST))
    if finished is not None:
        _check_same(finished, stage, key, output, "holds")
        log.info("%s: %s already holds this result (version %s); nothing to do", stage, output, key)
        return StageResult(_recorded_result(finished, output), output, key, skipped=True)
    if read_json(storage.join(output, CLAIM)) is None and storage.exists(output) and _has_files(output):
        raise LratError(
            f"{output} already has files that no lrat {stage} run wrote; outputs are never mixed "
            "or overwritten: choose an empty or new directory (e.g. put {version} in --output)"
        )
    claim = Claim(output, stage, key)
    previous = claim.acquire()  # refuses a live writer, naming it
    if read_json(storage.join(output, storage.STAGE_MANIFEST)) is not None:  # it finished while we waited
        claim.finish()
        return run_stage(stage, config, run, local_only)
    if previous is not None and previous.same(stage, key):
        log.info(
            "%s: resuming the unfinished run in %s (version %s; the last one %s)", stage, output, key, previous.why
        )
    elif previous is not None:
        log.warning("%s: clearing %s, left by %s", stage, output, previous.describe())
        clear_output(output)
    started = time.time()
    try:
        if local_only and storage.is_remote(output):
            scratch = _scratch(stage, key)
            result = run(dataclasses.replace(config, output=scratch))
            storage.upload_dir(scratch, output)
        else:
            result = run(config)
        storage.write_bytes_atomic(storage.join(output, REPORT), _json_bytes(result))
        manifest = {
            "stage": stage,
            "key": key,
            "output": output,
            "config": dataclasses.asdict(config),
            "inputs": content,
            "versions": versions(),
            "hardware": describe(),
            "started": started,
            "finished": time.time(),
            "host": socket.gethostname(),
            "report": REPORT,
        }
        storage.write_bytes_atomic(storage.join(output, storage.STAGE_MANIFEST), _json_bytes(manifest))
    except BaseException as exc:
        # Bad input or option before anything was written: the directory goes as it came.
        if not (isinstance(exc, LratError) and previous is None and claim.release_untouched()):
            claim.fail(exc)
        raise
    claim.finish()
    return StageResult(json.loads(json.dumps(result, default=str)), output, key, skipped=False)


def run_name(stage: str, key: str) -> str:
    """The Ray Train run name of a stage run: the same options and inputs give the same name, so a
    resubmitted job finds the checkpoints the killed one left."""
    return f"{stage}-{key}"


def _json_bytes(value) -> bytes:
    return (json.dumps(value, indent=2, default=str) + "\n").encode()


def _recorded_result(manifest: dict, output: str):
    if "result" in manifest:  # written before the report was a file of its own (lrat-ray <= 0.x)
        return manifest["result"]
    return read_json(storage.join(output, manifest.get("report", REPORT)))


def default_storage_path(output: str) -> str:
    """Where a training stage keeps its Ray Train checkpoints: ``OUTPUT.ray`` (absolute if local)."""
    base = output.rstrip("/")
    return base + ".ray" if storage.is_remote(base) else os.path.abspath(base) + ".ray"


def _check_same(recorded: dict, stage: str, key: str, output: str, verb: str) -> None:
    if recorded.get("stage") != stage or recorded.get("key") != key:
        raise LratError(
            f"{output} {verb} lrat {recorded.get('stage')} version {recorded.get('key')}, not this "
            f"{stage} run (version {key}: other options or inputs); outputs are immutable: choose "
            "another --output (e.g. one with {version} in it)"
        )


def _has_files(uri: str) -> bool:
    import pyarrow.fs as pafs

    fs, path = storage.resolve(uri)
    if fs.get_file_info(path).type != pafs.FileType.Directory:
        return True
    return any(True for _ in fs.get_file_info(pafs.FileSelector(path, recursive=False)))


def _scratch(stage: str, key: str) -> str:
    root = os.environ.get("LRAT_SCRATCH", os.path.join(os.path.expanduser("~/.cache/lrat"), "stages"))
    return os.path.join(root, f"{stage}-{key}")


def versions() -> dict:
    import pyarrow

    found = {"lrat_ray": __version__, "python": platform.python_version(), "pyarrow": pyarrow.__version__}
    for name in ("ray", "torch", "transformers", "faiss"):
        module = sys.modules.get(name)
        if module is not None:
            found[name] = getattr(module, "__version__", "?")
    return found
