"""Checkpoints a training run can resume from, checked before they are trusted.

A kill or a full disk during a save leaves a checkpoint incomplete. :func:`resume_checkpoint`
picks the newest *complete* one (:func:`checkpoint_problem` says what is wrong with the others),
logs one line per skipped checkpoint and removes it, so HF ``Trainer`` neither rotates it nor
saves into it again. :func:`trim_metrics` drops the log lines a resumed run will redo.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import zipfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from llamagene.errors import StageError
from llamagene.manifest import write_text_atomic
from llamagene.training.spec import zero_stage

log = logging.getLogger("llamagene")

#: Model weights a resume may load, in HF ``Trainer``'s order of preference.
_WEIGHT_FILES = (
    "adapter_model.safetensors", "adapter_model.bin", "model.safetensors", "pytorch_model.bin",
)  # fmt: skip
_SHARD_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
#: DeepSpeed's ZeRO optimizer shards: ``[bf16_]zero_pp_rank_R_mp_rank_MM_optim_states.pt``.
_ZERO_OPTIM = re.compile(r"zero_pp_rank_(\d+)_mp_rank_\d+_optim_states\.pt$")
#: The RNG states of one process of many (one process writes ``rng_state.pth``).
_RANKED_RNG = re.compile(r"rng_state_(\d+)\.pth$")
#: An incomplete checkpoint is renamed to this prefix + its name (which HF ``Trainer``'s
#: ``checkpoint-*`` glob never matches), then deleted.
_DISCARDED = ".incomplete-"


def checkpoint_problem(folder: Path, deepspeed_config: dict[str, Any] | None = None) -> str | None:
    """Why a resume from ``folder`` (a ``checkpoint-N``) would fail or go astray, in a few
    words; ``None`` when it is complete.

    A kill or a full disk during a save leaves files missing or cut short. Checked: the trainer
    state (a JSON object, of step N), the model weights, optimizer, scheduler and RNG states (a
    torch file is a zip archive, whose directory sits at its end; a safetensors file is a JSON
    header and the data it places), and for DeepSpeed the ``global_step*`` folder that
    ``latest`` names, with its model and ZeRO optimizer files. Cheap: nothing is unpickled."""
    state = _json_file(folder / "trainer_state.json")
    if isinstance(state, str):
        return state
    step = state.get("global_step")
    if step is not None and step != checkpoint_step(folder):
        return f"trainer_state.json is of step {step}"
    processes = checkpoint_processes(folder)
    problems = [_weights_problem(folder, required=deepspeed_config is None)]
    if deepspeed_config is None:
        problems.append(_torch_file_problem(folder / "optimizer.pt"))
    else:
        stage = zero_stage(deepspeed_config) or 0
        problems.append(_deepspeed_problem(folder, processes if stage else 0))
    if deepspeed_config is None or "scheduler" not in deepspeed_config:
        problems.append(_torch_file_problem(folder / "scheduler.pt"))  # else DeepSpeed's own
    if processes == 1:
        problems.append(_torch_file_problem(folder / "rng_state.pth"))
    else:
        problems.extend(
            _torch_file_problem(folder / f"rng_state_{r}.pth") for r in range(processes)
        )
    return next((p for p in problems if p is not None), None)


def checkpoint_processes(folder: Path) -> int:
    """How many training processes wrote a checkpoint (each saves its RNG states, and under
    ZeRO its optimizer shard)."""
    ranks = _ranks(folder.glob("rng_state_*.pth"), _RANKED_RNG)
    ranks |= _ranks(folder.glob("global_step*/*optim_states.pt"), _ZERO_OPTIM)
    return max(ranks, default=0) + 1


def load_trainable_weights(model: Any, checkpoint: Path) -> None:
    """The trained weights of ``checkpoint`` (its PEFT adapter file: LoRA matrices and
    embedding rows) into ``model``, a PEFT model, gathered first where ZeRO-3 partitions them.
    What a resume on another number of processes keeps of a DeepSpeed checkpoint, whose
    optimizer state is partitioned per process."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    from llamagene.training.model import gathered

    path = checkpoint / "adapter_model.safetensors"
    if not path.is_file():
        raise StageError(f"{checkpoint}: no adapter_model.safetensors to resume the weights from")
    weights = load_file(str(path))
    trained = [p for p in model.parameters() if p.requires_grad]  # all the adapter file holds
    with gathered(trained):
        result = set_peft_model_state_dict(model, weights)
    unexpected = list(getattr(result, "unexpected_keys", []) or [])
    if unexpected:
        raise StageError(
            f"{path}: {len(unexpected)} weights fit no parameter of this model (e.g. "
            f"{unexpected[0]}): the checkpoint belongs to another model"
        )


