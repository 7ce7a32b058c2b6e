"""The transfer trials of the explanations page: fine-tuning recipes and probe variants of EfficientAT mn04 on the
mini data, every fold validating once (trained on the other two), judged by the mean over the three rotations.

    python docs/trials/transfer_trials.py finetune current anchor anchor_bnfrozen   # recipes: RECIPE_TRIALS
    python docs/trials/transfer_trials.py probe                                   # linear, pooled, MLP, augmented

Results are appended to a JSON file (resumable: a finished rotation is not run again) and printed as they come.
These figures are development measurements: fold 3 is the study's test fold on the mini data, so chapter 05's test
figure there no longer counts as untouched for the recipes chosen this way; the held-out folds are the honest test.
"""
import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from urbansound_nb.augment import PRETRAINED_UNITS_PER_DB
from urbansound_nb.batches import batch_frames, study_data
from urbansound_nb.models import SeedEnsemble
from urbansound_nb.params import StudyParams
from urbansound_nb.pretrained import (
    EfficientATFeatures,
    cached_embeddings,
    network_config,
    pretrained_network,
    transfer_body,
)
from urbansound_nb.registry import PROBE_C, Probe, probe_network
from urbansound_nb.selection import choose_setting
from urbansound_nb.store import Training, TrainingStore
from urbansound_nb.train import RECIPES, TrainConfig, predict_logits

ROTATIONS = [([1, 2], 3), ([1, 3], 2), ([2, 3], 1)]        # (training folds, validation fold)
ANCHOR = dict(lr=1e-4, schedule="warmup_linear", warmup=1 / 6, final_lr=0.01, weight_decay=0.0, label_smoothing=0.0,
              mixup_alpha=0.3, augmentation="roll_gain_mask")   # EfficientAT's ex_esc50.py, scaled to 6 epochs
RECIPE_TRIALS = {   # name -> (pooled blocks in the probe, TrainConfig overrides, epochs)
    "current": (False, RECIPES["efficientat"], 6),       # the study's recipe (anchor_bnfrozen_fb13 since #36)
    "before": (False, dict(optimizer="adamw", lr=2e-4, weight_decay=1e-2, schedule="onecycle", label_smoothing=0.1,
                           augmentation="shift_freqmask"), 6),   # the recipe up to 833b1b8
    "anchor": (False, ANCHOR, 6),
    "anchor_bnfrozen": (False, dict(ANCHOR, freeze_bn=True), 6),
    "anchor_bnfrozen_fb13": (False, dict(ANCHOR, freeze_bn=True, frozen_blocks=13), 6),
    "pooled_fb13": (True, dict(ANCHOR, freeze_bn=True, frozen_blocks=13), 6),
    "pooled_fb13_5e-5_10ep": (True, dict(ANCHOR, freeze_bn=True, frozen_blocks=13, lr=5e-5, warmup=0.1), 10),
}


def setup(args):
    torch.set_num_threads(args.threads)
    params = StudyParams(dataset=args.dataset, cache_dir=args.cache_dir, run_dir=args.cache_dir)
    data = study_data(params, EfficientATFeatures(), progress=False)
    return data, pretrained_network("mn04_as", args.weights, args.cache_dir)


def finetune(args, data, net, names):
    done = json.loads(args.out.read_text()) if args.out.exists() else {}
    fold, y = data.meta["fold"].values, data.logmels.labels.numpy()
    for name in names:
        pooled, recipe, epochs = RECIPE_TRIALS[name]
        body = transfer_body(net) if pooled else net
        emb, _ = cached_embeddings(body, data, args.cache_dir, progress=False)
        for tr_folds, va_fold in ROTATIONS:
            key = f"{name}/val{va_fold}"
            if key in done: continue
            tr, va = np.flatnonzero(np.isin(fold, tr_folds)), np.flatnonzero(fold == va_fold)
            d = replace(data, train=tr, val=va, test=va)
            _, _, (fitted,) = choose_setting(Probe().estimator, [dict(C=c) for c in PROBE_C], emb, y, [(tr, va)])
            probe = probe_network(body, fitted, 10)
            probs = lambda m: predict_logits(m, d.logmels, va, d.n_frames, multicrop=True).softmax(-1)
            acc = lambda models: float((SeedEnsemble.average(torch.stack([probs(m) for m in models])).argmax(1)
                                        .numpy() == y[va]).mean())
            t0 = time.time()
            cfg = TrainConfig(epochs=epochs, seed=0, **{**RECIPES["efficientat"], **recipe})
            training = Training("efficientat", network_config(body, 10), cfg, tuple(tr), tuple(va))
            model, h = TrainingStore().train(training, d, init_state=probe.state_dict(), progress=False)
            done[key] = dict(curve=[r["val_accuracy"] for r in h["history"]], best_epoch=h["best"]["epoch"],
                             best=h["best"]["val_accuracy"], probe=acc([probe]), pair=acc([probe, model]),
                             seconds=time.time() - t0, n_train=len(tr))
            args.out.write_text(json.dumps(done, indent=1))
            print(key, {k: v for k, v in done[key].items() if k != "curve"}, done[key]["curve"], flush=True)


