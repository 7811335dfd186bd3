"""Every project file that the code, configs and docs point at is in the repository (issue 22).

A mention counts when it is a relative path whose first folder is one of the repository's (``docs/install.md``,
``configs/base/loss.yaml``, ``scripts/dist_*.sh``), a document anywhere (``*.md``), or a module run with ``-m``
(``python -m scripts.run_demo``). Paths under folders the repository does not hold (``outputs/``, ``data/``,
``weight/``), absolute paths and URLs are places the code writes or reads at run time, not references. And no
command runs a driver of ``scripts/`` or ``benchmarks/`` by its path: they run as modules from the root.
"""
import fnmatch
import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCANNED = (".py", ".md", ".yaml", ".sh", ".ipynb")
# A path: folder/.../name, not the tail of an absolute path, a URL, a ~ or $VAR path, or a <placeholder>/.
PATH = re.compile(r"(?<![\w./~$:<>{}@%*-])((?:[A-Za-z_][\w.-]*/)+[\w.*-]*)")
MODULE = re.compile(r"(?<![\w.])-m ([A-Za-z_]\w*(?:\.\w+)+)")
# A driver run by its path has scripts/ first on sys.path instead of the repository root: the project's packages are
# then not found, or another package of the environment with the same name is (docs/install.md).
DRIVER_BY_PATH = re.compile(r"""(?:python3?|\$\(PY\)|"?\$PYTHON"?|sys\.executable,)"""
                            r"""\s+["']?(?:scripts|benchmarks)/\w+\.py""")
# Mentions that look like ours and are not: other repositories' files and placeholders.
NOT_OURS = {
    "configs/NAME.yaml": "a pattern (scripts/launch_common.sh)",
    "configs/x.yaml": "an example name (util/config_schema.py)",
    "datasets/a2d_eval.py": "ReferFormer's, SgMg's and VD-IT's copy of MTTR's metrics (metrics/a2d.py)",
    "docs/a2d.png": "a figure of the paper's repository (docs/results.md)",
    "docs/youtube": "'docs/youtube and davis.png', a figure of the paper's repository (docs/results.md)",
}


def tracked_files() -> list[str]:
    return subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()


def scanned_files() -> list[str]:
    """The tracked files whose text is checked, but this one: its examples are not references."""
    this = Path(__file__).resolve().relative_to(REPO).as_posix()
    return [name for name in tracked_files()
            if (name.endswith(SCANNED) or name in ("Makefile", ".ci/run")) and name != this]


def mentions(text: str, folders: set[str]) -> set[str]:
    """The repository-relative paths ``text`` mentions (see the module's docstring); modules as their file."""
    found = set()
    for match in PATH.finditer(text):
        path = match.group(1).rstrip("./")
        if path.split("/")[0] in folders or path.endswith(".md"):
            found.add(path)
    for match in MODULE.finditer(text):
        module = match.group(1).split(".")
        if module[0] in folders:
            found.add("/".join(module) + ".py")
    return found


def exists(path: str, present: set[str]) -> bool:
    """Whether ``path`` is a file or folder of ``present``, a module without its ``.py`` (``util/box_ops``), or a
    pattern that matches one."""
    if "*" in path:
        return any(fnmatch.fnmatch(candidate, path) for candidate in present)
    return path in present or f"{path}.py" in present


def all_mentions() -> dict[str, list[str]]:
    """Mentioned path -> the tracked files that mention it."""
    tracked = tracked_files()
    folders = {path.split("/")[0] for path in tracked if "/" in path}
    found: dict[str, list[str]] = {}
    for name in scanned_files():
        for path in mentions((REPO / name).read_text(errors="replace"), folders):
            found.setdefault(path, []).append(name)
    return found


def test_every_mentioned_project_file_is_in_the_repository():
    tracked = tracked_files()
    present = set(tracked) | {"/".join(path.split("/")[:depth]) for path in tracked
                              for depth in range(1, path.count("/") + 1)}
    found = all_mentions()
    missing = {path: files for path, files in found.items() if path not in NOT_OURS and not exists(path, present)}
    assert not missing, ("mentioned but not in the repository (fix the reference, state the fact inline, or add it "
                         f"to NOT_OURS with the reason): {missing}")
    stale = sorted(set(NOT_OURS) - set(found))
    assert not stale, f"NOT_OURS lists paths nothing mentions any more; remove them: {stale}"


def test_the_scanner_tells_references_from_run_time_paths():
    folders = {"docs", "configs", "scripts"}
    text = ("see docs/install.md and configs/base/loss.yaml; run `python -m scripts.run_demo` or scripts/dist_*.sh; "
            "the paper's notes: reference/hcd-architecture.md. Writes outputs/demo/metrics.json, reads weight/unet/, "
            "/usr/lib/python3/docs/x.md, https://github.com/a/b/docs/c.md, ~/.cache/docs/y.md, <out>/docs/z.md")
    assert mentions(text, folders) == {"docs/install.md", "configs/base/loss.yaml", "scripts/run_demo.py",
                                       "scripts/dist_*.sh", "reference/hcd-architecture.md"}
    commands = ["$(PY) scripts/run_demo.py", '"$PYTHON" scripts/resolve_config.py', "python3 benchmarks/bench_fps.py",
                '[sys.executable, "scripts/make_refshapes.py"', "python -m scripts.run_demo", "bash scripts/x.sh"]
    assert [bool(DRIVER_BY_PATH.search(command)) for command in commands] == [True] * 4 + [False] * 2
    present = {"util", "util/box_ops.py", "scripts/dist_train_ytvos_hcd.sh"}
    assert [exists(path, present) for path in ("util/box_ops", "scripts/dist_*.sh", "util/box_ops.md", "util/x")] == \
        [True, True, False, False]


def test_no_command_runs_a_driver_by_its_path():
    offenders = [name for name in scanned_files() if DRIVER_BY_PATH.search((REPO / name).read_text(errors="replace"))]
    assert not offenders, f"run the drivers as modules from the root (python -m scripts.<name>) in: {offenders}"