def resume_checkpoint(
    checkpoints: Path,
    deepspeed_config: dict[str, Any] | None = None,
    *,
    stage: str = "training",
    tidy: bool = True,
) -> Path | None:
    """The newest complete checkpoint to resume from; each newer, incomplete one is skipped
    with one log line saying why and, when ``tidy`` (rank 0 only), removed, so that HF
    ``Trainer`` neither counts it among the checkpoints it rotates nor saves into it when
    training reaches its step again."""
    resume, skipped = _newest_complete(checkpoints, deepspeed_config)
    if not tidy:
        return resume
    then = f"resuming from {resume.name}" if resume else "starting from step 0"
    for folder, why in skipped:
        log.warning("%s: skipping %s: %s; %s", stage, folder.name, why, then)
        _discard(folder)
    for leftover in checkpoints.glob(f"{_DISCARDED}*"):  # a removal cut short by a kill
        shutil.rmtree(leftover, ignore_errors=True)
    return resume


def _newest_complete(
    checkpoints: Path, deepspeed_config: dict[str, Any] | None
) -> tuple[Path | None, list[tuple[Path, str]]]:
    """The newest complete checkpoint, and the newer ones that are not, each with why."""
    if not checkpoints.is_dir():
        return None, []
    found = [
        d for d in checkpoints.glob("checkpoint-*")
        if d.name.split("-", 1)[1].isdigit() and d.is_dir()
    ]  # fmt: skip
    skipped: list[tuple[Path, str]] = []
    for folder in sorted(found, key=checkpoint_step, reverse=True):
        why = checkpoint_problem(folder, deepspeed_config)
        if why is None:
            return folder, skipped
        skipped.append((folder, why))
    return None, skipped


def _discard(folder: Path) -> None:
    aside = folder.with_name(f"{_DISCARDED}{folder.name}")
    try:
        if aside.exists():
            shutil.rmtree(aside)
        os.replace(folder, aside)
    except OSError as err:
        raise StageError(
            f"cannot move the incomplete checkpoint {folder} out of the way ({err}); "
            "delete it and rerun"
        ) from None
    shutil.rmtree(aside, ignore_errors=True)


def _json_file(path: Path) -> dict[str, Any] | str:
    """The JSON object in ``path``, or what is wrong with it."""
    try:
        text = path.read_bytes()
    except FileNotFoundError:
        return f"{path.name} is missing"
    except OSError as err:
        return f"{path.name} cannot be read ({err.strerror or err})"
    if not text.strip():
        return f"{path.name} is empty"
    try:
        data = json.loads(text)
    except ValueError:
        return f"{path.name} is truncated (not valid JSON)"
    return data if isinstance(data, dict) else f"{path.name} is not a JSON object"


def _torch_file_problem(path: Path) -> str | None:
    """``torch.save`` writes a zip archive: one cut short lacks its central directory."""
    if not path.is_file():
        return f"{path.name} is missing"
    try:
        complete = zipfile.is_zipfile(path)
    except OSError as err:
        return f"{path.name} cannot be read ({err.strerror or err})"
    return None if complete else f"{path.name} is truncated (not a complete torch archive)"


