"""The library versions a bundle's model files were written with, checked against the machine that predicts.

Pickled scikit-learn / LightGBM models and torch checkpoints are read by the libraries installed on the target
(a Kaggle image), which the bundle does not ship. A different version may load and predict slightly differently,
or fail inside unpickling with an error that names no version: so the bundle records them (`bundle.json`
`versions`) and `predict --bundle` warns on any difference and refuses a different major version.
"""

from __future__ import annotations

import logging
from importlib import metadata

from fb3stack.workspace import StaleArtefactError

logger = logging.getLogger(__name__)

# distributions whose files (pickles, checkpoints, arrays) a bundle holds
RECORDED = ("scikit-learn", "lightgbm", "torch", "transformers", "numpy")


class VersionMismatchError(StaleArtefactError):
    """The predicting machine has another major version of a library the bundle's files were written with."""


def library_versions(names: tuple[str, ...] = RECORDED) -> dict[str, str | None]:
    """Installed version of each distribution (None when it is not installed)."""
    out: dict[str, str | None] = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def _major(version: str) -> str:
    return version.split(".", 1)[0]


def check_versions(recorded: dict[str, str | None], where: str) -> list[str]:
    """Compare the versions a bundle recorded with this machine's: log a warning per difference and return them;
    raise VersionMismatchError when a major version differs (pickles and checkpoints are not meant to cross it)."""
    installed = library_versions(tuple(recorded))
    differences, major = [], []
    for name, then in recorded.items():
        now = installed.get(name)
        if then is None or now == then:
            continue
        if now is None:
            differences.append(f"{name} {then} is not installed here (members that need it cannot load)")
        elif _major(now) != _major(then):
            major.append(f"{name} {then} -> {now}")
        else:
            differences.append(f"{name} {then} -> {now}")
    if major:
        raise VersionMismatchError(f"{where} was written with other major versions than this machine has: "
                                   f"{', '.join(major)}; install the recorded versions (see its bundle.json) or "
                                   "rebuild the bundle with this machine's versions")
    for diff in differences:
        logger.warning("%s: made with %s; predictions may differ slightly", where, diff)
    return differences
