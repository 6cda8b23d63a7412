"""Prompt templates: golden renderings, the shipped set linted clean, and every bad input."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from llamagene.tasks import ClassInfo, TaskInfo
from llamagene.tasks.gue import GUE_DATASETS
from llamagene.tasks.lucaone import PAIR_FIELDS, SINGLE_FIELDS
from llamagene.tasks.table import load_table
from llamagene.templates import (
    LintProblem,
    PromptTemplate,
    TemplateError,
    answer_fields,
    bind,
    collect_templates,
    load_templates,
    render,
    shipped_templates_dir,
    templates_for,
)
from llamagene.templates.cli import known_tasks
from llamagene.templates.lint import lint
from llamagene.templates.lock import LOCK_NAME, lock_problems, lock_text, read_lock

FIXTURE_ROOT = Path(__file__).parents[1] / "fixtures" / "templates"
DEMO_TASKS = Path(__file__).parents[2] / "pipelines" / "demo" / "tasks"
SPLICE = GUE_DATASETS["splice/reconstructed"]
CLASSES = (ClassInfo("0", "cytoplasm"), ClassInfo("1", "nucleus"), ClassInfo("2", "membrane"))


@pytest.fixture(scope="module")
def shipped() -> dict[str, PromptTemplate]:
    return {t.id: t for t in load_templates()}


def _lucaone(name: str, task_type: Any, pair: bool) -> TaskInfo:
    classes = {"binary": CLASSES[:2], "regression": ()}.get(task_type, CLASSES)
    seqs = {"sequence_a": "protein", "sequence_b": "dna"} if pair else {"sequence": "protein"}
    return TaskInfo(
        id=f"lucaone/{name}",
        task_type=task_type,
        description=f"LucaOne task {name}",
        fields=PAIR_FIELDS if pair else SINGLE_FIELDS,
        sequence_fields=seqs,  # type: ignore[arg-type]
        metric="mcc",
        classes=classes,
    )


def _all_tasks() -> list[TaskInfo]:
    tasks = known_tasks()  # GUE's 28 and uniprot/function
    tasks += [load_table(spec).info for spec in sorted(DEMO_TASKS.glob("*.yaml"))]
    for task_type in ("binary", "multiclass", "multilabel", "regression"):
        tasks.append(_lucaone(f"single_{task_type}", task_type, pair=False))
        tasks.append(_lucaone(f"pair_{task_type}", task_type, pair=True))
    return tasks


def _write(root: Path, name: str, text: str) -> Path:
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def _one(tmp_path: Path, body: str, name: str = "t.yaml") -> PromptTemplate:
    """The single template of a file holding ``templates:`` + ``body`` (one list item)."""
    _write(tmp_path, name, "templates:\n" + body)
    (template,) = load_templates(tmp_path)
    return template


SPLICE_ITEM = """\
  - id: x/splice
    version: 1
    task: gue/splice/reconstructed
    task_type: multiclass
    prompt: |-
      {PROMPT}
    answer_choices: {CHOICES}
    metrics: [mcc]
