# %%
#| default_exp plan

# %% [markdown]
# # The plan: what a run will cost, before it runs
#
# > Every training a run needs, which the store holds, clips x epochs each, and its wall time here and on a cluster.

# %% [markdown]
# Every cell's key is computed from what makes it, not from what training computes (notebook 04e), so a run's cost is
# known before it starts: `urbansound-nb run --plan` asks each chapter for its cells, lists every training they need,
# which the store holds (or an earlier chapter will have trained), and estimates the wall time from this machine's
# rates, computing no feature and training nothing. The rates come from this machine's finished trainings in the
# store, or from a few timed steps of each network (notebook 10a), kept in `cache_dir/rates.json`: a training costs
# its epochs times its clips over the training rate, plus its validation clips over the inference rate. What is not
# training is estimated from costs measured on the development machine, scaled by this machine's matrix-product rate.
# The plan also prints the full dataset's cost (10 folds, 8,732 clips) in process and on N Dask workers, the grid's
# waves spread over them.

# %%
#| export
from __future__ import annotations

import ast
import importlib
import inspect
import json
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from urbansound_nb.audio import URBANSOUND_CLASSES
from urbansound_nb.batches import ClipIndex
from urbansound_nb.bench import inference_throughput, matmul_gflops, training_throughput
from urbansound_nb.cache import FeatureCache
from urbansound_nb.core import save_json
from urbansound_nb.features import study_features
from urbansound_nb.params import INFERENCE_BATCH, SHARED, validate_params
from urbansound_nb.pretrained import EfficientATFeatures
from urbansound_nb.registry import FRONT_ENDS, Inputs, present_folds
from urbansound_nb.runner import notebook_parameters
from urbansound_nb.store import DataView, TrainingStore, digest, study_store

# %%
import tempfile
from fastcore.test import test_eq

# %% [markdown]
# ## The rates of this machine
#
# `Rates` gives a network's training and inference clips/s at a thread count: from the store's finished trainings of
# the same network, input, held blocks and threads (data path and augmentation included), else measured once and kept.

# %%
#| export
def rate_key(network: str, recipe: dict, n_frames: int, threads) -> str:
    "What a rate depends on: the network, its held blocks and batch size, the input's frames, the thread count."
    return f"{network}|held{recipe.get('frozen_blocks', 0)}|batch{recipe.get('batch_size')}|{n_frames}f|{threads}t"

def store_rates(root) -> dict:
    "Training and inference clips/s of each `rate_key`, pooled over the store's finished trainings that record them."
    pooled = {}
    for ident_file in Path(root).glob("*/identity.json"):
        record_file = ident_file.with_name("record.json")
        if not record_file.exists(): continue
        ident, record = json.loads(ident_file.read_text()), json.loads(record_file.read_text())
        if "n_train" not in record or not record.get("history"): continue
        key = rate_key(ident["model"], ident["recipe"], ident["n_frames"], ident["threads"])
        epochs = len(record["history"])
        train_s = sum(r["train_seconds"] for r in record["history"])
        val_s = sum(r["seconds"] - r["train_seconds"] for r in record["history"])
        p = pooled.setdefault(key, [0.0, 0.0, 0.0, 0.0])
        p[0] += record["n_train"] * epochs
        p[1] += train_s
        p[2] += record["n_val"] * epochs
        p[3] += val_s
    return {k: dict(train=p[0] / p[1], infer=p[2] / p[3] if p[3] > 0 else None) for k, p in pooled.items() if p[1] > 0}

