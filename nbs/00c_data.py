# %%
#| default_exp data

# %% [markdown]
# # The data layer: loading UrbanSound8K from anywhere, and its folds
#
# > A hub id, a local folder or the synthetic stand-in, loaded as one table; folds split as the authors require.

# %% [markdown]
# UrbanSound8K (Salamon, Jacoby and Bello, 2014) has 8,732 clips of at most 4 s from ten classes, in **ten folds**.
# Clips of one recording share a fold, so the folds are the only honest split: reshuffling puts near-duplicates on
# both sides and inflates accuracy by ten points or more. `load_urbansound` takes one string and returns one table
# from:
#
# 1. **a hub id** (default `danavery/urbansound8K`), with fallbacks in `$URBANSOUND_HUB_FALLBACKS`, tried in order;
# 2. **a local folder in the hub layout** (parquet shards);
# 3. **a folder in the official layout** (`metadata/UrbanSound8K.csv` + `audio/foldN/*.wav`), holding each file's
#    path, read when a clip is needed (the release's 6 GB of audio would not fit many machines' memory);
# 4. **`synthetic`**, the stand-in of notebook 00b.
#
# The hub gets a three-second connection test first: offline, `load_dataset` would spend about 24 s failing. A copy in
# the local Hugging Face cache is still used offline.

# %%
#| export
from __future__ import annotations

import os
import socket
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import pandas as pd
from tqdm import TqdmWarning

from urbansound_nb.audio import COLUMNS, URBANSOUND_CLASSES, AudioDecodeError, dataset_from_rows, synthetic_urbansound
from urbansound_nb.params import DATASET_ENV, HUB_ID, ParameterError, as_fraction, check_fold_roles, resolve_dataset

if TYPE_CHECKING:   # annotations only: `datasets` is slow to import, so a function imports it when it needs it
    import datasets

# `datasets` and `huggingface_hub` use tqdm.auto, which in a kernel without ipywidgets warns
# "IProgress not found" into every executed notebook and falls back to the text bar we want anyway
warnings.filterwarnings("ignore", message="IProgress not found", category=TqdmWarning)

class DatasetUnavailable(RuntimeError):
    "The dataset cannot be loaded from the given source; the message says what to do instead."

def unreachable(url: str, timeout: float = 3.0) -> str | None:
    "Why `url`'s host cannot be reached (None when it can), decided within `timeout` s."
    from urllib.parse import urlparse
    parts = urlparse(url)
    host, port, err = parts.hostname, parts.port or (443 if parts.scheme == "https" else 80), []
    def _probe():
        try: socket.create_connection((host, port), timeout=timeout).close()
        except OSError as e: err.append(f"cannot connect to {host}:{port} ({e})")
    t = threading.Thread(target=_probe, daemon=True)
    t.start()
    t.join(timeout + 0.5)  # DNS has no timeout of its own
    return err[0] if err else (f"no answer from {host}:{port} within {timeout:.0f} s" if t.is_alive() else None)

def hub_unreachable_reason(timeout: float = 3.0) -> str | None:
    "Why the Hugging Face hub cannot be reached (None when it can), decided within `timeout` s."
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() not in ("0", "false", "no", ""): return "HF_HUB_OFFLINE is set"
    return unreachable(os.environ.get("HF_ENDPOINT", "https://huggingface.co"), timeout)

_LOCAL_HELP = ("Point the study at a local copy instead: dataset='/path/to/UrbanSound8K' (the official download, "
               "with metadata/UrbanSound8K.csv and audio/foldN/) or a folder in the hub layout; on the command line "
               f"`urbansound-nb run -p dataset /path` or ${DATASET_ENV}=/path; "
               "or dataset='synthetic' for an offline demo.")

