"""The cluster launcher YAML validates against the schema Ray ships, the KubeRay RayJob manifest
carries the fields KubeRay requires, and the job files run the job entrypoint (no cluster needed)."""
from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
import yaml

from conftest import REPO_ROOT
from latent_decoder.submit import job_args
from latent_decoder.submit import entrypoint, load_runtime_env


def test_cluster_launcher_yaml_has_a_head_and_gpu_workers():
    config = yaml.safe_load((REPO_ROOT / "cluster" / "ray-cluster.yaml").read_text())
    for key in ("cluster_name", "provider", "auth", "available_node_types", "head_node_type",
                "head_start_ray_commands", "worker_start_ray_commands", "max_workers"):
        assert key in config, key
    assert config["provider"]["type"] and config["head_node_type"] in config["available_node_types"]
    for node_type in config["available_node_types"].values():
        assert {"node_config", "resources"} <= set(node_type)
    workers = {k: v for k, v in config["available_node_types"].items() if k != config["head_node_type"]}
    assert workers and all("max_workers" in v for v in workers.values())
    assert any("ray start --head" in c for c in config["head_start_ray_commands"])
    assert any("--address" in c for c in config["worker_start_ray_commands"])
    # the package itself (Ray is a plain dependency now, there is no [ray] extra)
    assert any(re.search(r"pip install .*latent-decoder/?'?$", c) for c in config["setup_commands"])
    assert not any("[ray]" in c for c in config["setup_commands"])


def test_cluster_launcher_yaml_validates_against_rays_schema():
    """The same JSON schema ``ray up`` checks the config with, from the installed Ray."""
    jsonschema = pytest.importorskip("jsonschema")
    ray = pytest.importorskip("ray")
    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    config = yaml.safe_load((REPO_ROOT / "cluster" / "ray-cluster.yaml").read_text())
    jsonschema.validate(config, schema)
    with pytest.raises(jsonschema.ValidationError):  # the schema does catch a misspelt key
        jsonschema.validate({**config, "max_worker": 8}, schema)


def test_cluster_launcher_gpu_workers_start_at_zero_and_autoscale():
    config = yaml.safe_load((REPO_ROOT / "cluster" / "ray-cluster.yaml").read_text())
    workers = [v for k, v in config["available_node_types"].items() if k != config["head_node_type"]]
    assert all(0 == v["min_workers"] <= v["max_workers"] <= config["max_workers"] for v in workers)
    assert any("--autoscaling-config" in c for c in config["head_start_ray_commands"])


def test_cluster_docs_run_commands_with_ray_exec_not_ray_attach():
    """``ray attach`` opens a shell and takes no command; ``ray exec CLUSTER.yaml 'cmd'`` runs one."""
    for name in ("ray-cluster.yaml", "README.md"):
        text = (REPO_ROOT / "cluster" / name).read_text()
        assert not re.search(r"ray attach \S+ (--|'|\")", text), name
    assert "ray exec cluster/ray-cluster.yaml '" in (REPO_ROOT / "cluster" / "ray-cluster.yaml").read_text()


def test_kuberay_rayjob_has_the_fields_kuberay_requires():
    job = yaml.safe_load((REPO_ROOT / "cluster" / "rayjob.yaml").read_text())
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob" and job["metadata"]["name"]
    spec = job["spec"]
    assert isinstance(spec["entrypoint"], str) and spec["entrypoint"]
    assert spec["shutdownAfterJobFinishes"] is True
    cluster = spec["rayClusterSpec"]
    head = cluster["headGroupSpec"]
    assert isinstance(head["rayStartParams"], dict)
    assert head["template"]["spec"]["containers"][0]["name"] and head["template"]["spec"]["containers"][0]["image"]
    assert cluster["workerGroupSpecs"]
    for group in cluster["workerGroupSpecs"]:
        assert group["groupName"] and isinstance(group["rayStartParams"], dict)
        containers = group["template"]["spec"]["containers"]
        assert containers and all(c["name"] and c["image"] for c in containers)
        counts = [group["minReplicas"], group["replicas"], group["maxReplicas"]]
        assert all(type(n) is int for n in counts), counts
        assert counts == sorted(counts), f"{group['groupName']}: need minReplicas <= replicas <= maxReplicas"


def test_kuberay_rayjob_runs_the_job_entrypoint_on_autoscaled_gpu_workers():
    spec = yaml.safe_load((REPO_ROOT / "cluster" / "rayjob.yaml").read_text())["spec"]
    args = shlex.split(spec["entrypoint"])
    assert args[:2] == ["python", "/opt/latent-decoder/jobs/decode_job.py"]
    assert isinstance(yaml.safe_load(spec["runtimeEnvYAML"]), dict)
    cluster = spec["rayClusterSpec"]
    [group] = cluster["workerGroupSpecs"]
    [container] = group["template"]["spec"]["containers"]
    gpus_per_pod = int(container["resources"]["limits"]["nvidia.com/gpu"])
    assert gpus_per_pod == 1
    # the group starts empty and Ray's autoscaler (a sidecar on the head) grows it to what --gpus asks
    assert cluster["enableInTreeAutoscaling"] is True and group["minReplicas"] == 0
    gpus = int(args[args.index("--gpus") + 1])
    assert 1 <= gpus <= group["maxReplicas"] * gpus_per_pod


def test_job_entrypoint_joins_the_jobs_cluster_and_ships_the_package():
    assert job_args(["/data/EXP", "--workers", "2"]) == ["decode", "/data/EXP", "--workers", "2", "--address", "auto"]
    assert job_args(["/data/EXP", "--address=ray://h:10001"]) == ["decode", "/data/EXP", "--address=ray://h:10001"]
    assert shlex.split(entrypoint("/data/my exp", ["--gpus", "2"])) == [
        "python", "-m", "latent_decoder.job", "/data/my exp", "--gpus", "2", "--address", "auto"]
    env = load_runtime_env(REPO_ROOT / "jobs" / "runtime_env.yaml")
    assert env["env_vars"]["PYTHONUNBUFFERED"] == "1"
    assert env["py_modules"] == [str(REPO_ROOT / "latent_decoder")]
