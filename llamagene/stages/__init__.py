"""The stages of the pipeline, in the order they run.

Each stage is one module with a frozen ``Config``, and a ``STAGE`` object that says which stages
it reads from (``upstream``), which external files it reads (``inputs``), how to check them
without running (``check``) and how to run (``run``). A stage writes only into ``ctx.out_dir``;
the pipeline moves that folder to ``<run_dir>/<stage>/`` when the stage succeeds.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

#: Stages that are designed but not built yet; naming one in a pipeline is a clear error.
PLANNED_STAGES: tuple[str, ...] = ()
#: Per-stage folders that survive a failed run (checkpoints); removed when the stage succeeds.
WORK_DIR = ".work"


@dataclass
class StageContext:
    """What a running stage may use: where to write, and where its upstream stages wrote."""

    name: str
    run_dir: Path
    out_dir: Path
    upstream_dirs: dict[str, Path]
    #: Figures the stage reports (kept in the manifest and shown by ``llamagene status``).
    report: dict[str, Any] = field(default_factory=dict)
    log: logging.Logger = field(default_factory=lambda: logging.getLogger("llamagene"))
    #: Command prefix that starts training workers (``torchrun --nproc_per_node 8``); None
    #: trains in this process. Stages that do not train ignore it.
    launcher: list[str] | None = None

    def upstream(self, stage: str) -> Path:
        """The output folder of an upstream stage that has finished."""
        return self.upstream_dirs[stage]

    def work_dir(self, key: str) -> Path:
        """``<run_dir>/.work/<stage>/<key>/``: kept when the stage fails or is killed (so a
        rerun with the same ``key`` can resume), removed when the stage succeeds. Folders of
        other keys (an older config) are removed here."""
        stage_dir = self.run_dir / WORK_DIR / self.name
        if stage_dir.is_dir():
            for other in stage_dir.iterdir():
                if other.name != key:
                    self.log.info(
                        "%s: removing work folder of an older config: %s", self.name, other
                    )
                    shutil.rmtree(other, ignore_errors=True)
        path = stage_dir / key
        path.mkdir(parents=True, exist_ok=True)
        return path


class Stage(Protocol):
    """The interface every stage module's ``STAGE`` object offers."""

    name: str

    def upstream(self, cfg: Any) -> tuple[str, ...]:
        """The stages whose outputs this one reads, under ``cfg``."""
        ...

    def inputs(self, cfg: Any) -> dict[str, Path]:
        """Named external files or folders the stage reads; hashed before it runs."""
        ...

    def check(self, cfg: Any) -> list[str]:
        """Problems with the inputs found without running (missing files, wrong formats)."""
        ...

    def run(self, cfg: Any, ctx: StageContext) -> None:
        """Do the work, writing only under ``ctx.out_dir``."""
        ...


def all_stages() -> tuple[Stage, ...]:
    """The built stages in running order."""
    from llamagene.stages.build_sft import STAGE as BUILD_SFT
    from llamagene.stages.evaluate import STAGE as EVALUATE
    from llamagene.stages.finetune import STAGE as FINETUNE
    from llamagene.stages.merge_vocab import STAGE as MERGE_VOCAB
    from llamagene.stages.pretrain import STAGE as PRETRAIN
    from llamagene.stages.train_bpe import STAGE as TRAIN_BPE

    return (TRAIN_BPE, MERGE_VOCAB, PRETRAIN, BUILD_SFT, FINETUNE, EVALUATE)


def stage_names() -> tuple[str, ...]:
    return tuple(s.name for s in all_stages())
