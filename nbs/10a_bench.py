# %%
#| default_exp bench

# %% [markdown]
# # Benchmarks: the data path, training, the pretrained network and predict
#
# > Every figure of speed and memory the study quotes, measured on this machine, in one module.

# %% [markdown]
# Speed and memory are measured here, never asserted in tests: every function prints its figures (the last line JSON)
# and returns them. `urbansound-nb bench` runs them, and `run --plan` uses the training rates (notebook 90d): the data
# path (chapter 02), the pretrained front end and embeddings (chapter 05), training and inference of each network
# against the machine's matrix-product rate, `predict`'s memory and speed with torch and ONNX, and a deployed model's
# accuracy and speed (chapter 10).

# %%
#| export
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torch.nn.functional as F
from torch import nn

from urbansound_nb.audio import window_starts
from urbansound_nb.batches import LogMelSet, batch_frames, decoded_logmels
from urbansound_nb.cache import cache_logmels, clip_batches
from urbansound_nb.data import load_urbansound
from urbansound_nb.export import export_onnx
from urbansound_nb.features import FeatureParams, LogMel, load_waveform
from urbansound_nb.models import EfficientAT, build_model, checkpoint_dict, save_checkpoint
from urbansound_nb.params import BATCH_SIZE, INFERENCE_BATCH, LOG_MEL
from urbansound_nb.pretrained import POOLED_BLOCKS, PRETRAINED, EfficientATFeatures, embed_clips

# %% [markdown]
# ## The cached data path against decoding every epoch
#
# `benchmark` times, on the same clips, the cached extraction (on every core, into a fresh cache), reading it back,
# and the starting notebook's decoding of every clip in `__getitem__` (`urbansound-nb bench --dataset D --max-items
# N`).

# %%
#| export
def _on_the_fly(ds, fp: FeatureParams, n_frames: int) -> float:
    "Clips/s of decoding every item inside the training loop, as the starting notebook did."
    front, t0, n = LogMel(fp), time.time(), 0
    with torch.no_grad():
        for names, datas in clip_batches(ds, 64):
            for name, d in zip(names, datas):
                frames = front(load_waveform(d, fp.sample_rate, name)).T.numpy()
                batch_frames(LogMelSet([frames]), [0], n_frames)                # cropped or repeated, as in training
                n += 1
    return n / (time.time() - t0)

def benchmark(dataset=None, max_items: int = 512, workers: int | None = None, sample_rate: int = LOG_MEL["sample_rate"],
              fp: FeatureParams | None = None, model: nn.Module | None = None, batch_size: int = BATCH_SIZE,
              seed: int = 0) -> dict:
    "Print throughput figures of the feature pipeline on `max_items` clips of `dataset`; the last line is JSON."
    ds = load_urbansound(dataset, max_items, seed)
    fp = fp or FeatureParams(sample_rate=sample_rate)
    n_frames, res = fp.frames(4.0), dict(dataset=str(dataset), clips=len(ds), cores=os.cpu_count(), feature_key=fp.key)
    with tempfile.TemporaryDirectory() as d:
        t = time.time()
        cache, keys, st = cache_logmels(ds, fp, d, workers, device="cpu", progress=False)
        res.update(logmel_front_end_clips_per_s=len(ds) / (time.time() - t), workers=st["workers"])
        t = time.time()
        cache, keys, _ = cache_logmels(ds, fp, d, workers, device="cpu", progress=False)
        ds, keys, ls, _ = decoded_logmels(ds, cache, keys)        # a clip that does not decode is left out, named
        res["cache_reload_clips_per_s"] = len(ds) / (time.time() - t)
    otf = ds.select(range(min(len(ds), 256)))
    res["on_the_fly_clips_per_s"] = _on_the_fly(otf, fp, n_frames)
    res.update(epoch_data_path(ls, n_frames, batch_size, model))
    # per epoch, the cached path costs batch building only; the starting notebook's path decodes everything again
    res["epoch_speedup_cached_vs_on_the_fly"] = len(ls) / res["epoch_data_seconds"] / res["on_the_fly_clips_per_s"]
    print(f"the log-mel front end (decode, resample, log-mel, into a fresh cache; {res['workers']} workers): "
          f"{res['logmel_front_end_clips_per_s']:.1f} clips/s")
    for k, v in res.items(): print(f"{k:>34}: {v:.4g}" if isinstance(v, float) else f"{k:>34}: {v}")
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in res.items()}))
    return res