def _load_hub_cached(hub_id: str):
    "Load `hub_id` from the local Hugging Face cache only (offline mode)."
    import datasets
    import huggingface_hub.constants as hfc
    old = datasets.config.HF_HUB_OFFLINE, hfc.HF_HUB_OFFLINE
    datasets.config.HF_HUB_OFFLINE = hfc.HF_HUB_OFFLINE = True
    try: return datasets.load_dataset(hub_id, split="train")
    finally: datasets.config.HF_HUB_OFFLINE, hfc.HF_HUB_OFFLINE = old

def load_hub(hub_id: str = HUB_ID, fallbacks: Sequence[str] | None = None):
    "Load the train split of `hub_id` (then each fallback id), failing fast and clearly when offline."
    import datasets
    if fallbacks is None:
        fallbacks = [s.strip() for s in os.environ.get("URBANSOUND_HUB_FALLBACKS", "").split(",") if s.strip()]
    offline, failures = hub_unreachable_reason(), []
    for hid in [hub_id, *[f for f in fallbacks if f != hub_id]]:
        try: return _load_hub_cached(hid) if offline else datasets.load_dataset(hid, split="train")
        except Exception as e:
            failures.append(f"  {hid}: {type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}")
    why = f"the Hugging Face hub is unreachable ({offline}) and no local cache holds it" \
        if offline else "loading failed"
    raise DatasetUnavailable(f"Cannot load UrbanSound8K from the hub: {why}.\n" + "\n".join(failures) + "\n"
                             + _LOCAL_HELP)

# %% [markdown]
# Metadata is untrusted input too: before any clip is read, every row's fold must be 1-10, its classID 0-9 and its
# class name's, and its file name unique and plain (no folder or `..`, which could read outside the dataset). The
# first bad row is named with its value.

# %%
#| export
class MetadataError(DatasetUnavailable):
    "A metadata row the study cannot use: the message names the row, the column and the value."

def check_metadata(meta: pd.DataFrame, source) -> None:
    "Refuse the first row whose fold, classID, class or file name is out of place (`MetadataError`)."
    for i, r in enumerate(meta.to_dict("records")):
        row = f"{source}: row {i} ({r.get('slice_file_name')!r})"
        fold, cid, name = r.get("fold"), r.get("classID"), r.get("slice_file_name")
        if not (isinstance(fold, (int, np.integer)) and 1 <= fold <= 10):
            raise MetadataError(f"{row}: fold {fold!r} is not one of 1-10")
        if not (isinstance(cid, (int, np.integer)) and 0 <= cid <= 9):
            raise MetadataError(f"{row}: classID {cid!r} is not one of 0-9")
        if r.get("class") != URBANSOUND_CLASSES[cid]:
            raise MetadataError(f"{row}: class {r.get('class')!r} disagrees with classID {cid} "
                                f"({URBANSOUND_CLASSES[cid]!r})")
        if not isinstance(name, str) or Path(name).name != name or name in ("", ".", "..") or "\\" in name:
            raise MetadataError(f"{row}: slice_file_name {name!r} is not a plain file name inside the dataset")
    dup = meta["slice_file_name"].duplicated()
    if dup.any():
        i = int(np.flatnonzero(dup)[0])
        raise MetadataError(f"{source}: row {i} repeats slice_file_name {meta['slice_file_name'].iloc[i]!r}")

# %%
from fastcore.test import test_fail
_good = pd.DataFrame(dict(slice_file_name=["a.wav", "b.wav"], fold=[1, 10], classID=[0, 9],
                          **{"class": ["air_conditioner", "street_music"]}))
check_metadata(_good, "meta.csv")
test_fail(lambda: check_metadata(_good.assign(slice_file_name=["a.wav", "../x.wav"]), "meta.csv"),
          contains="'../x.wav' is not a plain file name")

