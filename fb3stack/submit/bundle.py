"""A self-contained folder to predict offline, as in a Kaggle code competition.

    DIR/bundle.json        what is inside (with each member's content hash), and the backbone specs rewritten to
                           bundled folders
    DIR/models/<member>/   config.yaml + every fold's model files (checkpoints, tokenizers, sklearn/LightGBM), and
                           what the folds share (a transformer's frozen layers, once: shared/)
    DIR/blend/             the fitted blend (spec.json, saved stacker)
    DIR/external/<member>/ an outside member's test predictions (spec.json names them there, with their sha256)
    DIR/backbones/<slug>/  frozen backbones that members load at predict time (e.g. the MiniLM of an `embed` member)
    DIR/wheels/            the fb3stack wheel and the wheels a Kaggle image lacks
    DIR/README.md          the two lines that predict from it

    pip install --no-index --find-links DIR/wheels fb3stack
    fb3stack predict --bundle DIR --test test.csv --out /kaggle/working/submission.csv

Only a blend whose members are unchanged since it was fitted is bundled (the same check as `predict`), and
the members' seals (files.json) and manifests travel along, so `predict --bundle` verifies every file and
hash again on the target machine. An outside member's test predictions are bundled only when their sha256 is
the one recorded when the blend was fitted; a blend with an OOF file that has none is refused.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from fb3stack import __version__
from fb3stack.base.member import MemberConfig
from fb3stack.base.runner import SavedMember, build_member
from fb3stack.config import ConfigError, load_yaml, to_dict
from fb3stack.io import atomic_dir, read_json, umask_permissions, write_json, write_text, write_yaml
from fb3stack.submit.predict import (
    PredictSources,
    check_blend,
    check_recorded_test_file,
    load_member,
    recorded_test_file,
)
from fb3stack.submit.versions import library_versions
from fb3stack.workspace import PREDICT_UNUSED, seal_folder

logger = logging.getLogger(__name__)

# what fb3stack needs beyond a Kaggle GPU image (torch, transformers, lightgbm, sklearn, pandas ... are there)
EXTRA_WHEELS = ("iterative-stratification", "textstat", "pyphen", "pyspellchecker")


def backbone_folders(config: dict) -> dict[str, Path]:
    """Config values that name a local model folder (a path or a `pkg:` spec) → the folder."""
    from fb3stack.base.backbones import is_backbone_spec, resolve_backbone_path

    found: dict[str, Path] = {}
    values = [v for v in config.values() if isinstance(v, str)]
    values += [x for v in config.values() if isinstance(v, list) for x in v if isinstance(x, str)]
    for value in values:
        if is_backbone_spec(value) or (os.sep in value and Path(value).is_dir()):
            path = Path(resolve_backbone_path(value))
            if (path / "config.json").is_file():
                found[value] = path
    return found


def _slug(spec: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", spec.removeprefix("pkg:")).strip("_")[:80]


def build_wheels(dest: Path, extra: tuple[str, ...] = EXTRA_WHEELS) -> list[str]:
    """The fb3stack wheel from its source tree, plus the installed versions of `extra` from the registry."""
    dest.mkdir(parents=True, exist_ok=True)
    source = Path(__file__).resolve().parents[2]
    pip = [sys.executable, "-m", "pip"]
    if (source / "pyproject.toml").is_file():
        subprocess.run([*pip, "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(dest), str(source)],
                       check=True)
    else:
        logger.warning("fb3stack source tree not found; the bundle has no fb3stack wheel")
    for name in extra:
        try:
            version = metadata.version(name)
        except metadata.PackageNotFoundError:
            logger.warning("%s is not installed; not bundled", name)
            continue
        subprocess.run([*pip, "download", "-q", "--no-deps", "--only-binary=:all:", "-d", str(dest),
                        f"{name}=={version}"], check=True)
    return sorted(p.name for p in dest.glob("*.whl"))


def check_out(workspace: Path, out: str | os.PathLike) -> Path:
    """The bundle folder, refused inside the workspace it copies (it would copy itself next time)."""
    out = Path(out).expanduser().resolve()
    if out == workspace or workspace in out.parents:
        raise ConfigError(f"--out {out} is inside the workspace; choose a folder outside it")
    return out


BACKBONE_SKIP = ("*.onnx", "openvino*", "*.h5")  # other runtimes' copies of the weights: never loaded


@dataclass
class BundlePlan:
    """What `make_bundle` copies, every member verified first (seals, content hash == the blend's record)."""

    sources: PredictSources
    members: list[str]  # every member of the blend, in its order
    hashes: dict[str, str]
    configs: dict[str, MemberConfig]
    backbones: dict[str, Path]  # spec -> model folder copied to backbones/<slug>
    external: dict[str, Path]  # outside member -> its test-prediction file, copied to external/<member>/

    @property
    def model_members(self) -> list[str]:
        """The members whose fold models are copied (those trained in a workspace)."""
        return [name for name in self.members if name not in self.external]

    def saved(self, name: str) -> SavedMember:
        return SavedMember(self.configs[name], self.sources.models_root / name)

    def fold_dirs(self, name: str) -> list[Path]:
        return self.saved(name).fold_dirs


def plan_bundle(workspace: str | os.PathLike, blend: str | None = None) -> BundlePlan:
    from fb3stack.blend import load_fitted_blend

    sources = PredictSources.from_workspace(workspace, blend)
    expected = check_blend(sources.blend_dir)
    fitted = load_fitted_blend(sources.blend_dir)
    fitted.check_can_predict()  # an OOF file without test predictions: nothing of it could predict offline
    # every member verified (seals, content hash == the blend's record; an outside member's test file == its
    # recorded sha256) before anything is copied
    external = {}
    for name in fitted.member_tests:
        path, sha = recorded_test_file(sources, fitted, name)
        check_recorded_test_file(path, sha, name, sources.blend_name)
        external[name] = path
    hashes, configs, backbones = {}, {}, {}
    for name in (n for n in fitted.members if n not in external):
        saved, hashes[name] = load_member(sources, name, expected.get(name))  # a workspace: paths as trained
        configs[name] = saved.config
        backbones.update(backbone_folders(to_dict(configs[name])))
    return BundlePlan(sources, list(fitted.members), hashes, configs, backbones, external)


def copied_bytes(folder: Path, skip: tuple[str, ...] = ()) -> int:
    """Bytes of the files under `folder` that a copy leaving out the `skip` patterns (by name) keeps."""
    from fnmatch import fnmatch

    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()
               and not any(fnmatch(part, pat) for part in p.relative_to(folder).parts for pat in skip))


