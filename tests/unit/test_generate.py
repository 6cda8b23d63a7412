"""``llamagene generate`` / ``llamagene chat`` on tiny models built here: decoded letters, the
prompt format's ids, history, the one-line errors, and an adapter on its base.

Most tests use a *rigged* tiny LLaMA whose greedy answer is known: its blocks write nothing
(``o_proj`` and ``down_proj`` are zero), so the last hidden state is the last token's embedding.
Every embedding has 50 in dimension ``ON``; the two DNA pieces ``P`` and ``P2`` also have 100 in
dimension ``END``; the final norm keeps only those two dimensions; the output layer gives ``P``
the ``ON`` value, ``P2`` half of it, and EOS the ``END`` value. So after the prompt ``P`` wins,
and after ``P`` EOS wins: the answer is ``P``'s letters, once.
"""

from __future__ import annotations

import io
import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from llamagene import generation
from llamagene.cli import main
from llamagene.generation import (
    Conversation,
    GenerationError,
    Generator,
    IncrementalDecoder,
    Settings,
    load_for_generation,
    upper_spans,
)
from llamagene.prompt_format import FormatError, Message, PromptFormat
from llamagene.training.export import copy_tokenizer
from llamagene.training.model import (
    TINY_LLAMA,
    LoraSettings,
    attach_lora,
    build_base_model,
    grow_embeddings,
    padded_vocab_size,
    tokenizer_meta,
)

ON, END = 3, 7  # the two hidden dimensions the rigged model uses
CONTEXT = 256
PRIVATE_USE = range(0xE000, 0xE200)


def _tiny_llama(vocab_size: int, seed: int = 0) -> Any:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=CONTEXT,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return LlamaForCausalLM(config)


def _save(model: Any, tokenizer_dir: Path, out: Path) -> Path:
    model.save_pretrained(str(out))
    copy_tokenizer(tokenizer_dir, out)
    return out


class Rigged:
    """The rigged model's folder and what it answers."""

    def __init__(self, tokenizer_dir: Path, out: Path) -> None:
        fmt = PromptFormat.from_dir(tokenizer_dir)
        meta = tokenizer_meta(tokenizer_dir)
        dna = range(*meta["ranges"]["dna"])
        letters = {i: fmt.tokenizer.decode([i]) for i in dna}
        by_length = sorted(dna, key=lambda i: (-len(letters[i]), i))
        self.piece, self.piece2 = by_length[0], by_length[1]
        self.letters, self.letters2 = letters[self.piece], letters[self.piece2]
        self.eos = fmt.eos_id
        model = _tiny_llama(padded_vocab_size(int(meta["vocab_size"])))
        with torch.no_grad():
            for layer in model.model.layers:
                layer.self_attn.o_proj.weight.zero_()
                layer.mlp.down_proj.weight.zero_()
            emb = model.model.embed_tokens.weight
            emb[:, ON], emb[:, END] = 50.0, 0.0
            emb[[self.piece, self.piece2], END] = 100.0
            model.model.norm.weight.zero_()
            model.model.norm.weight[[ON, END]] = 1.0
            head = model.lm_head.weight
            head.zero_()
            head[self.piece, ON], head[self.piece2, ON], head[self.eos, END] = 1.0, 0.5, 1.0
        self.dir = _save(model, tokenizer_dir, out)
        self.format = fmt


