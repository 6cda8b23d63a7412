"""The lm-eval export: its files, task functions that give llamagene's ids on every row, bad input,
and (where lm-eval is installed) lm-eval's log-likelihoods equal to a direct computation."""

from __future__ import annotations

import importlib.util
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from llamagene.errors import StageError
from llamagene.evaluation import lm_eval_export
from llamagene.evaluation.lm_eval_export import export_lm_eval
from llamagene.prompt_format import Message, PromptFormat


def _row(task: str, template: str | None, prompt: str, answer: str, **extra: Any) -> dict[str, Any]:
    """A line of build_sft's test.jsonl (the keys ``row_line`` writes)."""
    return {
        "task": task, "split": "test", "index": 0, "copy": "r0", "template_id": template,
        "template_version": None if template is None else 2, "prompt": prompt,
        "answer": answer, "choices": None, "markup": template is not None, "fields": {},
        "tokens": 40, "trimmed": None, "messages": None, **extra,
    }  # fmt: skip


PROM, SPLICE = "gue/prom/prom_300_all", "gue/splice/reconstructed"
TRANSLATE, CHAT = "demo/translate", "english/chat"
YES_NO = ["no", "yes"]
ROWS = [
    _row(PROM, "gue/prom/yes_no", "Is <dna>ACGTTGCATATAAT</dna> a promoter?\nAnswer:", "yes",
         choices=YES_NO),
    _row(PROM, "gue/prom/yes_no", "Is <dna>GGGCCCAAATTTN</dna> a promoter?\nAnswer:", "no",
         choices=YES_NO, index=1),
    _row(PROM, "gue/prom/label", "  <dna>TTTTAAAACCCC</dna>\nLabel:  ", "non-promoter",
         choices=["non-promoter", "promoter"]),
    _row(SPLICE, "gue/splice/site", "Site of <dna>AGGTAAGTCCAG</dna>?", "donor",
         choices=["acceptor", "donor", "neither"]),
    _row(TRANSLATE, "demo/translate/v1", "Translate <dna>ATGAAAGTT</dna> in frame 0.",
         "<protein>MKV</protein>"),
    _row(CHAT, None, "What does <dna> mean in HTML? Say <protein>MKV</protein>.", "Nothing."),
    _row(CHAT, None, "Hi", "Hello", messages=[{"role": "user", "content": "Hi"}]),
]  # fmt: skip
TASK_TYPES = {PROM: "binary", SPLICE: "multiclass", TRANSLATE: "generation", CHAT: "generation"}
NAMES = [
    "llamagene_demo_translate__demo_translate_v1",
    "llamagene_english_chat__plain",
    "llamagene_gue_prom_prom_300_all__gue_prom_label",
    "llamagene_gue_prom_prom_300_all__gue_prom_yes_no",
    "llamagene_gue_splice_reconstructed__gue_splice_site",
]


def _write_rows(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory: pytest.TempPathFactory, merged_tokenizer_dir: Path) -> Path:
    root = tmp_path_factory.mktemp("lm_eval_export")
    rows_path = _write_rows(root / "test.jsonl", ROWS)
    assert export_lm_eval(rows_path, TASK_TYPES, merged_tokenizer_dir, root / "out") == NAMES
    return root / "out"


@pytest.fixture(scope="module")
def fmt(merged_tokenizer_dir: Path) -> PromptFormat:
    return PromptFormat.from_dir(merged_tokenizer_dir)