"""


DEFAULT_PROMPT = (
    "Seq: {{ sequence | dna }}\n      Answer acceptor, donor or neither.\n      Answer:"
)
DEFAULT_CHOICES = '{"0": acceptor, "1": donor, "2": neither}'


def _errors(problems: list[LintProblem]) -> list[LintProblem]:
    """The problems that fail lint (warnings left out)."""
    return [p for p in problems if not p.warning]


def _splice(
    tmp_path: Path, prompt: str = DEFAULT_PROMPT, choices: str = DEFAULT_CHOICES
) -> PromptTemplate:
    return _one(tmp_path, SPLICE_ITEM.replace("{PROMPT}", prompt).replace("{CHOICES}", choices))


# --- golden renderings ----------------------------------------------------------------------


GOLDEN: list[tuple[str, int, str, dict[str, Any], str, str]] = [
    (
        "gue/splice/reconstructed/site_type",
        1,
        "splice/reconstructed",
        {"sequence": "CAGGTAAGT", "label": "1"},
        "Does this human DNA sequence contain a splice acceptor site (the 3' end of an intron), "
        "a splice donor site (the 5' end of an intron), or neither?\n"
        "Sequence: <dna>CAGGTAAGT</dna>\nAnswer acceptor, donor or neither.\nAnswer:",
        "donor",
    ),
    (
        "gue/EMP/H3K4me3/enrichment",
        2,
        "EMP/H3K4me3",
        {"sequence": "ACGTN", "label": "1"},
        "Yeast genomic DNA: <dna>ACGTN</dna>\nH3K4me3 (trimethylation of histone H3 lysine 4) is "
        "found mostly at the 5' end of active genes.\nIs the ChIP-chip enrichment of H3K4me3 "
        "over this region high or low? Answer high or low.\nAnswer:",
        "high",
    ),
    (
        "gue/tf/bound",
        2,
        "tf/3",
        {"sequence": "TTGACA", "label": "0"},
        "Is this 6 bp human DNA sequence a binding site of the transcription factor profiled by "
        "ChIP-seq, i.e. does it lie within one of the factor's ChIP-seq peaks?\n"
        "Sequence: <dna>TTGACA</dna>\nAnswer yes or no.\nAnswer:",
        "no",
    ),
    (
        "gue/prom/prom_300_all/question",
        2,
        "prom/prom_300_all",
        {"sequence": "TATAAAAGGC", "label": "1"},
        "Is this 10 bp human DNA sequence a promoter, i.e. the region just upstream of and around "
        "a transcription start site?\nSequence: <dna>TATAAAAGGC</dna>\n"
        "The promoters in this set are promoters with or without a TATA box. Answer yes or no.\n"
        "Answer:",
        "yes",
    ),
    (
        "gue/virus/covid/class_number",
        2,
        "virus/covid",
        {"sequence": "ACGT", "label": "7"},
        "SARS-CoV-2 genome fragment: <dna>ACGT</dna>\nWhich variant class does this fragment come "
        "from? Answer with the class number: 0, 1, 2, 3, 4, 5, 6, 7 or 8.\nVariant class:",
        "7",
    ),
]


@pytest.mark.parametrize(("template_id", "version", "dataset", "row", "prompt", "answer"), GOLDEN)
def test_golden_gue(
    shipped: dict[str, PromptTemplate],
    template_id: str,
    version: int,
    dataset: str,
    row: dict[str, Any],
    prompt: str,
    answer: str,
) -> None:
    out = render(bind(shipped[template_id], GUE_DATASETS[dataset]), row)
    assert (out.prompt, out.answer) == (prompt, answer)
    assert out.template_id == template_id and out.template_version == version


def test_golden_lucaone_pair_uniprot_and_generic(shipped: dict[str, PromptTemplate]) -> None:
    ppi = replace(
        _lucaone("ppi", "binary", pair=True),
        sequence_fields={"sequence_a": "protein", "sequence_b": "protein"},
        classes=(ClassInfo("0", "no interaction"), ClassInfo("1", "interaction")),
    )
    row = {"seq_id_a": "P1", "seq_id_b": "P2", "sequence_a": "MKV", "sequence_b": "MGG",
           "seq_type_a": "protein", "seq_type_b": "protein", "label": "1"}  # fmt: skip
    out = render(bind(shipped["lucaone/pair/binary_question"], ppi), row)
    assert out.prompt == (
        "LucaOne task lucaone/ppi, on a pair of sequences.\n"
        "Sequence A (protein): <protein>MKV</protein>\n"
        "Sequence B (protein): <protein>MGG</protein>\n"
        "Which class does this pair belong to: no interaction or interaction?\nAnswer:"
    )
    assert (out.answer, out.choices) == ("interaction", ["no interaction", "interaction"])

    (function,) = [t for t in known_tasks() if t.id == "uniprot/function"]
    row = {"accession": "P69905", "name": "Hemoglobin subunit alpha", "organism": "Homo sapiens",
           "sequence": "MVLSPADKTNVKAAW", "function": "Involved in oxygen transport."}  # fmt: skip
    out = render(bind(shipped["uniprot/function/named"], function), row)
    assert out.prompt == (
        "Protein: Hemoglobin subunit alpha, from Homo sapiens.\n"
        "Sequence: <protein>MVLSPADKTNVKAAW</protein>\n"
        "Describe the function of this protein as UniProt would.\nFunction:"
    )
    assert (out.answer, out.choices) == ("Involved in oxygen transport.", None)

    translate = TaskInfo(
        id="table/translate", task_type="generation", description="translate into protein",
        fields=("dna", "protein"), sequence_fields={"dna": "dna", "protein": "protein"},
        metric="exact_match", answer_field="protein",
    )  # fmt: skip
    template = bind(shipped["generic/generation/sequence"], translate)
    out = render(template, {"dna": "ATGAAA", "protein": "MK"})
    assert out.prompt == (
        "DNA: <dna>ATGAAA</dna>\ntranslate into protein\nWrite the sequence.\nSequence:"
    )
    assert out.answer == "<protein>MK</protein>"

    loc = TaskInfo(
        id="table/loc", task_type="multilabel", description="where the protein goes",
        fields=("sequence", "label"), sequence_fields={"sequence": "protein"},
        metric="f1_macro", classes=CLASSES,
    )  # fmt: skip
    tpl = bind(shipped["generic/multilabel/question"], loc)
    assert render(tpl, {"sequence": "MKV", "label": ("2", "0")}).answer == "cytoplasm, membrane"
    assert render(tpl, {"sequence": "MKV", "label": "1;2"}).answer == "nucleus, membrane"
    assert render(tpl, {"sequence": "MKV", "label": ()}).answer == "none"


# --- the shipped set --------------------------------------------------------------------------


def test_shipped_templates_lint_clean_against_every_known_task() -> None:
    templates = load_templates()
    previous = read_lock(shipped_templates_dir() / LOCK_NAME)
    problems = lint(templates, _all_tasks(), previous=previous)
    assert [str(p) for p in problems] == []
    # the committed lock is exactly what --update-lock would write
    assert (shipped_templates_dir() / LOCK_NAME).read_text(encoding="utf-8") == lock_text(templates)


def test_every_gue_dataset_has_two_templates_of_its_own(shipped: dict[str, PromptTemplate]) -> None:
    templates = list(shipped.values())
    assert len(GUE_DATASETS) == 28
    for task in GUE_DATASETS.values():
        chosen = templates_for(task, templates)
        assert len(chosen) >= 2, task.id
        assert all(t.id.startswith("gue/") and t.task != "*" for t in chosen), task.id
    # GUE splice labels: 0 = acceptor, 1 = donor, 2 = neither (llama-gene had them wrong)
    site_type = shipped["gue/splice/reconstructed/site_type"].answer_choices
    assert site_type == {"0": "acceptor", "1": "donor", "2": "neither"}
    classify = shipped["gue/splice/reconstructed/classify"].answer_choices
    assert classify == {"0": "acceptor site", "1": "donor site", "2": "no splice site"}
    covid = " ".join(t.prompt + str(t.answer_choices) for t in templates if "covid" in t.id)
    for name in ("Alpha", "Beta", "Delta", "Gamma", "Omicron"):
        assert name not in covid  # the data do not say which label is which variant
    gue = [t for t in templates if t.id.startswith("gue/")]
    for t in gue:  # a biologist's question: no internal ids, no remarks about the benchmark
        assert "task_id" not in t.prompt and "GUE" not in t.prompt, t.id
    for t in gue:  # EMP labels are a threshold on enrichment: high or low, never present / absent
        if t.id.startswith("gue/EMP/"):
            text = (t.prompt + " " + " ".join((t.answer_choices or {}).values())).lower()
            assert "present" not in text and "absent" not in text and "carr" not in text, t.id
    for t in gue:  # negatives have no transcription start site: never say the window holds one
        if t.id.startswith("gue/prom/"):
            assert "upstream to" not in t.prompt and "possible transcription" not in t.prompt


def test_every_task_type_has_a_generic_template(shipped: dict[str, PromptTemplate]) -> None:
    generic = {t.task_type for t in shipped.values() if t.task == "*"}
    assert generic == {"binary", "multiclass", "multilabel", "regression", "token", "generation"}


# --- choosing ---------------------------------------------------------------------------------


def test_templates_for_prefers_specific_then_glob_then_generic() -> None:
    templates = load_templates(FIXTURE_ROOT)
    splice = TaskInfo(id="toy/splice", task_type="multiclass", description="d",
                      fields=("sequence", "label"), sequence_fields={"sequence": "dna"},
                      metric="mcc", classes=SPLICE.classes)  # fmt: skip
    chosen = templates_for(splice, templates)
    assert [t.id for t in chosen] == ["toy/splice/site", "toy/splice/short"]
    binding = replace(splice, id="toy/binding/7", task_type="binary", classes=CLASSES[:2])
    (glob,) = templates_for(binding, templates)
    assert glob.id == "toy/binding/any" and glob.bound_task == binding
    assert "bound in toy/binding/7?" in render(glob, {"sequence": "ACGT", "label": "1"}).prompt
    translate = TaskInfo(id="table/t", task_type="generation", description="d",
                         fields=("dna", "protein"),
                         sequence_fields={"dna": "dna", "protein": "protein"},
                         metric="exact_match", answer_field="protein")  # fmt: skip
    assert [t.id for t in templates_for(translate, templates)] == ["toy/generic/sequence"]
    text_answer = replace(translate, sequence_fields={"dna": "dna"})  # no target_sequence
    assert templates_for(text_answer, templates) == []
    with pytest.raises(TemplateError, match="task_type multiclass, but task toy/splice is binary"):
        templates_for(replace(splice, task_type="binary"), templates)


def test_fields_decide_whether_a_template_serves(shipped: dict[str, PromptTemplate]) -> None:
    (function,) = [t for t in known_tasks() if t.id == "uniprot/function"]
    tsv = replace(function, fields=("accession", "sequence", "function"))  # no name, organism
    ids = [t.id for t in templates_for(tsv, list(shipped.values()))]
    assert ids == ["uniprot/function/describe", "uniprot/function/what_does_it_do"]
    chosen = templates_for(function, list(shipped.values()))
    assert {f for t in chosen for f in answer_fields(t)} == {"function"}
    text_task = replace(function, id="table/x")  # a text answer: the sequence template skips it
    assert templates_for(text_task, [shipped["generic/generation/sequence"]]) == []


# --- bad inputs --------------------------------------------------------------------------------


def test_jinja_syntax_error_is_reported_with_its_line(tmp_path: Path) -> None:
    template = _splice(tmp_path, prompt="Seq: {{ sequence | dna }}\n      {{ label | }}")
    problems = [p.message for p in lint([template], [SPLICE])]
    assert problems == [
        "prompt line 2: Jinja syntax error: expected token 'name', got 'end of print statement'"
    ]
    with pytest.raises(TemplateError, match=r"t.yaml: template x/splice: prompt line 2: Jinja"):
        render(template, {"sequence": "ACGT", "label": "0"})


def test_unknown_variable(tmp_path: Path) -> None:
    template = _splice(tmp_path, prompt="Seq: {{ sequence | dna }} in {{ organism }}\n      A:")
    (problem,) = lint([template], [SPLICE])
    assert problem.template_id == "x/splice"
    assert problem.message == (
        "uses organism, which task gue/splice/reconstructed lacks (fields: sequence, label)"
    )
    with pytest.raises(TemplateError) as err:
        render(template, {"sequence": "ACGT", "label": "0"})
    assert "template x/splice: prompt: 'organism' is undefined" in str(err.value)


@pytest.mark.parametrize(
    "expression",
    [
        "{{ ''.__class__ }}",
        "{{ sequence.__mro__ }}",
        "{{ sequence|attr('upper') }}",
        "{{ sequence['__len__'] }}",
    ],
)
def test_python_internals_are_refused(tmp_path: Path, expression: str) -> None:
    template = _splice(tmp_path, prompt=f"{expression} Answer:")
    with pytest.raises(TemplateError, match=r"template x/splice: prompt line 1: .* refused"):
        render(template, {"sequence": "ACGT", "label": "0"})
    (problem,) = lint([template])
    assert "reaches into Python internals" in problem.message


def test_sandbox_refuses_calls_that_would_mutate(tmp_path: Path) -> None:
    template = _splice(tmp_path, prompt="{{ items.append(1) }} Answer:")
    with pytest.raises(TemplateError, match="refused: access to attribute 'append'"):
        render(template, {"items": [], "label": "0"})


def test_label_outside_the_choices(tmp_path: Path) -> None:
    template = _splice(tmp_path, choices='{"0": acceptor, "1": donor}')
    with pytest.raises(TemplateError) as err:
        render(template, {"sequence": "ACGT", "label": 2}, where="train.csv:7")
    assert str(err.value).endswith(
        "template x/splice: train.csv:7: label 2 has no answer choice "
        "(choices: 0: acceptor, 1: donor)"
    )
    (problem,) = lint([template], [SPLICE])
    assert problem.message == "no answer choice for class label(s) 2 (not a splice site)"
    extra = _splice(tmp_path, choices='{"0": a, "1": b, "2": c, "3": d}')
    (problem,) = _errors(lint([extra], [SPLICE]))
    assert problem.message.startswith("answer choice(s) for label(s) 3, which task")


def test_two_templates_with_one_id_name_both_files(tmp_path: Path) -> None:
    item = SPLICE_ITEM.replace("{PROMPT}", "{{ sequence | dna }} Answer:").replace(
        "{CHOICES}", '{"0": a, "1": b, "2": c}'
    )
    _write(tmp_path, "a/one.yaml", "templates:\n" + item)
    _write(tmp_path, "b/two.yaml", "templates:\n" + item)
    with pytest.raises(TemplateError) as err:
        load_templates(tmp_path)
    assert "b/two.yaml: x/splice: duplicate id: also in " in str(err.value)
    assert "a/one.yaml" in str(err.value)
    one = load_templates(tmp_path, [tmp_path / "a"])
    two = load_templates(tmp_path, [tmp_path / "b"])
    (problem,) = [p for p in lint([*one, *two]) if "duplicate" in p.message]
    assert problem.path.endswith("b/two.yaml") and "a/one.yaml" in problem.message


def test_changed_text_needs_a_version_bump(tmp_path: Path) -> None:
    original = _splice(tmp_path)
    previous = {original.id: (original.version, original.text_hash)}
    assert lock_problems([original], previous) == []
    changed = _splice(
        tmp_path, prompt="DNA: {{ sequence | dna }}\n      Acceptor, donor or neither?"
    )
    (problem,) = lock_problems([changed], previous)
    assert problem.message.startswith("text changed but version not bumped")
    assert "set version: 2" in problem.message and not problem.lock
    bumped = replace(changed, version=2)
    (problem,) = lint([bumped], [SPLICE], previous=previous)
    assert problem.lock and "templates.lock.json has version 1" in problem.message
    reweighted = replace(original, weight=3.0, metrics=("accuracy",))
    assert reweighted.text_hash == _splice(tmp_path).text_hash  # weight is not text
    (new,) = lock_problems([original], {})
    assert new.lock and new.message.startswith("not in templates.lock.json")
    (gone,) = lock_problems([], previous)
    assert gone.lock and gone.template_id == "x/splice"


def test_a_bad_sequence_letter_names_the_template_and_the_row(tmp_path: Path) -> None:
    template = _splice(tmp_path)
    with pytest.raises(TemplateError) as err:
        render(template, {"sequence": "ACGXT", "label": "0"}, where="dev.csv:12")
    assert str(err.value).endswith(
        "template x/splice: prompt: dev.csv:12: 'X' is not a dna letter (ACGTN), at position 4 of 5"
    )
    with pytest.raises(TemplateError, match=r"row seq_id='s9': .*the sequence is empty"):
        render(template, {"seq_id": "s9", "sequence": "", "label": "0"})
    rows = {SPLICE.id: [{"sequence": "ACGT", "label": "1"}, {"sequence": "AC-GT", "label": "1"}]}
    problems = lint([template], [SPLICE], sample_rows=rows)
    assert [p.message for p in problems] == [
        "prompt: row with fields (sequence, label): '-' is not a dna letter (ACGTN), "
        "at position 3 of 5"
    ]


def test_type_mismatch_metrics_separator_and_cut_sequences(tmp_path: Path) -> None:
    template = _splice(tmp_path)
    (problem,) = lint([replace(template, metrics=("mcc", "auc"))], [SPLICE])
    assert problem.message.startswith("unknown metric 'auc' (known: accuracy, auroc,")
    binary = replace(SPLICE, task_type="binary")
    (problem,) = lint([template], [binary])
    assert problem.message == "task_type multiclass, but task gue/splice/reconstructed is binary"
    mid_word = _splice(tmp_path, prompt="Seq: {{ sequence | dna }}\n      The site is")
    (problem,) = _errors(lint([mid_word], [SPLICE]))
    assert problem.message.startswith("the prompt ends mid-word ('The site is')")
    cut = _splice(tmp_path, prompt="Seq: {{ sequence[:10] | dna }}\n      Answer:")
    (problem,) = _errors(lint([cut], [SPLICE]))
    assert problem.message == "slices sequence field sequence: never cut a sequence"
    translate = _one(tmp_path, """\
  - id: x/translate
    version: 1
    task: table/translate
    task_type: generation
    prompt: "Translate {{ dna | dna }} into protein"
    answer: "{{ protein | protein }}"
    metrics: [exact_match]
