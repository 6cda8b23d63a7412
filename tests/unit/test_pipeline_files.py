"""Every YAML file shipped under pipelines/ loads and validates."""

from __future__ import annotations

from pathlib import Path

import pytest

from llamagene.pipeline import load_pipeline

ROOT = Path(__file__).resolve().parents[2]
PIPELINES = sorted((ROOT / "pipelines").rglob("pipeline*.yaml"))


def test_there_are_pipelines() -> None:
    assert ROOT / "pipelines" / "demo" / "pipeline.yaml" in PIPELINES


@pytest.mark.parametrize("path", PIPELINES, ids=lambda p: str(p.relative_to(ROOT)))
def test_pipeline_validates(path: Path) -> None:
    pipeline = load_pipeline(path)
    assert pipeline.check() == []
    assert pipeline.stages()
