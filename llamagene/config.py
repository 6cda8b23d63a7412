"""Pipeline files: YAML + ``key=value`` overrides -> one frozen, typed :class:`PipelineConfig`.

A pipeline file names a ``run_dir`` and the stages to run, each with its own config::

    run_dir: runs/example
    stages:
      train_bpe:
        dna_inputs: [genomes/a.fna.gz]
        protein_inputs: [uniprot/sprot.fasta.gz]
      merge_vocab:
        base_tokenizer: path/to/tokenizer.model

Relative paths resolve against the pipeline file's folder. A path may also name a file shipped
inside an installed Python package as ``pkg://<package>/<path inside it>``. Unknown keys, wrong
types and duplicate keys are rejected, and every problem is reported at once with its YAML path.
"""

from __future__ import annotations

import difflib
import importlib.util
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Union, cast, get_args, get_origin

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    ValidationError,
    ValidationInfo,
)

from llamagene.errors import ConfigError

PACKAGE_SCHEME = "pkg://"


def _resolve_path(value: Any, info: ValidationInfo) -> Any:
    if not isinstance(value, str | Path):
        return value  # the Path validator reports the wrong type
    text = str(value)
    if text.startswith(PACKAGE_SCHEME):
        return resolve_package_path(text)
    base_dir = (info.context or {}).get("base_dir")
    path = Path(text).expanduser()
    if not path.is_absolute() and base_dir is not None:
        path = Path(base_dir) / path
    return path.resolve() if path.is_absolute() else path


def resolve_package_path(uri: str) -> Path:
    """``pkg://mistral_common/data/tokenizer.model.v1`` -> the file inside the installed package."""
    rest = uri[len(PACKAGE_SCHEME) :]
    package, _, inner = rest.partition("/")
    if not package or not inner:
        raise ValueError(f"'{uri}' should look like pkg://<package>/<path inside the package>")
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(
            f"'{uri}' names package '{package}', which is not installed "
            f"(pip install the package, or give a plain file path)"
        )
    root = Path(next(iter(spec.submodule_search_locations)))
    return (root / inner).resolve()


Resolved = BeforeValidator(_resolve_path)
#: A path read by a stage; relative paths resolve against the pipeline file's folder.
InputPath = Annotated[Path, Resolved]


class StrictModel(BaseModel):
    """Base of every config: frozen, unknown keys rejected, defaults validated."""

    model_config = ConfigDict(frozen=True, extra="forbid", validate_default=True)


class _UniqueKeyLoader(yaml.SafeLoader):
    """A YAML loader that rejects duplicate mapping keys (PyYAML keeps the last one silently)."""


def _construct_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    loader.flatten_mapping(node)
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None,
                None,
                f"duplicate key '{key}' (first at line {seen[key] + 1})",
                key_node.start_mark,
            )
        seen[key] = key_node.start_mark.line
    return loader.construct_mapping(node)


_UniqueKeyLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
    _construct_mapping,
)


