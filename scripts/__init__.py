"""Drivers of the project, run from the repository root as modules: ``python -m scripts.run_demo --help``.

A package, so that ``-m`` finds them and they import ``models``, ``datasets``, ``util``, ... from the repository
root, the first entry of ``sys.path`` under ``-m`` (the project is not installed: docs/install.md).
"""