def epoch_data_path(ls: LogMelSet, n_frames: int, batch_size: int = BATCH_SIZE, model: nn.Module | None = None) -> dict:
    "Seconds per epoch spent building batches from the cache, and (with `model`) in the model's training step."
    perm, t = torch.randperm(len(ls)), time.time()
    batches = [batch_frames(ls, perm[i:i + batch_size], n_frames, "random") for i in range(0, len(ls), batch_size)]
    out = dict(epoch_data_seconds=time.time() - t)
    if model is not None:
        opt, t = torch.optim.SGD(model.parameters(), lr=1e-3), time.time()
        for xb in batches:
            loss = model(xb).logsumexp(1).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        out["epoch_model_seconds"] = time.time() - t
        out["data_path_overhead"] = out["epoch_data_seconds"] / out["epoch_model_seconds"]
    return out

# %%
from fastcore.test import test_eq
res = benchmark("synthetic", max_items=24, workers=2, fp=FeatureParams(n_mels=32, n_fft=512, hop_length=256))
test_eq(res["clips"], 24)
assert res["epoch_speedup_cached_vs_on_the_fly"] > 0

# %% [markdown]
# ## The pretrained network's front end and embeddings
#
# `benchmark_pretrained` times what a run pays once per clip: the 32 kHz front end and the embedding, on a randomly
# initialised network of the same width (throughput does not depend on the weights).

# %%
#| export
def benchmark_pretrained(dataset=None, max_items: int = 256, network: str = "mn04_as", workers: int | None = None,
                         batch_size: int = INFERENCE_BATCH, seed: int = 0) -> dict:
    "Clips per second of EfficientAT's front end (into a fresh cache) and of its embeddings, on this machine's CPU."
    ds, fp = load_urbansound(dataset, max_items, seed), EfficientATFeatures()
    res = dict(dataset=str(dataset), clips=len(ds), network=network, threads=torch.get_num_threads())
    with tempfile.TemporaryDirectory() as d:
        t = time.time()
        cache, keys, _ = cache_logmels(ds, fp, d, workers, device="cpu", progress=False)
        res["front_end_clips_per_s"] = len(ds) / (time.time() - t)
        ls = decoded_logmels(ds, cache, keys)[2]               # a clip that does not decode is left out, named
    net = EfficientAT(PRETRAINED[network][1], n_classes=527)
    t = time.time()
    embed_clips(net, ls, np.arange(len(ls)), fp.frames(4.0), batch_size, device="cpu", progress=False)
    res["embedding_clips_per_s"] = len(ls) / (time.time() - t)
    both = 1 / res["front_end_clips_per_s"] + 1 / res["embedding_clips_per_s"]
    res["front_end_and_embedding_clips_per_s"] = 1 / both
    print(f"the pretrained front end (decode, resample to 32 kHz, its log-mel, into a fresh cache): "
          f"{res['front_end_clips_per_s']:.1f} clips/s; with the embeddings "
          f"{res['front_end_and_embedding_clips_per_s']:.1f}")
    for k, v in res.items(): print(f"{k:>36}: {v:.4g}" if isinstance(v, float) else f"{k:>36}: {v}")
    print(json.dumps({k: round(v, 2) if isinstance(v, float) else v for k, v in res.items()}))
    return res

