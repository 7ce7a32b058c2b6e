# %%
#| default_exp registry

# %% [markdown]
# # The registry: every model of the study, defined once
#
# > One entry per model: its family, how it is built and fitted on a split, its probabilities, checkpoint and refit.

# %% [markdown]
# Everything that lists, trains, chooses or serves a model goes through this registry, after torchvision's model
# registry (`register_model`, `get_model`, `list_models`) and scikit-learn's estimators (`fit`, `predict_proba`,
# `get_params`, `clone`). An entry says its **family** and **front end** (chapter 02's log-mels or the pretrained
# network's own), the **shared parameters it reads** (`reads`: `-p n_mfcc 20` changes every model that reads it, in
# every chapter), the **trainings** a fit needs (known before anything trains), how it is **fitted** on a split (its
# settings chosen on the rotations, networks trained through the store of notebook 04e), its **class probabilities**
# and its **network form** (the checkpoint `predict` and the ONNX file serve), and for an **ensemble**, its members.
#
# One fit is a `FitTask`; `fit_cell` is the one function every grid runs (notebook 04d), here or on a Dask worker.
# Chapters 03-05 fit their families on every rotation, 06 chooses and refits, 09 fits every entry on every fold, and
# none of them knows more of a model than its name.

# %%
#| export
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from sklearn.dummy import DummyClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

from urbansound_nb import models, pretrained
from urbansound_nb.batches import ClipIndex, StudyData, study_data
from urbansound_nb.cache import content_keys
from urbansound_nb.data import class_names, default_folds, load_urbansound, metadata_frame, recording_subset
from urbansound_nb.features import mfcc_stats, study_features
from urbansound_nb.grid import Cell, Placement, grid_client, run_grid
from urbansound_nb.metrics import result_entry
from urbansound_nb.models import EfficientAT, MFCCClassifier, SeedEnsemble, linear_rows, load_plugins
from urbansound_nb.params import ParameterError, StudyParams
from urbansound_nb.pretrained import POOLED_BLOCKS, PRETRAINED, EfficientATFeatures, body_state, network_config
from urbansound_nb.selection import choose_setting, rotated_estimate, validation_rotations
from urbansound_nb.store import DataView, Training, TrainingStore, clips_digest, digest, model_config, study_store
from urbansound_nb.train import RECIPES, TrainConfig, predict_logits

# %%
import tempfile
from fastcore.test import test_eq, test_close, test_fail


# %% [markdown]
# ## The registry
#
# `register_model` adds an entry (a class with a `name` and a `family`); `list_models` gives the names in the order of
# registration; `get_model` an entry configured from a run's `StudyParams` or from keywords; `study_models` the run's
# models (`-p models`, default every one) of some families, checked.

# %%
#| export
_REGISTRY: dict = {}
FAMILIES = ("chance", "engineered features", "from scratch", "pretrained")   # in the order the study presents them

def register_model(cls):
    "A class decorator, as torchvision's `register_model`: the entry `cls.name` of the study's registry."
    if not cls.name or cls.family not in FAMILIES:
        raise ValueError(f"a model needs a name and a family of {FAMILIES}, got {cls.name!r}, {cls.family!r}")
    if _REGISTRY.get(cls.name, cls) is not cls: raise ValueError(f"a model {cls.name!r} is already registered")
    _REGISTRY[cls.name] = cls
    return cls

def list_models(families=None) -> list[str]:
    "The registered models' names by family, in the order of registration; only those of `families` when given."
    names = [n for n, c in _REGISTRY.items() if families is None or c.family in families]
    return sorted(names, key=lambda n: FAMILIES.index(_REGISTRY[n].family))   # stable: registration within a family

def get_model(name: str, params: StudyParams | None = None, **values):
    "The entry `name`, configured from `params` (the shared parameters it reads) or from `values`."
    if name not in _REGISTRY: raise ValueError(f"unknown model {name!r}; choose from {list_models()}")
    cls = _REGISTRY[name]
    return cls.from_params(params) if params is not None else cls(**values)

def study_models(params: StudyParams, families=None) -> list[str]:
    "The run's models (`params.models`, default every one) of `families`, in the registry's order; unknown refused."
    asked = params.models or list_models()
    unknown = [m for m in asked if m not in _REGISTRY]
    if unknown: raise ParameterError(f"parameter 'models': unknown {unknown}; choose from {list_models()}")
    return [m for m in list_models(families) if m in asked]

# %%
test_fail(lambda: get_model("vgg"), contains="unknown model 'vgg'")
test_fail(lambda: register_model(type("Nameless", (), dict(name="", family="chance"))), contains="needs a name")

# %% [markdown]
# ## A fit, and what it reads
#
# A `FitTask` is plain and hashable, so a grid sends it to a worker and the store keys it. Its indices come from the
# clips alone (`ClipIndex`, notebook 02b), with `train_fraction` of each class's training recordings kept (whole
# recordings, seeded by the run's seed). `Inputs` is what the models of one front end read: the data, and for the
# pretrained one its body, cached embeddings and weights' sha256; for `urbansound-nb run --plan`, a `DataView` of the
# clips alone, which is all a key needs.

