"""GPU resources per job: one ComputeDevice per role, one concurrency pool per device, models placed on the step's
device and freed when the step ends, a memory budget on a card."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import dagster as dg
import pytest
import torch

from newsllm_pipeline import db
from newsllm_pipeline.jobs.noticias import categorize_noticias_job
from newsllm_pipeline.resources import noticias as noticias_resources
from newsllm_pipeline.resources.devices import ComputeDevice, device_pool
from newsllm_pipeline.resources.noticias import (
    ExLlamaV2CategorizerResource,
    NoticiasDatabase,
    TransformersCategorizerResource,
)
from tests.conftest import sample_rows

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU and a CUDA build of torch")


def test_each_device_has_its_own_pool():
    assert [device_pool(name) for name in ("cpu", "CPU", "cuda:1", "cuda", "auto")] == [
        "cpu",
        "cpu",
        "cuda:1",
        "cuda:0",
        "cuda:0",
    ]
    with pytest.raises(ValueError, match="unknown device 'gpu1'"):
        device_pool("gpu1")


LAYOUT = """
import json
from newsllm_pipeline.definitions import defs
from newsllm_pipeline.deployment import CELERY_QUEUE_TAG

steps = {
    node.name: [node.definition.pool, node.definition.tags.get(CELERY_QUEUE_TAG)]
    for job in defs.resolve_all_job_defs()
    for node in job.nodes_in_topological_order
    if node.definition.pool
}
devices = {key: value.device for key, value in defs.resources.items() if key.endswith("_device")}
print(json.dumps({"steps": steps, "devices": devices}))
"""


def _layout(**settings: str) -> dict:
    """Pools, queues and devices of the code location as a site with these NEWSLLM_* settings loads it."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("NEWSLLM_")}
    env.update({f"NEWSLLM_{name}": value for name, value in settings.items()})
    output = subprocess.run([sys.executable, "-c", LAYOUT], env=env, capture_output=True, text=True, check=True)
    return json.loads(output.stdout.strip().splitlines()[-1])


def test_two_cards_by_configuration_alone():
    """README › Operating it › GPU layout: categorisation and documents on card 0, training and evaluation on 1."""
    layout = _layout(CATEGORIZE_DEVICE="cuda:0", DESCRIBE_DEVICE="cuda:0", TRAIN_DEVICE="cuda:1")
    pools = {step: pool for step, (pool, _) in layout["steps"].items()}
    assert pools == {
        "categorize_backlog": "cuda:0",
        "docling_markdown": "cuda:0",
        "image_descriptions": "cuda:0",
        "training_dataset": "cuda:0",
        "lora_adapter": "cuda:1",
        "categorizer_adapter": "cuda:1",
        "adapter_evaluation": "cuda:1",  # the evaluation follows the training device unless set
        "categorizer_evaluation": "cuda:1",
    }
    assert all(queue == "gpu" for _, queue in layout["steps"].values())
    assert layout["devices"] == {
        "categorize_device": "cuda:0",
        "describe_device": "cuda:0",
        "train_device": "cuda:1",
        "evaluate_device": "cuda:1",
    }


def test_steps_on_the_cpu_share_the_cpu_pool_and_stay_on_the_default_queue():
    layout = _layout(CATEGORIZE_DEVICE="cpu", TRAIN_DEVICE="cpu", EVALUATE_DEVICE="cuda:0")
    assert layout["steps"]["categorize_backlog"] == ["cpu", None]
    assert layout["steps"]["lora_adapter"] == ["cpu", None]
    assert layout["steps"]["adapter_evaluation"] == ["cuda:0", "gpu"]


def _sqlite(tmp_path, rows: int) -> str:
    """A noticias table with `rows` sample rows (the database is not what these tests are about)."""
    url = f"sqlite:///{tmp_path / 'noticias.db'}"
    engine = db.create_db_engine(url)
    db.upgrade(engine)
    db.insert_new(engine, sample_rows(rows))
    return url


def _run(database_url: str, categorizer, device: ComputeDevice):
    resources = {"noticias_db": NoticiasDatabase(url=database_url), "categorizer": categorizer}
    return categorize_noticias_job.execute_in_process(
        resources={**resources, "categorize_device": device}, raise_on_error=False
    )