""")  # fmt: skip
    (problem,) = lint([translate])  # checked on a placeholder task built from its variables
    assert problem.message.startswith("the answer is a sequence: end the prompt with ':'")


def test_answer_choices_from_task(tmp_path: Path) -> None:
    template = _splice(tmp_path, choices="from_task")
    assert template.answer_choices is None and template.choices_from_task
    with pytest.raises(TemplateError, match="from_task needs the task"):
        render(template, {"sequence": "ACGT", "label": "0"})
    out = render(bind(template, SPLICE), {"sequence": "ACGT", "label": "2"})
    assert out.answer == "not a splice site" and out.choices is not None and len(out.choices) == 3
    (problem,) = lint([template], [replace(SPLICE, classes=())])
    assert problem.message == (
        "answer_choices: from_task, but task gue/splice/reconstructed has no classes"
    )


def test_file_level_problems_are_collected(tmp_path: Path) -> None:
    _write(tmp_path, "_loop.yaml", "include: _loop.yaml\n")
    _write(tmp_path, "bad.yaml", """\
include: [_loop.yaml, _missing.yaml, plain.yaml]
templates:
  - id: x/one
    version: 1
    task: t/x
    task_type: binary
    prompt: "{{ sequence | dna }} Answer:"
    answer_choices: {"0": no, "1": "yes"}
    metrics: [mcc]
  - id: x/two
    version: "2"
    task: t/x
    task_type: regression
    prompt: "Value:"
    colour: blue
    metrics: [mse]