# %%
#| export
@dataclass(frozen=True)
class FitTask:
    "One fit of an entry: its parameters, folds, the rotations its settings are chosen on, seed, subset and epochs."
    model: str
    settings: tuple                  # the entry's parameters as sorted (name, value) pairs
    train_folds: tuple
    val_fold: int | None             # None: a refit, with nothing left to validate on
    test_fold: int | None            # None: a further rotation, which only estimates: the test fold is never scored
    rotations: tuple = ()            # ((train_folds, val_fold), ...): where its settings are chosen
    seed: int = 0
    train_fraction: float = 1.0      # of each class's training recordings, drawn with `subset_seed`
    subset_seed: int = 0
    stop_after: int | None = None    # a refit network's epochs, on its recipe's schedule

    def entry(self): return get_model(self.model, **dict(self.settings))

    def _subset(self, clips, folds) -> np.ndarray:
        idx = clips.indices(list(folds))
        return recording_subset(clips.frame(), idx, self.train_fraction, self.subset_seed, "train_fraction")

    def indices(self, clips) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        "(train, validation, test) clip indices; an absent role has none."
        none = np.zeros(0, dtype=int)
        return (self._subset(clips, self.train_folds), none if self.val_fold is None else clips.indices(self.val_fold),
                none if self.test_fold is None else clips.indices(self.test_fold))

    def splits(self, clips) -> list[tuple[np.ndarray, np.ndarray]]:
        "(train, validation) indices of each rotation its settings are chosen on."
        return [(self._subset(clips, tr), clips.indices(va)) for tr, va in self.rotations]

    def like(self, **changes) -> "FitTask":
        "This task with other fields (a member's model and seed, a probe's settings)."
        return FitTask(**{**self.__dict__, **changes})

    @property
    def key(self) -> str:
        "A readable, unique name: model, folds, seed, and a digest of the rest."
        role = lambda p, f: "" if f is None else f"-{p}{f}"
        folds = "+".join(map(str, self.train_folds))
        return (f"{self.model}-train{folds}{role('val', self.val_fold)}{role('test', self.test_fold)}-seed{self.seed}"
                f"-{digest(self.__dict__)[:8]}")

@dataclass
class Inputs:
    "What the models of one front end read: the data (or, for a plan, a `DataView`), the body, embeddings, weights."
    data: object
    body: EfficientAT | None = None
    embeddings: np.ndarray | None = None
    weights_sha: str | None = None

def task_of(entry, folds: dict, rotations: list[dict], params: StudyParams, stop_after=None) -> FitTask:
    "The task of `entry` on `folds` (train_folds, val_fold, test_fold), its settings chosen on `rotations`."
    return FitTask(entry.name, tuple(sorted(entry.get_params().items())), tuple(folds["train_folds"]),
                   folds["val_fold"], folds["test_fold"],
                   tuple((tuple(r["train_folds"]), r["val_fold"]) for r in rotations), params.seed,
                   params.train_fraction, params.seed, stop_after)

# %%
_clips = ClipIndex(tuple("abcdefgh"), (0, 1, 0, 1, 0, 1, 0, 1), (1, 1, 1, 1, 2, 2, 3, 3), (1, 2, 3, 4, 5, 6, 7, 8),
                   ("x", "y"))
_task = FitTask("logreg", (("deltas", True), ("n_mfcc", 40)), (1,), 2, 3, (((1,), 2), ((2,), 1)))
test_eq([i.tolist() for i in _task.indices(_clips)], [[0, 1, 2, 3], [4, 5], [6, 7]])
test_eq([t.tolist() for t, _ in _task.splits(_clips)], [[0, 1, 2, 3], [4, 5]])
test_eq(len(_task.like(train_fraction=0.5).indices(_clips)[0]), 2)    # one recording of each class
test_eq(_task.key, _task.like().key)
assert _task.key.startswith("logreg-train1-val2-test3-seed0-") and _task.like(seed=1).key != _task.key

# %% [markdown]
# ## The protocol
#
# `StudyModel` is what every entry is: configured by the shared parameters it reads (their defaults are
# `StudyParams`'), with `get_params` and `clone`. Of a task it says which fits it reads first (`dependencies`: an
# ensemble's members, a fine-tuning's probe), which trainings it needs (`trainings`), and what fitting gives (`fit`: a
# record with its class probabilities and settings, and its checkpoint).

# %%
#| export
class StudyModel:
    "An entry of the registry, after scikit-learn's estimators: configured, cloned, fitted on a `FitTask`."
    name, family, front_end = "", "", "logmel"
    reads: tuple = ()                # the shared parameters it reads
    ensemble = False                 # an average of other entries (chapter 06's rule prefers one when tied)
    description = ""

    def __init__(self, **values):
        unknown = sorted(set(values) - set(self.reads))
        if unknown: raise TypeError(f"{self.name} reads {list(self.reads)}, not {unknown}")
        self.params = {k: values.get(k, getattr(StudyParams, k)) for k in self.reads}

    @classmethod
    def from_params(cls, params: StudyParams): return cls(**{k: getattr(params, k) for k in cls.reads})
    def get_params(self) -> dict: return dict(self.params)
    def clone(self): return type(self)(**self.params)
    def __repr__(self): return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self.params.items())})"

    def dependencies(self, task: FitTask) -> list[FitTask]: return []
    def trainings(self, task: FitTask, inputs: Inputs) -> list[Training]: return []
    def fit(self, task: FitTask, inputs: Inputs, store: TrainingStore, after=()) -> tuple[dict, dict | None]:
        "The fit of `task`: a record (`val_proba`, `test_proba`, settings, epochs) and the checkpoint of its network."
        raise NotImplementedError