def test_a_step_whose_device_left_its_pool_fails_before_claiming(tmp_path, categorizer):
    """The step's pool was fixed when the code location loaded (card 0 here); a run configured onto another device
    would use a card its pool does not guard: it fails, naming both, and no row is claimed."""
    url = _sqlite(tmp_path, 3)
    result = _run(url, categorizer, ComputeDevice(device="cpu"))
    assert not result.success
    failure = result.get_step_failure_events()[0].step_failure_data.error.message
    assert "pool 'cuda:0'" in failure and "belongs to pool 'cpu'" in failure and "reload" in failure
    assert NoticiasDatabase(url=url).count_claimable() == 3


def test_the_step_shows_where_its_model_ran_and_frees_it_when_asked(tmp_path, categorizer):
    url = _sqlite(tmp_path, 6)
    device = ComputeDevice(device="auto", precision="auto")  # the site's default: on the CPU the model stays cached
    batches = {"ops": {"categorize_backlog": {"config": {"max_batches": 1, "batch_size": 3}}}}
    kept = categorize_noticias_job.execute_in_process(
        run_config=batches,
        resources={"noticias_db": NoticiasDatabase(url=url), "categorizer": categorizer, "categorize_device": device},
    )
    [output] = [event for event in kept.all_events if event.event_type_value == "STEP_OUTPUT"]
    metadata = output.event_specific_data.metadata
    assert metadata["device"].value == "auto" and metadata["pool"].value == "cuda:0"
    assert metadata["precision"].value == "auto" and metadata["memory_budget_gib"].value == "whole card"
    assert len(noticias_resources._loaded) == 1
    freed = _run(url, categorizer, ComputeDevice(device="auto", free_after_step=True))
    assert freed.success and freed.output_for_node("categorize_backlog") == 3
    assert not noticias_resources._loaded  # freed at the end of the step


def test_backends_are_placed_on_the_device():
    transformers = TransformersCategorizerResource(model_dir="m", device="cpu", dtype="auto")
    placed = transformers.on(ComputeDevice(device="cuda:1", precision="bf16"))
    assert (placed.device, placed.dtype) == ("cuda:1", "bf16")
    assert (transformers.device, transformers.dtype) == ("cpu", "auto")  # the original is unchanged
    exllama = ExLlamaV2CategorizerResource(model_dir="m")
    assert exllama.on(ComputeDevice(device="cuda:2", memory_budget_gib=20)).gpu_split == [0.0, 0.0, 20.0]
    configured = ExLlamaV2CategorizerResource(model_dir="m", gpu_split=[10, 10])
    assert configured.on(ComputeDevice(device="cuda:1")).gpu_split == [10, 10]  # a configured split wins
    with pytest.raises(dg.Failure, match="CUDA cards only"):
        exllama.on(ComputeDevice(device="cpu"))


@dg.op(pool="cuda:0")
def allocate(context, gpu: ComputeDevice) -> float:
    with gpu.step(context) as placement:
        block = torch.empty(int(1.5 * 2**30), dtype=torch.uint8, device="cuda:0")
        del block
    return placement["peak_device_memory_gib"]


@pytest.mark.gpu
@needs_cuda
def test_a_step_beyond_its_memory_budget_fails_and_the_card_is_given_back():
    job = dg.GraphDefinition(name="allocate_graph", node_defs=[allocate]).to_job()
    tight = job.execute_in_process(
        resources={"gpu": ComputeDevice(device="cuda:0", memory_budget_gib=1.0)}, raise_on_error=False
    )
    assert not tight.success
    assert "OutOfMemoryError" in tight.get_step_failure_events()[0].step_failure_data.error.cls_name
    roomy = job.execute_in_process(resources={"gpu": ComputeDevice(device="cuda:0", memory_budget_gib=4.0)})
    assert roomy.output_for_node("allocate") >= 1.5
    assert torch.cuda.memory_reserved(0) < 2**30  # freed at the end of the step (free_after_step: on CUDA)
