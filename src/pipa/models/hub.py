"""Weights on the Hugging Face hub: resolve a hub id to a local folder (cached by
``huggingface_hub``), push an exported folder, and write its model card.

A hub id is ``owner/name`` (optionally ``@revision``) that is not an existing local path. Without
network, a cached copy is used (``HF_HUB_OFFLINE=1`` skips the network at once); with neither, one
line says so."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from ..core.io import first_line

HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+(@[\w./-]+)?")
# the files a pipa weights folder may hold (nothing else is downloaded)
WEIGHT_FILES = ["config.json", "model.safetensors", "config.yaml", "README.md", "model.onnx", "model.pt2"]


def is_hub_id(text: str | Path) -> bool:
    """``owner/name`` or ``owner/name@revision`` that is not a local path."""
    s = str(text)
    return not Path(s).exists() and HUB_ID.fullmatch(s) is not None and not s.startswith((".", "/"))


def resolve_weights(path_or_id: str | Path) -> Path:
    """A local folder or file as given; a hub id -> the local snapshot folder (downloaded once,
    then from the cache). Raises ``FileNotFoundError`` with one line naming the path or id."""
    if not is_hub_id(path_or_id):
        p = Path(path_or_id)
        if not p.exists():
            raise FileNotFoundError(f"{p}: no such run folder, weights or hub id (owner/name)")
        return p
    repo, _, revision = str(path_or_id).partition("@")
    try:
        from huggingface_hub import snapshot_download
    except ImportError:  # pragma: no cover - a dependency of transformers
        raise FileNotFoundError(f"{path_or_id}: a hub id needs the huggingface_hub package") from None
    try:
        return Path(snapshot_download(repo, revision=revision or None, allow_patterns=WEIGHT_FILES))
    except Exception as exc:  # no network and no cached copy, unknown repo, gated repo, ...
        reason = first_line(exc, 160)
        raise FileNotFoundError(f"{path_or_id}: not a local folder, and the hub copy could not be fetched or found "
                                f"in the cache ({type(exc).__name__}: {reason}); download it where there is "
                                "network (it is cached), or give a local folder") from None


def config_next_to(weights: Path) -> Path | None:
    """The run's ``config.yaml`` for a weights folder (or a file in it): in the folder, or one up (a
    run's ``best/``); None when there is none."""
    folder = weights if weights.is_dir() else weights.parent
    return next((d / "config.yaml" for d in (folder, folder.parent) if (d / "config.yaml").is_file()), None)


def model_card(run_dir: Path | None, cfg: Any, which: str, iteration: int) -> str:
    """A README.md for an exported folder: what was trained on what, the measured target mIoU
    with its evaluation protocol, and the command that produced the run (from the run's files)."""
    from .. import __version__

    miou = miou_at = run_info = None
    if run_dir is not None:
        metrics = run_dir / "metrics.jsonl"  # evaluations, one JSON line each (the last one counts)
        if metrics.is_file():
            for line in metrics.read_text().splitlines():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if "miou" in row:
                    miou, miou_at = float(row["miou"]), row.get("iteration")
        if (run_dir / "run.json").is_file():
            try:
                run_info = json.loads((run_dir / "run.json").read_text())
            except json.JSONDecodeError:
                run_info = None
    lines = ["---", "library_name: pipa", "pipeline_tag: image-segmentation",
             "tags: [semantic-segmentation, domain-adaptation, pipa]", "---", ""]
    if cfg is None:
        return "\n".join(lines + ["# pipa segmentor", "", f"Weights of the {which} at iteration {iteration}; "
                                  "the run's config.yaml was not found, so its recipe and data are unknown.", ""])
    m, d = cfg.method, cfg.data
    recipe = m.name
    if m.name in ("pipa", "pipa_video"):
        on = [t for t in ("pixel", "patch", "temporal") if getattr(m.pipa, t).weight > 0]
        recipe = f"{m.name}: {m.pipa.base} + {', '.join(on)} contrast"
    recipe += "".join(f" + {t.name}" for t in m.terms)
    lines += [f"# pipa: {m.name} ({cfg.model.backbone} encoder, {cfg.model.decoder} decoder)", "",
              f"Unsupervised domain adaptive semantic segmentation with pipa {__version__}: the {which} weights of "
              f"iteration {iteration}.", "",
              "| | |", "|---|---|",
              f"| recipe | {recipe} |",
              f"| source (labelled) | {d.source.name}" + (f" {d.source.domain}" if d.source.name == "synthetic" else "")
              + " |",
              f"| target (unlabelled) | {d.target.name}" + (f" {d.target.domain}" if d.target.name == "synthetic" else "")
              + " |",
              f"| classes | {cfg.model.num_classes} |",
              f"| HRDA | {'yes' if cfg.model.hrda.enabled else 'no'} |"]
    if miou is not None:
        ev = cfg.eval
        at = "these weights" if miou_at == iteration else f"iteration {miou_at}"
        lines.append(f"| target val mIoU | {miou:.2f} ({at}; {d.val.name} {d.val.split or ''}, protocol: {ev.mode}, "
                     f"input {ev.input_size or 'as given'}) |")
    else:
        lines.append("| target val mIoU | not measured in this run folder |")
    lines.append("")
    if run_info and run_info.get("argv"):
        argv = list(run_info["argv"])
        if Path(argv[0]).name == "pipa":
            argv[0] = "pipa"
        elif argv[0].endswith(("pipa/__main__.py", "pipa/cli.py")):
            argv[0] = "python -m pipa"
        lines += ["Produced by:", "", "```", " ".join(argv), "```", "",
                  f"(git revision {run_info.get('git_revision', 'unknown')}, torch {run_info.get('torch', '?')})", ""]
    lines += ["Use:", "", "```python", "import pipa", 'seg = pipa.load("<this folder or hub id>")',
              "labels = seg.predict(images)   # float RGB in [0, 1], (N, 3, H, W) -> (N, H, W)", "```", "",
              "`config.yaml` is the full training config (it also gives the evaluation protocol).", ""]
    return "\n".join(lines)


def push_folder(folder: Path, repo: str, private: bool = False) -> str:
    """Upload ``folder`` to the hub model repo ``repo`` (created if missing); returns its URL."""
    try:
        from huggingface_hub import HfApi
    except ImportError:  # pragma: no cover
        raise RuntimeError("--push-to-hub needs the huggingface_hub package") from None
    api = HfApi()
    try:
        api.create_repo(repo, repo_type="model", private=private, exist_ok=True)
        api.upload_folder(folder_path=str(folder), repo_id=repo, repo_type="model",
                          commit_message="pipa export")
    except Exception as exc:
        reason = first_line(exc, 160)
        raise RuntimeError(f"pushing {folder} to the hub repo {repo} failed ({type(exc).__name__}: {reason}); "
                           "the exported folder is complete and can be pushed again") from None
    return f"https://huggingface.co/{repo}"