# %%
_bench = benchmark_pretrained("synthetic", max_items=16, batch_size=8)
assert _bench["front_end_clips_per_s"] > 0 and _bench["embedding_clips_per_s"] > 0

# %% [markdown]
# ## Training and inference against the machine's limit
#
# `training_throughput` counts a clip's operations forward and backward (`FlopCounterMode`), times steps on random
# batches as `train_model` runs them, and sets the rate beside the machine's dense matrix-product rate.
# `inference_throughput` gives clips/s at each batch size and the largest output difference to the first (the trial
# behind `INFERENCE_BATCH`); `compiled=True` times steps under `torch.compile` (`bench --compile`; not taken).

# %%
#| export
def matmul_gflops(n: int = 1024, repeats: int = 8) -> float:
    "This machine's float32 dense matrix-product rate with torch's current threads (GFLOP/s), the best of `repeats`."
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(repeats))
    return 2 * n ** 3 / best / 1e9

def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0

def _step(model: nn.Module, x, y, opt):
    def step():
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step

def training_throughput(name: str, config: dict, n_mels: int, n_frames: int, batch_size: int = BATCH_SIZE,
                        steps: int = 3, frozen_blocks: int = 0, compiled: bool = False) -> dict:
    "Clips/s of training steps of network `name` (forward, backward, AdamW), its GFLOP per clip, the GFLOP/s reached."
    from torch.utils.flop_counter import FlopCounterMode
    model = build_model(name, **config).to(memory_format=torch.channels_last).train()
    if frozen_blocks: model.freeze_blocks(frozen_blocks)
    x, y = torch.randn(batch_size, n_mels, n_frames), torch.randint(0, config.get("n_classes", 10), (batch_size,))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], 1e-4)
    step = _step(torch.compile(model) if compiled else model, x, y, opt)
    with FlopCounterMode(display=False) as counter: first = _timed(step)
    seconds = min(_timed(step) for _ in range(steps))
    gflop = counter.get_total_flops() / batch_size / 1e9
    return dict(model=name, clips_per_s=batch_size / seconds, gflop_per_clip=gflop, gflops=gflop * batch_size / seconds,
                first_step_seconds=first)

@torch.no_grad()
def inference_throughput(name: str, config: dict, n_mels: int, n_frames: int, clips: int = 256,
                         batches=(128, 64, 32, 16)) -> list[dict]:
    "Clips/s of network `name` in eval mode at each batch size, and its outputs' largest difference to the first's."
    model = build_model(name, **config).to(memory_format=torch.channels_last).eval()
    x, rows, first = torch.randn(clips, n_mels, n_frames), [], None
    for batch in batches:
        model(x[:batch])
        t = time.time()
        out = torch.cat([model(chunk) for chunk in x.split(batch)])
        first = out if first is None else first
        rows.append(dict(model=name, batch=batch, clips_per_s=clips / (time.time() - t),
                         largest_difference=float((out - first).abs().max())))
    return rows

def study_networks(network: str = "mn04_as") -> list[tuple[str, dict, object, int]]:
    "The networks the study trains: (name, configuration, front end, first blocks held), at their study's shape."
    log_mel, eat = FeatureParams(**LOG_MEL), EfficientATFeatures()
    return [("small_cnn", dict(n_classes=10, n_mels=log_mel.n_mels), log_mel, 0),
            ("resnet", dict(n_classes=10, n_mels=log_mel.n_mels), log_mel, 0),
            ("efficientat", dict(width=PRETRAINED[network][1], n_classes=10, pooled_blocks=list(POOLED_BLOCKS)), eat,
             13)]