def load_yaml(path: Path) -> Any:
    """Read one YAML file strictly; syntax errors and duplicate keys name the file and line."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(str(path), ["file not found"]) from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(str(path), [f"cannot read: {err}"]) from None
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(err, "problem", None) or str(err)
        raise ConfigError(str(path), [f"{where}{problem}"]) from None


def apply_overrides(
    data: dict[str, Any], overrides: Sequence[str], stage_names: Sequence[str]
) -> dict[str, Any]:
    """Apply ``a.b.c=value`` overrides (values parsed as YAML) to a copy of ``data``.

    A path that starts with a stage name is taken inside ``stages``:
    ``train_bpe.dna_vocab_size=8000`` is ``stages.train_bpe.dna_vocab_size=8000``.
    """
    result: dict[str, Any] = _deep_copy(data)
    problems: list[str] = []
    for item in overrides:
        key, sep, raw = item.partition("=")
        parts = [p for p in key.strip().split(".") if p]
        if not sep or not parts:
            problems.append(f"override '{item}': expected key=value, e.g. train_bpe.seed=1")
            continue
        if parts[0] in stage_names:
            parts = ["stages", *parts]
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        node: dict[str, Any] = result
        for i, part in enumerate(parts[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                problems.append(f"override '{item}': '{'.'.join(parts[: i + 1])}' is not a mapping")
                break
            node = child
        else:
            node[parts[-1]] = value
    if problems:
        raise ConfigError("command line", problems)
    return result


def _deep_copy(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _deep_copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_deep_copy(v) for v in value]
    return value


def format_validation_error(
    err: ValidationError,
    prefix: Sequence[str | int] = (),
    *,
    model: type[BaseModel] | None = None,
) -> list[str]:
    """One line per problem: ``stages.train_bpe.dna_vocab_size: Input should be ... (got 'x')``.

    With ``model`` (the model that was validated), an unknown key names the keys allowed where it
    stands and the closest one: ``stages.train_bpe.dna_vocab_sise: unknown key; did you mean
    dna_vocab_size? (keys here: ...)``.
    """
    problems = []
    for e in err.errors():
        loc = ".".join(str(p) for p in (*prefix, *e["loc"]))
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = _unknown_key_message(model, e["loc"])
        elif e["type"] == "missing":
            msg = "required key is missing"
        elif "input" in e and not isinstance(e["input"], Mapping):
            msg = f"{msg} (got {e['input']!r})"
        problems.append(f"{loc}: {msg}" if loc else msg)
    return problems


#: An unknown-key message lists at most this many of the keys allowed there.
MAX_KEYS_SHOWN = 30


def _unknown_key_message(model: type[BaseModel] | None, loc: Sequence[str | int]) -> str:
    keys = _keys_at(model, loc[:-1]) if model is not None and loc else None
    if keys is None:
        return "unknown key (check its spelling)"
    msg = "unknown key"
    close = difflib.get_close_matches(str(loc[-1]), keys, n=1)
    if close:
        msg += f"; did you mean {close[0]}?"
    shown = sorted(keys)
    more = len(shown) - MAX_KEYS_SHOWN
    listed = ", ".join(shown[:MAX_KEYS_SHOWN]) + (f", ... ({more} more)" if more > 0 else "")
    return f"{msg} (keys here: {listed})" if shown else f"{msg} (no keys are allowed here)"


def _keys_at(model: type[BaseModel], loc: Sequence[str | int]) -> list[str] | None:
    """The keys of the model found by following ``loc`` from ``model``; None if lost."""
    current: Any = model
    for part in loc:
        current = _step(current, part)
        if current is None:
            return None
    current = _unwrap_model(current)
    if current is None:
        return None
    return [f.alias or name for name, f in current.model_fields.items()]


def _step(annotation: Any, part: str | int) -> Any:
    """The annotation one ``loc`` step below ``annotation``; None when it cannot be followed."""
    annotation = _strip_annotated(annotation)
    if _is_model(annotation):
        if not isinstance(part, str):
            return None
        for name, info in annotation.model_fields.items():
            if part in (name, info.alias):
                return info.annotation
        return None
    origin, args = get_origin(annotation), get_args(annotation)
    if origin in (Union, UnionType):
        members = [a for a in args if a is not type(None)]
        named = [a for a in members if getattr(a, "__name__", None) == part]
        if named:  # pydantic tags a union member by its class name
            return named[0]
        followed = [s for s in (_step(a, part) for a in members) if s is not None]
        return followed[0] if len(followed) == 1 else None
    if origin in (list, tuple, set, frozenset, Sequence) and isinstance(part, int):
        inner = [a for a in args if a is not Ellipsis]
        if origin is tuple and len(inner) > 1:
            return inner[part] if 0 <= part < len(inner) else None
        return inner[0] if inner else None
    if origin in (dict, Mapping) and len(args) == 2:
        return args[1]
    return None


def _unwrap_model(annotation: Any) -> type[BaseModel] | None:
    """The one model inside ``annotation`` (``Model``, ``Model | None``), else None."""
    annotation = _strip_annotated(annotation)
    if _is_model(annotation):
        return cast(type[BaseModel], annotation)
    if get_origin(annotation) in (Union, UnionType):
        models = [m for m in map(_unwrap_model, get_args(annotation)) if m is not None]
        return models[0] if len(models) == 1 else None
    return None


def _strip_annotated(annotation: Any) -> Any:
    while get_origin(annotation) is Annotated:
        annotation = get_args(annotation)[0]
    return annotation


def _is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def to_plain(value: Any) -> Any:
    """A config value as plain JSON data (paths as strings), for manifests and hashes."""
    if isinstance(value, BaseModel):
        return {k: to_plain(v) for k, v in value}
    if isinstance(value, Mapping):
        return {str(k): to_plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value
