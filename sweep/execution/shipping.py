"""The code a sweep's Ray workers need besides what is installed: this project (to a cluster) and
the modules of the user's declared optimizers.

When the sweep starts Ray (``sweep run``, ``sweep.api.run`` with no Ray yet) both go in the job's
``runtime_env`` as ``py_modules``: Ray ships each folder once per node. When Ray was started before
(a notebook's own ``ray.init``, the test suite's), a job's runtime_env can no longer change, and
Ray takes folders only at the job level: the user's modules are then pickled by value with each
trial (its declaration holds the class), so a worker needs no copy of them.
"""

from __future__ import annotations

import os

from sweep.core.config import SweepConfig


def project_code() -> list[str]:
    """This project's packages, as folders (paths, not modules: Ray deep-copies a runtime_env)."""
    import models
    import optim
    import sweep

    return [os.path.dirname(m.__file__) for m in (sweep, models, optim)]


def pickle_by_value(cfg: SweepConfig) -> None:
    """Ray is running already: send the user's optimizer modules inside the trials instead."""
    import importlib

    from ray import cloudpickle

    for declaration in cfg.custom_optimizers:
        top = declaration.target.partition(":")[0].split(".")[0]
        if _local_source(top) is not None:  # the whole package: a helper module of it travels too
            cloudpickle.register_pickle_by_value(importlib.import_module(top))


def _local_source(top: str):
    """The folder (or single file) of top-level module ``top`` when it is the user's own code:
    not installed (site-packages, the standard library) and not this project's."""
    import importlib.util
    import sysconfig
    from pathlib import Path

    found = importlib.util.find_spec(top)
    if found is None or top in ("sweep", "models", "optim") or found.origin in (None, "built-in", "frozen"):
        return None
    locations = found.submodule_search_locations
    path = Path(locations[0] if locations else found.origin).resolve()
    installed = [Path(sysconfig.get_paths()[k]).resolve() for k in ("purelib", "platlib", "stdlib")]
    return None if any(path.is_relative_to(root) for root in installed) else path


def user_code(cfg: SweepConfig) -> list[str]:
    """The folders of the declared optimizers' modules, to ship to the workers; a single-file
    module travels as a package of the same name (Ray ships folders)."""
    import tempfile
    from pathlib import Path

    shipped: list[str] = []
    for declaration in cfg.custom_optimizers:
        top = declaration.target.partition(":")[0].split(".")[0]
        path = _local_source(top)
        if path is None:
            continue
        if path.is_file():
            package = Path(tempfile.mkdtemp(prefix="sweep-user-code-")) / top
            package.mkdir()
            (package / "__init__.py").write_bytes(path.read_bytes())
            path = package
        if str(path) not in shipped:
            shipped.append(str(path))
    return shipped
