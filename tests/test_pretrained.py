"""The pretrained network: the port checked against the official weights, and where the weights come from."""
import functools
import http.server
import json
import os
import threading
import time
from pathlib import Path

import pytest
import soundfile as sf
import torch
import torchaudio
from conftest import SHARED

import urbansound_nb.pretrained as P
from urbansound_nb.models import EfficientAT, SmallAudioCNN

MODELS = Path(os.environ.get("URBANSOUND_SHARED_MODELS", SHARED.parent/"models"))


@pytest.fixture(scope="module")
def official():
    if not (MODELS/"mn04_as_mAP_432.pt").is_file():
        pytest.skip(f"{MODELS} is absent (the weights are only beside the repository)")
    return MODELS


def release_layout(model: EfficientAT) -> dict:
    "A state dict in EfficientAT's own layout (squeeze-excitation layers as its release names and shapes them)."
    out = {}
    for k, v in model.net.state_dict().items():
        if ".fc1." in k or ".fc2." in k:
            k = k.replace(".fc1.", ".conc_se_layers.0.fc1.").replace(".fc2.", ".conc_se_layers.0.fc2.")
            v = v[:, :, 0, 0] if k.endswith("weight") else v
        out[k] = v
    return out


def test_port_matches_the_reference_outputs(official):
    "The AudioSet head on real clips gives the labels and probabilities the README's reference port gave (within 0.02)."
    net = P.pretrained_network(weights=official)
    labels = P.audioset_labels(net.weights_path)
    front = P.EfficientATFeatures().front_end()
    ref = json.loads((official/"mn04_reference_outputs.json").read_text())
    for clip in ref["clips"]:
        x, rate = sf.read(SHARED/"urbansound8k-originals"/clip["file"], dtype="float32", always_2d=True)
        inp = front(torchaudio.functional.resample(torch.from_numpy(x.mean(1)), rate, 32000))[None]
        assert list(inp.shape[-2:]) == clip["input_shape"][-2:], clip["file"]
        assert abs(float(inp.mean()) - clip["input_mean"]) < 0.01
        top = P.audioset_top(net, inp, labels)[0]
        assert top[0][0] == clip["top3"][0][0] and abs(top[0][1] - clip["top3"][0][1]) < 0.02, (clip["file"], top)
        with torch.no_grad(): assert abs(float(net.embed(inp).norm()) - clip["penultimate_512_norm"]) < 0.1


def test_local_weights_are_checked(official, tmp_path):
    damaged = tmp_path/"mn04_as_mAP_432.pt"
    damaged.write_bytes((official/"mn04_as_mAP_432.pt").read_bytes()[:-10] + b"0123456789")
    with pytest.raises(P.WeightsError, match="its sha256 is not that of the official"): P.weights_file(weights=damaged)
    assert P.weights_file(weights=official) == official/"mn04_as_mAP_432.pt"          # a folder holding the file
    os.environ[P.WEIGHTS_ENV] = str(official)
    try: assert P.weights_file() == official/"mn04_as_mAP_432.pt"
    finally: del os.environ[P.WEIGHTS_ENV]


def test_files_that_are_not_these_weights(tmp_path):
    torch.save(SmallAudioCNN().state_dict(), tmp_path/"cnn.pt")
    with pytest.raises(P.WeightsError, match="cnn.pt: these are not EfficientAT weights of width 0.4"):
        P.load_weights(tmp_path/"cnn.pt", 0.4)
    (tmp_path/"text.pt").write_text("not weights")
    with pytest.raises(P.WeightsError, match="text.pt: not a readable PyTorch weights file"):
        P.load_weights(tmp_path/"text.pt", 0.4)


def test_offline_fails_within_seconds_naming_the_url(tmp_path, monkeypatch):
    monkeypatch.delenv(P.WEIGHTS_ENV, raising=False)
    monkeypatch.setattr(P, "RELEASE_URL", "https://nonexistent.invalid/releases")
    t = time.time()
    with pytest.raises(P.WeightsError) as e: P.weights_file(cache_dir=tmp_path)
    assert time.time() - t < 15
    assert "https://nonexistent.invalid/releases/mn04_as_mAP_432.pt" in str(e.value) and P.WEIGHTS_ENV in str(e.value)
    assert not list(tmp_path.rglob("*.pt"))                                           # nothing cached


@pytest.fixture
def release(tmp_path, monkeypatch):
    "A loopback web server holding a release of randomly initialised weights, with their sha256 as the official one."
    folder = tmp_path/"release"
    folder.mkdir()
    torch.save(release_layout(EfficientAT(0.4, 527)), folder/"mn04_as_mAP_432.pt")
    served = []
    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *a): pass
        def do_GET(self):
            served.append(self.path)
            super().do_GET()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(folder)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.delenv(P.WEIGHTS_ENV, raising=False)
    monkeypatch.setattr(P, "RELEASE_URL", f"http://127.0.0.1:{server.server_address[1]}")
    sha = P.sha256_file(folder/"mn04_as_mAP_432.pt")
    monkeypatch.setitem(P.PRETRAINED, "mn04_as", ("mn04_as_mAP_432.pt", 0.4, sha))
    yield folder, served
    server.shutdown()


def test_download_is_cached_and_a_damaged_copy_fetched_again(release, tmp_path):
    folder, served = release
    cached = P.weights_file(cache_dir=tmp_path/"cache")
    assert cached == tmp_path/"cache"/"pretrained"/"mn04_as_mAP_432.pt" and len(served) == 1
    assert P.weights_file(cache_dir=tmp_path/"cache") == cached and len(served) == 1   # from the cache
    cached.write_bytes(cached.read_bytes()[:1000])                                      # damaged
    assert P.weights_file(cache_dir=tmp_path/"cache") == cached and len(served) == 2   # fetched again
    assert P.sha256_file(cached) == P.sha256_file(folder/"mn04_as_mAP_432.pt")
    net = P.pretrained_network(cache_dir=tmp_path/"cache")
    assert net(torch.randn(1, 128, 101)).shape == (1, 527)


def test_a_download_with_the_wrong_checksum_is_not_cached(release, tmp_path):
    folder, _ = release
    torch.save(release_layout(EfficientAT(0.4, 527)), folder/"mn04_as_mAP_432.pt")       # another file behind the URL
    with pytest.raises(P.WeightsError, match="the download is not the official file"):
        P.weights_file(cache_dir=tmp_path/"c")
    assert not list((tmp_path/"c").rglob("*.pt"))