@pytest.fixture(scope="module")
def rigged(merged_tokenizer_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Rigged:
    return Rigged(merged_tokenizer_dir, tmp_path_factory.mktemp("rigged"))


@pytest.fixture(scope="module")
def generator(rigged: Rigged) -> Generator:
    return load_for_generation(rigged.dir, device="cpu")


@pytest.fixture(autouse=True)
def _cpu_only(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI takes a GPU when there is one (in bfloat16); the exact comparisons here are
    made in float32 on the CPU, except in the test marked ``gpu``."""
    if request.node.get_closest_marker("gpu") is None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


Spy = list[dict[str, Any]]


def _spy_on(gen: Generator, calls: Spy) -> None:
    """Record in ``calls`` what every call of the model's ``generate`` is given."""
    real = gen.model.generate

    def spy(**kwargs: Any) -> Any:
        ids = kwargs["input_ids"][0].tolist()
        mask = kwargs["attention_mask"][0].tolist()
        eos, pad = kwargs["eos_token_id"], kwargs["pad_token_id"]
        calls.append({"ids": ids, "eos": eos, "pad": pad, "mask": mask})
        return real(**kwargs)

    gen.model.generate = spy  # type: ignore[method-assign]


@pytest.fixture
def spied(monkeypatch: pytest.MonkeyPatch) -> Spy:
    """What ``generate`` is given, for every model the CLI loads in this test."""
    calls: Spy = []
    real = generation.load_for_generation

    def load(*args: Any, **kwargs: Any) -> Generator:
        gen = real(*args, **kwargs)
        _spy_on(gen, calls)
        return gen

    monkeypatch.setattr(generation, "load_for_generation", load)
    return calls


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    capsys.readouterr()  # what building the models printed is not the command's
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def _one_error_line(err: str) -> str:
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    return lines[0]


# --- generate ------------------------------------------------------------------------------


def test_generate_prints_the_pieces_letters(
    rigged: Rigged, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = _run(["generate", str(rigged.dir), "--prompt", "Say some DNA."], capsys)
    assert code == 0, err
    assert out == rigged.letters + "\n"  # the piece once, then EOS stopped it
    assert len(rigged.letters) >= 3 and set(rigged.letters) <= set("ACGTN")
    assert not any(ord(c) in PRIVATE_USE for c in out)


def test_generate_reads_one_prompt_per_stdin_line(
    rigged: Rigged, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    lines = "Is <dna>acgt</dna> a promoter?\nhello\n\nTranslate <protein>mkv</protein>\n"
    monkeypatch.setattr("sys.stdin", io.StringIO(lines))
    code, out, err = _run(["generate", str(rigged.dir), "--max-new-tokens", "4"], capsys)
    assert code == 0, err
    assert out.split("\n") == [rigged.letters, rigged.letters, "", rigged.letters, ""]


def test_a_bad_stdin_line_gets_an_empty_answer_and_an_error(
    rigged: Rigged, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("<dna>ACGZ</dna>\nhi\n"))
    code, out, err = _run(["generate", str(rigged.dir)], capsys)
    assert code == 2
    assert out.split("\n") == ["", rigged.letters, ""]
    assert "error: line 1: in <dna> span" in _one_error_line(err)


def test_generation_config_suppress_tokens_is_kept(
    rigged: Rigged, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = shutil.copytree(rigged.dir, tmp_path / "suppressed")
    config_path = folder / "generation_config.json"
    config = json.loads(config_path.read_text())
    config_path.write_text(json.dumps({**config, "suppress_tokens": [rigged.piece]}))
    code, out, err = _run(["generate", str(folder), "--prompt", "DNA?"], capsys)
    assert code == 0, err
    assert out == rigged.letters2 + "\n"  # the runner-up, since the winner is suppressed


def test_sampling_is_seeded(rigged: Rigged, generator: Generator) -> None:
    settings = Settings(max_new_tokens=6, sample=True, temperature=5.0, top_p=1.0, seed=11)
    ask = [Message("user", "hi")]
    assert generator.answer(ask, settings) == generator.answer(ask, settings)
    with pytest.raises(GenerationError, match="temperature must be above 0"):
        generator.answer(ask, Settings(sample=True, temperature=0.0))


# --- the prompt format ---------------------------------------------------------------------


def test_generate_starts_from_the_formats_prompt_ids(rigged: Rigged, generator: Generator) -> None:
    calls: Spy = []
    _spy_on(generator, calls)
    try:
        typed = [
            Message("system", "Be brief."),
            Message("user", "Is <dna>acgtn</dna> a promoter of <protein>mkv</protein>?"),
        ]
        upper = [
            typed[0],
            Message("user", "Is <dna>ACGTN</dna> a promoter of <protein>MKV</protein>?"),
        ]
        want = rigged.format.prompt_ids(upper)
        assert generator.prompt_ids(typed) == want
        assert generator.answer(typed, Settings(max_new_tokens=8)) == rigged.letters
        assert calls == [
            {"ids": want, "eos": rigged.eos, "pad": rigged.eos, "mask": [1] * len(want)}
        ]
    finally:
        del generator.model.generate  # the instance attribute; the class's method is back


def test_upper_spans_touches_only_span_insides() -> None:
    text = "keep <dna>acg</dna> and <protein>mkv</protein>, <dna>open"
    assert upper_spans(text) == "keep <dna>ACG</dna> and <protein>MKV</protein>, <dna>open"


def test_incremental_decoding_equals_decoding_at_once(rigged: Rigged) -> None:
    tokenizer = rigged.format.tokenizer
    ids = rigged.format.text_ids(
        ["Hello wörld 🧬, <dna>ACGTTGCAAC</dna> <protein>MKVLA</protein>"]
    )[0]
    decoder = IncrementalDecoder(tokenizer)
    pieces = [decoder.add([i]) for i in [*ids, rigged.eos]]
    assert "".join(pieces) == tokenizer.decode(ids, skip_special_tokens=True)
    assert "".join(pieces).endswith("ACGTTGCAAC</dna> <protein>MKVLA</protein>")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_on_a_gpu_in_bfloat16(rigged: Rigged, capsys: pytest.CaptureFixture[str]) -> None:
    gen = load_for_generation(rigged.dir)
    param = next(gen.model.parameters())
    assert param.device.type == "cuda" and param.dtype == torch.bfloat16
    assert gen.answer([Message("user", "<dna>acgt</dna>?")], Settings()) == rigged.letters
    code, out, err = _run(["generate", str(rigged.dir), "--prompt", "DNA?"], capsys)
    assert code == 0 and out == rigged.letters + "\n", err


# --- errors --------------------------------------------------------------------------------


@pytest.mark.parametrize("extra_rows", [64, -598])
def test_vocabulary_mismatch_is_one_line(
    merged_tokenizer_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], extra_rows: int
) -> None:
    size = int(tokenizer_meta(merged_tokenizer_dir)["vocab_size"])
    rows = padded_vocab_size(size) + extra_rows
    folder = _save(_tiny_llama(rows), merged_tokenizer_dir, tmp_path / "model")
    code, _, err = _run(["generate", str(folder), "--prompt", "hi"], capsys)
    assert code == 2
    line = _one_error_line(err)
    assert f"{rows} embedding rows" in line and "do not belong together" in line
    assert str(padded_vocab_size(size) if rows > size else size) in line


def test_prompt_over_the_context_says_by_how_much(
    rigged: Rigged, capsys: pytest.CaptureFixture[str]
) -> None:
    prompt = "tell me a story about a cell " * 25
    prompt_tokens = len(rigged.format.prompt_ids([Message("user", prompt)]))
    assert prompt_tokens < CONTEXT < prompt_tokens + 100
    argv = ["generate", str(rigged.dir), "--prompt", prompt, "--max-new-tokens", "100"]
    code, out, err = _run(argv, capsys)
    assert code == 2 and out == ""
    line = _one_error_line(err)
    over = prompt_tokens + 100 - CONTEXT
    assert f"is {over} tokens over the model's context of {CONTEXT}" in line
    assert f"the prompt is {prompt_tokens} tokens" in line


def test_bad_letter_is_one_line(rigged: Rigged, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _run(["generate", str(rigged.dir), "--prompt", "<dna>ACGZ</dna>"], capsys)
    assert code == FormatError.exit_code and out == ""
    assert "'Z' is not a dna letter" in _one_error_line(err)


def test_folder_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _run(["generate", str(tmp_path / "missing"), "--prompt", "hi"], capsys)
    assert code == 2 and "no such model folder" in _one_error_line(err)
    (tmp_path / "adapter_config.json").write_text("{}")
    code, _, err = _run(["chat", str(tmp_path)], capsys)
    assert code == 2 and "not a model folder" in _one_error_line(err)
    assert "--adapter" in err
    code, _, err = _run(["generate", str(tmp_path), "--prompt", "hi", "--seed", "1"], capsys)
    assert code == 2 and "--seed: only with --sample" in _one_error_line(err)


# --- chat ----------------------------------------------------------------------------------


def test_chat_keeps_history_and_resets(
    rigged: Rigged,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    spied: Spy,
) -> None:
    script = "Hello\n<dna>ACGZ</dna>\nIs <dna>acgt</dna> ok?\n/reset\nAgain\n/exit\nnever read\n"
    monkeypatch.setattr("sys.stdin", io.StringIO(script))
    code, out, err = _run(["chat", str(rigged.dir), "--system", "Be brief."], capsys)
    assert code == 0
    assert "'Z' is not a dna letter" in _one_error_line(err)  # printed, and the loop went on
    assert out.count(rigged.letters + "\n") == 3 and "(conversation cleared)" in out
    fmt, system = rigged.format, Message("system", "Be brief.")
    hello, answer = Message("user", "Hello"), Message("assistant", rigged.letters)
    second = Message("user", "Is <dna>ACGT</dna> ok?")
    assert [c["ids"] for c in spied] == [
        fmt.prompt_ids([system, hello]),
        fmt.prompt_ids([system, hello, answer, second]),  # the first turn is in the prompt
        fmt.prompt_ids([system, Message("user", "Again")]),  # after /reset it is not
    ]
    assert spied[1]["ids"][: len(spied[0]["ids"])] == spied[0]["ids"]


def test_conversation_drops_an_unfinished_turn(generator: Generator) -> None:
    chat = Conversation(generator)
    pieces: Iterator[str] = chat.reply("hi", Settings(max_new_tokens=4))
    next(pieces)
    pieces.close()  # e.g. Ctrl-C in the middle of the answer
    assert chat.messages == []
    "".join(chat.reply("hi", Settings(max_new_tokens=4)))
    assert [m.role for m in chat.messages] == ["user", "assistant"]


# --- an adapter on its base ----------------------------------------------------------------

TINY_BASE = {**TINY_LLAMA, "hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 2,
             "num_key_value_heads": 1, "max_position_embeddings": CONTEXT}  # fmt: skip


def test_adapter_on_the_base_answers_as_the_merged_model(
    merged_tokenizer_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    meta = tokenizer_meta(merged_tokenizer_dir)
    base_size = int(meta["base_vocab_size"])
    new_base: Callable[[], Any] = lambda: build_base_model(None, TINY_BASE, 3, base_size)  # noqa: E731
    base_dir = tmp_path / "base"
    new_base().save_pretrained(str(base_dir))  # no tokenizer: it comes from the adapter

    model = new_base()
    grown = grow_embeddings(model, merged_tokenizer_dir, "compose")
    peft_model = attach_lora(model, LoraSettings(r=2), grown.new_token_ids, "trainable_tokens")
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(5)
        for param in peft_model.parameters():
            if param.requires_grad:  # as if trained: LoRA B and the new rows move
                param.add_(0.5 * torch.randn_like(param))
    adapter_dir = tmp_path / "adapter"
    peft_model.save_pretrained(str(adapter_dir))
    copy_tokenizer(merged_tokenizer_dir, adapter_dir)
    info = {"format": "llamagene-adapter", "version": 1, "rows": grown.rows,
            "base_vocab_size": base_size, "tokenizer_size": meta["vocab_size"],
            "embedding_init": "compose", "embedding_training": "trainable_tokens"}  # fmt: skip
    (adapter_dir / "llamagene_adapter.json").write_text(json.dumps(info))

    merged_dir = _save(peft_model.merge_and_unload(), merged_tokenizer_dir, tmp_path / "merged")
    plain = new_base()  # grown the same way, without the adapter
    grow_embeddings(plain, merged_tokenizer_dir, "compose")
    plain_dir = _save(plain, merged_tokenizer_dir, tmp_path / "plain")

    prompt = ["--prompt", "Is <dna>acgtacgt</dna> coding?", "--max-new-tokens", "12"]
    answers = []
    for model_args in ([base_dir, "--adapter", adapter_dir], [merged_dir], [plain_dir]):
        code, out, err = _run(["generate", *map(str, model_args), *prompt], capsys)
        assert code == 0, err
        answers.append(out)
    with_adapter, from_merged, without = answers
    assert with_adapter.strip() and with_adapter == from_merged
    assert with_adapter != without  # the adapter is really attached
    code, _, err = _run(["generate", str(base_dir), *prompt], capsys)
    assert code == 2 and "not a tokenizer folder" in _one_error_line(err)
    assert not any(ord(c) in PRIVATE_USE for c in with_adapter)
