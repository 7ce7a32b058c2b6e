"""Checkpoints are untrusted input: a crafted file is refused before any of its code can run."""
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import in_process

from urbansound_nb.features import FeatureParams
from urbansound_nb.models import CheckpointError, build_model, checkpoint_dict, save_checkpoint
from urbansound_nb.train import TrainConfig, train_model


class Payload:
    "Unpickled by torch.load(weights_only=False), this would create `marker`."
    def __init__(self, marker): self.marker = str(marker)
    def __reduce__(self): return (Path.touch, (Path(self.marker),))


def _crafted(path: Path, marker: Path, **fields):
    config = dict(n_classes=2, n_mels=16)
    model = build_model("small_cnn", **config)
    ck = checkpoint_dict(model, "small_cnn", config, FeatureParams(n_mels=16), ["a", "b"], 1.0)
    torch.save({**ck, "extra": Payload(marker), **fields}, path)


def test_predict_refuses_a_crafted_checkpoint(tmp_path):
    marker, ck, clip = tmp_path/"code_ran", tmp_path/"crafted.pt", tmp_path/"clip.wav"
    _crafted(ck, marker)
    sf.write(clip, 0.1 * np.random.default_rng(0).standard_normal(22050).astype(np.float32), 22050)
    r = in_process("predict", ck, clip)
    assert r.returncode == 2, r.stdout + r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "crafted.pt: refused" in lines[0] and "Traceback" not in r.stderr
    assert not marker.exists()


def test_resume_refuses_a_crafted_training_state(tmp_path):
    "A crafted `model.last.pt` in a store cell: training stops with a CheckpointError, and no code runs."
    from types import SimpleNamespace

    import pandas as pd

    from urbansound_nb.batches import LogMelSet, StudyData
    rng = np.random.default_rng(0)
    clips = LogMelSet([rng.standard_normal((40, 16)).astype(np.float16) for _ in range(12)],
                      labels=[i % 2 for i in range(12)])
    data = StudyData(None, SimpleNamespace(classes=["a", "b"]), pd.DataFrame(dict(fold=[1] * 8 + [2] * 4)),
                     FeatureParams(n_mels=16), clips, 1.0, 32, np.arange(8), np.arange(8, 12), np.arange(8, 12), {})
    cfg, config = TrainConfig(epochs=1, batch_size=4, patience=None), dict(n_classes=2, n_mels=16)
    train_model("small_cnn", config, data, cfg, cell=tmp_path, progress=False)
    marker = tmp_path/"code_ran"
    torch.save(dict(train_config={}, payload=Payload(marker)), tmp_path/"model.last.pt")
    with pytest.raises(CheckpointError, match="model.last.pt: refused"):
        train_model("small_cnn", config, data, cfg, cell=tmp_path, progress=False)
    assert not marker.exists()


def test_saved_checkpoints_load_with_weights_only(tmp_path):
    "What the study saves beside tensors is plain: NumPy figures become numbers, so weights_only accepts the file."
    config = dict(n_classes=2, n_mels=16)
    ck = checkpoint_dict(build_model("small_cnn", **config), "small_cnn", config, FeatureParams(n_mels=16), ["a", "b"],
                         1.0, val_accuracy=np.float64(0.5), seeds=np.arange(2))
    save_checkpoint(ck, tmp_path/"m.pt")
    back = torch.load(tmp_path/"m.pt", weights_only=True)
    assert back["val_accuracy"] == 0.5 and back["seeds"] == [0, 1]
