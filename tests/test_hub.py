"""Hub ids, the model card and --push-to-hub (issue 17). No network: the hub cache is fabricated in
Hugging Face's own layout, and the upload goes to a recording stand-in for ``HfApi``."""

import json
import os
import shutil
import subprocess
import sys

import pytest
from conftest import PRESET, ROOT, tiny_overrides

from pipa.cli import main


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hub")
    run = tmp / "run"
    assert main(["train", str(PRESET), *tiny_overrides(run, iterations=3), "method.name=pipa"]) == 0
    out = tmp / "exp"
    assert main(["export", str(run), "--out", str(out)]) == 0
    return run, out


def test_model_card_states_recipe_data_miou_and_command(exported):
    run, out = exported
    card = (out / "README.md").read_text()
    evals = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    miou = [e for e in evals if "miou" in e][-1]["miou"]
    argv = json.loads((run / "run.json").read_text())["argv"]
    assert card.startswith("---\nlibrary_name: pipa")
    assert f"| target val mIoU | {miou:.2f} " in card
    assert "| recipe | pipa: self_training + pixel, patch, temporal contrast |" in card
    assert "| source (labelled) | synthetic source |" in card and "| target (unlabelled) | synthetic target |" in card
    assert " ".join(argv[1:]) in card  # the command that produced the run (here pytest's)
    assert (out / "config.yaml").read_text() == (run / "config.yaml").read_text()


def test_hub_id_loads_from_the_cache_and_a_missing_one_says_so(exported, tmp_path):
    """``pipa.load('owner/name')`` and ``Segmentor.from_pretrained`` read a cached snapshot
    (offline), and predict what the local folder predicts; an id that is not cached gives one line
    naming it."""
    _, out = exported
    cache = tmp_path / "cache"
    snap = cache / "models--someone--pipa-demo" / "snapshots" / ("a" * 40)
    shutil.copytree(out, snap)
    (cache / "models--someone--pipa-demo" / "refs").mkdir()
    (cache / "models--someone--pipa-demo" / "refs" / "main").write_text("a" * 40)
    code = (
        "import sys, torch, pipa\n"
        "from pipa.models import Segmentor\n"
        "x = torch.rand(2, 3, 32, 64, generator=torch.Generator().manual_seed(0))\n"
        "a = pipa.load('someone/pipa-demo').predict(x)\n"
        "b = pipa.load(sys.argv[1]).predict(x)\n"
        "assert torch.equal(a, b)\n"
        "Segmentor.from_pretrained('someone/pipa-demo')\n"
        "try:\n"
        "    pipa.load('someone/not-there')\n"
        "except FileNotFoundError as e:\n"
        "    print('ERR', e)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-c", code, str(out)], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    err = [line for line in proc.stdout.splitlines() if line.startswith("ERR")]
    assert len(err) == 1 and "someone/not-there: not a local folder" in err[0]


def test_push_to_hub_uploads_the_exported_folder(exported, tmp_path, monkeypatch, capsys):
    import huggingface_hub

    calls = []

    class FakeApi:
        def create_repo(self, repo_id, **kw):
            calls.append(("create", repo_id, kw.get("private")))

        def upload_folder(self, folder_path, repo_id, **kw):
            calls.append(("upload", repo_id, sorted(os.listdir(folder_path))))

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    run, _ = exported
    out = tmp_path / "push"
    assert main(["export", str(run), "--out", str(out), "--push-to-hub", "me/pipa-x", "--private"]) == 0
    assert calls == [("create", "me/pipa-x", True),
                     ("upload", "me/pipa-x", ["README.md", "config.json", "config.yaml", "model.safetensors"])]

    class FailingApi(FakeApi):
        def upload_folder(self, folder_path, repo_id, **kw):
            raise ConnectionError("no route to host")

    monkeypatch.setattr(huggingface_hub, "HfApi", FailingApi)
    assert main(["export", str(run), "--out", str(tmp_path / "push2"), "--push-to-hub", "me/pipa-x"]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "to the hub repo me/pipa-x failed (ConnectionError: no route to host)" in err[0]
    assert (tmp_path / "push2" / "model.safetensors").is_file()  # nothing written is lost
