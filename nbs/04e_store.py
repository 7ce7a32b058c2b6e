# %%
#| default_exp store

# %% [markdown]
# # The store of trainings
#
# > Every training and every fit the study runs, keyed by what makes it, in one resumable store.

# %% [markdown]
# Several chapters ask for the same training (chapter 04's UrbanResNet on the study's split is chapter 09's cell for
# its test fold), and a rerun with one parameter changed needs most of them again. Everything a grid cell computes is
# kept in **one store** (`cache_dir/trainings/`), and nothing is resumed or read back from anywhere else:
#
# * a **training** (notebook 04c's loop) is a folder keyed by a digest of everything its result depends on: network
#   and configuration, recipe, how its weights start, the exact clips (content keys and labels, in order), the front
#   end, a batch hook or class weights, the device, torch's thread count on a CPU, and the package's version. It holds
#   the best epoch (`model.pt`), the history (`record.json`) and, while it trains, its resumable state
#   (`model.last.pt`);
# * a **fit** (a registry model fitted on a split, notebook 05b) is a folder keyed the same way, holding the cell's
#   probabilities, settings and epochs, and its network form as a checkpoint.
#
# A key is computed from what makes a training, never from what training computes (band statistics follow from the
# clips), so `run --plan` finds every cell a run needs, and which are held, before any feature exists. The store keeps
# what each training cost (`TrainingStore.used`) for the chapters and `timings.csv`. The test fold is no part of a
# key.

# %%
#| export
from __future__ import annotations

import hashlib
import json
import tempfile
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from urbansound_nb import __version__
from urbansound_nb.batches import ClipIndex, StudyData
from urbansound_nb.core import atomic_write_bytes, pick_device, save_json
from urbansound_nb.features import FeatureParams
from urbansound_nb.models import load_checkpoint, read_checkpoint, save_checkpoint
from urbansound_nb.train import TrainConfig, TrainOptions, train_model

# %%
from fastcore.test import test_eq, test_fail
from urbansound_nb.train import RECIPES, tiny_data

# %% [markdown]
# ## What a training is trained on
#
# A network's configuration carries the training folds' band statistics, and a checkpoint its folds.

# %%
#| export
def model_config(n_classes: int, fp: FeatureParams, mean=None, std=None) -> dict:
    "A network's configuration: classes, bands and, given, the training folds' band statistics."
    config = dict(n_classes=int(n_classes), n_mels=fp.n_mels)
    if mean is not None: config.update(mean=[round(float(v), 5) for v in mean], std=[round(float(v), 5) for v in std])
    return config

def split_folds(data: StudyData) -> dict:
    "The folds `data`'s training, validation and test clips come from, as a checkpoint records them."
    fold = data.meta["fold"].to_numpy()
    return {part: sorted(int(f) for f in set(fold[np.asarray(idx, dtype=int)]))
            for part, idx in (("train", data.train), ("val", data.val), ("test", data.test))}

# %% [markdown]
# ## The key of a training

# %%
#| export
TRAINING_VERSION = 2   # raised when the loop changes what a finished cell would hold

def digest(obj) -> str:
    "A stable SHA-1 of a JSON-able value."
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()

def clips_digest(clips: ClipIndex, idx) -> str:
    "A SHA-1 of clips `idx` in order: their content keys and labels."
    idx = [int(i) for i in np.asarray(idx, dtype=int)]
    return digest([[clips.keys[i] for i in idx], [clips.labels[i] for i in idx]])

def hook_name(fn) -> str | None:
    "A batch hook's name as a key holds it (a function's module and name; a partial's repr)."
    if fn is None: return None
    return f"{fn.__module__}.{fn.__qualname__}" if hasattr(fn, "__qualname__") else repr(fn)

@dataclass(frozen=True)
class DataView:
    "What keys a training's data, without its features: the clips, the front end and the input's frames."
    clips: ClipIndex
    fp: object
    n_frames: int

# %% [markdown]
# `Training` describes one training as the study asks for it. Its `identity` reads only what `DataView` has, so a
# `StudyData` (which has the same three things) and a plan, which has no features yet, give the same key.