def print_training_throughput(network: str = "mn04_as", compiled: bool = False) -> list[dict]:
    "Each network's training clips/s, GFLOP per clip and GFLOP/s, against this machine's matrix-product rate."
    limit = matmul_gflops()
    print(f"\nTraining steps (forward, backward, AdamW; batches of {BATCH_SIZE}, {torch.get_num_threads()} threads); "
          f"this machine's float32 matrix product: {limit:.0f} GFLOP/s")
    rows = [training_throughput(name, config, fp.n_mels, fp.frames(4.0), frozen_blocks=held, compiled=compiled)
            for name, config, fp, held in study_networks(network)]
    for r in rows:
        print(f"{r['model']:>12}: {r['clips_per_s']:7.1f} clips/s, {r['gflop_per_clip']:.3f} GFLOP a clip, "
              f"{r['gflops']:5.1f} GFLOP/s = {r['gflops'] / limit:.0%} of the matrix-product rate"
              + (f" (first, compiling, step {r['first_step_seconds']:.0f} s)" if compiled else ""))
    print(json.dumps(dict(matmul_gflops=round(limit, 1), training=[{k: round(v, 3) if isinstance(v, float) else v
                                                                     for k, v in r.items()} for r in rows])))
    return rows

# %%
_rate = training_throughput("small_cnn", dict(n_classes=10, n_mels=64), 64, 173, batch_size=8, steps=1)
assert _rate["gflop_per_clip"] > 0.01 and _rate["clips_per_s"] > 0
_rows = inference_throughput("small_cnn", dict(n_classes=10, n_mels=64), 64, 173, clips=32,
                             batches=(32, INFERENCE_BATCH))
assert _rows[1]["largest_difference"] < 1e-4          # the batch size changes the speed, not the outputs
print({k: round(v, 3) if isinstance(v, float) else v for k, v in _rate.items()}, f"{matmul_gflops(256):.0f} GFLOP/s")

# %% [markdown]
# ## Predict: test files and a study-shaped model
#
# Long files, and a model shaped like the study's usual choice (two mn04 networks averaged, randomly initialised);
# `peak_memory` runs a command as a child and reads its peak resident memory.

# %%
#| export
def write_long_wav(path, minutes: float, rate: int = 44100, channels: int = 2, seed: int = 0) -> Path:
    "A 16-bit WAV of `minutes` of noise and a sweeping tone, written 10 s at a time (never whole in memory)."
    rng, n, step = np.random.default_rng(seed), int(minutes * 60 * rate), 10 * rate
    with sf.SoundFile(str(path), "w", rate, channels, subtype="PCM_16") as out:
        for start in range(0, n, step):
            t = np.arange(start, min(start + step, n)) / rate
            tone = 0.3 * np.sin(2 * np.pi * (300 + 20 * t) * t)
            out.write((tone[:, None] + 0.05 * rng.standard_normal((len(t), channels))).astype(np.float32))
    return Path(path)

def study_shaped_checkpoint(path, classes=None) -> Path:
    "A randomly initialised checkpoint shaped like the study's probe + fine-tuned pair (two EfficientAT mn04)."
    classes = list(classes) if classes is not None else [f"class {i}" for i in range(10)]
    member = dict(width=0.4, n_classes=len(classes), pooled_blocks=list(POOLED_BLOCKS))
    config = dict(members=[dict(model="efficientat", config=member)] * 2)
    save_checkpoint(checkpoint_dict(build_model("ensemble", **config), "ensemble", config, EfficientATFeatures(),
                                    classes, 4.0), path)
    return Path(path)

def peak_memory(code: str, args=()) -> tuple[int, float, int]:
    "Peak resident memory (bytes), wall time (s) and exit status of Python running `code` with `args`, as a child."
    with tempfile.TemporaryDirectory() as d:
        # the child's own high-water mark (Linux), written as it exits: the kernel's ru_maxrss of a child starts from
        # the parent's at the fork, so a parent with torch imported would inflate every figure
        report = Path(d)/"hwm"
        watch = (f"import atexit\ndef _hwm():\n    try:\n        with open('/proc/self/status') as f:\n"
                 f"            kb = next(l for l in f if l.startswith('VmHWM')).split()[1]\n"
                 f"        open({str(report)!r}, 'w').write(kb)\n    except OSError: pass\natexit.register(_hwm)\n")
        t0 = time.time()
        child = subprocess.Popen([sys.executable, "-c", watch + code, *map(str, args)], stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL)
        _, status, usage = os.wait4(child.pid, 0)
        seconds = time.time() - t0
        peak = int(report.read_text()) * 1024 if report.exists() else usage.ru_maxrss * 1024
    return peak, seconds, os.waitstatus_to_exitcode(status)