# %% [markdown]
# ## Classical models: a scikit-learn estimator on fixed features
#
# A `ClassicalModel` is an estimator on per-clip features (MFCC statistics, or the pretrained embeddings), its setting
# chosen among `grid` on the rotations (notebook 03b) once for every task chosen on the same rotations (the choice is
# kept in the store). Its probabilities are the estimator's, or the softmax of its decision scores (the SVM). Its
# network form is the fitted model folded into a network (`MFCCClassifier`, notebook 04a; the probe as the pretrained
# body's last layer). An estimator with no network form (k nearest neighbours) is fitted and compared all the same;
# chapter 06 says so if it is chosen.

# %%
#| export
def scores_to_probabilities(estimator, X) -> np.ndarray:
    "Class probabilities of a fitted estimator (classes it never saw: 0), or the softmax of its decision scores."
    scores = estimator.predict_proba(X) if hasattr(estimator, "predict_proba") else None
    if scores is None:
        d = estimator.decision_function(X)
        d = np.stack([-d, d], 1) if d.ndim == 1 else d       # two classes: one score, for the second
        scores = np.exp(d - d.max(1, keepdims=True))
        scores /= scores.sum(1, keepdims=True)
    return scores

def _placed(estimator, proba, n_classes) -> np.ndarray:
    out = np.zeros((len(proba), n_classes), np.float32)
    out[:, estimator.classes_] = proba
    return out

class ClassicalModel(StudyModel):
    "A scikit-learn estimator on per-clip features, its setting chosen on the rotations."
    counted = False     # whether its size counts the network it folds into (the probe's body), not only coefficients
    def features(self, inputs: Inputs) -> np.ndarray: raise NotImplementedError
    def estimator(self, **setting): raise NotImplementedError
    def grid(self, n_features: int) -> list[dict]: return [{}]
    def network(self, fitted, inputs: Inputs) -> tuple[str, dict, torch.nn.Module]: raise NotImplementedError

    def selection_key(self, task, inputs) -> dict:
        "The key of its setting's choice: the same for every task chosen on the same rotations of the same clips."
        clips = inputs.data.clips
        spec = dict(model=self.name, params=self.params, features=inputs.data.fp.key, weights=inputs.weights_sha,
                    rotations=[[clips_digest(clips, a), clips_digest(clips, b)] for a, b in task.splits(clips)])
        return dict(spec, name=f"{self.name}-setting-{digest(spec)[:12]}")

    def fit(self, task, inputs, store, after=()):
        data = inputs.data
        X, y, n_classes = self.features(inputs), data.logmels.labels.numpy(), len(data.split.classes)
        splits, (tr, va, te) = task.splits(data.clips), task.indices(data.clips)
        key = self.selection_key(task, inputs)
        chosen = store.fit_record(key)     # the setting another rotation's fit chose on the same rotations
        if chosen is None:
            setting, table, per_split = choose_setting(self.estimator, self.grid(X.shape[1]), X, y, splits)
            store.save_fit(key, dict(setting=setting, table=table))
            own = [k for k, (t, v) in enumerate(splits) if np.array_equal(t, tr) and np.array_equal(v, va)]
        else: setting, table, own = chosen["setting"], chosen["table"], []
        fitted = per_split[own[0]] if own else self.estimator(**setting).fit(X[tr], y[tr])
        proba = lambda idx: _placed(fitted, scores_to_probabilities(fitted, X[idx]), n_classes) if len(idx) else None
        try: network, config, module = self.network(fitted, inputs)
        except ValueError: network = module = None             # a model with no network form is fitted, not served
        checkpoint = module and models.checkpoint_dict(module, network, config, data.fp, data.split.classes,
                                                       data.clip_seconds)
        size = models.n_parameters(module) if self.counted and module else None
        return dict(val_proba=proba(va), test_proba=proba(te), settings=setting, validation_grid=table,
                    n_features=int(X.shape[1]), parameters=size), checkpoint

class MFCCModel(ClassicalModel):
    "A classical model on the MFCC statistics of chapter 02's log-mels."
    reads = ("n_mfcc", "deltas")
    def features(self, inputs): return mfcc_stats(inputs.data.logmels, self.params["n_mfcc"], self.params["deltas"])
    def network(self, fitted, inputs):
        config = dict(n_classes=len(inputs.data.split.classes), n_mels=inputs.data.fp.n_mels, **self.params)
        return "mfcc", *MFCCClassifier.fitted(fitted, **config)

# %% [markdown]
# The engineered-features family and its floor: the training folds' majority class (scikit-learn's `DummyClassifier`,
# whose probabilities are the training folds' class shares), logistic regression and an RBF support-vector machine,
# with `C` (and the SVM's `gamma`, around scikit-learn's "scale" for standardised features, 1 / n_features) chosen on
# the rotations.

# %%
#| export
@register_model
class Majority(MFCCModel):
    "The training folds' most frequent class (its probabilities: their class shares)."
    name, family, description = "majority", "chance", "majority class"
    def estimator(self): return make_pipeline(StandardScaler(), DummyClassifier(strategy="prior"))

@register_model
class LogReg(MFCCModel):
    "MFCC statistics, standardised, then a multinomial logistic regression."
    name, family, description = "logreg", "engineered features", "MFCC statistics + logistic regression"
    def estimator(self, C: float = 1.0): return make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=3000))
    def grid(self, n_features): return [dict(C=c) for c in (0.01, 0.1, 1.0, 10.0)]