# %%
#| export
def load_official(root) -> "datasets.Dataset":
    "Load a folder in the official layout: metadata/UrbanSound8K.csv and audio/foldN/<slice_file_name>."
    root = Path(root).expanduser().absolute()
    csv = root/"metadata"/"UrbanSound8K.csv"
    meta = pd.read_csv(csv)
    missing = [c for c in COLUMNS if c != "audio" and c not in meta.columns]
    if missing:
        raise DatasetUnavailable(f"{csv}: missing column(s) {missing}; "
                                 f"expected the official header {list(COLUMNS[1:])}")
    check_metadata(meta, csv)     # before any path is built from a row
    rows, absent = [], []
    for r in meta.to_dict("records"):
        wav = root/"audio"/f"fold{int(r['fold'])}"/r["slice_file_name"]
        if not wav.is_file():
            absent.append(str(wav.relative_to(root)))
            continue
        # the path only: `audio_bytes` reads each file when a clip is needed
        rows.append(dict(r, audio=dict(bytes=None, path=str(wav))))
    if absent:
        raise DatasetUnavailable(f"{root}: {len(absent)} clip(s) listed in the metadata are missing, e.g. {absent[:3]}")
    if not rows: raise DatasetUnavailable(f"{csv} lists no clips")
    return dataset_from_rows(rows, description=f"UrbanSound8K, official layout at {root}")

def load_hub_layout(folder) -> "datasets.Dataset":
    "Load a local folder in the hub layout (parquet shards with a `train` split)."
    import datasets
    try: dd = datasets.load_dataset(str(folder))
    except Exception as e:
        raise DatasetUnavailable(f"{folder}: not a dataset folder datasets can read "
                                 f"({type(e).__name__}: {e})") from None
    return dd["train"] if "train" in dd else datasets.concatenate_datasets(list(dd.values()))

def check_columns(ds, source: str):
    "Keep UrbanSound8K's columns, in order, with raw (undecoded) audio; name any that are missing."
    from datasets import Audio
    missing = [c for c in COLUMNS if c not in ds.column_names]
    if missing:
        raise DatasetUnavailable(f"{source}: missing column(s) {missing}; found {ds.column_names}, "
                                 f"expected {list(COLUMNS)}")
    ds = ds.select_columns(list(COLUMNS))
    if not (isinstance(ds.features["audio"], Audio) and not ds.features["audio"].decode):
        ds = ds.cast_column("audio", Audio(decode=False))  # bytes stay bytes; soundfile decodes them
    if len(ds) == 0: raise DatasetUnavailable(f"{source}: the dataset has no rows")
    check_metadata(metadata_frame(ds), source)
    return ds

# %% [markdown]
# `max_items` keeps a stratified subset, so a quick run still sees every class in every fold.

# %%
#| export
def metadata_frame(ds) -> pd.DataFrame:
    "Every column but the audio, as a DataFrame (cheap: the audio bytes are not read)."
    return ds.select_columns([c for c in COLUMNS if c != "audio"]).to_pandas()

def stratified_subset(ds, max_items: int | None, seed: int = 0):
    "At most `max_items` rows, sampled evenly across (fold, class), reproducible from `seed`."
    if max_items is None or max_items >= len(ds): return ds
    meta = metadata_frame(ds).reset_index()
    meta["key"] = np.random.default_rng(seed).random(len(meta))
    meta = meta.sort_values("key")
    meta["rank"] = meta.groupby(["fold", "classID"]).cumcount()
    groups = meta.drop_duplicates(["fold", "classID"])[["fold", "classID"]]
    groups["group_order"] = groups.groupby("classID").cumcount()
    meta = meta.merge(groups, on=["fold", "classID"])
    # round-robin: one clip of every class first, then of every (fold, class) group, then seconds, ...
    keep = meta.sort_values(["rank", "group_order", "key"]).head(max_items)["index"]
    return ds.select(sorted(keep.tolist()))

