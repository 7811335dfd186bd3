"""What the one scorer prints, for the tests of the entry points that score (``--score``, ``--eval_only``)."""


def scorer_output(argv: list[str]) -> str:
    """What ``python evaluate.py <argv>`` (the one scorer) prints on stdout; it must exit with status 0."""
    import contextlib
    import io

    import evaluate

    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        assert evaluate.main(argv) == 0
    return out.getvalue()