@register_model
class SVMRBF(MFCCModel):
    "MFCC statistics, standardised, then an RBF support-vector machine."
    name, family, description = "svm_rbf", "engineered features", "MFCC statistics + RBF SVM"
    def estimator(self, C: float = 10.0, gamma="scale"):
        # ties between votes broken by the SVM's confidence: its predictions are then its scores' argmax
        return make_pipeline(StandardScaler(), SVC(C=C, gamma=gamma, break_ties=True))
    def grid(self, n_features):
        return [dict(C=c, gamma=g / n_features) for c in (1.0, 10.0, 100.0) for g in (0.25, 1.0, 4.0)]

# %% [markdown]
# Folded into a network, each of them gives the fitted pipeline's probabilities (the SVM's softmaxed scores) and its
# predictions, on clips of several lengths:

# %%
from types import SimpleNamespace
_rng = np.random.default_rng(0)
_logmels = torch.tensor(_rng.normal(-40, 12, (60, 16, 30)), dtype=torch.float32)
_y = np.arange(60) % 3
_logmels[_y == 1, :4] += 15                               # class 1 is louder in the low bands
_X = mfcc_stats(SimpleNamespace(data=_logmels, lengths=torch.full((60,), 30)), 8, True)
for _model in (Majority(n_mfcc=8), LogReg(n_mfcc=8), SVMRBF(n_mfcc=8)):
    _fitted = _model.estimator(**_model.grid(_X.shape[1])[0]).fit(_X[:40], _y[:40])
    _, _net = MFCCClassifier.fitted(_fitted, 4, 16, 8, True)
    _out = _net(_logmels[40:]).softmax(-1).detach().numpy()
    test_close(_out[:, :3], scores_to_probabilities(_fitted, _X[40:]), eps=1e-4)
    test_eq(_out.argmax(1), _fitted.predict(_X[40:]))                     # the same answers as scikit-learn's
    assert (_out[:, 3] < 1e-6).all()                                     # a class it never saw: never answered

# %% [markdown]
# The probe: the pretrained body's embeddings (notebook 05a), standardised, and a logistic regression. Both are
# linear, so they fold into the network's last layer: the probe is one network, which fine-tuning starts from.

# %%
#| export
PROBE_C = (0.01, 0.03, 0.1, 0.3, 1.0)  # the probe's regularisations, chosen among on the rotations

def probe_network(body: EfficientAT, probe, n_classes: int) -> EfficientAT:
    "`body` with its last layer replaced by a fitted probe pipeline, standardisation folded in: one network."
    scaler, logreg = probe.steps[0][1], probe.steps[-1][1]
    coef, intercept = linear_rows(logreg)
    w, b = coef / scaler.scale_, intercept - (coef * scaler.mean_ / scaler.scale_).sum(1)
    full_w, full_b = np.zeros((n_classes, w.shape[1])), np.full(n_classes, -1e4)   # a class never seen: far below
    full_w[logreg.classes_], full_b[logreg.classes_] = w, b
    model = EfficientAT(**network_config(body, n_classes))
    model.load_state_dict(body_state(body), strict=False)
    with torch.no_grad():
        model.net.classifier[5].weight.copy_(torch.as_tensor(full_w, dtype=torch.float32))
        model.net.classifier[5].bias.copy_(torch.as_tensor(full_b, dtype=torch.float32))
    return model.eval()

@register_model
class Probe(ClassicalModel):
    "A standardised logistic regression on the pretrained network's pooled embeddings, folded into its last layer."
    name, family, front_end, description = "probe", "pretrained", "efficientat", "EfficientAT, linear probe"
    reads, counted = ("network",), True
    def features(self, inputs): return inputs.embeddings
    def estimator(self, C: float = 1.0): return make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=5000))
    def grid(self, n_features): return [dict(C=c) for c in PROBE_C]
    def network(self, fitted, inputs):
        n = len(inputs.data.split.classes)
        return "efficientat", network_config(inputs.body, n), probe_network(inputs.body, fitted, n)

# %%
_body = pretrained.transfer_body(pretrained.pretrained_network(weights="random"))
_x = torch.randn(2, 128, 100)
_emb = _body.embed(_x).detach().numpy()
_pipe = Probe().estimator().fit(np.repeat(_emb, 20, 0) + _rng.normal(0, 0.01, (40, _emb.shape[1])), np.arange(40) % 2)
_net = probe_network(_body, _pipe, 3)                  # the probe on pooled blocks is one network
test_close(_net(_x).softmax(-1).detach().numpy()[:, :2], _pipe.predict_proba(_emb), eps=1e-4)

# %% [markdown]
# ## Networks trained by the study's loop
#
# A `NetworkModel` is a network of `models.MODELS` trained with a recipe of notebook 04c through the store:
# `trainings` names the training a task needs, `fit` asks the store for it and scores the validation and test clips
# (every window of a longer clip, `multicrop`). A refit trains for `stop_after` epochs of its schedule and keeps the
# last.