def load_urbansound(source: str | None = None, max_items: int | None = None, seed: int = 0):
    "UrbanSound8K as a `datasets.Dataset` with columns `COLUMNS`, from a hub id, a folder or 'synthetic'."
    source = resolve_dataset(source)
    if source == "synthetic": ds = synthetic_urbansound(seed=seed)
    elif Path(source).expanduser().exists():
        root = Path(source).expanduser()
        if not root.is_dir():
            raise DatasetUnavailable(f"{root}: expected a folder (hub or official layout), got a file")
        ds = load_official(root) if (root/"metadata"/"UrbanSound8K.csv").is_file() else load_hub_layout(root)
    elif source.startswith((".", "/", "~")) or os.sep in source.strip("/").replace("/", "", 1):
        raise DatasetUnavailable(f"{source}: no such folder. " + _LOCAL_HELP)
    else: ds = load_hub(source)
    return stratified_subset(check_columns(ds, source), max_items, seed)

# %%
from fastcore.test import test_eq, test_fail
synth = synthetic_urbansound(clips_per_class_fold=1, folds=[1, 2])
test_fail(lambda: load_urbansound("/no/such/folder"), contains="no such folder")
test_eq(metadata_frame(stratified_subset(synth, 10))["classID"].nunique(), 10)

# %% [markdown]
# ## Folds and labels
#
# Labels come from the data (`classID` -> `class`); a split needs its folds present, disjoint and none empty. Unset
# roles are filled from the folds present: test on the last, validate on the one before, train on the rest.

# %%
#| export
def class_names(ds) -> list[str]:
    "Class names indexed by classID, built from the data (UrbanSound8K's names fill any id absent here)."
    meta = metadata_frame(ds)[["classID", "class"]].drop_duplicates()
    clash = meta[meta.duplicated("classID", keep=False)]
    if len(clash): raise DatasetUnavailable(f"classID maps to several class names: {clash.values.tolist()}")
    names = dict(zip(meta["classID"], meta["class"]))
    fill = lambda i: URBANSOUND_CLASSES[i] if i < len(URBANSOUND_CLASSES) else f"class_{i}"
    return [names.get(i, fill(i)) for i in range(max(names) + 1)]

@dataclass
class FoldSplit:
    "Train/validation/test subsets of one dataset, chosen by fold."
    train: Any
    val: Any
    test: Any
    train_folds: list
    val_fold: int
    test_fold: int
    classes: list
    def items(self): return dict(train=self.train, val=self.val, test=self.test).items()

def default_folds(present: Sequence[int], train_folds=None, val_fold=None, test_fold=None):
    "Fill unset fold roles from the folds present: test the last, validate the one before, train on the rest."
    present = sorted(set(int(f) for f in present))
    if test_fold is None: test_fold = next(f for f in reversed(present) if f != val_fold) if present else None
    if val_fold is None: val_fold = next((f for f in reversed(present) if f != test_fold), None)
    if train_folds is None: train_folds = [f for f in present if f not in (val_fold, test_fold)]
    return list(train_folds), val_fold, test_fold

def fold_split(ds, train_folds=None, val_fold=None, test_fold=None) -> FoldSplit:
    "Split `ds` by fold under the UrbanSound8K protocol (folds disjoint, present, non-empty)."
    folds = np.asarray(ds["fold"])
    present = sorted(set(folds.tolist()))
    train_folds, val_fold, test_fold = default_folds(present, train_folds, val_fold, test_fold)
    check_fold_roles(train_folds, val_fold, test_fold)
    absent = [f for f in [*train_folds, val_fold, test_fold] if f not in present]
    hint = f"this dataset has folds {present}; choose e.g. -p train_folds \"[1]\" -p val_fold 2 -p test_fold 3"
    if absent: raise ParameterError(f"fold(s) {absent} not in this dataset: {hint}")
    if val_fold is None or not train_folds: raise ParameterError(f"no fold is left for training: {hint}")
    idx = lambda fs: np.flatnonzero(np.isin(folds, fs)).tolist()
    return FoldSplit(ds.select(idx(train_folds)), ds.select(idx([val_fold])), ds.select(idx([test_fold])),
                     train_folds, val_fold, test_fold, class_names(ds))