# %%
#| export
@dataclass
class Training:
    "One training: network, configuration, recipe, clips, and a plain description of its starting weights."
    network: str                       # a name of `models.MODELS`
    config: dict                       # the network's configuration (band statistics added when `standardize`)
    recipe: TrainConfig
    train: tuple                       # clip indices
    val: tuple
    init: dict | None = None           # what its starting weights are, for the key (their values: `init_state`)
    standardize: bool = False          # add the training clips' band statistics to the configuration
    augment: object = None             # a batch hook, after the recipe's augmentation
    class_weights: tuple | None = None

    def identity(self, data, threads: int | None = None) -> dict:
        "Everything the result depends on, as plain values (`threads`: the count it will train with on a CPU)."
        device, weights = pick_device(), self.class_weights
        folds = lambda idx: sorted({int(data.clips.folds[i]) for i in idx})
        return dict(version=TRAINING_VERSION, package=__version__, model=self.network, config=self.config,
                    standardize=self.standardize, recipe=asdict(self.recipe),
                    folds=dict(train=folds(self.train), val=folds(self.val)), features=data.fp.key,
                    n_frames=int(data.n_frames), train=clips_digest(data.clips, self.train),
                    val=clips_digest(data.clips, self.val), init=self.init, augment=hook_name(self.augment),
                    class_weights=None if weights is None else [round(float(w), 6) for w in weights],
                    device=device.type, threads=(threads or torch.get_num_threads()) if device.type == "cpu" else None)

    @property
    def epochs(self) -> int: return min(self.recipe.stop_after or self.recipe.epochs, self.recipe.epochs)

def cell_name(identity: dict) -> str:
    "A readable name for a training: network, folds, seed, epochs, and the key's first characters."
    folds, recipe = identity["folds"], identity["recipe"]
    fold_text = lambda fs: "+".join(str(f) for f in fs)
    role = f"val{fold_text(folds['val'])}" if folds["val"] else "refit"
    epochs = f"{recipe['stop_after']}of{recipe['epochs']}" if recipe.get("stop_after") else f"{recipe['epochs']}"
    return f"{identity['model']}-train{fold_text(folds['train'])}-{role}-seed{recipe['seed']}-{epochs}ep-" \
           f"{digest(identity)[:10]}"

# %% [markdown]
# ## The store
#
# A finished training holds `model.pt` and `record.json`; its resumable state is removed, since nothing will resume
# it. A store without a folder keeps its cells in a temporary one (tests, a notebook run alone).

# %%
#| export
@dataclass
class TrainingStore:
    "Trainings and fits kept in `root`, a folder each; `used` lists the trainings this process trained or read back."
    root: Path | None = None       # None: a temporary folder
    used: list = field(default_factory=list)

    def __post_init__(self):
        self.root = Path(tempfile.mkdtemp(prefix="trainings-")) if self.root is None else Path(self.root).expanduser()

    def cell(self, identity: dict, kind: str = "") -> Path:
        "The folder of `identity` (trainings at the top, fits under `fits/`), created with its key beside it."
        path = self.root/kind/(identity.get("name") or cell_name(identity))
        if not (path/"identity.json").exists():
            path.mkdir(parents=True, exist_ok=True)
            save_json(identity, path/"identity.json")
        return path

    def holds(self, identity: dict) -> bool:
        "Whether the training of `identity` is finished in this store."
        path = self.root/cell_name(identity)
        return (path/"record.json").exists() and (path/"model.pt").exists()

    def note(self, cell: Path, history: dict, reused: bool):
        "Record one training's use: its name, whether it was read back, and the seconds it took."
        seconds = sum(r.get("seconds", 0) for r in history.get("history", []))
        self.used.append(dict(cell=cell.name, status="reused" if reused else "trained", seconds=round(seconds, 1),
                              best_epoch=history["best"]["epoch"], epochs=history["stopped_epoch"]))

    def summary(self) -> str:
        "One line: how many trainings were read back and how many trained, and how long the trained ones took."
        trained = [u for u in self.used if u["status"] == "trained"]
        return (f"trainings: {len(self.used) - len(trained)} reused from the store, {len(trained)} trained "
                f"({sum(u['seconds'] for u in trained) / 60:.1f} min)")

    def train(self, training: Training, data: StudyData, init_state: dict | None = None, progress: bool = True):
        "`training` on `data`'s clips: a finished one read back, an interrupted one resumed, else trained."
        cell = self.cell(training.identity(data))
        done = _finished(cell)
        if done is None:
            data = replace(data, train=np.asarray(training.train, dtype=int), val=np.asarray(training.val, dtype=int))
            config = dict(training.config)
            if training.standardize: config.update(model_config(len(data.split.classes), data.fp, *data.band_stats()))
            options = TrainOptions(augment=training.augment, class_weights=training.class_weights,
                                   init_state=init_state, info=dict(folds=split_folds(data)))
            model, history = train_model(training.network, config, data, training.recipe, cell=cell, options=options,
                                         progress=progress)
            history = dict(history, n_train=len(data.train), n_val=len(data.val))   # a plan's measured rates
            save_json(history, cell/"record.json")
            (cell/"model.last.pt").unlink(missing_ok=True)
        else: model, history = done
        self.note(cell, history, reused=done is not None)
        return model.to(pick_device()), dict(history, cell=cell.name, reused=done is not None)

    def fit_record(self, identity: dict) -> dict | None:
        "The record of a finished fit of `identity` (notebook 05b), or None."
        path = self.root/"fits"/identity["name"]/"record.json"
        return json.loads(path.read_text()) if path.exists() else None

    def save_fit(self, identity: dict, record: dict, checkpoint: dict | None = None) -> dict:
        "Keep a fit's record and, given, its checkpoint (`model.pt`, named in the record); the record as kept."
        cell = self.cell(identity, "fits")
        if checkpoint is not None:
            save_checkpoint(checkpoint, cell/"model.pt")
            record = dict(record, checkpoint=str((cell/"model.pt").relative_to(self.root)))
        save_json(record, cell/"record.json")     # last: a fit with a record is whole
        return json.loads((cell/"record.json").read_text())

    def checkpoint(self, record: dict) -> dict:
        "The checkpoint a fit's record names, read as untrusted input (notebook 04a)."
        return read_checkpoint(self.root/record["checkpoint"])

    def export(self, record: dict, path) -> Path | None:
        "Copy the checkpoint a fit's record names out of the store to `path` (a run's `models/`), where it has one."
        if not record.get("checkpoint"): return None
        return atomic_write_bytes(path, (self.root/record["checkpoint"]).read_bytes())