def _task_module(export_dir: Path) -> ModuleType:
    path = export_dir / "llamagene_tasks.py"
    spec = importlib.util.spec_from_file_location("exported_tasks", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _docs(export_dir: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    for name in NAMES:
        for line in (export_dir / "data" / f"{name}.jsonl").read_text("utf-8").splitlines():
            yield name, json.loads(line)


def test_the_folder_holds_a_yaml_and_a_data_file_per_task_and_the_groups(export_dir: Path) -> None:
    groups = ["llamagene", *sorted({n.split("__")[0] for n in NAMES})]
    want = {"README.md", "llamagene_tasks.py", *(f"{n}.yaml" for n in NAMES + groups)}
    want |= {f"data/{n}.jsonl" for n in NAMES}
    assert {str(p.relative_to(export_dir)) for p in export_dir.rglob("*") if p.is_file()} == want
    assert not list(export_dir.parent.glob(".out.*"))  # no temporary folder left
    yes_no = (export_dir / f"{NAMES[3]}.yaml").read_text("utf-8")
    assert "output_type: multiple_choice" in yes_no and "version: 2" in yes_no
    assert "doc_to_text: !function llamagene_tasks.doc_to_text" in yes_no
    translate = (export_dir / f"{NAMES[0]}.yaml").read_text("utf-8")
    assert "output_type: generate_until" in translate and "- </s>" in translate
    readme = (export_dir / "README.md").read_text("utf-8")
    assert "lm_eval --model hf" in readme and "1 conversation rows were left out" in readme
    assert f"--include_path {export_dir.resolve()} --tasks llamagene" in readme
    assert sum(1 for _ in _docs(export_dir)) == len(ROWS) - 1


def test_contexts_and_choices_encode_to_the_prompt_format_ids(
    export_dir: Path, fmt: PromptFormat, merged_tokenizer_dir: Path
) -> None:
    """What lm-eval's HF model does: the context (it starts with the BOS text, so no BOS is
    added) and context + " " + choice encoded whole; the choice's ids are those after the
    context's. They are exactly llamagene's prompt ids and the choice's ``text_ids``."""
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(str(merged_tokenizer_dir))
    tasks = _task_module(export_dir)
    choices_seen = 0
    for name, doc in _docs(export_dir):
        markup = doc["markup"]
        context = tasks.doc_to_text(doc)
        assert context.startswith(hf.bos_token)
        context_ids = hf.encode(context, add_special_tokens=False)
        assert context_ids == fmt.prompt_ids([Message("user", doc["prompt"])], markup), name
        if doc["choices"] is None:  # generate_until: the gold text is what decoding gives
            answer_ids = fmt.text_ids([doc["answer"]], markup)[0]
            assert tasks.doc_to_answer(doc) == fmt.tokenizer.decode(answer_ids)
            continue
        assert doc["choices"][tasks.doc_to_gold(doc)] == doc["answer"]
        for choice, mapped in zip(doc["choices"], tasks.doc_to_choice(doc), strict=True):
            whole = hf.encode(context + " " + mapped, add_special_tokens=False)
            assert whole[: len(context_ids)] == context_ids
            assert whole[len(context_ids) :] == fmt.text_ids([choice], markup)[0]
            choices_seen += 1
    assert choices_seen == 9


def test_the_folder_can_move_and_still_finds_its_rows(
    export_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    moved = tmp_path / "elsewhere"
    shutil.copytree(export_dir, moved)
    monkeypatch.chdir(tmp_path)
    data = {"test": f"data/{NAMES[3]}.jsonl"}
    rows = _task_module(moved).load_rows(data_files=data, version=2)["test"]
    assert [r["index"] for r in rows] == [0, 1]


@pytest.mark.parametrize(
    ("lines", "problem"),
    [
        ([], r"test\.jsonl: no rows to export"),
        ([ROWS[0], {**ROWS[1], "choices": None}], r"test\.jsonl:2: a binary task's row has no "),
        ([ROWS[0], {**ROWS[1], "answer": "maybe"}], r"test\.jsonl:2: the answer 'maybe' is not"),
        ([{**ROWS[0], "task": "gue/other"}], r"test\.jsonl:1: task 'gue/other' has no known"),
        ([{**ROWS[0], "prompt": "<dna>ACGU</dna>"}], r"test\.jsonl:1: .*'U' is not a dna letter"),
    ],
)
def test_bad_rows_fail_with_one_line_naming_the_file_and_line(
    tmp_path: Path, merged_tokenizer_dir: Path, lines: list[dict[str, Any]], problem: str
) -> None:
    rows_path = _write_rows(tmp_path / "test.jsonl", lines)
    with pytest.raises(StageError, match=problem) as err:
        export_lm_eval(rows_path, TASK_TYPES, merged_tokenizer_dir, tmp_path / "out")
    assert "\n" not in str(err.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["test.jsonl"]


def test_a_failed_export_leaves_the_previous_one_whole(
    tmp_path: Path, merged_tokenizer_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rows_path, out = _write_rows(tmp_path / "test.jsonl", ROWS[:2]), tmp_path / "out"
    export_lm_eval(rows_path, TASK_TYPES, merged_tokenizer_dir, out)
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}

    def fail(*_: object) -> str:
        raise OSError("disk full")

    monkeypatch.setattr(lm_eval_export, "_readme", fail)
    with pytest.raises(OSError, match="disk full"):
        export_lm_eval(_write_rows(rows_path, ROWS), TASK_TYPES, merged_tokenizer_dir, out)
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "test.jsonl"]
    monkeypatch.undo()
    assert export_lm_eval(rows_path, TASK_TYPES, merged_tokenizer_dir, out) == NAMES
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep", encoding="utf-8")
    with pytest.raises(StageError, match="is not an lm-eval export"):
        export_lm_eval(rows_path, TASK_TYPES, merged_tokenizer_dir, tmp_path / "mine")


def test_lm_eval_scores_the_rows_as_llamagene_does(
    export_dir: Path, fmt: PromptFormat, merged_tokenizer_dir: Path, tmp_path: Path
) -> None:
    """lm-eval loads the folder, builds the requests and scores them with its HF model; each
    choice's log-likelihood equals a forward pass over llamagene's ids (to 1e-4)."""
    pytest.importorskip("lm_eval")
    import torch
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager, get_task_dict
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=fmt.tokenizer.get_vocab_size(), hidden_size=32, intermediate_size=64,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=256, bos_token_id=fmt.bos_id, eos_token_id=fmt.eos_id,
    )  # fmt: skip
    model = LlamaForCausalLM(config).eval()
    model.save_pretrained(str(tmp_path / "model"))
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy2(merged_tokenizer_dir / name, tmp_path / "model" / name)
    lm = HFLM(pretrained=str(tmp_path / "model"), device="cpu", dtype="float32", batch_size=4)

    def leaves(tree: dict[Any, Any]) -> Iterator[Any]:  # get_task_dict's nested groups
        for value in tree.values():
            yield from leaves(value) if isinstance(value, dict) else [value]

    manager = TaskManager(include_path=str(export_dir), include_defaults=False)
    if hasattr(manager, "load"):  # lm-eval 0.4.13 on
        tasks = manager.load(["llamagene"])["tasks"]
    else:
        tasks = {t.config.task: t for t in leaves(get_task_dict(["llamagene"], manager))}
    assert sorted(tasks) == NAMES
    requests = []
    for task in tasks.values():
        task.build_all_requests(limit=None, rank=0, world_size=1)
        requests += task.instances
    choices = [r for r in requests if r.request_type == "loglikelihood"]
    assert len(choices) == 9
    for (got, _), request in zip(lm.loglikelihood(choices), choices, strict=True):
        doc = request.doc
        prompt = fmt.prompt_ids([Message("user", doc["prompt"])], doc["markup"])
        choice = fmt.text_ids([doc["choices"][request.idx]], doc["markup"])[0]
        with torch.no_grad():
            logits = model(torch.tensor([prompt + choice])).logits[0].log_softmax(-1)
        want = sum(float(logits[len(prompt) - 1 + i, t]) for i, t in enumerate(choice))
        assert got == pytest.approx(want, abs=1e-4)
    for request in (r for r in requests if r.request_type == "generate_until"):
        ids, _ = lm.tok_batch_encode([request.args[0]])
        assert ids[0].tolist() == fmt.prompt_ids([Message("user", request.doc["prompt"])],
                                                 request.doc["markup"])  # fmt: skip