# %% [markdown]
# ## Memory and speed of both `predict` paths
#
# `benchmark_predict` runs `urbansound-nb predict` on a 4-second and a 10-minute 44.1 kHz stereo WAV, with the
# checkpoint and its ONNX export, two threads each: peak memory and windows per second, after each path's floor
# (Python with its imports). `urbansound-nb bench --predict-memory [CHECKPOINT]` prints it.

# %%
#| export
def _measured(code: str, args: list, label: str, windows: int) -> dict:
    rss, seconds, status = peak_memory(code, args)
    if status != 0: raise RuntimeError(f"predict failed on the {label} (exit status {status})")
    return dict(peak_mb=round(rss / 2**20), seconds=round(seconds, 1), clips_per_second=round(windows / seconds, 1))

def benchmark_predict(checkpoint=None, minutes: float = 10.0, threads: int = 2) -> dict:
    "Peak memory and clips/s of `predict` with torch and with ONNX Runtime on a 4-second and a `minutes`-long file."
    cli = "import sys\nfrom urbansound_nb.cli import main\nsys.exit(main())"
    floors = {"torch": "import torch, torchaudio, torchvision", "onnx": "import onnxruntime, numpy, soundfile"}
    out = {f"floor, {k}": dict(peak_mb=round(peak_memory(v)[0] / 2**20)) for k, v in floors.items()}
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        ckpt = Path(checkpoint) if checkpoint else study_shaped_checkpoint(d/"pair.pt")
        models = {"torch": ckpt, "onnx": export_onnx(ckpt, d/"model.onnx")}
        for label, length in (("4-second file", 4 / 60), (f"{minutes:g}-minute file", minutes)):
            f = write_long_wav(d/"clip.wav", length)
            windows = max(1, len(window_starts(int(length * 60 * 32000), 4 * 32000)))
            for path, model in models.items():
                out[f"{path}, {label}"] = _measured(cli, ["predict", model, f, "--json", "--threads", threads],
                                                    label, windows)
    for k, v in out.items(): print(f"{k:>32}: " + ", ".join(f"{n} {x}" for n, x in v.items()))
    long = f"{minutes:g}-minute file"
    ours, theirs = out[f"onnx, {long}"], out[f"torch, {long}"]
    print(f"ONNX Runtime against torch on the {long}: {ours['clips_per_second'] / theirs['clips_per_second']:.1f}x "
          f"the clips/s, {ours['peak_mb']} MB against {theirs['peak_mb']} MB at the peak")
    return out

# %%
#| eval: false
benchmark_predict(minutes=1.5)   # `urbansound-nb bench --predict-memory` runs the 10-minute one

# %% [markdown]
# ## A deployed model: accuracy and speed
#
# Chapter 10's ONNX file against torch on the test windows, one clip a call: accuracy and clips per second.

# %%
#| export
def accuracy_and_speed(predict_windows, windows: list, labels) -> tuple[float, float, np.ndarray]:
    "Accuracy of one window a clip, clips per second, and the predicted classes."
    t0 = time.time()
    probs = predict_windows(windows)
    seconds = time.time() - t0
    pred = probs.argmax(1)
    return float((pred == np.asarray(labels)).mean()), len(windows) / seconds, pred

# %%
_acc, _speed, _pred = accuracy_and_speed(lambda ws: np.eye(3)[[0, 1, 1]], [None] * 3, [0, 1, 2])
assert abs(_acc - 2 / 3) < 1e-9 and _speed > 0