def split_class_counts(split: FoldSplit) -> pd.DataFrame:
    "Clips per class in each split, with totals."
    counts = {name: pd.Series(sub["classID"]).value_counts() for name, sub in split.items()}
    df = pd.DataFrame(counts).reindex(range(len(split.classes))).fillna(0).astype(int)
    df.index = split.classes
    df.loc["total"] = df.sum()
    return df

# %%
test_fail(lambda: fold_split(synth), contains="no fold is left for training")   # two folds: nothing to train on
s = fold_split(synthetic_urbansound(1, folds=[1, 2, 3]))
test_eq((s.train_folds, s.val_fold, s.test_fold), ([1], 2, 3))
split_class_counts(s)

# %% [markdown]
# A learning curve's smaller training sets take or leave *whole recordings* (`fsID`), the same share of each class's,
# since clips of one recording are near-duplicates.

# %%
#| export
def recording_subset(meta: pd.DataFrame, idx, fraction: float, seed: int = 0, name: str = "fraction") -> np.ndarray:
    "The rows `idx` of `meta` of `fraction` of each class's recordings (at least one), chosen reproducibly from `seed`."
    fraction, idx = as_fraction(name, fraction), np.asarray(idx)
    if fraction == 1: return idx
    rows, rng, keep = meta.iloc[idx], np.random.default_rng(seed), []
    for cls, group in rows.groupby("classID"):
        recordings = rng.permutation(np.array(sorted(group["fsID"].unique())))
        keep += [(cls, r) for r in recordings[:max(1, round(len(recordings) * fraction))]]
    chosen = pd.MultiIndex.from_frame(rows[["classID", "fsID"]]).isin(keep)
    return idx[chosen]

# %%
_m = pd.DataFrame(dict(classID=[0] * 8 + [1] * 4, fsID=[1, 1, 2, 2, 3, 3, 4, 4, 9, 9, 8, 8]))
half = recording_subset(_m, np.arange(12), 0.5, seed=1)
test_eq((len(half), sorted(set(_m.classID[half]))), (6, [0, 1]))      # whole recordings of every class
_m.iloc[half]

# %% [markdown]
# ## Clips that cannot be decoded
#
# One corrupt file should not end a study of hours: a clip that cannot be decoded is left out, and said so, printed
# with its fold and reason, in the results (`clips_skipped`) and in the site's header. `strict_audio=True` makes the
# first one an error.

# %%
#| export
def skipped_clip(row: dict, reason: str) -> dict:
    "The record of a clip left out: its file name, fold, class and why."
    return {"slice_file_name": row["slice_file_name"], "fold": int(row["fold"]), "class": row["class"],
            "reason": reason}

def report_skipped(skipped: list[dict], total: int, strict: bool = False, shown: int = 20) -> None:
    "Print the clips left out of `total` (the first `shown`); `strict`: refuse them instead, naming the first."
    if not skipped: return
    if strict:
        raise AudioDecodeError(f"{len(skipped)} of {total:,} clips cannot be decoded and strict_audio is set; "
                               f"the first: {skipped[0]['reason']}")
    print(f"left out {len(skipped)} of {total:,} clips that cannot be read or decoded "
          "(strict_audio=True would stop the run):")
    for s in skipped[:shown]: print(f"  fold {s['fold']}, {s['class']}: {s['reason']}")
    if len(skipped) > shown: print(f"  ... and {len(skipped) - shown} more: the results JSON lists all")

# %%
_bad = [skipped_clip(dict(slice_file_name="x.wav", fold=3, **{"class": "siren"}), "x.wav: the file holds no samples")]
report_skipped(_bad, 100)
test_fail(lambda: report_skipped(_bad, 100, strict=True), contains="1 of 100 clips cannot be decoded")