# %%
#| export
class NetworkModel(StudyModel):
    "A network trained by the study's loop with its recipe, through the store of trainings."
    network, recipe, standardize = "", "", True
    reads = ("epochs", "batch_size", "multicrop")

    def epochs(self) -> int: return self.params["epochs"]
    def config(self, inputs: Inputs) -> dict: return model_config(len(inputs.data.clips.classes), inputs.data.fp)
    def recipe_for(self, task: FitTask) -> TrainConfig:
        return TrainConfig(**{**RECIPES[self.recipe], "epochs": self.epochs(), "seed": task.seed,
                              "batch_size": self.params["batch_size"], "stop_after": task.stop_after})
    def start(self, task, inputs, after=(), store=None) -> tuple[dict | None, dict | None]:
        "How its weights start: (a plain description for the key, the weights), or (None, None) for random ones."
        return None, None

    def trainings(self, task, inputs):
        tr, va, _ = task.indices(inputs.data.clips)
        return [Training(self.network, self.config(inputs), self.recipe_for(task), tuple(map(int, tr)),
                         tuple(map(int, va)), init=self.start(task, inputs)[0], standardize=self.standardize)]

    def fit(self, task, inputs, store, after=()):
        data, (training,) = inputs.data, self.trainings(task, inputs)
        model, history = store.train(training, data, self.start(task, inputs, after, store)[1], progress=False)
        _, va, te = task.indices(data.clips)
        proba = lambda idx: predict_logits(model, data.logmels, idx, data.n_frames,
                                           multicrop=self.params["multicrop"]).softmax(-1).numpy() if len(idx) else None
        checkpoint = store.checkpoint(dict(checkpoint=f"{history['cell']}/model.pt"))
        return dict(val_proba=proba(va), test_proba=proba(te), epochs=history["stopped_epoch"],
                    best_epoch=history["best"]["epoch"], history=history["history"],
                    parameters=models.n_parameters(model)), checkpoint

@register_model
class SmallCNN(NetworkModel):
    "The starting notebook's CNN with its recipe (Adam at 1e-3, nothing else), for `epochs`."
    name, family, network, recipe = "small_cnn", "from scratch", "small_cnn", "small_cnn"
    description = "SmallAudioCNN, the tutorial's recipe"

@register_model
class UrbanResNetModel(NetworkModel):
    "UrbanResNet with the modern recipe, one training of `resnet_epochs` (at most `epochs`), stopping after `patience`."
    name, family, network, recipe = "urbanresnet", "from scratch", "resnet", "resnet"
    description = "UrbanResNet, one seed"
    reads = (*NetworkModel.reads, "resnet_epochs", "patience")
    def epochs(self): return min(self.params["resnet_epochs"], self.params["epochs"])
    def recipe_for(self, task):
        cfg = super().recipe_for(task)
        cfg.patience = self.params["patience"]
        return cfg

# %% [markdown]
# Fine-tuning starts from the pretrained body and, by default, from the probe fitted on the same split as its 10-class
# head (`finetune_init = "probe"`: linear probing, then fine-tuning; Kumar et al., ICLR 2022). The probe is a fit it
# reads first, and its key names the probe's fit, not the weights the probe's fit computes, so a plan knows the
# training before the probe exists.

# %%
#| export
@register_model
class FineTune(NetworkModel):
    "EfficientAT fine-tuned from its probe (or a new head) with the `efficientat` recipe, for `finetune_epochs`."
    name, family, front_end, network, recipe = "finetune", "pretrained", "efficientat", "efficientat", "efficientat"
    description = "EfficientAT, fine-tuned from the probe"
    standardize = False
    reads = ("batch_size", "multicrop", "network", "finetune_epochs", "finetune_init")

    def epochs(self): return self.params["finetune_epochs"]
    def config(self, inputs):
        return dict(width=PRETRAINED[self.params["network"]][1], n_classes=len(inputs.data.clips.classes),
                    pooled_blocks=list(POOLED_BLOCKS))
    def probe(self, task: FitTask) -> FitTask:
        return task.like(model="probe", settings=(("network", self.params["network"]),), seed=task.seed)
    def dependencies(self, task): return [self.probe(task)] if self.params["finetune_init"] == "probe" else []

    def start(self, task, inputs, after=(), store=None):
        if self.params["finetune_init"] != "probe":
            return dict(body=inputs.weights_sha), None if inputs.body is None else body_state(inputs.body)
        head = self.probe(task.like(test_fold=None, stop_after=None))     # the probe's weights do not see the test
        spec = dict(probe=fit_identity(head, inputs)["name"], body=inputs.weights_sha)
        return spec, store.checkpoint(after[0])["state_dict"] if after else None

# %% [markdown]
# ## Ensembles
#
# An `Ensemble` names its members as tasks and reads their fits: its probabilities are theirs averaged by
# `SeedEnsemble.average`, its checkpoint theirs joined by `ensemble_checkpoint` (notebook 04a), so every ensemble is
# built, averaged and checkpointed one way.

# %%
#| export
class Ensemble(StudyModel):
    "Entries of the registry averaged: the mean of their class probabilities."
    ensemble = True
    def members(self, task: FitTask) -> list[FitTask]: raise NotImplementedError
    def dependencies(self, task): return self.members(task)
    def member(self, name: str, task: FitTask, seed: int) -> FitTask:
        entry = get_model(name, **{k: v for k, v in self.params.items() if k in _REGISTRY[name].reads})
        return task.like(model=name, settings=tuple(sorted(entry.get_params().items())), seed=seed)

    def fit(self, task, inputs, store, after=()):
        average = lambda part: (None if after[0][part] is None else
                                SeedEnsemble.average(torch.tensor([m[part] for m in after])).numpy())
        members = [dict(model=m["model"], seed=m["seed"], best_epoch=m.get("best_epoch"), epochs=m.get("epochs"),
                        val_accuracy=m.get("val_accuracy"), history=m.get("history")) for m in after]
        best = [m["best_epoch"] for m in members if m["best_epoch"] is not None]
        checkpoint = models.ensemble_checkpoint([store.checkpoint(m) for m in after])
        return dict(val_proba=average("val_proba"), test_proba=average("test_proba"), members=members,
                    best_epoch=best or None, epochs=sum(m["epochs"] or 0 for m in members),
                    member_seconds=sum(m["seconds"] for m in after),
                    parameters=sum(m.get("parameters") or 0 for m in after) or None), checkpoint