def make_bundle(workspace: str | os.PathLike, out: str | os.PathLike, blend: str | None = None,
                wheels: bool = True) -> Path:
    plan = plan_bundle(workspace, blend)
    out = check_out(plan.sources.models_root.parent, out)
    with atomic_dir(out) as tmp:
        paths: dict[str, str] = {}
        for name, path in plan.external.items():
            (tmp / EXTERNAL / name).mkdir(parents=True)
            shutil.copy2(path, tmp / EXTERNAL / name / path.name)
        for name in plan.model_members:
            model_dir = plan.sources.models_root / name
            dest = tmp / "models" / name
            # the member's folder, and a seed average's seed<s>/ folders, at the same places as in the workspace
            for unit in [model_dir, *(s.model_dir for s in plan.saved(name).seeds)]:
                for item in ("config.yaml", "metrics.json", "manifest.json"):
                    if (unit / item).is_file():
                        (dest / unit.relative_to(model_dir)).mkdir(parents=True, exist_ok=True)
                        shutil.copy2(unit / item, dest / unit.relative_to(model_dir) / item)
            member = build_member(plan.configs[name])
            for fold in plan.fold_dirs(name):
                fold_dest = dest / fold.relative_to(model_dir)
                shutil.copytree(fold, fold_dest, ignore=lambda _d, names: [n for n in names if n in PREDICT_UNUSED])
                for path in member.shared_files(fold):  # e.g. frozen layers, stored once for all folds
                    target = Path(os.path.normpath(fold_dest / os.path.relpath(path, fold)))
                    if not target.exists():
                        target.parent.mkdir(parents=True, exist_ok=True)
                        shutil.copy2(path, target)
            for spec in backbone_folders(to_dict(plan.configs[name])):
                paths[spec] = f"backbones/{_slug(spec)}"
        for spec, folder in plan.backbones.items():
            shutil.copytree(folder, tmp / paths[spec], ignore=shutil.ignore_patterns(*BACKBONE_SKIP))
        shutil.copytree(plan.sources.blend_dir, tmp / "blend")
        portable_blend(tmp / "blend", {name: f"{EXTERNAL}/{name}/{path.name}" for name, path in plan.external.items()})
        wheel_names = build_wheels(tmp / "wheels") if wheels else []
        versions = library_versions()
        write_json(tmp / "bundle.json", {
            "fb3stack_version": __version__, "created_at": dt.datetime.now(dt.timezone.utc).isoformat(),
            "blend": plan.sources.blend_dir.name, "members": plan.members, "member_hashes": plan.hashes,
            "paths": paths, "wheels": wheel_names,
            # the libraries its pickles and checkpoints were written with; predict compares them with the image's
            "versions": versions,
        })
        write_text(tmp / "README.md", bundle_readme(plan.members, versions, list(plan.external)))
        umask_permissions(tmp)
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    logger.info("bundle written to %s (%.1f MB, members: %s)", out, size / 2**20, plan.members)
    return out


