"""Write the built-in benchmark to disk in a real folder layout (served by ``FolderDataset``).

    OUT/meta.json
    OUT/{source,target}/meta.json
    OUT/{source,target}/images/{train,val}/NNNNNN.png        RGB
    OUT/{source,target}/labels/{train,val}/NNNNNN.png        class ids, 255 = ignore
    OUT/{source,target}/sequences/{train,val}/clip_NNNN/images/TTTTTT.png
                                                     .../labels/TTTTTT.png
                                                     .../flow/TTTTTT.npy   float32 (H, W, 2), backward
                                                     .../flow_valid/TTTTTT.png  255 = visible in t-1
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from .synthetic import CLASS_NAMES, DOMAINS, GENERATOR_VERSION, PALETTE, SyntheticScenes


def write_synthetic(out: str | Path, num_train: int = 200, num_val: int = 50, num_clips: int = 4, clip_length: int = 4,
                    height: int = 96, width: int = 192, seed: int = 0) -> Path:
    out = Path(out)
    meta = {"class_names": list(CLASS_NAMES), "palette": [list(c) for c in PALETTE], "ignore_index": 255,
            "generator": {"version": GENERATOR_VERSION, "height": height, "width": width, "seed": seed},
            "flow": "backward: pixel p of frame t shows frame t-1 at p + flow(p); channels (u, v) in pixels"}
    out.mkdir(parents=True, exist_ok=True)
    (out / "meta.json").write_text(json.dumps(meta, indent=2))
    for domain in DOMAINS:
        (out / domain).mkdir(exist_ok=True)
        (out / domain / "meta.json").write_text(json.dumps({**meta, "domain": domain}, indent=2))
        for split, n in (("train", num_train), ("val", num_val)):
            scenes = SyntheticScenes(domain, split, height, width, seed)
            img_dir, lab_dir = out / domain / "images" / split, out / domain / "labels" / split
            img_dir.mkdir(parents=True, exist_ok=True)
            lab_dir.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                img, lab = scenes.render_image(i)
                Image.fromarray(img).save(img_dir / f"{i:06d}.png")
                Image.fromarray(lab).save(lab_dir / f"{i:06d}.png")
            for c in range(num_clips if clip_length > 1 else 0):
                clip = scenes.render_clip(100_000 + c, clip_length)
                root = out / domain / "sequences" / split / f"clip_{c:04d}"
                for sub in ("images", "labels", "flow", "flow_valid"):
                    (root / sub).mkdir(parents=True, exist_ok=True)
                for t in range(clip_length):
                    Image.fromarray(clip.frames[t]).save(root / "images" / f"{t:06d}.png")
                    Image.fromarray(clip.labels[t]).save(root / "labels" / f"{t:06d}.png")
                    if t > 0:
                        np.save(root / "flow" / f"{t:06d}.npy", clip.flow[t])
                        Image.fromarray((clip.valid[t] * 255).astype(np.uint8)).save(root / "flow_valid" / f"{t:06d}.png")
    return out