@dataclass
class Rates:
    "Clips/s of each network's training and inference on this machine: its own trainings' where known, else measured."
    cache_dir: Path
    known: dict = field(default_factory=dict)
    measured: int = 0

    def __post_init__(self):
        self.path = Path(self.cache_dir).expanduser()/"rates.json"
        kept = json.loads(self.path.read_text()) if self.path.exists() else {}
        self.known = {**kept, **store_rates(Path(self.cache_dir).expanduser()/"trainings")}

    def of(self, training, n_mels: int, n_frames: int, threads: int) -> dict:
        "Training and inference clips/s of `training`'s network at `threads`."
        recipe = dict(frozen_blocks=training.recipe.frozen_blocks, batch_size=training.recipe.batch_size)
        key = rate_key(training.network, recipe, n_frames, threads)
        if not (self.known.get(key) or {}).get("infer"): self.known[key] = self._measure(training, n_mels, n_frames,
                                                                                        threads, key)
        return self.known[key]

    def _measure(self, training, n_mels, n_frames, threads, key) -> dict:
        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            config = {k: v for k, v in training.config.items() if k not in ("mean", "std")}
            train = training_throughput(training.network, config, n_mels, n_frames, training.recipe.batch_size,
                                        steps=2, frozen_blocks=training.recipe.frozen_blocks)["clips_per_s"]
            infer = inference_throughput(training.network, config, n_mels, n_frames, clips=2 * INFERENCE_BATCH,
                                         batches=(INFERENCE_BATCH,))[0]["clips_per_s"]
        finally: torch.set_num_threads(before)
        self.measured += 1
        out = dict(self.known.get(key) or {}, train=(self.known.get(key) or {}).get("train") or train, infer=infer)
        save_json({**(json.loads(self.path.read_text()) if self.path.exists() else {}), key: out}, self.path)
        return out

# %%
from urbansound_nb.store import Training
from urbansound_nb.train import RECIPES, TrainConfig
with tempfile.TemporaryDirectory() as d:
    _t = Training("small_cnn", dict(n_classes=10, n_mels=64), TrainConfig(epochs=1, **RECIPES["small_cnn"]), (), ())
    _rates = Rates(d)
    _r = _rates.of(_t, 64, 173, 2)
    # both rates measured and kept (not compared: two steps on a busy machine can put either first)
    assert _r["train"] > 0 and _r["infer"] > 0 and (Path(d)/"rates.json").exists()
    test_eq((Rates(d).of(_t, 64, 173, 2)["train"], _rates.measured), (_r["train"], 1))     # kept: measured once
_r

# %% [markdown]
# ## What is not training
#
# Measured on the development machine (2 cores, `REFERENCE_GFLOPS`) on mini and scaled: a chapter's start, a classical
# fit per thousand training clips (the SVM's grows with their square), and each chapter's own work, fixed and per
# clip. Features and embeddings cost their clips over notebook 10a's rates.

# %%
#| export
REFERENCE_GFLOPS = 55.0          # float32 matrix product of the development machine, 2 threads
CHAPTER_START = 6.0              # s: a chapter's kernel, imports and the dataset's metadata
CLASSICAL = dict(majority=(0.2, 1), logreg=(1.5, 1), svm_rbf=(0.3, 2), probe=(2.5, 1))  # (s a fit, power of kclips)
OTHER_WORK = dict(eda=(8.0, 0.004), features=(8.0, 0.0), choice=(8.0, 0.0), analysis=(10.0, 0.004),
                  experiment=(2.0, 0.0), deployment=(40.0, 0.03))   # module: (s, s per clip)
FRONT_END_RATES = dict(logmel=150.0, efficientat=60.0)    # clips/s of decoding and each front end on 2 cores

# %% [markdown]
# ## The cells of a run
#
# A family chapter (with `FAMILIES`) and a chapter with `plan_cells` give registry cells, chapter 08 its trainings
# (`plan_trainings`), chapter 06 each refit it may choose (`plan_alternatives`: the costliest counts). Each item is a
# `Planned`: one training, or one fit's other work.

# %%
#| export
@dataclass
class Planned:
    "One line of a plan: a training (or a fit's other work), in which chapter, and what it costs."
    chapter: str
    cell: str
    training: str | None = None      # the training's store name; None: a fit's other work
    clips: int = 0
    val_clips: int = 0
    epochs: int = 0
    status: str = "new"              # "new", "held" (in the store), "earlier" (an earlier chapter of the run trains it)
    seconds: float = 0.0
    wave: int = 0                    # the grid's wave (notebook 04d): cells of a wave run side by side

def _kwargs(fn, values: dict) -> dict:
    names = inspect.signature(fn).parameters
    return {k: v for k, v in values.items() if k in names}

