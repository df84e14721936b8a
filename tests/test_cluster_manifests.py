"""The cluster manifests parse and carry what KubeRay / `ray up` need."""

import json

import yaml

from conftest import REPO


def _groups(spec):
    return {g["groupName"]: g for g in spec["workerGroupSpecs"]}


def _check_ray_cluster_spec(spec):
    assert spec["rayVersion"] == "2.60.0"
    head = spec["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert head["image"].startswith("rayproject/ray:2.60.0")
    groups = _groups(spec)
    assert set(groups) == {"cpu", "gpu"}
    for name, group in groups.items():
        resources = json.loads(json.loads(group["rayStartParams"]["resources"]))
        assert resources == {f"{name}_stage": 1}
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
    gpu_limits = groups["gpu"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert int(gpu_limits["nvidia.com/gpu"]) >= 1


def test_raycluster_manifest():
    doc = yaml.safe_load((REPO / "cluster" / "raycluster.yaml").read_text())
    assert (doc["apiVersion"], doc["kind"]) == ("ray.io/v1", "RayCluster")
    _check_ray_cluster_spec(doc["spec"])


def test_rayjob_manifest():
    doc = yaml.safe_load((REPO / "cluster" / "rayjob.yaml").read_text())
    assert (doc["apiVersion"], doc["kind"]) == ("ray.io/v1", "RayJob")
    assert doc["spec"]["entrypoint"].startswith("python -m lrat_ray.cli flywheel")
    runtime_env = yaml.safe_load(doc["spec"]["runtimeEnvYAML"])
    assert runtime_env["pip"] == ["-e ."] and runtime_env["env_vars"]["HF_HUB_OFFLINE"] == "1"
    _check_ray_cluster_spec(doc["spec"]["rayClusterSpec"])


def test_ray_up_config():
    doc = yaml.safe_load((REPO / "cluster" / "ray-up.yaml").read_text())
    nodes = doc["available_node_types"]
    assert doc["head_node_type"] in nodes and nodes["head"]["resources"]["CPU"] == 0
    assert nodes["cpu_workers"]["resources"]["cpu_stage"] == 1 and nodes["gpu_workers"]["resources"]["GPU"] >= 1
    assert any("pip install -e" in c for c in doc["setup_commands"])
    assert doc["max_workers"] >= sum(n.get("max_workers", 0) for n in nodes.values())