""")  # fmt: skip
    _write(tmp_path, "dup.yaml", "templates: []\ntemplates: []\n")
    _, problems = collect_templates(tmp_path)
    text = "\n".join(str(p) for p in problems)
    assert "bad.yaml: include cycle: bad.yaml -> _loop.yaml -> _loop.yaml" in text
    assert "bad.yaml: include _missing.yaml: no such file" in text
    assert "bad.yaml: include plain.yaml: name include files _*.yaml" in text
    assert "bad.yaml: x/one: answer_choices: 0: YAML read False as a boolean: quote it" in text
    assert "bad.yaml: x/two: version: Input should be a valid integer" in text
    assert "bad.yaml: x/two: colour: Extra inputs are not permitted" in text
    assert "dup.yaml: line 2, column 1: duplicate key 'templates' (first at line 1)" in text
    with pytest.raises(TemplateError, match="problems in prompt templates"):
        load_templates(tmp_path)


def test_type_rules_for_answer_and_choices(tmp_path: Path) -> None:
    _write(tmp_path, "t.yaml", """\
templates:
  - {id: a, version: 1, task: t, task_type: binary, prompt: "x:", metrics: [mcc]}
  - {id: b, version: 1, task: t, task_type: binary, prompt: "x:", answer: "{{ label }}",
     answer_choices: {"0": n, "1": y}, metrics: [mcc]}
  - {id: c, version: 1, task: t, task_type: generation, prompt: "x:", metrics: [bleu]}
""")  # fmt: skip
    _, problems = collect_templates(tmp_path)
    assert [f"{p.template_id}: {p.message}" for p in problems] == [
        "a: classification templates need answer_choices (or `from_task`)",
        "b: classification templates take answer_choices, not answer",
        "c: generation templates need `answer:` (Jinja for the target)",
    ]


def test_fixture_folder_loads_with_includes_and_vars() -> None:
    templates = {t.id: t for t in load_templates(FIXTURE_ROOT)}
    site = templates["toy/splice/site"]
    assert site.task_type == "multiclass" and site.metrics == ("mcc", "accuracy")
    assert templates["toy/splice/short"].weight == 0.5
    out = render(site, {"sequence": "AGGT", "label": 0})
    assert out.prompt.splitlines()[-2:] == ["Answer acceptor, donor or neither.", "Answer:"]
    assert read_lock(FIXTURE_ROOT / LOCK_NAME) == {
        t.id: (t.version, t.text_hash) for t in templates.values()
    }
