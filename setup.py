"""Which packages install: the one thing pyproject.toml cannot say. The repository's trainers/
folder installs as the package ``lawn_monitor_trainers`` (with its subpackages), never as a
generic top-level ``trainers`` that anyone's own ``import trainers`` could pick up. Inside the
folder every import of its own modules is relative, so it works under either name: as
``trainers`` from a checkout (``python -m trainers.train``), as ``lawn_monitor_trainers``
installed. Everything else about the package is in pyproject.toml.
"""

from setuptools import find_namespace_packages, setup

TRAINERS = "lawn_monitor_trainers"  # the installed name of the trainers/ folder


def packages(folder: str, name: str) -> list[str]:
    """The packages under ``folder`` (those without an __init__.py too, as pyproject's find did),
    named as they install: ``folder`` replaced by ``name``."""
    found = find_namespace_packages(include=[folder, f"{folder}.*"], exclude=["*.__pycache__"])
    return [name + package[len(folder) :] for package in found]


setup(
    packages=packages("lawn_monitor", "lawn_monitor") + packages("trainers", TRAINERS),
    package_dir={TRAINERS: "trainers"},
)