class SeedsOf(Ensemble):
    "One entry (`of`) trained with `seeds` seeds, averaged."
    of, seeds = "", ""
    def members(self, task): return [self.member(self.of, task, task.seed + s) for s in range(self.params[self.seeds])]

@register_model
class ResNet(SeedsOf):
    "UrbanResNet averaged over `resnet_seeds` seeds."
    name, family, of, seeds, description = "resnet", "from scratch", "urbanresnet", "resnet_seeds", \
        "UrbanResNet, seeds averaged"
    reads = (*UrbanResNetModel.reads, "resnet_seeds")

@register_model
class ProbeFineTune(Ensemble):
    "The probe and the network fine-tuned from it, averaged."
    name, family, front_end, description = "probe_finetune", "pretrained", "efficientat", \
        "EfficientAT, probe and fine-tuned averaged"
    reads = FineTune.reads
    def members(self, task): return [self.member("probe", task, task.seed), self.member("finetune", task, task.seed)]

@register_model
class FineTuneEnsemble(SeedsOf):
    "The fine-tuned network averaged over `finetune_seeds` seeds, each from the same probe."
    name, family, front_end, of, seeds = "finetune_ensemble", "pretrained", "efficientat", "finetune", "finetune_seeds"
    description = "EfficientAT, fine-tuned, seeds averaged"
    reads = (*FineTune.reads, "finetune_seeds")

# %% [markdown]
# ## What the models read
#
# `FRONT_ENDS` builds each front end's `Inputs` from a run's parameters. With `plan=True` they hold only a `DataView`:
# content keys, labels, folds and recordings, read without decoding a clip (clips the cache knows to be undecodable
# left out, as `study_data` leaves them out).

# %%
#| export
def clip_view(params: StudyParams, fp) -> DataView:
    "The `DataView` of a run's data in front end `fp`, computing no feature."
    ds = load_urbansound(params.dataset, params.max_items, params.seed)
    keys, skipped = content_keys(ds, fp, params.cache_dir)
    keep = sorted(set(range(len(ds))) - set(skipped))
    meta = metadata_frame(ds).iloc[keep].reset_index(drop=True)
    return DataView(ClipIndex.of([keys[i] for i in keep], meta, class_names(ds)), fp, fp.frames(params.clip_seconds))

def logmel_inputs(params: StudyParams, plan: bool = False) -> Inputs:
    "Chapter 02's log-mels of the run (a `DataView` of them for a plan)."
    fp = study_features(params)
    return Inputs(clip_view(params, fp) if plan else study_data(params, fp))

def pretrained_inputs(params: StudyParams, plan: bool = False) -> Inputs:
    "The pretrained network's features, its body and the cached embeddings (for a plan: a `DataView` and the sha256)."
    fp = EfficientATFeatures()
    sha = "random" if params.weights == "random" else pretrained.sha256_file(
        pretrained.weights_file(params.network, params.weights, params.cache_dir))
    if plan: return Inputs(clip_view(params, fp), weights_sha=sha)
    data = study_data(params, fp)
    body = pretrained.transfer_body(pretrained.pretrained_network(params.network, params.weights, params.cache_dir))
    return Inputs(data, body, pretrained.cached_embeddings(body, data, params.cache_dir)[0], sha)

FRONT_ENDS = {"logmel": logmel_inputs, "efficientat": pretrained_inputs}

def study_inputs(params: StudyParams, cells: dict, plan: bool = False) -> dict:
    "The `Inputs` of every front end the grid's `cells` (fit tasks) read."
    needed = {c.args["task"].entry().front_end for c in cells.values()}
    return {fe: FRONT_ENDS[fe](params, plan) for fe in FRONT_ENDS if fe in needed}

# %% [markdown]
# ## One fit, a grid cell
#
# `fit_identity` is a fit's key: the task, its clips' digests, front end and weights, and the keys of the trainings
# and fits it reads. `fit_cell` reads the fit back from the store, or fits the entry and keeps its record and
# checkpoint.

# %%
#| export
FIT_VERSION = 2   # raised when what a fit's record holds, or how a model is fitted, changes

def fit_identity(task: FitTask, inputs: dict | Inputs, threads: int | None = None) -> dict:
    "Everything a fit's record depends on, and a readable `name`; `inputs`: by front end, or the entry's own."
    entry = task.entry()
    own = inputs[entry.front_end] if isinstance(inputs, dict) else inputs
    clips, (tr, va, te) = own.data.clips, task.indices(own.data.clips)
    identity = dict(version=FIT_VERSION, task=task.__dict__, features=own.data.fp.key, weights=own.weights_sha,
                    train=clips_digest(clips, tr), val=clips_digest(clips, va), test=clips_digest(clips, te),
                    rotations=[[clips_digest(clips, a), clips_digest(clips, b)] for a, b in task.splits(clips)],
                    trainings=[digest(t.identity(own.data, threads)) for t in entry.trainings(task, own)],
                    reads=[fit_identity(t, inputs, threads)["name"] for t in entry.dependencies(task)])
    return dict(identity, name=f"{task.key}-{digest(identity)[:10]}")

def _accuracy(proba, labels, idx):
    return None if proba is None else float((np.asarray(proba).argmax(1) == labels[idx]).mean())

