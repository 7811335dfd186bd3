"""The project publishes no module into the Python environment (issue 22): it runs from the repository root.

Its top-level names (``datasets``, ``evaluate``, ``models``, ``util``, ...) would otherwise shadow, or be mixed
with, packages of the same name, such as Hugging Face's ``datasets`` and ``evaluate``. Two checks:

- quick: from a folder outside the repository, the test environment resolves none of the project's names to the
  repository, and ``transformers.utils.is_datasets_available()`` answers for Hugging Face's package only;
- slow (installs ``datasets`` and ``evaluate`` from PyPI, needs the network): in a throwaway environment that holds
  them beside the test environment's packages, every documented command (``make demo``'s steps on tiny budgets,
  ``main.py --eval``, every driver's and entry point's ``--help``, the notebook) runs from the repository root and
  imports the project's ``datasets`` and ``evaluate`` and nothing of Hugging Face's installation.
"""
import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

REPO = Path(__file__).resolve().parents[1]
PROJECT_NAMES_PROBE = """
import importlib.metadata, importlib.util, json, sys
import transformers.utils
names = sys.argv[1:]
origins = {name: getattr(importlib.util.find_spec(name), "origin", None) for name in names}
try:
    importlib.metadata.distribution("datasets")
    hugging_face_datasets = True
except importlib.metadata.PackageNotFoundError:
    hugging_face_datasets = False
print(json.dumps({"origins": origins, "is_datasets_available": transformers.utils.is_datasets_available(),
                  "hugging_face_datasets": hugging_face_datasets}))
"""


def tracked_files() -> list[str]:
    return subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()


def project_names() -> list[str]:
    """The names the repository root makes importable: its packages and top-level modules."""
    tracked = tracked_files()
    packages = {path.split("/")[0] for path in tracked if path.count("/") == 1 and path.endswith("/__init__.py")}
    modules = {path.removesuffix(".py") for path in tracked if "/" not in path and path.endswith(".py")}
    return sorted(packages | modules)


def clean_environment(**extra: str) -> dict[str, str]:
    """This process's environment without PYTHONPATH (which could put the repository on sys.path), plus ``extra``."""
    environment = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    return {**environment, **extra}


def test_outside_the_repository_no_project_name_is_importable(tmp_path):
    names = project_names()
    assert {"datasets", "evaluate", "models", "util", "main", "scripts", "benchmarks"} <= set(names)
    probe = subprocess.run([sys.executable, "-c", PROJECT_NAMES_PROBE, *names], cwd=tmp_path, env=clean_environment(),
                           capture_output=True, text=True, check=True)
    found = json.loads(probe.stdout.strip().splitlines()[-1])
    ours = {name: origin for name, origin in found["origins"].items() if origin and origin.startswith(str(REPO))}
    assert not ours, (f"importable from outside the repository: {ours}; the project is installed into {sys.prefix} "
                      "(an editable install of an earlier Makefile?): pip uninstall hcd")
    # transformers asks importlib whether a module named datasets exists: only Hugging Face's may answer yes.
    assert found["is_datasets_available"] == found["hugging_face_datasets"]


IMPORT_REPORT = '''"""Loaded by a .pth file: at exit, append what this process imported to $HCD_IMPORT_REPORT."""
import atexit, json, os, sys

SITE = os.path.dirname(os.path.abspath(__file__))


def report():
    path = os.environ.get("HCD_IMPORT_REPORT")
    if not path:
        return
    foreign = sorted({name.split(".")[0] for name, module in list(sys.modules.items())
                      if (getattr(module, "__file__", None) or "").startswith(SITE + os.sep)} - {__name__})
    line = {"argv": sys.argv, "datasets": getattr(sys.modules.get("datasets"), "__file__", None),
            "evaluate": getattr(sys.modules.get("evaluate"), "__file__", None), "foreign": foreign}
    with open(path, "a") as out:
        out.write(json.dumps(line) + "\\n")


atexit.register(report)
'''


def throwaway_environment(folder: Path) -> tuple[Path, Path]:
    """A venv whose own site-packages holds Hugging Face's datasets and evaluate (and their dependencies that the
    test environment lacks), and sees the test environment's packages after them, as if installed beside them.
    Returns its python and its site-packages."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(folder)], check=True)
    python = folder / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    # addsitedir also runs the .pth files of the test environment, an editable install's among them.
    (site / "hcd_test_environment.pth").write_text(
        f"import site; site.addsitedir({sysconfig.get_paths()['purelib']!r})\n")
    (site / "hcd_import_report.py").write_text(IMPORT_REPORT)
    (site / "hcd_import_report.pth").write_text("import hcd_import_report\n")
    install = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet",
                              "--disable-pip-version-check", "datasets", "evaluate"], capture_output=True, text=True)
    if install.returncode != 0:
        pytest.fail(f"installing Hugging Face's datasets and evaluate from PyPI failed (this test needs the network):"
                    f"\n{install.stderr[-3000:]}")
    return python, site


def run_reported(python: Path, args: list[str], report: Path, cwd: Path = REPO, **env: str) -> list[dict]:
    """Run ``python args`` in ``cwd``; it must succeed. Returns the import report of it and of its subprocesses."""
    done = subprocess.run([str(python), *args], cwd=cwd, capture_output=True, text=True, timeout=900,
                          env=clean_environment(HCD_IMPORT_REPORT=str(report), **env))
    assert done.returncode == 0, f"{' '.join(args)} failed beside Hugging Face's datasets:\n{done.stderr[-3000:]}"
    return [json.loads(line) for line in report.read_text().splitlines()]


def drivers() -> list[list[str]]:
    """The command line of every entry point (``<name>.py`` at the root) and driver (``-m scripts.<name>``,
    ``-m benchmarks.<name>``)."""
    commands = []
    for path in tracked_files():
        folder, _, name = path.rpartition("/")
        if folder in ("", "scripts", "benchmarks") and name.endswith(".py") and "__main__" in (REPO / path).read_text():
            commands.append([path] if not folder else ["-m", f"{folder}.{name.removesuffix('.py')}"])
    return commands


def imports_only_ours(line: dict, third_party: set[str]) -> bool:
    """Whether a process of the import report imported the project's ``datasets`` and ``evaluate`` if any, and
    nothing of Hugging Face's installation but what our dependencies take from it by themselves (``third_party``)."""
    return (set(line["foreign"]) <= third_party and line["datasets"] in (None, str(REPO / "datasets" / "__init__.py"))
            and line["evaluate"] in (None, str(REPO / "evaluate.py")))