def _task_items(chapter: str, cells: dict, views: dict, plan: "Plan") -> list[Planned]:
    "The trainings and other work of registry fit cells."
    from urbansound_nb.grid import _waves
    wave_of = {k: i for i, keys in enumerate(_waves(cells)) for k in keys}
    out = []
    for key, cell in cells.items():
        task = cell.args["task"]
        entry = task.entry()
        own = views[entry.front_end]
        _, va, te = task.indices(own.data.clips)
        trainings = entry.trainings(task, own)
        for t in trainings: out.append(plan.training_item(chapter, key, t, own.data, wave_of[key]))
        other = plan.fit_seconds(entry, task, own, trainings)
        out.append(Planned(chapter, key, seconds=other, wave=wave_of[key]))
    return out

@dataclass
class Plan:
    "A run's planned cells: every training, its status and seconds, chapter by chapter."
    params: object
    threads: int
    rates: Rates
    store: TrainingStore
    items: list = field(default_factory=list)
    seen: set = field(default_factory=set)
    selections: set = field(default_factory=set)       # the classical models' settings already chosen
    speed: float = 1.0               # this machine's matrix-product rate against the development machine's

    def training_item(self, chapter, cell, training, view, wave) -> Planned:
        "A training's line: held in the store, trained earlier in this run, or new, and what it costs."
        ident = training.identity(view, self.threads)
        name, key = ident and f"{ident['model']}-{digest(ident)[:10]}", digest(ident)
        status = "earlier" if key in self.seen else "held" if self.store.holds(ident) else "new"
        self.seen.add(key)
        rate = self.rates.of(training, view.fp.n_mels, view.n_frames, self.threads)
        seconds = training.epochs * (len(training.train) / rate["train"] + len(training.val) / rate["infer"]) + 1.0
        return Planned(chapter, cell, name, len(training.train), len(training.val), training.epochs, status,
                       seconds if status == "new" else 0.0, wave)

    def fit_seconds(self, entry, task, own, trainings) -> float:
        "A fit's work besides training: a classical model's fits (the choice of its setting once), or predictions."
        _, va, te = task.indices(own.data.clips)
        if entry.ensemble: return 0.5
        if not trainings:
            per, power = CLASSICAL.get(entry.name, (1.0, 1))
            key = entry.selection_key(task, own)["name"] if hasattr(entry, "selection_key") else None
            fits = 1 if key in self.selections else len(entry.grid(1)) * max(1, len(task.rotations))
            self.selections.add(key)
            return per * (len(task.indices(own.data.clips)[0]) / 1000) ** power * fits / self.speed
        rate = self.rates.of(trainings[0], own.data.fp.n_mels, own.data.n_frames, self.threads)
        return (len(va) + len(te)) / rate["infer"]

    def chapter_seconds(self, chapter: str) -> float:
        return sum(i.seconds for i in self.items if i.chapter == chapter)

    def makespan(self, chapter: str, workers: int) -> float:
        "The chapter's cells on `workers` workers, wave after wave, each wave's cells longest first (LPT)."
        total = 0.0
        for wave in sorted({i.wave for i in self.items if i.chapter == chapter}):
            cells = {}
            for i in self.items:
                if i.chapter == chapter and i.wave == wave: cells[i.cell] = cells.get(i.cell, 0.0) + i.seconds
            loads = [0.0] * workers
            for s in sorted(cells.values(), reverse=True): loads[loads.index(min(loads))] += s
            total += max(loads)
        return total

# %% [markdown]
# ## A run, planned
#
# `plan_run` plans the chapters `prepare_run` (notebook 90) selected, with the shared parameters and each chapter's
# own; with `full=True`, on the full dataset's shape (`full_view`), where nothing is held.

# %%
#| export
FULL_FOLDS = {1: 873, 2: 888, 3: 925, 4: 990, 5: 936, 6: 823, 7: 838, 8: 806, 9: 816, 10: 837}   # UrbanSound8K's
FULL_RECORDINGS = 1297