def probes(args, data, net):
    fold, y = data.meta["fold"].values, data.logmels.labels.numpy()
    body = transfer_body(net)

    @torch.no_grad()
    def embed(seed=None):   # every clip's embedding; with a seed, after a random time roll and a gain of +-6 dB
        g, out = (torch.Generator().manual_seed(seed) if seed is not None else None), []
        for s in range(0, len(y), 64):
            x = batch_frames(data.logmels, np.arange(s, min(s + 64, len(y))), data.n_frames)
            if g is not None:
                shift = torch.randint(0, x.shape[-1], (len(x),), generator=g)
                cols = (torch.arange(x.shape[-1])[None] - shift[:, None]) % x.shape[-1]
                x = x.gather(2, cols[:, None, :].expand(-1, x.shape[1], -1))
                x = x + ((torch.rand(len(x), generator=g) * 2 - 1) * 6 * PRETRAINED_UNITS_PER_DB)[:, None, None]
            out.append(body.embed(x))
        return torch.cat(out).numpy()

    plain, passes = embed(), [embed(1), embed(2)]
    lin = lambda C: make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=5000))
    mlp = lambda alpha: make_pipeline(StandardScaler(), MLPClassifier((256,), alpha=alpha, max_iter=300,
                                                                      random_state=0))
    penultimate, everything = np.arange(512), np.arange(plain.shape[1])
    trials = {"linear, penultimate layer": (lin, [0.01, 0.03, 0.1, 0.3, 1.0], penultimate, 0),
              "linear, penultimate + pooled blocks 10, 13, 16": (lin, [0.01, 0.03, 0.1, 0.3, 1.0], everything, 0),
              "linear, penultimate, + 2 augmented passes": (lin, [0.01, 0.03, 0.1, 0.3, 1.0], penultimate, 2),
              "linear, pooled, + 2 augmented passes": (lin, [0.01, 0.03, 0.1, 0.3, 1.0], everything, 2),
              "MLP (256), penultimate layer": (mlp, [0.01, 0.1, 1.0], penultimate, 0)}
    for name, (make, grid, cols, aug) in trials.items():
        means = {}
        for setting in grid:
            accs = []
            for tr_folds, va_fold in ROTATIONS:
                tr, va = np.flatnonzero(np.isin(fold, tr_folds)), np.flatnonzero(fold == va_fold)
                X = np.concatenate([plain[tr][:, cols]] + [p[tr][:, cols] for p in passes[:aug]])
                accs.append(make(setting).fit(X, np.tile(y[tr], 1 + aug)).score(plain[va][:, cols], y[va]))
            means[setting] = float(np.mean(accs))
        best = max(means, key=means.get)
        print(f"{name}: {100 * means[best]:.1f}% (setting {best}; all {means})", flush=True)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=["finetune", "probe"])
    ap.add_argument("names", nargs="*", help=f"recipes to try (finetune): {', '.join(RECIPE_TRIALS)}")
    ap.add_argument("--dataset", default="../shared/data/urbansound8k-mini")
    ap.add_argument("--weights", default="../shared/models")
    ap.add_argument("--cache-dir", default="cache")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("transfer_trials.json"))
    args = ap.parse_args()
    data, net = setup(args)
    if args.what == "probe": probes(args, data, net)
    else: finetune(args, data, net, args.names or list(RECIPE_TRIALS))