def run_notebook(python: Path, folder: Path, settings: dict[str, str], monkeypatch) -> dict:
    """docs/predictor.ipynb in a kernel of ``python``, from docs/; what its kernel imported, read by a last cell."""
    kernels = folder / "jupyter" / "kernels" / "throwaway"
    kernels.mkdir(parents=True)
    (kernels / "kernel.json").write_text(json.dumps({
        "argv": [str(python), "-m", "ipykernel_launcher", "-f", "{connection_file}"], "language": "python",
        "display_name": "beside Hugging Face's datasets"}))
    notebook = nbformat.read(REPO / "docs" / "predictor.ipynb", as_version=4)
    notebook.cells.append(nbformat.v4.new_code_cell(
        "import json as _json, sys as _sys\n"
        "print(_json.dumps({name: getattr(_sys.modules.get(name), '__file__', None) for name in "
        "('datasets', 'evaluate', 'pyarrow')}))"))
    for key, value in {"JUPYTER_PATH": str(folder / "jupyter"), **settings}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("PYTHONPATH", raising=False)
    NotebookClient(notebook, timeout=300, kernel_name="throwaway",
                   resources={"metadata": {"path": str(REPO / "docs")}}).execute()
    return json.loads(notebook.cells[-1].outputs[-1]["text"].strip().splitlines()[-1])


@pytest.mark.slow
def test_documented_commands_import_only_our_code_beside_hugging_face_datasets(tmp_path, monkeypatch):
    python, site = throwaway_environment(tmp_path / "venv")
    # The environment is the one the issue measured: outside the repository, datasets is Hugging Face's.
    outside = run_reported(python, ["-c", "import datasets, evaluate, transformers.utils as u; "
                                          "assert u.is_datasets_available()"], tmp_path / "outside.jsonl",
                           cwd=tmp_path)[0]
    assert outside["datasets"].startswith(str(site)) and outside["evaluate"].startswith(str(site))
    assert "pyarrow" in outside["foreign"]
    # Our dependencies import some of what datasets brings when it is installed, not the project: torch imports dill
    # (torch.utils.data), pandas (gradio's, app.py) imports pyarrow.
    dependencies = run_reported(python, ["-c", "import torch, gradio"], tmp_path / "deps.jsonl", cwd=tmp_path)[0]
    third_party = set(dependencies["foreign"])
    assert not third_party & {"datasets", "evaluate"}

    reports = {}
    for command in drivers():
        name = command[-1]
        reports[name] = run_reported(python, [*command, "--help"], tmp_path / f"{name}.jsonl")
    demo = tmp_path / "demo"
    reports["make demo"] = run_reported(python, [
        "-m", "scripts.run_demo", "--out", str(demo), "--data_root", str(tmp_path / "refshapes"),
        "--weights", str(tmp_path / "weights"), "--videos", "10", "--valid_videos", "1", "--max_steps", "1",
        "--vae_steps", "1"], tmp_path / "demo.jsonl")
    steps = {Path(line["argv"][0]).name for line in reports["make demo"]}
    assert {"run_demo.py", "make_tiny_weights.py", "make_refshapes.py", "pretrain_tiny_vae.py", "main.py",
            "inference_ytvos.py"} <= steps
    evaluation = ["main.py", "--eval", "--resume", str(demo / "train" / "last.pth")]  # imports evaluate.py
    reports["main.py --eval"] = run_reported(python, evaluation, tmp_path / "eval.jsonl")

    assert all(lines for lines in reports.values())  # every process reports
    wrong = {name: [line for line in lines if not imports_only_ours(line, third_party)]
             for name, lines in reports.items()}
    assert not any(wrong.values()), {name: lines for name, lines in wrong.items() if lines}
    # The commands the issue saw fail or mix import the project's modules of these names.
    assert reports["benchmarks.bench_fps"][0]["datasets"] == str(REPO / "datasets" / "__init__.py")
    assert "pyarrow" not in reports["benchmarks.bench_fps"][0]["foreign"]
    assert reports["main.py --eval"][0]["evaluate"] == str(REPO / "evaluate.py")

    imported = run_notebook(python, tmp_path, {"HCD_CHECKPOINT": str(demo / "train" / "last.pth"),
                                               "HCD_WEIGHTS": str(tmp_path / "weights"),
                                               "HCD_DATA_ROOT": str(tmp_path / "refshapes"), "HCD_DEVICE": "cpu"},
                            monkeypatch)
    assert imported == {"datasets": str(REPO / "datasets" / "__init__.py"), "evaluate": None, "pyarrow": None}