def fit_cell(task: FitTask, inputs: dict, store: str, after=()) -> dict:
    "Fit `task` as a grid cell, here or on a worker; its record, read back from the store or fitted and kept there."
    entry, kept = task.entry(), TrainingStore(store)
    own = inputs[entry.front_end]
    identity = fit_identity(task, inputs)
    record = kept.fit_record(identity)
    if record is not None:
        return dict(record, reused=True, trainings=[dict(t, status="reused") for t in record["trainings"]])
    t0, labels = time.time(), own.data.logmels.labels.numpy()
    result, checkpoint = entry.fit(task, own, kept, after)
    seconds = time.time() - t0 + result.pop("member_seconds", 0)      # an ensemble costs its members' fits
    tr, va, te = task.indices(own.data.clips)
    folds = dict(train=list(task.train_folds), val=[] if task.val_fold is None else [task.val_fold],
                 test=[] if task.test_fold is None else [task.test_fold])
    record = dict(result, model=task.model, family=entry.family, seed=task.seed, folds=folds, n_train=len(tr),
                  n_val=len(va), n_test=len(te), val_accuracy=_accuracy(result["val_proba"], labels, va),
                  test_accuracy=_accuracy(result["test_proba"], labels, te), seconds=round(seconds, 2),
                  trainings=kept.used)
    checkpoint = checkpoint and dict(checkpoint, folds=folds, model_name=task.model)
    return dict(kept.save_fit(identity, record, checkpoint), reused=False)

# %% [markdown]
# ## Cells, and the figures of a family
#
# `grid_cells` turns tasks into a grid's cells, each after the fits it reads and each fit once (a seed ensemble's
# first member is the entry trained alone). `study_tasks` gives each model's tasks on the study's rotations (its own
# split first, tested once), `cv_tasks` on every fold of a cross-validation.

# %%
#| export
def grid_cells(tasks) -> dict:
    "The grid's cells of `tasks` and of every fit they read, each after those it reads, each once."
    cells = {}
    def add(task):
        if task.key in cells: return
        deps = task.entry().dependencies(task)
        for d in deps: add(d)
        cells[task.key] = Cell(dict(task=task), after=tuple(d.key for d in deps))
    for t in tasks: add(t)
    return cells

def study_split(params: StudyParams, present) -> dict:
    "The run's split (its folds filled in from the folds `present`)."
    train, val, test = default_folds(present, params.train_folds, params.val_fold, params.test_fold)
    return dict(train_folds=train, val_fold=val, test_fold=test)

def study_tasks(params: StudyParams, names, present) -> dict:
    "Each model's tasks on the rotations of the study's split: the split itself (tested once) first."
    split = study_split(params, present)
    rotations = validation_rotations(split["train_folds"], split["val_fold"], params.selection_folds)
    return {n: [task_of(get_model(n, params), dict(r, test_fold=split["test_fold"] if k == 0 else None), rotations,
                        params) for k, r in enumerate(rotations)] for n in names}

def cv_tasks(params: StudyParams, names, plan: list[dict]) -> dict:
    "Each model's task on every fold of a cross-validation `plan`, its settings chosen on that fold's rotations."
    rotations = lambda p: validation_rotations(p["train_folds"], p["val_fold"], params.selection_folds)
    return {n: [task_of(get_model(n, params), p, rotations(p), params) for p in plan] for n in names}

def fold_entry(task: FitTask, record: dict, inputs: dict, **extra) -> dict:
    "A fit's results entry (notebook 03a): validation and test accuracy, macro F1 and per-class accuracy, sizes, time."
    entry = task.entry()
    own = inputs[entry.front_end].data
    labels, (tr, va, te) = own.logmels.labels.numpy(), task.indices(own.clips)
    predicted = lambda part: np.asarray(record[part]).argmax(1) if record[part] is not None else np.zeros(0, int)
    return result_entry(labels[va], predicted("val_proba"), labels[te], predicted("test_proba"), own.split.classes,
                        len(tr), record["seconds"], best_epoch=record.get("best_epoch"), params=entry.get_params(),
                        n_features=record.get("n_features"), **extra)

def model_results(name: str, tasks: list, records: dict, inputs: dict) -> dict:
    "One model's results entry: its split's figures (test once), the rotated estimate, its settings and size."
    entry, first = tasks[0].entry(), records[tasks[0].key]
    out = fold_entry(tasks[0], first, inputs, family=entry.family, description=entry.description,
                     ensemble=entry.ensemble, settings=first.get("settings"),
                     epochs=first.get("epochs"), parameters=first.get("parameters"),
                     checkpoint=f"models/{name}.pt" if first.get("checkpoint") else None,
                     rotation_best_epochs=[records[t.key].get("best_epoch") for t in tasks])
    return dict(out, **rotated_estimate([records[t.key]["val_accuracy"] for t in tasks],
                                        [records[t.key]["n_val"] for t in tasks]))

def refit_epochs(best_epochs) -> int | None:
    "The epochs a refit trains: the mean of the rotations' best epochs (of every member of an ensemble); None: none."
    flat = [float(e) for b in best_epochs if b is not None for e in np.atleast_1d(b) if e is not None]
    return max(1, int(round(float(np.mean(flat))))) if flat else None

# %% [markdown]
# ## A chapter's models, fitted
#
# `family_fits` fits the run's models of some families on every rotation as one grid (here, or where `-p scheduler`
# says), scores them, and copies each model's checkpoint into the run's `models/`. Chapter 09's folds and chapter 06's
# refit run through the same `fit_grid`; `family_cells` gives the cells unfitted, for `urbansound-nb run --plan`.