EXTERNAL = "external"  # the bundle's folder of outside members' test predictions


def portable_blend(blend_dir: Path, external: dict[str, str] | None = None) -> None:
    """Leave no path of the training machine in the bundled blend: the OOF files it was fitted on become
    bundle-relative names (their content is recorded by hash in the manifest; an outside member's OOF is not
    bundled, only its file name kept), an outside member's test predictions their copy in the bundle
    (`external`: member -> bundle-relative path; the recorded sha256 stays), the config's source its file name.
    The folder is sealed again, so predict still verifies every file of it."""
    external = external or {}
    spec = read_json(blend_dir / "spec.json")
    outside = set(spec.get("external_members", []))
    spec["member_files"] = [Path(file).name if name in outside else f"models/{name}/oof.parquet"
                            for name, file in zip(spec.get("members", []), spec.get("member_files", []))]
    for name, record in (spec.get("member_tests") or {}).items():
        record["file"] = external[name]
    write_json(blend_dir / "spec.json", spec)
    if (blend_dir / "config.yaml").is_file():
        cfg = load_yaml(blend_dir / "config.yaml")
        cfg["source"] = Path(cfg["source"]).name if cfg.get("source") else None
        cfg["data_dir"] = None
        cfg["members"] = [_portable_entry(entry, external) for entry in cfg.get("members") or []]
        write_yaml(blend_dir / "config.yaml", cfg)
    seal_folder(blend_dir)


def _portable_entry(entry: object, external: dict[str, str]) -> object:
    """A blend config's member without the training machine's folders: a file keeps its name only, an outside
    member's test file becomes its copy in the bundle."""
    if isinstance(entry, dict):
        from fb3stack.blend.inputs import external_name

        name = entry.get("name") or external_name(Path(str(entry.get("oof"))))
        test = external.get(name) if entry.get("test") else None
        return {**entry, "oof": Path(str(entry.get("oof"))).name, "test": test}
    return Path(entry).name if isinstance(entry, str) and ("/" in entry or os.sep in entry) else entry


KAGGLE_DATA = "/kaggle/input/feedback-prize-english-language-learning"


def bundle_readme(members: list[str], versions: dict[str, str | None], external: list[str] | None = None) -> str:
    """The bundle's README: how to predict on Kaggle, writing to /kaggle/working (the bundle is read-only there),
    which libraries the image must already have, since the bundle does not ship them, and what the outside
    members' bundled test predictions cover."""
    libs = [f"{name} {v}" for name, v in versions.items() if v is not None]
    outside = "" if not external else f"""
Outside members ({", ".join(external)}) have no models here, only their predictions for the test essays they were
made for (`{EXTERNAL}/<member>/`): on other essays (a code competition's rerun on its hidden test set) `predict`
refuses them (ids differ) unless each is given the same model's predictions for that test file:
`--member-test <member>=<file>` (text_id + six traits).
"""
    return f"""# fb3stack offline bundle

Members: {", ".join(members)}. Everything fb3stack needs to predict is in this folder; no network is used, and
nothing is written into it (it may be read-only, as an attached Kaggle dataset is).

The notebook image must already have the libraries the model files were written with (the bundle does not ship
them): {", ".join(libs)} (torch and transformers only for members on a neural backbone), and fb3stack's
other dependencies that a Kaggle image has and `wheels/` does not carry (accelerate, pandas, scipy, pyarrow,
tokenizers, safetensors, sentencepiece, pyyaml, tqdm, matplotlib, rich).
`fb3stack predict` compares them with the image's, warns on a difference and refuses another major version
(`bundle.json`, `versions`).

In a Kaggle notebook with this folder attached as a dataset (`/kaggle/input/<this-bundle>`):

```bash
pip install --no-index --find-links /kaggle/input/<this-bundle>/wheels fb3stack
cd /kaggle/working
fb3stack predict --bundle /kaggle/input/<this-bundle> \\
    --test {KAGGLE_DATA}/test.csv \\
    --sample-submission {KAGGLE_DATA}/sample_submission.csv \\
    --out /kaggle/working/submission.csv
```

Cached member predictions go to the system's temporary folder (`--cache DIR` to choose), never into the bundle
or /kaggle/working.
{outside}"""
