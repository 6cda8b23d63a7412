"""Packaging: a plain ``pip install .`` (a wheel) carries the data folders the program reads at
run time, and :mod:`llamagene.shipped` finds them both in a checkout and in an installed copy."""

from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
import tomllib
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from llamagene import cli, shipped
from llamagene.errors import LlamageneError
from llamagene.shipped import SHIPPED_NAMES, is_checkout, shipped_dir

REPO = Path(__file__).resolve().parents[2]
#: What a build may never ship from the data folders.
JUNK_PARTS = {"__pycache__", "runs"}


def _data_files(root: Path) -> set[str]:
    """Files of a data folder that should ship, relative to ``root``'s parent, POSIX style."""
    return {
        p.relative_to(root.parent).as_posix()
        for p in root.rglob("*")
        if p.is_file()
        and not JUNK_PARTS & set(p.relative_to(root).parts)
        and p.suffix != ".pyc"
        and not any(part.startswith(".") for part in p.relative_to(root).parts)
    }


# --- the two layouts, without building anything -----------------------------------------------


def test_checkout_layout() -> None:
    assert is_checkout()
    for name in SHIPPED_NAMES:
        assert shipped_dir(name) == REPO / name
    assert cli.DEMO_PIPELINE == REPO / "pipelines" / "demo" / "pipeline.yaml"
    assert cli.DEMO_PIPELINE.is_file()
    with pytest.raises(AttributeError):
        _ = cli.NO_SUCH_NAME  # type: ignore[attr-defined]


