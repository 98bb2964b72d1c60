"""deploy/k8s without a cluster: the instance file with its K8sRunLauncher, the k8s_job_executor configuration and the
GPU steps' `dagster-k8s/config` tags are what Dagster accepts, and a GPU step's pod asks for a card on a GPU node."""

from __future__ import annotations

import importlib

import pytest
import yaml
from dagster._config import process_config
from dagster._core.instance.config import dagster_instance_config

from newsllm_pipeline.definitions import defs
from newsllm_pipeline.deployment import DEPLOY, K8S_CONFIG_TAG, card_steps

dagster_k8s = pytest.importorskip("dagster_k8s", reason="the `distributed` extra is not installed")
from dagster_k8s.job import DagsterK8sJobConfig, construct_dagster_k8s_job, get_user_defined_k8s_config  # noqa: E402

K8S = DEPLOY / "k8s"


def _accepted(config_type, value) -> dict:
    result = process_config(config_type, value)
    assert result.success, [error.message for error in result.errors]
    return result.value


def test_the_instance_file_and_its_run_launcher_are_valid(monkeypatch):
    for name in ("DAGSTER_PG_HOST", "DAGSTER_PG_USER", "DAGSTER_PG_PASSWORD", "DAGSTER_PG_DB"):
        monkeypatch.setenv(name, "x")
    monkeypatch.setenv("DAGSTER_PG_PORT", "5432")
    monkeypatch.setenv("NEWSLLM_IMAGE", "registry.example/newsllm:1")
    instance, _ = dagster_instance_config(str(K8S), "dagster.yaml")
    launcher = instance["run_launcher"]
    cls = getattr(importlib.import_module(launcher["module"]), launcher["class"])
    assert cls is dagster_k8s.K8sRunLauncher
    config = _accepted(cls.config_type(), launcher["config"])
    assert config["job_image"] == "registry.example/newsllm:1" and config["env_config_maps"] == ["newsllm-settings"]
    assert "postgres" in instance["storage"]


def test_the_executor_file_is_the_k8s_job_executors_configuration():
    execution = yaml.safe_load((K8S / "executor.yaml").read_text())["execution"]["config"]
    config = _accepted(dagster_k8s.k8s_job_executor.config_schema.config_type, execution)
    assert config["step_k8s_config"]["container_config"]["resources"]["requests"]["cpu"] == "1"


def test_a_gpu_steps_pod_holds_one_card_on_a_gpu_node():
    gpu_steps = card_steps(defs)
    assert gpu_steps
    job_config = DagsterK8sJobConfig(job_image="registry.example/newsllm:1", dagster_home="/opt/dagster/dagster_home")
    for name, tags in gpu_steps.items():
        assert K8S_CONFIG_TAG in tags, name
        job = construct_dagster_k8s_job(job_config, ["dagster"], f"step-{name}", get_user_defined_k8s_config(tags))
        pod = job.spec.template.spec
        assert pod.containers[0].resources.limits["nvidia.com/gpu"] == "1", name
        assert pod.node_selector == {"nvidia.com/gpu.present": "true"}, name
        assert any(toleration.key == "nvidia.com/gpu" for toleration in pod.tolerations), name