def _safetensors_problem(path: Path) -> str | None:
    """A safetensors file: 8 bytes giving the header's length, the JSON header, then the data,
    which must reach as far as the header's furthest ``data_offsets`` end."""
    try:
        size = path.stat().st_size
        with path.open("rb") as handle:
            head = handle.read(8)
            length = int.from_bytes(head, "little") if len(head) == 8 else -1
            if not 0 <= length <= size - 8:
                return f"{path.name} is truncated (incomplete header)"
            header = json.loads(handle.read(length))
        ends = [
            int(entry["data_offsets"][1]) for name, entry in header.items()
            if name != "__metadata__"
        ]  # fmt: skip
    except OSError as err:
        return f"{path.name} cannot be read ({err.strerror or err})"
    except (ValueError, TypeError, KeyError, IndexError, AttributeError):
        return f"{path.name} is truncated or corrupt (unreadable header)"
    needed = 8 + length + max(ends, default=0)
    if size < needed:
        return f"{path.name} is truncated ({size} of {needed} bytes)"
    return None


def _weights_problem(folder: Path, required: bool) -> str | None:
    """Every model weights file present must be whole; one must be present when ``required``
    (a DeepSpeed checkpoint keeps the weights it resumes from in its ``global_step*`` folder)."""
    files = [folder / name for name in _WEIGHT_FILES if (folder / name).is_file()]
    for index_name in _SHARD_INDEXES:
        if (folder / index_name).is_file():
            index = _json_file(folder / index_name)
            if isinstance(index, str):
                return index
            weight_map = index.get("weight_map")
            if not isinstance(weight_map, dict):
                return f"{index_name} has no weight_map"
            files.extend(folder / str(shard) for shard in sorted(set(weight_map.values())))
    if not files:
        return "the model weights are missing" if required else None
    for path in files:
        if not path.is_file():
            return f"{path.name} is missing"
        problem = (
            _safetensors_problem(path) if path.suffix == ".safetensors"
            else _torch_file_problem(path)
        )  # fmt: skip
        if problem is not None:
            return problem
    return None


def _ranks(paths: Iterable[Path], pattern: re.Pattern[str]) -> set[int]:
    return {int(m.group(1)) for path in paths if (m := pattern.search(path.name))}


def _deepspeed_problem(folder: Path, optimizer_shards: int) -> str | None:
    """``latest`` names the ``global_step*`` folder DeepSpeed resumes from: its model states
    (one file, or one per rank under ZeRO-3) and, under ZeRO, one optimizer shard per rank."""
    try:
        tag = (folder / "latest").read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return "latest is missing (no DeepSpeed state)"
    except (OSError, UnicodeDecodeError) as err:
        return f"latest cannot be read ({err})"
    state_dir = folder / tag
    if not tag or "/" in tag or not state_dir.is_dir():
        return f"latest names {tag!r}, which is not a folder of the checkpoint"
    files = sorted(state_dir.glob("*.pt"))
    if not any(p.name.endswith("model_states.pt") for p in files):
        return f"{tag}/ has no model states"
    missing = sorted(set(range(optimizer_shards)) - _ranks(files, _ZERO_OPTIM))
    if missing:
        ranks = ", ".join(map(str, missing))
        return f"{tag}/ lacks the ZeRO optimizer states of rank {ranks}"
    for path in files:
        problem = _torch_file_problem(path)
        if problem is not None:
            return f"{tag}/{problem}"
    return None


def checkpoint_step(path: Path) -> int:
    return int(path.name.split("-")[-1])


def trim_metrics(path: Path, step: int) -> None:
    """Drop log lines written after the checkpoint we resume from (they will be redone), and
    a line cut short by a kill."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue  # empty, or cut short
        if isinstance(record, dict) and record.get("step", 0) <= step:
            kept.append(line)
    write_text_atomic(path, "".join(f"{line}\n" for line in kept))