def full_view(fp, clip_seconds: float) -> DataView:
    "A `DataView` of the full dataset's shape: its folds' sizes, ten classes, about 6.7 clips a recording."
    folds = [f for f, n in FULL_FOLDS.items() for _ in range(n)]
    n = len(folds)
    clips = ClipIndex(tuple(f"full{i}" for i in range(n)), tuple(i % 10 for i in range(n)), tuple(folds),
                      tuple(i * FULL_RECORDINGS // n for i in range(n)), URBANSOUND_CLASSES)
    return DataView(clips, fp, fp.frames(clip_seconds))

class Views(dict):
    "Each front end's `Inputs` of a plan, built when first asked: the run's clips, or the full dataset's shape."
    def __init__(self, params, full: bool = False):
        super().__init__()
        self.params, self.full = params, full
    def __missing__(self, front_end):
        inputs = FRONT_ENDS[front_end](self.params, plan=not self.full) if not self.full else None
        if self.full:
            fp = study_features(self.params) if front_end == "logmel" else EfficientATFeatures()
            inputs = Inputs(full_view(fp, self.params.clip_seconds), weights_sha="full")
        self[front_end] = inputs
        return inputs

def _defaults(nb) -> dict:
    "A chapter's own parameters as its `parameters` cell sets them."
    def value(text):
        try: return ast.literal_eval(text)
        except (ValueError, SyntaxError): return text
    return {k: value(v["default"]) for k, v in notebook_parameters(nb.with_suffix(".ipynb")).items()}

def _chapter_items(plan: Plan, nb, module, own: dict, present, views: Views) -> list[Planned]:
    "The planned trainings and fits of one chapter."
    params, chapter = plan.params, nb.stem
    if hasattr(module, "FAMILIES"):
        from urbansound_nb.registry import family_cells
        return _task_items(chapter, family_cells(params, module.FAMILIES, present), views, plan)
    if hasattr(module, "plan_cells"):
        cv = replace(params, train_folds=None, val_fold=None, test_fold=None)
        return _task_items(chapter, module.plan_cells(cv, present, **_kwargs(module.plan_cells, own)), views, plan)
    if hasattr(module, "plan_alternatives"):   # the refit: the costliest of the models it may be
        seen = set(plan.seen)
        options = []
        for cells in module.plan_alternatives(params, present, **_kwargs(module.plan_alternatives, own)).values():
            plan.seen = set(seen)
            options.append((_task_items(chapter, cells, views, plan), set(plan.seen)))
        items, plan.seen = max(options, key=lambda o: sum(i.seconds for i in o[0])) if options else ([], seen)
        return items
    if hasattr(module, "plan_trainings"):
        from urbansound_nb.registry import study_split
        view = views["logmel"].data
        trainings = module.plan_trainings(params, view, study_split(params, present),
                                          **_kwargs(module.plan_trainings, own))
        return [plan.training_item(chapter, f"{chapter}-{k}", t, view, 0) for k, t in enumerate(trainings)]
    return []

def _other_work(plan: Plan, module, views: Views, pending: dict, computes: bool) -> float:
    "A chapter's work besides its cells: its start, its own work and (`computes`) the features not yet cached."
    short = module.__name__.rsplit(".", 1)[-1]
    fixed, per_clip = OTHER_WORK.get(short, (0.0, 0.0))
    seconds = CHAPTER_START + fixed + per_clip * len(views["logmel"].data.clips.keys)
    for front_end in [fe for fe in pending if computes and fe in views]:
        seconds += pending.pop(front_end) / FRONT_END_RATES[front_end]   # by the first chapter that reads it
    return seconds / plan.speed

def plan_run(notebooks, params: dict, declared: dict, full: bool = False, threads: int | None = None) -> Plan:
    "Every training and fit the chapters `notebooks` need with `params`, and their seconds; `full`: on the full shape."
    study = validate_params(**{k: v for k, v in params.items() if k in SHARED})
    if full: study = replace(study, max_items=None, train_folds=None, val_fold=None, test_fold=None)
    threads = threads or study.cell_threads or torch.get_num_threads()
    plan = Plan(study, threads, Rates(study.cache_dir), study_store(study), speed=matmul_gflops() / REFERENCE_GFLOPS)
    views, present = Views(study, full), sorted(FULL_FOLDS) if full else present_folds(study)
    pending = {fe: None for fe in FRONT_ENDS}    # clips each front end must still compute, counted when first read
    for nb in notebooks:
        module = importlib.import_module("urbansound_nb." + re.search(r"#[|] default_exp (\w+)", nb.read_text())[1])
        own = {**_defaults(nb), **{k: v for k, v in params.items() if k in declared[nb]}}
        items = _chapter_items(plan, nb, module, own, present, views)
        for fe in [fe for fe in FRONT_ENDS if fe in views and pending.get(fe, 0) is None]:
            pending[fe] = _missing_features(views[fe], study)
        computes = bool(items) or module.__name__.endswith(".features")
        plan.items += items + [Planned(nb.stem, "(the chapter's own work)",
                                       seconds=_other_work(plan, module, views, pending, computes))]
    return plan

def _missing_features(inputs, params) -> int:
    "How many of the clips have no cached features in this front end (all, on the full shape)."
    view = inputs.data
    if isinstance(view.clips.keys[0], str) and view.clips.keys[0].startswith("full"): return len(view.clips.keys)
    folder = Path(params.cache_dir).expanduser()/view.fp.key
    if not folder.is_dir(): return len(view.clips.keys)
    cache = FeatureCache(params.cache_dir, view.fp, read_only=True)
    return sum(k not in cache for k in view.clips.keys)

# %% [markdown]
# ## The plan, printed
#
# `plan_text` lists every training by chapter with its status, clips x epochs and estimate, then the totals, here and
# spread over Dask workers.

# %%
#| export
def _minutes(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 5400 else f"{seconds / 60:.1f} min"

def plan_summary(plan: Plan, workers=(4, 16)) -> dict:
    "The plan's totals: trainings by status, seconds here and on each number of `workers`, by chapter."
    chapters = list(dict.fromkeys(i.chapter for i in plan.items))
    trainings = [i for i in plan.items if i.training]
    here = sum(plan.chapter_seconds(c) for c in chapters)
    spread = {n: sum(plan.makespan(c, n) for c in chapters) for n in workers}
    counts = {s: sum(i.status == s for i in trainings) for s in ("new", "held", "earlier")}
    return dict(trainings=len(trainings), **counts,
                clip_epochs=sum(i.clips * i.epochs for i in trainings if i.status == "new"),
                training_seconds=sum(i.seconds for i in trainings), seconds=here, workers=spread,
                chapters={c: plan.chapter_seconds(c) for c in chapters})

def plan_text(plan: Plan, full: Plan | None = None, workers=(4, 16)) -> str:
    "Every training of the plan, each chapter's estimate, the run's, and the full dataset's here and on workers."
    lines, summary = [], plan_summary(plan, workers)
    for chapter, seconds in summary["chapters"].items():
        lines.append(f"{chapter}: {_minutes(seconds)}")
        for i in (i for i in plan.items if i.chapter == chapter and i.training):
            lines.append(f"    {i.training:<34} {i.clips:>6,} clips x {i.epochs:>3} epochs  {i.status:<7} "
                         f"{_minutes(i.seconds) if i.status == 'new' else ''}")
    spread = "; ".join(f"on {n} Dask workers {_minutes(s)}" for n, s in summary["workers"].items())
    lines.append(f"\nThis run: {summary['trainings']} trainings ({summary['new']} new, {summary['held']} held by the "
                 f"store, {summary['earlier']} trained by an earlier chapter), {summary['clip_epochs']:,} clip-epochs "
                 f"to train: about {_minutes(summary['seconds'])} here ({_minutes(summary['training_seconds'])} of "
                 f"training, {plan.threads} threads); {spread} of this machine's speed.")
    if full is not None:
        f = plan_summary(full, workers)
        spread = "; ".join(f"on {n} workers {_minutes(s)}" for n, s in f["workers"].items())
        lines.append(f"The full dataset (8,732 clips, 10 folds), the same parameters: {f['trainings']} trainings, "
                     f"{f['clip_epochs']:,} clip-epochs: about {_minutes(f['seconds'])} here; {spread}.")
    return "\n".join(lines)

# %% [markdown]
# Chapters 03, 04 and 09 on the synthetic stand-in: every training new, chapter 09's last fold chapter 04's, and more
# workers take less time.

# %%
from urbansound_nb.runner import select_notebooks
with tempfile.TemporaryDirectory() as d:
    _nbs = select_notebooks(["03", "04", "09"])
    _params = dict(dataset="synthetic", max_items=120, cache_dir=d, run_dir=d, epochs=2, resnet_epochs=2,
                   models=["logreg", "small_cnn", "resnet"])
    _plan = plan_run(_nbs, _params, {nb: set(SHARED) for nb in _nbs})
    _summary = plan_summary(_plan)
    test_eq((_summary["held"], _summary["earlier"] > 0), (0, True))
    assert _summary["workers"][16] < _summary["workers"][4] < _summary["seconds"]
    print(plan_text(_plan, workers=(4,)))
