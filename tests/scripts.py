"""Import a script of ``scripts/`` as a module, for tests of its functions."""
import importlib.util
from pathlib import Path
from types import ModuleType

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def load_script(name: str) -> ModuleType:
    """``scripts/<name>.py`` executed as the module ``name``."""
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def scorer_output(argv: list[str]) -> str:
    """What ``python evaluate.py <argv>`` (the one scorer) prints on stdout; it must exit with status 0."""
    import contextlib
    import io

    import evaluate

    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        assert evaluate.main(argv) == 0
    return out.getvalue()