def _finished(cell: Path):
    "A finished training's model and history, or None."
    record = cell/"record.json"
    if not (record.exists() and (cell/"model.pt").exists()): return None
    model, _ = load_checkpoint(cell/"model.pt")
    return model, json.loads(record.read_text())

def study_store(params) -> TrainingStore:
    "The study's store, under its cache directory."
    return TrainingStore(Path(params.cache_dir)/"trainings")

# %% [markdown]
# A training asked for twice trains once; another seed, clips or recipe is another cell. The key is the same from the
# data or from a `DataView`, and band statistics are no part of it.

# %%
small = tiny_data()
small_cnn = lambda seed=0: Training("small_cnn", model_config(2, small.fp), TrainConfig(
    epochs=2, batch_size=8, seed=seed, **{**RECIPES["small_cnn"]}), tuple(range(16)), tuple(range(16, 24)),
    standardize=True)
store = TrainingStore()
first, h1 = store.train(small_cnn(), small, progress=False)
again, h2 = store.train(small_cnn(), small, progress=False)
test_eq((h1["reused"], h2["reused"], h1["cell"] == h2["cell"]), (False, True, True))
for k, v in first.state_dict().items(): test_eq(again.state_dict()[k], v)
test_eq(h2["history"], json.loads(json.dumps(h1["history"])))
test_eq(store.train(small_cnn(seed=1), small, progress=False)[1]["reused"], False)
test_eq([u["status"] for u in store.used], ["trained", "reused", "trained"])
test_eq(small_cnn().identity(small), small_cnn().identity(DataView(small.clips, small.fp, small.n_frames)))
assert store.holds(small_cnn().identity(small)) and not list(store.root.rglob("*.last.pt"))
assert "mean" in read_checkpoint(store.root/h1["cell"]/"model.pt")["config"]    # a checkpoint standardises its input
print(store.summary(), sorted(p.name for p in store.root.iterdir()))

# %% [markdown]
# A fit's record is kept whole or not at all (its record is written last), with its checkpoint beside it:

# %%
fit_key = dict(name="probe-train1-val2-test3-seed0-abc")
test_eq(store.fit_record(fit_key), None)
kept = store.save_fit(fit_key, dict(val_accuracy=0.5), read_checkpoint(store.root/h1["cell"]/"model.pt"))
test_eq((store.fit_record(fit_key), kept["checkpoint"]), (kept, "fits/probe-train1-val2-test3-seed0-abc/model.pt"))
test_eq(store.checkpoint(kept)["model"], "small_cnn")
test_eq(read_checkpoint(store.export(kept, store.root/"run"/"models"/"probe.pt"))["model"], "small_cnn")
test_fail(lambda: store.checkpoint(dict(checkpoint="fits/absent/model.pt")), contains="no such checkpoint")