# %%
#| export
def present_folds(params: StudyParams) -> list[int]:
    "The folds of the run's dataset (its metadata only)."
    return sorted({int(f) for f in load_urbansound(params.dataset, params.max_items, params.seed)["fold"]})

def family_cells(params: StudyParams, families, present) -> dict:
    "The grid's cells of the run's models of `families` on the study's rotations."
    return grid_cells(t for ts in study_tasks(params, study_models(params, families), present).values() for t in ts)

def _describe(key: str, record: dict) -> str:
    score = lambda part: "" if record[f"{part}_accuracy"] is None else f", {part} {record[f'{part}_accuracy']:.3f}"
    how = "read back" if record["reused"] else f"{record['seconds']:.0f} s"
    return f"  {key.rsplit('-', 1)[0]}{score('val')}{score('test')} ({how})"

def fit_grid(params: StudyParams, cells: dict, desc: str) -> tuple[dict, dict, list]:
    "Run fit cells as one grid where `params.scheduler` says: (records by key, the inputs read, trainings used)."
    inputs = study_inputs(params, cells)
    with grid_client(params.scheduler, paths=[params.cache_dir]) as client:
        records = run_grid(fit_cell, cells, shared=dict(inputs=inputs, store=str(study_store(params).root)),
                           place=Placement(client, params.cache_dir, params.cell_threads), describe=_describe,
                           desc=desc)
    return records, inputs, [t for r in records.values() for t in r["trainings"]]

@dataclass
class FamilyFits:
    "A chapter's fits: each model's tasks, every fit's record, the inputs, each model's results, the trainings used."
    tasks: dict
    records: dict
    inputs: dict
    results: dict
    trainings: list

    def record(self, name: str, rotation: int = 0) -> dict: return self.records[self.tasks[name][rotation].key]
    def data(self, name: str) -> StudyData: return self.inputs[get_model(name).front_end].data

def family_fits(params: StudyParams, families, run_dir, desc: str = "fits") -> FamilyFits:
    "Fit the run's models of `families` on every rotation, score them, and save their checkpoints into `run_dir`."
    names = study_models(params, families)
    tasks = study_tasks(params, names, present_folds(params))
    records, inputs, trainings = fit_grid(params, grid_cells(t for ts in tasks.values() for t in ts), desc)
    for n in names: study_store(params).export(records[tasks[n][0].key], Path(run_dir)/"models"/f"{n}.pt")
    return FamilyFits(tasks, records, inputs, {n: model_results(n, tasks[n], records, inputs) for n in names},
                      trainings)

load_plugins()      # models that `$URBANSOUND_MODELS` or installed packages register

# %% [markdown]
# ## The registry at work
#
# Every entry is registered, in the order the study presents its families, and configured by a run's parameters:

# %%
test_eq(list_models(), ["majority", "logreg", "svm_rbf", "small_cnn", "urbanresnet", "resnet", "probe", "finetune",
                        "probe_finetune", "finetune_ensemble"])
_params = StudyParams(dataset="synthetic", n_mfcc=20, resnet_seeds=3)
test_eq(get_model("logreg", _params).get_params(), dict(n_mfcc=20, deltas=True))
test_eq(get_model("resnet", _params).clone().get_params()["resnet_seeds"], 3)
test_eq(study_models(StudyParams(dataset="synthetic", models=["resnet", "logreg"]), ("from scratch",)), ["resnet"])
test_fail(lambda: study_models(StudyParams(dataset="synthetic", models=["vgg"])), contains="parameter 'models'")
test_fail(lambda: get_model("logreg", n_mels=3), contains="logreg reads ['n_mfcc', 'deltas'], not ['n_mels']")
[(n, get_model(n).family, get_model(n).description) for n in list_models()]

# %% [markdown]
# A few models on the synthetic stand-in, each on both rotations of folds 1 and 2 (the first tested on fold 3), as one
# grid: the seed ensemble's first member is the model trained alone, so it is trained once. A second run reads every
# fit back from the store, and a plan's `DataView` gives every fit the same key.

# %%
with tempfile.TemporaryDirectory() as d:
    _params = StudyParams(dataset="synthetic", max_items=90, cache_dir=d, run_dir=d, epochs=1, resnet_epochs=1,
                          train_folds=[1], val_fold=2, test_fold=3)
    _tasks = study_tasks(_params, ["majority", "logreg", "urbanresnet", "resnet"], range(1, 11))
    _cells = grid_cells(t for ts in _tasks.values() for t in ts)
    test_eq(len(_cells), 2 + 2 + 2 + 2 + 2)                  # resnet's second member on each rotation, no more
    _inputs = study_inputs(_params, _cells)
    _records = run_grid(fit_cell, _cells, shared=dict(inputs=_inputs, store=f"{d}/trainings"))
    _results = {n: model_results(n, ts, _records, _inputs) for n, ts in _tasks.items()}
    test_eq(_results["resnet"]["best_epoch"], [1, 1])
    assert all(r["reused"] for r in run_grid(fit_cell, _cells, shared=dict(inputs=_inputs, store=f"{d}/trainings"))
               .values())
    _view = study_inputs(_params, _cells, plan=True)
    for _c in _cells.values():
        test_eq(fit_identity(_c.args["task"], _view)["name"], fit_identity(_c.args["task"], _inputs)["name"])
{n: {k: r[k] for k in ("val_accuracy", "val_mean", "test_accuracy", "parameters")} for n, r in _results.items()}
