"""newsllm_pipeline: Dagster pipelines for newsrooms that run their own LLMs."""
