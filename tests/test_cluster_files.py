"""The cluster launcher YAML, the KubeRay RayJob manifest and the job files parse and carry
the fields Ray and KubeRay require (no Ray needed)."""
from __future__ import annotations

import shlex

import yaml

from conftest import REPO_ROOT
from latent_decoder.job import job_args
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
    assert any("latent-decoder[ray]" in c for c in config["setup_commands"])


def test_kuberay_rayjob_runs_the_job_entrypoint_on_gpu_workers():
    job = yaml.safe_load((REPO_ROOT / "cluster" / "rayjob.yaml").read_text())
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob" and job["metadata"]["name"]
    spec = job["spec"]
    assert "jobs/decode_job.py" in spec["entrypoint"]
    assert isinstance(yaml.safe_load(spec["runtimeEnvYAML"]), dict)
    cluster = spec["rayClusterSpec"]
    head = cluster["headGroupSpec"]
    assert "rayStartParams" in head and head["template"]["spec"]["containers"][0]["image"]
    [group] = cluster["workerGroupSpecs"]
    assert group["groupName"] and "rayStartParams" in group and group["replicas"] >= 1
    [container] = group["template"]["spec"]["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"


def test_job_entrypoint_joins_the_jobs_cluster_and_ships_the_package():
    assert job_args(["/data/EXP", "--workers", "2"]) == ["decode", "/data/EXP", "--workers", "2", "--address", "auto"]
    assert job_args(["/data/EXP", "--address=ray://h:10001"]) == ["decode", "/data/EXP", "--address=ray://h:10001"]
    assert shlex.split(entrypoint("/data/my exp", ["--gpus", "2"])) == [
        "python", "-m", "latent_decoder.job", "/data/my exp", "--gpus", "2", "--address", "auto"]
    env = load_runtime_env(REPO_ROOT / "jobs" / "runtime_env.yaml")
    assert env["env_vars"]["PYTHONUNBUFFERED"] == "1"
    assert env["py_modules"] == [str(REPO_ROOT / "latent_decoder")]