def _fake_layout(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> tuple[Path, Path]:
    """Point llamagene.shipped at an empty site-packages-like folder; return (root, _shipped)."""
    root = tmp_path / "site-packages"
    installed = root / "llamagene" / "_shipped"
    installed.mkdir(parents=True)
    monkeypatch.setattr(shipped, "_CHECKOUT_ROOT", root)
    monkeypatch.setattr(shipped, "_INSTALLED_ROOT", installed)
    return root, installed


def test_installed_copy_when_not_a_checkout(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    root, installed = _fake_layout(monkeypatch, tmp_path)
    for name in SHIPPED_NAMES:
        (installed / name).mkdir()
    (root / "pipelines").mkdir()  # some other distribution's top-level `pipelines` package
    assert not is_checkout()
    for name in SHIPPED_NAMES:
        assert shipped_dir(name) == installed / name
    # a pyproject.toml beside the package marks a checkout, whose folders come first
    (root / "pyproject.toml").write_text("[project]\n")
    assert shipped_dir("pipelines") == root / "pipelines"
    assert shipped_dir("data_recipes") == installed / "data_recipes"
    assert not is_checkout()
    for name in SHIPPED_NAMES:
        (root / name).mkdir(exist_ok=True)
    assert is_checkout()
    assert all(shipped_dir(name) == root / name for name in SHIPPED_NAMES)


def test_missing_folders_one_clear_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root, installed = _fake_layout(monkeypatch, tmp_path)
    with pytest.raises(LlamageneError) as caught:
        shipped_dir("prompt_templates")
    message = str(caught.value)
    assert "\n" not in message
    assert "prompt_templates/ folder is missing" in message
    assert str(root / "prompt_templates") in message
    assert str(installed / "prompt_templates") in message
    assert "pip install -e ." in message and "reinstall" in message
    with pytest.raises(ValueError, match="unknown shipped folder"):
        shipped_dir("runs")  # type: ignore[arg-type]
    # the CLI still starts and explains in one line; only the demo needs the folder
    with pytest.raises(SystemExit) as help_exit:
        cli.main(["--help"])
    assert help_exit.value.code == 0
    capsys.readouterr()
    assert cli.main(["status"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: llamagene's pipelines/ folder is missing")
    assert err.count("\n") == 1 and "Traceback" not in err


def test_installed_demo_runs_in_the_current_folder(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, installed = _fake_layout(monkeypatch, tmp_path)
    for name in SHIPPED_NAMES:
        shutil.copytree(REPO / name, installed / name, ignore=shutil.ignore_patterns("__pycache__"))
    work = tmp_path / "my work #1"  # YAML would read " #1..." as a comment if not quoted
    work.mkdir()
    monkeypatch.chdir(work)

    assert cli.main(["status"]) == 0
    out, err = capsys.readouterr()
    demo = installed / "pipelines" / "demo" / "pipeline.yaml"
    assert f"run_dir: {work.resolve() / 'runs' / 'demo'}\n" in out
    assert err == (
        f"using the demo pipeline installed with llamagene ({demo}); its outputs go to "
        f"{work / 'runs' / 'demo'} (set run_dir=... to change)\n"
    )
    # a relative run_dir=... is taken from the current folder too, not from site-packages
    assert cli.main(["status", "run_dir=elsewhere/demo"]) == 0
    out, err = capsys.readouterr()
    assert f"run_dir: {work.resolve() / 'elsewhere' / 'demo'}\n" in out
    assert f"its outputs go to {work / 'elsewhere' / 'demo'} " in err
    assert cli.main(["status", f"run_dir={tmp_path / 'abs'}"]) == 0
    assert f"run_dir: {(tmp_path / 'abs').resolve()}\n" in capsys.readouterr().out
    assert not (installed / "runs").exists() and not (work / "runs").exists()


def test_every_python_package_is_listed() -> None:
    """``pyproject.toml`` lists the packages (it cannot use find and map the data folders)."""
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    on_disk = {
        ".".join(d.relative_to(REPO).parts)
        for d in [REPO / "llamagene", *(REPO / "llamagene").rglob("*")]
        if d.is_dir() and d.name != "__pycache__" and any(d.glob("*.py"))
    }
    data = {f"llamagene._shipped.{name}" for name in SHIPPED_NAMES}
    missing = on_disk - set(config["packages"])
    assert not missing, f"add {sorted(missing)} to [tool.setuptools] packages in pyproject.toml"
    assert set(config["packages"]) == on_disk | data
    assert config["package-dir"] == {f"llamagene._shipped.{n}": n for n in SHIPPED_NAMES}


# --- a real wheel, installed into a throw-away venv ---------------------------------------------


@dataclass(frozen=True)
class Installed:
    wheel: Path
    python: Path
    purelib: Path
    work: Path
    env: dict[str, str]

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Run the venv's python, isolated (-I: no cwd, PYTHONPATH or user site on sys.path)."""
        return subprocess.run(
            [str(self.python), "-I", *args],
            cwd=self.work,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
        )


def _skip_without_offline_build() -> None:
    try:
        import setuptools
    except ImportError:
        pytest.skip("building the wheel offline needs setuptools>=69 in this environment")
    major = int(setuptools.__version__.split(".")[0])
    if major < 69:
        pytest.skip(f"building the wheel offline needs setuptools>=69, not {major}")


def _copy_source(dest: Path) -> None:
    """The project's sources, plus junk that a careless build would ship."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "build", "runs")
    dest.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, dest / name)
    for name in ("llamagene", "tests", *SHIPPED_NAMES):
        shutil.copytree(REPO / name, dest / name, ignore=ignore)
    for junk in (
        "runs/demo/manifest.json",
        "pipelines/demo/runs/demo/manifest.json",
        "pipelines/demo/tasks/__pycache__/make_demo_tasks.cpython-311.pyc",
        "prompt_templates/__pycache__/stray.cpython-311.pyc",
        "llamagene/__pycache__/cli.cpython-311.pyc",
    ):
        (dest / junk).parent.mkdir(parents=True, exist_ok=True)
        (dest / junk).write_text("junk\n")


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Installed]:
    """Build the wheel from a copy of the sources (an in-tree build would leave build/ and
    stale files in the checkout) and install it with --no-deps into a throw-away venv."""
    _skip_without_offline_build()
    tmp = tmp_path_factory.mktemp("packaging")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env.update(PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1")

    def pip(*args: str) -> None:
        done = subprocess.run(
            [sys.executable, "-m", "pip", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, f"pip {' '.join(args)}:\n{done.stdout}\n{done.stderr}"

    src, dist, venv, work = tmp / "src", tmp / "dist", tmp / "venv", tmp / "work"
    _copy_source(src)
    pip("wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", str(dist), str(src))
    [wheel] = dist.glob("llamagene-*.whl")
    subprocess.run(
        [sys.executable, "-m", "venv", "--without-pip", "--system-site-packages", str(venv)],
        check=True,
        timeout=120,
    )
    python = venv / "bin" / "python"
    pip("--python", str(python), "install", "--no-deps", "--no-index", str(wheel))
    purelib = Path(
        subprocess.run(
            [str(python), "-I", "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    )
    # The dependencies come from this environment: its site-packages folders go on the venv's
    # path after the venv's own. A .pth line only adds a folder: the .pth files inside it (this
    # environment's editable install of the checkout) are not run.
    (purelib / "_llamagene_test_deps.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    work.mkdir()
    yield Installed(wheel=wheel, python=python, purelib=purelib, work=work, env=env)


@pytest.mark.slow
def test_wheel_contents(installed: Installed) -> None:
    names = set(zipfile.ZipFile(installed.wheel).namelist())
    top = "llamagene/_shipped/"
    carried = {n.removeprefix(top) for n in names if n.startswith(top)}
    for required in (
        "prompt_templates/templates.lock.json",
        "prompt_templates/gue/EMP/H3.yaml",
        "pipelines/demo/pipeline.yaml",
        "pipelines/demo/tasks/translate.yaml",
        "pipelines/demo/tasks/make_demo_tasks.py",
        "pipelines/demo/tasks/coding_frame/train.csv",
        "pipelines/demo/tasks/protein_name/dev.csv",
        "pipelines/demo/tasks/translate/test.csv",
        "pipelines/deepspeed/zero2.json",
        "pipelines/cluster/launch.sh",
        "data_recipes/sft_demo.yaml",
        "data_recipes/demo_pretrain.yaml",
    ):
        assert required in carried
    assert any(n.startswith("data_recipes/english/") and n.endswith(".jsonl") for n in carried)
    assert any(n.startswith("prompt_templates/gue/") and n.endswith(".yaml") for n in carried)
    # exactly the files of the three folders, nothing missing, nothing extra
    expected = set().union(*(_data_files(REPO / name) for name in SHIPPED_NAMES))
    assert carried == expected
    dist_info = next(n.split("/")[0] for n in names if ".dist-info/" in n)
    for name in names:
        assert name.startswith(("llamagene/", f"{dist_info}/")), name
        parts = name.split("/")
        assert "__pycache__" not in parts and not name.endswith(".pyc"), name
        assert "runs" not in parts and "tests" not in parts and "conftest.py" not in parts, name
    assert "llamagene/cli.py" in names and "llamagene/shipped.py" in names


@pytest.mark.slow
def test_installed_copy_is_found(installed: Installed) -> None:
    code = (
        "import json, sys\n"
        "import llamagene\n"
        "from llamagene.cli import DEMO_PIPELINE\n"
        "from llamagene.shipped import SHIPPED_NAMES, is_checkout, shipped_dir\n"
        "print(json.dumps({'package': llamagene.__file__, 'sys_path': sys.path,\n"
        "    'dirs': {n: str(shipped_dir(n)) for n in SHIPPED_NAMES},\n"
        "    'is_checkout': is_checkout(), 'demo': str(DEMO_PIPELINE)}))\n"
    )
    done = installed.run("-c", code)
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout)
    package = installed.purelib / "llamagene"
    assert Path(found["package"]) == package / "__init__.py"  # the wheel's copy, not the checkout
    assert str(REPO) not in found["sys_path"]
    assert found["is_checkout"] is False
    assert found["dirs"] == {n: str(package / "_shipped" / n) for n in SHIPPED_NAMES}
    demo = package / "_shipped" / "pipelines" / "demo" / "pipeline.yaml"
    assert found["demo"] == str(demo) and demo.is_file()
    assert os.access(package / "_shipped" / "pipelines" / "cluster" / "launch.sh", os.X_OK)


@pytest.mark.slow
def test_installed_demo_status(installed: Installed) -> None:
    done = installed.run("-m", "llamagene", "status")
    assert done.returncode == 0, done.stderr
    run_dir = installed.work / "runs" / "demo"
    assert f"run_dir: {run_dir.resolve()}\n" in done.stdout
    assert "using the demo pipeline installed with llamagene (" in done.stderr
    assert f"its outputs go to {run_dir} (set run_dir=... to change)" in done.stderr


@pytest.mark.slow
def test_installed_demo_validates_with_installed_templates(installed: Installed) -> None:
    # every input of the installed demo checks out, given the installed templates folder
    templates = installed.purelib / "llamagene" / "_shipped" / "prompt_templates"
    done = installed.run("-m", "llamagene", "validate", f"build_sft.templates_dir={templates}")
    assert done.returncode == 0, done.stderr
    assert "valid (train_bpe, merge_vocab, pretrain, build_sft, finetune, evaluate)" in done.stdout


@pytest.mark.slow
def test_installed_demo_validates(installed: Installed) -> None:
    done = installed.run("-m", "llamagene", "validate")
    assert done.returncode == 0, done.stderr
