"""``llamagene templates``: ls, show, new, lint (and the lock), preview; through the real CLI."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from llamagene.cli import main
from llamagene.templates.lock import LOCK_NAME

FIXTURE_ROOT = Path(__file__).parents[1] / "fixtures" / "templates"
DEMO_TRANSLATE = Path(__file__).parents[2] / "pipelines" / "demo" / "tasks" / "translate.yaml"


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A writable copy of the fixture templates (lock included)."""
    copy = tmp_path / "templates"
    shutil.copytree(FIXTURE_ROOT, copy)
    return copy


def test_help_lists_templates_and_stays_light() -> None:
    code = (
        "import sys\n"
        "from llamagene.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "print(sorted({'jinja2', 'yaml', 'pydantic', 'torch'} & set(sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "templates" in out.stdout and "prompt templates" in out.stdout
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_templates_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["templates", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: llamagene templates")
    for command in ("ls", "show", "new", "lint", "preview"):
        assert f"    {command} " in out


def test_ls(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["templates", "--root", str(root), "ls"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["ID", "VERSION", "TASK", "TYPE", "FILE"]
    assert lines[1].split() == [
        "toy/binding/any",
        "2",
        "toy/binding/*",
        "binary",
        "toy/others.yaml",
    ]
    assert len(lines) == 5
    assert main(["templates", "--root", str(root), "ls", "--task", "toy/splice"]) == 0
    captured = capsys.readouterr()
    assert "not a known task: matching by id and glob only" in captured.err
    assert [line.split()[0] for line in captured.out.splitlines()[1:]] == [
        "toy/splice/site", "toy/splice/short", "toy/generic/sequence"
    ]  # fmt: skip
    assert main(["templates", "ls", "--task", "gue/tf/2"]) == 0  # a known task: the real rule
    ids = [line.split()[0] for line in capsys.readouterr().out.splitlines()[1:]]
    assert ids == ["gue/tf/bound", "gue/tf/binding_site"]


def test_show(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["templates", "show", "gue/splice/reconstructed/site_type"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("# gue/splice/reconstructed.yaml (includes and defaults applied)\n")
    assert "task_type: multiclass\nprompt: |-\n  Does this human DNA sequence" in out
    assert "# rendered for gue/splice/reconstructed with placeholder values" in out
    assert "Sequence: <dna>ACGTTAGCCATGGCTAGCTA</dna>" in out
    assert "# answer: acceptor\n# choices: acceptor | donor | neither\n" in out
    assert main(["templates", "show", "gue/splice/reconstructed/site_typ"]) == 2
    err = capsys.readouterr().err
    assert "no template 'gue/splice/reconstructed/site_typ'; did you mean" in err


def test_new_writes_a_scaffold_that_lint_refuses_until_filled(
    root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert (
        main(["templates", "--root", str(root), "new", "table/promoters", "--type", "binary"]) == 0
    )
    path = root / "table" / "promoters.yaml"
    assert f"wrote {path}" in capsys.readouterr().out
    text = path.read_text()
    assert "task: table/promoters\n    task_type: binary\n" in text
    assert (
        main(["templates", "--root", str(root), "new", "table/promoters", "--type", "binary"]) == 2
    )
    assert "already exists" in capsys.readouterr().err
    assert path.read_text() == text
    assert main(["templates", "--root", str(root), "lint", str(path)]) == 1
    out = capsys.readouterr().out
    assert "table/promoters/TODO_name: still has a TODO from the scaffold" in out
    filled = text.replace("TODO: ask the question in words specific to this task.", "Promoter?")
    path.write_text(filled.replace("TODO_name", "question"))
    assert main(["templates", "--root", str(root), "lint", str(path)]) == 1  # not in the lock yet
    assert "not in templates.lock.json" in capsys.readouterr().out
    assert main(["templates", "--root", str(root), "lint", "--update-lock"]) == 0
    assert main(["templates", "--root", str(root), "lint"]) == 0
    assert capsys.readouterr().out.endswith("5 templates, no problems\n")
    for task_type in ("multiclass", "multilabel", "regression", "token", "generation"):
        assert main(["templates", "--root", str(root), "new", f"s/{task_type}", "--type",
                     task_type]) == 0  # fmt: skip
    assert main(["templates", "--root", str(root), "lint"]) == 1
    problems = capsys.readouterr().out.splitlines()
    assert all("TODO" in p or "not in templates.lock.json" in p for p in problems[1:]), problems


def test_lint_shipped_templates_is_clean(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["templates", "lint"]) == 0
    out = capsys.readouterr().out.strip()
    assert out.endswith("templates, no problems") and int(out.split()[0]) >= 70


def test_lint_reports_one_line_per_problem(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = root / "bad" / "x.yaml"
    bad.parent.mkdir()
    bad.write_text(
        "templates:\n"
        "  - {id: bad/one, version: 1, task: gue/EMP/H3, task_type: binary, metrics: [mcc, auc],\n"
        "     prompt: '{{ sequence | dna }} in {{ organism }}', answer_choices: {'0': n, '1': y}}\n"
        "  - {id: bad/two, version: 1, task: gue/EMP/H9, task_type: binary, metrics: [mcc],\n"
        "     prompt: '{{ sequence | dna }}: {% if %}', answer_choices: {'0': n, '1': y}}\n"
    )
    assert main(["templates", "--root", str(root), "lint", str(bad)]) == 1
    captured = capsys.readouterr()
    shown = bad.relative_to(Path.cwd()) if bad.is_relative_to(Path.cwd()) else bad
    assert captured.out.splitlines() == [
        f"{shown}: bad/one: unknown metric 'auc' (known: accuracy, auroc, bleu, exact_match, f1, "
        "f1_macro, mae, mcc, mse, pearson, precision, recall, rouge_l, spearman)",
        f"{shown}: bad/one: uses organism, which task gue/EMP/H3 lacks (fields: sequence, label)",
        f"{shown}: bad/two: prompt line 1: Jinja syntax error: Expected an expression, got 'end "
        "of statement block'",
        f"{shown}: bad/one: not in templates.lock.json: run `llamagene templates lint "
        "--update-lock`",
        f"{shown}: bad/two: not in templates.lock.json: run `llamagene templates lint "
        "--update-lock`",
    ]
    assert captured.err == "2 templates, 5 problems\n"


def test_lock_update_and_version_bumps(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lock = root / LOCK_NAME
    before = lock.read_bytes()
    assert main(["templates", "--root", str(root), "lint", "--update-lock"]) == 0
    assert lock.read_bytes() == before  # unchanged templates: the very same bytes
    splice = root / "toy" / "splice.yaml"
    text = splice.read_text()
    splice.write_text(text.replace("Which splice site does this DNA contain?", "Which site?"))
    assert main(["templates", "--root", str(root), "lint", "--update-lock"]) == 1
    out = capsys.readouterr().out
    assert "toy/splice/site: text changed but version not bumped" in out
    assert lock.read_bytes() == before  # an unbumped change is never written to the lock
    splice.write_text(
        text.replace("Which splice site does this DNA contain?", "Which site?").replace(
            "version: 1", "version: 2", 1
        )
    )
    assert main(["templates", "--root", str(root), "lint"]) == 1
    assert "toy/splice/site: templates.lock.json has version 1: run" in capsys.readouterr().out
    assert main(["templates", "--root", str(root), "lint", "--update-lock"]) == 0
    assert f"wrote {lock} (4 templates)" in capsys.readouterr().out
    assert main(["templates", "--root", str(root), "lint"]) == 0
    (splice.parent / "_shared.yaml").write_text(
        (splice.parent / "_shared.yaml").read_text().replace("Answer acceptor", "Say acceptor")
    )
    assert main(["templates", "--root", str(root), "lint"]) == 1  # a shared var it uses changed
    assert "toy/splice/site: text changed but version not bumped" in capsys.readouterr().out
    assert main(["templates", "--root", str(root), "lint", "x.yaml", "--update-lock"]) == 2


def test_preview_placeholder_and_real_rows(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["templates", "preview", "uniprot/function/describe", "-n", "3"]) == 0
    out = capsys.readouterr().out
    assert "# no --data: rendering placeholder values for uniprot/function" in out
    assert "# no --tokenizer: lengths are characters, not tokens" in out
    assert ">>> An example answer." in out
    argv = ["templates", "preview", "demo/translate/translate", "-n", "2", "--split", "test",
            "--data", str(DEMO_TRANSLATE)]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert out.count("--- ") == 2 and "translate/test.csv:2: 159 + 39 characters" in out
    assert ">>> <protein>SEMTNQIAGEIQNMNATVEQ</protein>" in out
    argv = ["templates", "preview", "generic/binary/question", "--data", "/nonexistent"]
    assert main(argv) == 2
    assert "give --task ID" in capsys.readouterr().err


def test_preview_counts_tokens_with_the_merged_tokenizer(
    merged_tokenizer_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["templates", "preview", "demo/translate/translate", "-n", "1", "--data",
            str(DEMO_TRANSLATE), "--tokenizer", str(merged_tokenizer_dir)]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    header = next(line for line in out.splitlines() if line.startswith("--- "))
    shown = int(header.split(": ")[-1].split()[0])
    assert header.endswith("tokens (in the prompt format, as build_sft counts a row)")
    # the count a row gets in the prompt format; checked here with the chat template that the
    # tokenizer folder ships, through transformers, not with llamagene's counter
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(merged_tokenizer_dir))
    body = out.split(header + "\n", 1)[1]
    prompt, answer = body.split("\n>>> ", 1)
    answer = answer.splitlines()[0]
    messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]
    ids = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=False)
    assert shown == len(ids)
