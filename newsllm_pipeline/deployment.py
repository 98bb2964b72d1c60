"""Where steps run when one machine is not enough: Dagster's distributed engines, configured by files in deploy/.

- Steps that load a model on a card (the ops and assets in a `cuda:N` pool, resources/devices.py) carry
  GPU_STEP_TAGS: on Celery they go to the `gpu` queue, which only the GPU machines' workers take (every other step
  goes to `default`); on Kubernetes with the k8s_job_executor each is a pod on a GPU node holding one card
  (deploy/k8s/gpu-step.yaml).
- `on_celery(job)` is a job again with every step sent to a Celery worker, with the broker, result backend and
  default queue of deploy/celery/celery.yaml, the file the workers start with too. The variants exist where the
  `distributed` extra (dagster-celery) is installed.
"""

import importlib.util

import dagster as dg
import yaml
from dagster._core.definitions.unresolved_asset_job_definition import UnresolvedAssetJobDefinition

from .resources.devices import role_pool
from .settings import CHECKOUT

DEPLOY = CHECKOUT / "deploy"
CELERY_CONFIG = DEPLOY / "celery" / "celery.yaml"
K8S_GPU_STEP_CONFIG = DEPLOY / "k8s" / "gpu-step.yaml"

CELERY_QUEUE_TAG = "dagster-celery/queue"  # dagster_celery.tags.DAGSTER_CELERY_QUEUE_TAG
K8S_CONFIG_TAG = "dagster-k8s/config"  # dagster_k8s.job.USER_DEFINED_K8S_CONFIG_KEY
GPU_QUEUE = "gpu"


def _read_yaml(path) -> dict:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


GPU_STEP_TAGS = {CELERY_QUEUE_TAG: GPU_QUEUE, K8S_CONFIG_TAG: _read_yaml(K8S_GPU_STEP_CONFIG)}


def device_step_tags(role: str) -> dict:
    """The tags of a step that runs `role`'s models: on a card, GPU_STEP_TAGS; on the CPU none (default queue)."""
    return {} if role_pool(role) == "cpu" else GPU_STEP_TAGS


def celery_executor_config() -> dict:
    """The `celery_executor` configuration of deploy/celery/celery.yaml (the `execution: config:` block)."""
    return _read_yaml(CELERY_CONFIG)["execution"]["config"]


def on_celery(*jobs: dg.JobDefinition | UnresolvedAssetJobDefinition) -> list:
    """Each job again as `<name without _job>_celery_job`, every step a Celery task; none without dagster-celery."""
    if importlib.util.find_spec("dagster_celery") is None:
        return []
    from dagster_celery import celery_executor

    executor = celery_executor.configured(celery_executor_config(), name="celery")
    variants = []
    for job in jobs:
        name = job.name.removesuffix("_job") + "_celery_job"
        description = f"{job.description} Every step runs on a Celery worker (deploy/celery)."
        if isinstance(job, dg.JobDefinition):
            variants.append(job.graph.to_job(name=name, description=description, tags=job.tags, executor_def=executor))
        else:
            variants.append(
                dg.define_asset_job(
                    name,
                    selection=job.selection,
                    description=description,
                    tags=job.tags,
                    executor_def=executor,
                )
            )
    return variants


def card_steps(definitions: dg.Definitions) -> dict[str, dict]:
    """Every step that runs a model on a card (an op in a `cuda:N` pool), with its tags: what must reach the GPU
    queue."""
    return {
        node.name: dict(node.definition.tags)
        for job in definitions.resolve_all_job_defs()
        for node in job.nodes_in_topological_order
        if (node.definition.pool or "").startswith("cuda:")
    }
