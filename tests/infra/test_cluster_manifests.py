"""The cluster manifests, runtime envs, stage placements and job entrypoints agree with each other
and with the package (they are applied on real clusters, not here: see cluster/README.md)."""

import json
import re
import subprocess
import sys

import pytest
import tomllib
import yaml
from conftest import REPO

from lrat_ray.infra.config import resolve

CLUSTER = REPO / "cluster"


def _load(name):
    return yaml.safe_load((CLUSTER / name).read_text())


def _groups(spec):
    return {g["groupName"]: g for g in spec["workerGroupSpecs"]}


def _containers(spec):
    yield spec["headGroupSpec"]["template"]["spec"]["containers"][0]
    for group in spec["workerGroupSpecs"]:
        yield group["template"]["spec"]["containers"][0]


def _check_ray_cluster_spec(spec):
    assert spec["rayVersion"] == "2.60.0"
    assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    for container in _containers(spec):
        assert container["image"].startswith("rayproject/ray:2.60.0")
        env = {e["name"]: e for e in container["env"]}  # token auth on every node, from one secret
        assert env["RAY_AUTH_MODE"]["value"] == "token"
        assert env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "lrat-ray-auth", "key": "auth_token"}
    groups = _groups(spec)
    assert set(groups) == {"cpu", "gpu"}
    for name, group in groups.items():
        params = group["rayStartParams"]
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
        resources = json.loads(json.loads(params["resources"]))
        # a node advertises its CPUs (GPUs) as cpu_stage (gpu_stage), so per-worker requests count
        if name == "cpu":
            assert resources == {"cpu_stage": int(params["num-cpus"])} and int(limits["cpu"]) == int(params["num-cpus"])
        else:
            assert resources == {"gpu_stage": int(params["num-gpus"])} == {"gpu_stage": int(limits["nvidia.com/gpu"])}


def _dependencies():
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    return [d for d in deps if not d.startswith("ray[")]  # the image brings Ray


def test_raycluster_manifest():
    doc = _load("raycluster.yaml")
    assert (doc["apiVersion"], doc["kind"]) == ("ray.io/v1", "RayCluster")
    _check_ray_cluster_spec(doc["spec"])


def test_rayjob_manifest_runs_the_flywheel_job_with_the_runtime_env():
    doc = _load("rayjob.yaml")
    assert (doc["apiVersion"], doc["kind"]) == ("ray.io/v1", "RayJob")
    script = doc["spec"]["entrypoint"].split()[1]
    assert doc["spec"]["entrypoint"].startswith("python jobs/flywheel.py --config") and (REPO / script).is_file()
    runtime_env = yaml.safe_load(doc["spec"]["runtimeEnvYAML"])
    assert runtime_env["pip"] == _load("runtime_env.yaml")["pip"]
    assert runtime_env["working_dir"].startswith("s3://") and runtime_env["env_vars"]["HF_HUB_OFFLINE"] == "1"
    _check_ray_cluster_spec(doc["spec"]["rayClusterSpec"])


def test_runtime_envs_install_the_package_dependencies():
    assert _load("runtime_env.yaml")["pip"] == _dependencies()
    vllm = _load("runtime_env_vllm.yaml")["pip"]
    assert vllm == ["vllm"] + [d for d in _dependencies() if not d.startswith("torch")]
    for name in ("runtime_env.yaml", "runtime_env_vllm.yaml"):
        env = _load(name)
        assert env["working_dir"] == "." and ".venv" in env["excludes"]


def test_ray_up_config():
    doc = _load("ray-up.yaml")
    nodes = doc["available_node_types"]
    assert doc["head_node_type"] in nodes and nodes["head"]["resources"]["CPU"] == 0
    assert nodes["cpu_workers"]["resources"]["cpu_stage"] == nodes["cpu_workers"]["resources"]["CPU"]
    assert nodes["gpu_workers"]["resources"]["gpu_stage"] == nodes["gpu_workers"]["resources"]["GPU"] >= 1
    assert any("pip install -e" in c for c in doc["setup_commands"])
    assert "/home/ubuntu/.ray/auth_token" in doc["file_mounts"]
    assert all(
        "RAY_AUTH_MODE=token ray start" in c
        for c in doc["head_start_ray_commands"][1:] + doc["worker_start_ray_commands"][1:]
    )
    assert doc["max_workers"] >= sum(n.get("max_workers", 0) for n in nodes.values())


def test_stage_placements_load_into_their_configs_and_name_the_clusters_resources():
    from lrat_ray.cli import commands

    classes = {name: cls for name, cls, *_ in commands()}
    placements = _load("stages.yaml")
    required = {
        "mine": {"input": ["x"], "output": "o"},
        "judge": {"pairs": "p", "output": "o"},
        "index": {"corpus": ["c"], "output": "o"},
        "train": {"pairs": ["p"], "output": "o"},
        "rollout": {"url": "u", "queries": "q", "output": "o"},
        "flywheel": {"corpus": ["c"], "queries": "q", "train_qrels": "t"},
    }
    advertised = {"cpu_stage", "gpu_stage"}
    for section in placements:
        config = resolve(classes[section], required[section], str(CLUSTER / "stages.yaml"), section)
        per_stage = config.resources.values() if section == "flywheel" else [config.resources]
        for resources in per_stage:
            assert set(resources) <= advertised, (section, resources)


@pytest.mark.parametrize("script", sorted(p.stem for p in (REPO / "jobs").glob("[a-z]*.py")))
def test_every_job_entrypoint_is_a_stage_of_the_lrat_command(script):
    from lrat_ray.cli import commands

    assert script in {name for name, *_ in commands()}
    text = (REPO / "jobs" / f"{script}.py").read_text()
    assert re.search(rf'run\("{script}"\)', text) and f"python jobs/{script}.py" in text


def test_a_job_entrypoint_runs_from_the_working_directory():
    reply = subprocess.run(
        [sys.executable, "jobs/mine.py", "--help"], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert reply.returncode == 0 and "--resources JSON" in reply.stdout and "{version}" in reply.stdout
