"""The modules that carry the protocol and the numbers, unit by unit: the parameters and the fold roles (params), the
metadata and the folds (data), the rotations and the rule (selection), the metrics, the windows and the timeline,
and the decoding of audio. Fast and exact, so that a plausible slip in any of them fails a test (`make mutation`)."""
import io
import math

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from urbansound_nb import audio, data, metrics, params, selection, windows
from urbansound_nb.params import ParameterError

# ## params: values checked one by one, and the fold roles

@pytest.mark.parametrize("value, lo, hi, out", [(3, None, None, 3), ("7", 1, 10, 7), (" 4 ", None, None, 4),
                                                (np.int64(2), 1, 2, 2), (5.0, None, None, 5), (1, 1, 1, 1)])
def test_as_int_accepts(value, lo, hi, out):
    assert params.as_int("n", value, lo, hi) == out and isinstance(params.as_int("n", value, lo, hi), int)


@pytest.mark.parametrize("value, lo, hi, said", [
    (True, None, None, "'n': expected an integer, got True"), (2.5, None, None, "expected an integer"),
    ("two", None, None, "expected an integer, got 'two'"), ([1], None, None, "expected an integer"),
    (0, 1, None, "'n': must be at least 1, got 0"), (11, None, 10, "'n': must be at most 10, got 11"),
    (11, 1, 10, "'n': 11 is outside 1..10"), (0, 1, 10, "0 is outside 1..10")])
def test_as_int_refuses_naming_the_parameter(value, lo, hi, said):
    with pytest.raises(ParameterError) as e: params.as_int("n", value, lo, hi)
    assert said in str(e.value)


def test_lists_of_folds_names_fractions_and_booleans():
    assert params.as_folds("f", "3, 1") == [1, 3] and params.as_folds("f", "[2]") == [2]
    assert params.as_folds("f", 10) == [10] and params.as_folds("f", (4, 2)) == [2, 4]
    for bad, said in (("[]", "needs at least one fold"), ("1,1", "fold listed twice"), ("0", "outside 1..10"),
                      ("11", "outside 1..10")):
        with pytest.raises(ParameterError, match=said): params.as_folds("f", bad)
    assert params.as_fraction("x", 1) == 1.0 and params.as_fraction("x", " 0.25") == 0.25
    for bad in (0, -0.1, 1.01, "half", None, True):
        with pytest.raises(ParameterError, match="'x': expected a number in \\(0, 1\\]"): params.as_fraction("x", bad)
    assert params.as_names("m", "[a, 'b']", "abc") == ["a", "b"] and params.as_names("m", "c", "abc") == ["c"]
    with pytest.raises(ParameterError, match=r"'m': unknown \['z'\]; choose from \['a', 'b'\]"):
        params.as_names("m", ["a", "z"], "ab")
    for empty in (None, "", []):
        with pytest.raises(ParameterError, match="expected one or more of"): params.as_names("m", empty, "ab")
    assert params.as_name("m", "b", "ab") == "b"
    with pytest.raises(ParameterError, match=r"expected one of \['a', 'b'\], got \['a', 'b'\]"):
        params.as_name("m", "a,b", "ab")
    trues, falses = (True, "yes", "TRUE", " 1", 1, np.True_), (False, "no", "False", "0", 0)
    assert all(params.as_bool("b", v) is True for v in trues) and all(params.as_bool("b", v) is False for v in falses)
    for bad in ("maybe", 2, None, 0.0):
        with pytest.raises(ParameterError, match="'b': expected true or false"): params.as_bool("b", bad)


def test_fold_roles_never_overlap():
    params.check_fold_roles([1, 2], 3, 4)
    params.check_fold_roles(None, None, None)
    params.check_fold_roles([1], None, 2)
    with pytest.raises(ParameterError, match="both 3: model selection must not see the test fold"):
        params.check_fold_roles([1], 3, 3)
    with pytest.raises(ParameterError, match="'val_fold'=2 is also in 'train_folds'"):
        params.check_fold_roles([1, 2], 2, 3)
    with pytest.raises(ParameterError, match="'test_fold'=1 is also in 'train_folds'"):
        params.check_fold_roles([1, 2], 3, 1)


def test_datasets_and_study_parameters(tmp_path, monkeypatch):
    monkeypatch.delenv(params.DATASET_ENV, raising=False)
    assert params.resolve_dataset() == params.HUB_ID and params.resolve_dataset("a/b") == "a/b"
    assert params.resolve_dataset(str(tmp_path)) == str(tmp_path)
    assert params.resolve_dataset("synthetic") == "synthetic"
    monkeypatch.setenv(params.DATASET_ENV, "x/y")
    assert params.resolve_dataset(None) == "x/y" and params.resolve_dataset("") == "x/y"
    with pytest.raises(ParameterError, match="'plain' is neither a folder nor a hub id"):
        params.resolve_dataset("plain")
    with pytest.raises(ParameterError, match="expected a hub id"): params.resolve_dataset(3)
    p = params.validate_params(dataset="synthetic", n_mels=32, n_mfcc=32, clip_seconds="2.5", models="[a]")
    assert (p.n_mfcc, p.clip_seconds, p.models, p.split) == (32, 2.5, ["a"], dict(train_folds=None, val_fold=None,
                                                                                   test_fold=None))
    for kw, said in ((dict(n_mfcc=33, n_mels=32), "'n_mfcc': 33 is outside 1..32"), (dict(clip_seconds=0.05),
                     "outside 0.1..30"), (dict(clip_seconds=31), "outside 0.1..30"), (dict(hop_length=1025),
                     "'hop_length'"), (dict(cell_threads=0), "'cell_threads'"), (dict(selection_folds=10), "1..9"),
                     (dict(val_fold=3, test_fold=3), "must not see the test fold")):
        with pytest.raises(ParameterError, match=said): params.validate_params(dataset="synthetic", **kw)
    assert params.study_params(dict(seed="4", other=1, dataset="synthetic")).seed == 4
    assert params.validate_params(dataset="synthetic", models=None).models is None


# every bounded shared parameter: (name, lowest, highest) accepted, beside the defaults (n_fft 1024, n_mels 64)
BOUNDS = [("val_fold", 1, 10), ("test_fold", 1, 10), ("sample_rate", 4000, 192000), ("n_fft", 16, 65536),
          ("n_mels", 1, 513), ("hop_length", 1, 1024), ("seed", 0, None), ("max_items", 1, None),
          ("epochs", 1, 10000), ("resnet_seeds", 1, 100), ("resnet_epochs", 1, 10000), ("patience", 1, 10000),
          ("finetune_epochs", 1, 10000), ("finetune_seeds", 1, 100), ("n_mfcc", 1, 64), ("batch_size", 1, None),
          ("selection_folds", 1, 9), ("cell_threads", 1, None)]


@pytest.mark.parametrize("name, lo, hi", BOUNDS)
def test_every_shared_parameter_keeps_its_bounds_and_names_itself(name, lo, hi):
    fixed = dict(n_fft=dict(hop_length=8, n_mels=8, n_mfcc=8), n_mels=dict(n_mfcc=1)).get(name, {})
    make = lambda v: params.StudyParams(dataset="synthetic", **{**fixed, name: v})
    for ok in (lo, hi):
        if ok is not None: assert getattr(make(str(ok)), name) == ok          # strings become numbers
    for bad in (lo - 1, None if hi is None else hi + 1):
        if bad is None: continue
        with pytest.raises(ParameterError, match=f"parameter '{name}': "): make(bad)


def test_the_other_shared_parameters_are_read_and_checked():
    p = params.StudyParams(dataset="synthetic", deltas="no", multicrop="yes", strict_audio="1", train_fraction="0.5",
                           finetune_init="random", models="[logreg, knn]", clip_seconds="2", train_folds="2,1",
                           run_dir="r", cache_dir="c")
    assert (p.deltas, p.multicrop, p.strict_audio, p.train_fraction) == (False, True, True, 0.5)
    assert (p.finetune_init, p.models, p.clip_seconds, p.train_folds) == ("random", ["logreg", "knn"], 2.0, [1, 2])
    assert (p.run_dir, p.cache_dir) == (params.Path("r"), params.Path("c"))
    assert params.StudyParams(dataset="synthetic", models="null").models is None
    for name, bad in (("deltas", "maybe"), ("multicrop", 2), ("strict_audio", "x"), ("train_fraction", 2),
                      ("finetune_init", "zeros"), ("clip_seconds", "long"), ("train_folds", "0")):
        with pytest.raises(ParameterError, match=f"'{name}'"): params.StudyParams(dataset="synthetic", **{name: bad})
    defaults = params.StudyParams(dataset="synthetic")
    assert (defaults.n_fft, defaults.n_mels, defaults.hop_length, defaults.sample_rate) == (1024, 64, 512, 22050)


def test_the_edges_of_clip_seconds_lists_and_unknown_names():
    for ok in (0.1, 1.0, 30):
        assert params.StudyParams(dataset="synthetic", clip_seconds=ok).clip_seconds == ok
    with pytest.raises(ParameterError, match="parameter 'clip_seconds': expected seconds, got 'long'"):
        params.StudyParams(dataset="synthetic", clip_seconds="long")
    with pytest.raises(ParameterError, match="parameter 'train_folds': 0 is outside 1..10"): params.as_folds(
        "train_folds", "[1, 0]")
    with pytest.raises(ParameterError, match="'n': expected an integer, got None"): params.as_int("n", None)
    with pytest.raises(ParameterError, match=r"unknown parameter\(s\) \['lr'\]; known: \['dataset', "):
        params.validate_params(dataset="synthetic", lr=0.1)


# ## data: metadata rows, folds and subsets

def _meta(**changes):
    rows = [dict(slice_file_name=f"{i}-{c}-0-0.wav", fold=f, classID=c, **{"class": audio.URBANSOUND_CLASSES[c]})
            for i, (f, c) in enumerate([(1, 0), (2, 9), (10, 3)])]
    rows[1].update(changes)
    return pd.DataFrame(rows)


def test_metadata_rows_are_checked_and_named():
    data.check_metadata(_meta(), "m.csv")
    for change, said in ((dict(fold=11), "row 1 ('1-9-0-0.wav'): fold 11 is not one of 1-10"),
                         (dict(fold=0), "fold 0 is not one of 1-10"),
                         (dict(classID=10), "classID 10 is not one of 0-9"), (dict(classID=-1), "classID -1"),
                         (dict(**{"class": "dog_bark"}), "class 'dog_bark' disagrees with classID 9 ('street_music')"),
                         (dict(slice_file_name="../x.wav"), "is not a plain file name"),
                         (dict(slice_file_name="a\\b.wav"), "is not a plain file name"),
                         (dict(slice_file_name=".."), "is not a plain file name"),
                         (dict(slice_file_name="0-0-0-0.wav"), "row 1 repeats slice_file_name '0-0-0-0.wav'")):
        with pytest.raises(data.MetadataError) as e: data.check_metadata(_meta(**change), "m.csv")
        assert said in str(e.value) and "m.csv" in str(e.value), (change, str(e.value))


def test_default_folds_and_the_split():
    assert data.default_folds([1, 2, 3]) == ([1], 2, 3)
    assert data.default_folds([3, 1, 2, 2], test_fold=1) == ([2], 3, 1)
    assert data.default_folds(range(1, 11), val_fold=5) == ([1, 2, 3, 4, 6, 7, 8, 9], 5, 10)
    assert data.default_folds([1, 2, 3, 4], [1], 2, 3) == ([1], 2, 3)
    ds = audio.synthetic_urbansound(1, folds=[1, 2, 3, 4])
    s = data.fold_split(ds)
    assert (s.train_folds, s.val_fold, s.test_fold) == ([1, 2], 3, 4) and len(s.train) == 20 and len(s.test) == 10
    assert set(s.val["fold"]) == {3} and s.classes == list(audio.URBANSOUND_CLASSES)
    with pytest.raises(ParameterError, match=r"fold\(s\) \[7\] not in this dataset"): data.fold_split(ds, test_fold=7)
    with pytest.raises(ParameterError, match="no fold is left for training"):
        data.fold_split(audio.synthetic_urbansound(1, folds=[1, 2]))
    counts = data.split_class_counts(s)
    assert counts.loc["total", "train"] == 20 and counts.loc["dog_bark"].tolist() == [2, 1, 1]


def test_recording_subsets_and_stratified_subsets():
    meta = pd.DataFrame(dict(classID=[0] * 6 + [1] * 4, fsID=[1, 1, 2, 3, 4, 5, 7, 8, 8, 9]))
    idx = np.arange(10)
    assert data.recording_subset(meta, idx, 1.0).tolist() == list(range(10))
    half = data.recording_subset(meta, idx, 0.5, seed=3)
    kept = meta.iloc[half].groupby("classID")["fsID"].nunique()
    assert kept.tolist() == [2, 2] and set(meta.iloc[half]["fsID"]) <= set(meta["fsID"])       # whole recordings
    assert all((meta["fsID"] == r).sum() == (meta.iloc[half]["fsID"] == r).sum() for r in meta.iloc[half]["fsID"])
    assert data.recording_subset(meta, idx, 0.5, seed=3).tolist() == half.tolist()           # reproducible
    assert len(meta.iloc[data.recording_subset(meta, idx, 0.01)].groupby("classID")) == 2     # one of each, at least
    ds = audio.synthetic_urbansound(2, folds=[1, 2])
    sub = data.stratified_subset(ds, 20, seed=1)
    assert len(sub) == 20 and pd.Series(sub["classID"]).value_counts().min() == 2
    assert data.stratified_subset(ds, None) is ds and len(data.stratified_subset(ds, 1000)) == len(ds)
    assert data.class_names(ds) == list(audio.URBANSOUND_CLASSES)


def test_skipped_clips_are_reported_or_refused(capsys):
    rows = [data.skipped_clip({"slice_file_name": f"{i}.wav", "fold": 1, "class": "siren"}, f"why {i}")
            for i in range(3)]
    assert rows[0] == {"slice_file_name": "0.wav", "fold": 1, "class": "siren", "reason": "why 0"}
    data.report_skipped(rows, 100, shown=2)
    out = capsys.readouterr().out
    assert "left out 3 of 100 clips" in out and "why 1" in out and "why 2" not in out and "and 1 more" in out
    data.report_skipped([], 100)
    assert capsys.readouterr().out == ""
    with pytest.raises(audio.AudioDecodeError, match="3 of 100 clips cannot be decoded and strict_audio is set; "
                                                      "the first: why 0"):
        data.report_skipped(rows, 100, strict=True)


def test_columns_class_names_and_subsets_exactly():
    ds = audio.synthetic_urbansound(clips_per_class_fold=2, folds=[1, 2])
    with pytest.raises(data.DatasetUnavailable) as e: data.check_columns(ds.remove_columns(["fsID"]), "src")
    assert str(e.value).startswith("src: missing column(s) ['fsID']; found [") and str(e.value).endswith(
        f"expected {list(data.COLUMNS)}")
    with pytest.raises(data.DatasetUnavailable, match="^src: the dataset has no rows$"):
        data.check_columns(ds.select([]), "src")
    one = data.check_columns(ds.select([0]), "src")
    assert len(one) == 1 and list(data.metadata_frame(one).columns) == [c for c in data.COLUMNS if c != "audio"]
    bad = ds.to_list()[:2]
    bad[1]["fold"] = 12
    with pytest.raises(data.MetadataError, match="^src: row 1"): data.check_columns(audio.dataset_from_rows(bad), "src")
    relabel = lambda pairs: audio.dataset_from_rows([dict(r, classID=c, **{"class": n})
                                                     for r, (c, n) in zip(ds.to_list(), pairs)])
    names = data.class_names(relabel([(0, "a"), (12, "b"), (0, "a")]))
    assert names[:2] == ["a", audio.URBANSOUND_CLASSES[1]] and names[9] == audio.URBANSOUND_CLASSES[9]
    assert names[10:] == ["class_10", "class_11", "b"]
    clash = r"classID maps to several class names: \[\[0, 'a'\], \[0, 'c'\]\]"
    with pytest.raises(data.DatasetUnavailable, match=clash): data.class_names(relabel([(0, "a"), (0, "c")]))
    assert data.stratified_subset(ds, 40) is ds and len(data.stratified_subset(ds, 39)) == 39
    picked = data.metadata_frame(data.stratified_subset(ds, 10))
    assert sorted(picked["classID"]) == list(range(10))                              # every class once first
    twenty = data.metadata_frame(data.stratified_subset(ds, 20))
    assert (twenty.groupby(["fold", "classID"]).size() == 1).all() and len(twenty) == 20   # then every group
    assert data.stratified_subset(ds, 10)["slice_file_name"] == data.stratified_subset(ds, 10, 0)["slice_file_name"]
    assert data.stratified_subset(ds, 10)["slice_file_name"] != data.stratified_subset(ds, 10, 1)["slice_file_name"]
    m = pd.DataFrame(dict(classID=[0, 0, 1, 1], fsID=[1, 2, 3, 4]))
    assert list(data.recording_subset(m, range(4), 0.5)) == list(data.recording_subset(m, range(4), 0.5, seed=0))
    with pytest.raises(ParameterError, match="parameter 'fraction'"): data.recording_subset(m, range(4), 2)


# ## selection: the rotations, the estimate and the rule

def test_validation_rotations():
    assert selection.validation_rotations([1], 2) == [dict(train_folds=[1], val_fold=2),
                                                      dict(train_folds=[2], val_fold=1)]
    assert selection.validation_rotations([1, 2, 3], 4, 3) == [dict(train_folds=[1, 2, 3], val_fold=4),
                                                               dict(train_folds=[1, 2, 4], val_fold=3),
                                                               dict(train_folds=[1, 3, 4], val_fold=2)]
    assert len(selection.validation_rotations([1, 2], 3, 9)) == 3
    assert selection.validation_rotations([2], 1, 1) == [dict(train_folds=[2], val_fold=1)]
    with pytest.raises(ValueError, match="at least 1, got 0"): selection.validation_rotations([1], 2, 0)


def test_rotated_estimate():
    e = selection.rotated_estimate([0.6, 0.8, 0.7], [10, 20, 30])
    assert e["val_mean"] == pytest.approx(0.7) and e["val_sd"] == pytest.approx(0.1) and e["n_val_total"] == 60
    assert e["val_rotations"] == [0.6, 0.8, 0.7]
    assert selection.rotated_estimate([0.5], [7]) == dict(val_mean=0.5, val_sd=None, val_rotations=[0.5],
                                                         n_val_total=7)


def test_choose_setting_takes_the_best_mean_not_the_first_rotation():
    class Const:
        def __init__(self, k): self.k = k
        def fit(self, X, y): return self
        def predict(self, X): return np.full(len(X), self.k)
    y = np.array([0, 0, 1, 1, 1, 1])
    splits = [(np.arange(6), np.array([0, 1, 2])), (np.arange(6), np.array([2, 3, 4, 5]))]
    setting, table, models = selection.choose_setting(Const, [dict(k=0), dict(k=1)], np.zeros((6, 1)), y, splits)
    assert setting == dict(k=1) and [m.k for m in models] == [1, 1]        # 1/3 and 4/4 beat 2/3 and 0/4
    assert table[0] == dict(k=0, val_accuracy=pytest.approx(2 / 3), val_mean=pytest.approx(1 / 3))
    assert table[1]["val_mean"] == pytest.approx((1 / 3 + 1) / 2)


def _candidates(val_mean, parameters=(1e6, 1e6, 2e6, None), ensemble=(False, False, True, False), n=387):
    return pd.DataFrame(dict(val_mean=val_mean, n_val_total=[n] * 4, parameters=list(parameters),
                             ensemble=list(ensemble)), index=["finetune", "probe", "pair", "logreg"])


def test_the_rule():
    chosen, table, why = selection.choose_model(_candidates([0.695, 0.674, 0.685, 0.50]))
    margin = math.sqrt(0.695 * 0.305 / 387)
    assert chosen == "pair" and table["tied"].tolist() == [True, True, True, False]
    assert table.loc["probe", "behind_best"] == pytest.approx(0.021) and f"{margin:.1%}" in why
    assert "The best mean is finetune's, 69.5% over 387 validation clips" in why and "Chosen: pair" in why
    assert "Tied with it: probe, pair." in why and "because it is an ensemble" in why
    assert selection.choose_model(_candidates([0.695, 0.674, 0.685, 0.50]).drop(index="pair"))[0] == "finetune"
    lone = selection.choose_model(_candidates([0.9, 0.5, 0.5, 0.6], n=10_000))
    assert lone[0] == "finetune" and "no other candidate is tied" in lone[2] and "Tied with it: none" in lone[2]
    simplest = selection.choose_model(_candidates([0.9, 0.5, 0.5, 0.895], n=1000))
    assert simplest[0] == "logreg" and "fewest parameters" in simplest[2]        # None counts as none
    same_size = selection.choose_model(_candidates([0.80, 0.81, 0.5, 0.5], parameters=(1, 1, 1, 1),
                                                   ensemble=(False,) * 4, n=100))
    assert same_size[0] == "probe"                                                # equal sizes: the higher mean
    two_ensembles = selection.choose_model(_candidates([0.80, 0.70, 0.79, 0.5], ensemble=(True, False, True, False),
                                                       n=1000))
    assert two_ensembles[0] == "finetune"                                         # of tied ensembles, the best
    edge = math.sqrt(0.8 * 0.2 / 100)
    tied = selection.choose_model(_candidates([0.8, 0.8 - edge, 0.5, 0.5], parameters=(2, 1, 1, 1),
                                              ensemble=(False,) * 4, n=100))
    assert tied[0] == "probe" and tied[1].loc["probe", "tied"]                    # exactly one standard error: tied


def test_the_defaults_and_edges_of_the_rotations_and_the_rule():
    assert len(selection.validation_rotations([1, 2, 3], 4)) == 2                # two rotations by default
    assert selection.rotated_estimate([0.5, 0.7], [1, 1])["val_sd"] == pytest.approx(0.1414, abs=1e-4)
    from sklearn.linear_model import LogisticRegression
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(60, 3)), np.arange(60) % 2
    X[:, 0] += 3 * y
    splits = [(np.arange(40), np.arange(40, 60)), (np.arange(20, 60), np.arange(20))]
    setting, table, fitted = selection.choose_setting(lambda C: LogisticRegression(C=C), [dict(C=1e-5), dict(C=1.0)],
                                                      X, y, splits)
    assert setting == dict(C=1.0) and table[1]["val_mean"] > 0.9 and fitted[1].coef_[0, 0] > 0.5
    lone = selection.choose_model(_candidates([0.9, 0.5, 0.5, 0.6], n=10_000))[2]
    assert lone.endswith("Chosen: finetune, because no other candidate is tied.")
    simplest = selection.choose_model(_candidates([0.9, 0.5, 0.5, 0.895], n=1000))[2]
    assert simplest.endswith("Chosen: logreg, because it has the fewest parameters of the tied candidates.")


# ## metrics

def test_evaluate_and_result_entries():
    e = metrics.evaluate([0, 0, 1, 1, 2], [0, 1, 1, 1, 0], ["a", "b", "c", "d"])
    assert e["accuracy"] == pytest.approx(0.6) and e["per_class_accuracy"]["a"] == 0.5
    assert e["per_class_accuracy"]["b"] == 1.0 and e["per_class_accuracy"]["c"] == 0.0
    assert math.isnan(e["per_class_accuracy"]["d"])
    assert e["macro_f1"] == pytest.approx(np.mean([0.5, 0.8, 0.0, 0.0]))      # a class with no clip scores 0
    r = metrics.result_entry([0, 1], [0, 0], [0, 1, 1], [0, 1, 1], ["a", "b"], 12, 3.456, note="x")
    assert (r["val_accuracy"], r["test_accuracy"], r["macro_f1"], r["n_train"], r["n_val"], r["n_test"]) == \
        (0.5, 1.0, 1.0, 12, 2, 3)
    assert r["seconds"] == 3.46 and r["note"] == "x" and r["val_macro_f1"] == pytest.approx(1 / 3)


def _runs():
    return pd.DataFrame(dict(condition=["none"] * 3 + ["x"] * 3, seed=[0, 1, 2] * 2,
                             val_accuracy=[0.5, 0.6, 0.7, 0.6, 0.65, 0.9], test_accuracy=[0.4, 0.5, 0.6, 0.45, 0.7,
                                                                                           0.62]))


def test_summarise_pairs_on_seeds():
    s = metrics.summarise(_runs())
    x = s.loc["x"]
    assert x["seeds"] == 3 and x["test_mean"] == pytest.approx(0.59) and x["val_mean"] == pytest.approx(0.7166667)
    assert x["test_diff_mean"] == pytest.approx(0.09) and x["val_diff_mean"] == pytest.approx(0.1166667)
    assert x["test_diff_std"] == pytest.approx(np.std([0.05, 0.2, 0.02], ddof=1))
    assert (x["seeds_better"], x["seeds_better_val"]) == (3, 3)
    from scipy import stats
    assert x["paired_t_p"] == pytest.approx(stats.ttest_rel([0.45, 0.7, 0.62], [0.4, 0.5, 0.6]).pvalue)
    assert math.isnan(s.loc["none", "paired_t_p"]) and s.loc["none", "test_diff_mean"] == 0
    assert s.loc["none", "test_std"] == pytest.approx(0.1)
    one = metrics.summarise(_runs()[_runs()["seed"] == 0])
    assert math.isnan(one.loc["x", "paired_t_p"])                       # one pair: no test


def test_summarise_keeps_the_order_and_counts_only_real_gains():
    runs = pd.DataFrame(dict(model=["b"] * 3 + ["a"] * 3, seed=[0, 1, 2] * 2, val_accuracy=[.5, .6, .7, .5, .8, .7],
                             test_accuracy=[.4, .5, .6, .4, .7, .9]))
    s = metrics.summarise(runs, baseline="a", by="model", pair="seed")
    assert list(s.index) == ["b", "a"] and s.loc["a", "val_std"] == pytest.approx(np.std([.5, .8, .7], ddof=1))
    assert (s.loc["b", "seeds_better"], s.loc["b", "seeds_better_val"]) == (0, 0)     # a tie is not a gain
    from scipy import stats
    assert s.loc["b", "paired_t_p_val"] == pytest.approx(stats.ttest_rel([.5, .6, .7], [.5, .8, .7]).pvalue)
    assert math.isnan(s.loc["a", "paired_t_p_val"]) and math.isnan(s.loc["a", "paired_t_p"])
    two = metrics.summarise(runs[runs["seed"] < 2], baseline="a", by="model", pair="seed")
    assert two.loc["b", "paired_t_p"] == pytest.approx(stats.ttest_rel([.4, .5], [.4, .7]).pvalue)   # two pairs
    flat = runs.assign(test_accuracy=[.5, .75, .25, .25, .5, 0.0])                   # every pair +0.25, exactly
    assert math.isnan(metrics.summarise(flat, baseline="a", by="model", pair="seed").loc["b", "paired_t_p"])
    r = metrics.result_entry([0, 1], [0, 1], [0, 1], [1, 1], ["a", "b"], 1, 1.0)
    assert r["per_class_accuracy"] == dict(a=0.0, b=1.0)


def test_verdicts():
    row = lambda tv, tt, bv, bt, p=0.5, n=3: pd.Series(dict(seeds=n, seeds_better=bt, seeds_better_val=bv,
                                                           val_diff_mean=tv, test_diff_mean=tt, paired_t_p=p,
                                                           paired_t_p_val=p))
    assert metrics.verdict(row(0.02, 0.03, 3, 3, p=0.01)) == "helped"
    assert metrics.verdict(row(-0.02, -0.03, 0, 0, p=0.04)) == "hurt"
    assert metrics.verdict(row(0.02, 0.03, 3, 3, p=0.05)).startswith("helped on every seed on both folds")
    assert "with 3 seeds is suggestive" in metrics.verdict(row(-0.02, -0.03, 0, 0))
    assert metrics.verdict(row(0.02, 0.03, 2, 3)) == "made no consistent difference"
    assert metrics.verdict(row(0.02, 0.03, 3, 2)) == "made no consistent difference"
    assert metrics.verdict(row(0.0, 0.0, 0, 0)) == "made no difference"
    assert metrics.verdict(row(-0.036, 0.015, 0, 2)) == \
        "gave no verdict: validation and test disagree (-3.6 and +1.5 points)"
    assert metrics.verdict(row(0.01, 0.0, 3, 0)).startswith("gave no verdict")
    assert metrics.verdict(row(-0.5, 0.25, 0, 3)) == \
        "gave no verdict: validation and test disagree (-50.0 and +25.0 points)"
    folds = pd.Series(dict(test_folds=2, test_folds_better=2, test_folds_better_val=2, val_diff_mean=0.1,
                           test_diff_mean=0.1, paired_t_p=0.01, paired_t_p_val=0.5))
    assert metrics.verdict(folds, pair="test_fold") == "helped"


# ## audio: every clip decoded, or a clear error

def _wav(x, rate=8000, subtype="PCM_16", fmt="WAV"):
    return audio.encode_audio(np.asarray(x, np.float32), rate, fmt, subtype)


def test_decoding_and_its_errors():
    x = (0.5 * np.sin(np.arange(800) / 3)).astype(np.float32)
    samples, rate = audio.decode_audio(_wav(np.stack([x, -x / 2], 1), subtype="FLOAT"))
    assert rate == 8000 and samples.dtype == np.float32 and np.allclose(samples, x / 4, atol=1e-6)   # mono mean
    for data_, said in ((b"", "clip: the audio is empty (0 bytes)"), (None, "empty"),
                        (b"RIFF" + bytes(40), "soundfile cannot decode these 44 bytes"),
                        (_wav(x[:159]), "too short to classify (159 samples, 0.0199 s; at least 0.02 s)"),
                        (_wav(np.r_[x, np.nan, np.inf], subtype="FLOAT"), "2 samples are NaN or infinite")):
        with pytest.raises(audio.AudioDecodeError) as e: audio.decode_audio(data_, "clip")
        assert said in str(e.value), str(e.value)
    assert len(audio.decode_audio(_wav(x[:160]))[0]) == 160                         # exactly 0.02 s: kept
    with pytest.raises(audio.AudioDecodeError, match="holds no samples"): audio.check_length(0, 8000)


def test_clip_bytes_come_from_the_cell_or_its_file(tmp_path):
    f = tmp_path/"a.wav"
    f.write_bytes(b"file")
    assert audio.audio_file(dict(bytes=None, path=str(f))) == str(f) and audio.audio_file(dict(bytes=b"x", path="p"))\
        is None and audio.audio_file(None) is None
    assert audio.audio_bytes(dict(bytes=None, path=str(f))) == b"file" and audio.audio_bytes(dict(bytes=b"x")) == b"x"
    with pytest.raises(audio.AudioDecodeError, match="n: no audio"): audio.audio_bytes(None, "n")
    with pytest.raises(audio.AudioDecodeError, match="neither bytes nor a readable path"):
        audio.audio_bytes(dict(bytes=None, path=str(tmp_path/"gone.wav")))
    good = dict(slice_file_name="g.wav", audio=dict(bytes=_wav(np.ones(400) / 4)))
    bad = dict(slice_file_name="b.wav", audio=dict(bytes=b""))
    assert audio.first_decodable([bad, good])[0] is good
    with pytest.raises(audio.AudioDecodeError, match="none of these clips decodes"): audio.first_decodable([bad])


def test_window_starts_and_stable_encoding():
    assert audio.window_starts(10, 4) == [0, 2, 4, 6] and audio.window_starts(11, 4) == [0, 2, 4, 6, 7]
    assert audio.window_starts(4, 4) == [0] and audio.window_starts(3, 4) == [0] and audio.window_starts(5, 1) == \
        [0, 1, 2, 3, 4]
    x = np.linspace(-0.5, 0.5, 1000).astype(np.float32)
    a, b = _wav(x, subtype="FLOAT"), _wav(x, subtype="FLOAT")
    assert a == b and sf.read(io.BytesIO(a))[0].shape == (1000,)


def test_float_files_lose_only_their_time_stamp_and_clips_are_named(tmp_path):
    x = np.linspace(-0.5, 0.5, 1000).astype(np.float32)
    for subtype in ("FLOAT", "DOUBLE", "PCM_16"):
        raw = io.BytesIO()
        sf.write(raw, x, 8000, format="WAV", subtype=subtype)
        raw, ours = raw.getvalue(), audio.encode_audio(x, 8000, subtype=subtype)
        at = raw.find(b"PEAK")
        if subtype == "PCM_16": assert at < 0 and ours == raw and audio.encode_audio(x, 8000) == raw
        else: assert 0 < at < 512 and ours[at + 12:at + 16] == bytes(4) and ours[:at + 12] + ours[at + 16:] == \
            raw[:at + 12] + raw[at + 16:]
    assert audio.window_starts(1, 1) == [0] and audio.window_starts(2, 1) == [0, 1]
    with pytest.raises(audio.AudioDecodeError, match="^clip: the audio is empty"): audio.decode_audio(b"")
    with pytest.raises(audio.AudioDecodeError, match="^clip: the file holds no samples"): audio.check_length(0, 8000)
    with pytest.raises(audio.AudioDecodeError) as e: audio.audio_bytes(dict(bytes=None, path=str(tmp_path/"g.wav")))
    assert str(e.value) == f"clip: neither bytes nor a readable path ({str(tmp_path/'g.wav')!r})"
    with pytest.raises(audio.AudioDecodeError, match="^b.wav: the audio is empty"):
        audio.decode_row(dict(slice_file_name="b.wav", audio=dict(bytes=b"")))
    with pytest.raises(audio.AudioDecodeError, match="^b.wav: neither bytes"):
        audio.decode_row(dict(slice_file_name="b.wav", audio=dict(bytes=None, path=None)))
    with pytest.raises(audio.AudioDecodeError, match="^clip: the audio is empty"): audio.decode_row(dict(audio=dict(
        bytes=b"")))
    with pytest.raises(audio.AudioDecodeError, match="^none of these clips decodes$"): audio.first_decodable([])
    with pytest.raises(audio.AudioDecodeError) as e: audio.decode_audio(b"RIFF" + bytes(40), "r.wav")
    assert str(e.value).endswith("the file is corrupt or in a format libsndfile does not read")


# ## windows: files cut into windows, and windows' answers into a timeline

def test_resampling_matches_torchaudio_and_streams_in_blocks(tmp_path):
    import torch
    import torchaudio
    x = np.random.default_rng(0).standard_normal(4410).astype(np.float32)
    for orig, new in ((44100, 22050), (8000, 32000), (48000, 22050)):
        ours = windows.resample(x, orig, new)
        ref = torchaudio.functional.resample(torch.from_numpy(x), orig, new).numpy()
        assert ours.shape == ref.shape and np.allclose(ours, ref, atol=1e-5), (orig, new)
        assert len(ours) == windows.resampled_length(len(x), orig, new)
    assert windows.resample(x, 8000, 8000) is not None and np.array_equal(windows.resample(x, 8000, 8000), x)
    sf.write(tmp_path/"s.wav", np.stack([x, x], 1), 44100, subtype="FLOAT")
    with sf.SoundFile(str(tmp_path/"s.wav")) as sound:
        blocks = list(windows.resampled_blocks(sound, 22050, block_values=500))
    assert len(blocks) > 2 and np.allclose(np.concatenate(blocks), windows.resample(x, 44100, 22050), atol=1e-6)


def test_windows_of_a_file(tmp_path):
    rate = 1000
    x = (0.1 * np.random.default_rng(1).standard_normal(3500)).astype(np.float32)
    sf.write(tmp_path/"f.wav", x, rate, subtype="FLOAT")
    ws, starts = windows.file_windows(tmp_path/"f.wav", rate, 1.0)
    ws = list(ws)
    assert starts == [0.0, 0.5, 1.0, 1.5, 2.0, 2.5] and all(len(w) == 1000 for w in ws)
    assert np.allclose(ws[-1], x[2500:3500]) and np.allclose(ws[1], x[500:1500])
    sf.write(tmp_path/"short.wav", x[:300], rate, subtype="FLOAT")
    (w,), starts = windows.file_windows(tmp_path/"short.wav", rate, 1.0, min_samples=700)
    assert starts == [0.0] and len(w) == 700 and np.allclose(w[300:600], x[:300])       # repeated to its least
    sf.write(tmp_path/"quiet.wav", np.full(2000, 1e-5, np.float32), rate, subtype="FLOAT")
    with pytest.raises(audio.AudioDecodeError, match="the audio is silent"):
        list(windows.file_windows(tmp_path/"quiet.wav", rate, 1.0)[0])
    assert windows.repeat_to(np.arange(3), 7).tolist() == [0, 1, 2, 0, 1, 2, 0]
    assert windows.repeat_to(np.arange(5), 3).tolist() == [0, 1, 2, 3, 4]
    got = list(windows.stream_windows([np.arange(3), np.arange(3, 7), np.arange(7, 9)], [0, 2, 4, 5], 4))
    assert [g.tolist() for g in got] == [[0, 1, 2, 3], [2, 3, 4, 5], [4, 5, 6, 7], [5, 6, 7, 8]]


def test_in_batches_and_file_records(tmp_path):
    seen = []
    out = windows.in_batches((np.full(3, i, np.float32) for i in range(5)), lambda b: seen.append(len(b)) or b[:, :2],
                             batch=2)
    assert out.shape == (5, 2) and seen == [2, 2, 1] and out[:, 0].tolist() == [0, 1, 2, 3, 4]

    class Fixed:
        classes, sample_rate, clip_seconds = ["a", "b", "c"], 1000, 1.0
        def file_probs(self, path):
            if "bad" in str(path): raise audio.AudioDecodeError(f"{path}: broken")
            return np.array([[0.1, 0.6, 0.3], [0.5, 0.3, 0.2]]), [0.0, 0.5]
    for name in ("x.wav", "bad.wav"): (tmp_path/name).write_bytes(b"x")
    recs = windows.classify_files(Fixed(), [tmp_path/"x.wav", tmp_path/"bad.wav", tmp_path/"gone.wav"], top_k=2,
                                  per_window=True, with_probs=True)
    assert recs[0]["error"] is None and [p["class"] for p in recs[0]["predictions"]] == ["b", "a"]
    assert recs[0]["predictions"][0]["probability"] == pytest.approx(0.45)
    assert [w["predictions"][0]["class"] for w in recs[0]["windows"]] == ["b", "a"]
    assert len(recs[0]["probabilities"]) == 2
    assert recs[1]["error"] == f"{tmp_path/'bad.wav'}: broken" and recs[1]["predictions"] == []
    assert recs[2]["error"].endswith("gone.wav: no such file")


def test_a_long_file_streams_to_the_windows_of_the_whole_and_bad_reads_are_named(tmp_path, monkeypatch):
    rate, x = 1000, (0.1 * np.random.default_rng(2).standard_normal((4200, 2))).astype(np.float32)
    sf.write(tmp_path/"long.wav", x, rate, subtype="FLOAT")
    whole, starts = windows.file_windows(tmp_path/"long.wav", 500, 1.0)
    whole = list(whole)
    monkeypatch.setattr(windows, "STREAM_SECONDS", 4.2)                  # exactly its length: streamed
    streamed, streamed_starts = windows.file_windows(tmp_path/"long.wav", 500, 1.0)
    streamed = list(streamed)
    assert streamed_starts == starts == [0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.2] and len(streamed) == len(whole)
    assert all(w.dtype == np.float32 and np.allclose(w, v, atol=1e-6) for w, v in zip(streamed, whole))
    sf.write(tmp_path/"one.wav", x[:1000], rate, subtype="FLOAT")      # exactly one clip: one window
    (w,), s1 = windows.file_windows(tmp_path/"one.wav", rate, 1.0)
    assert s1 == [0] and len(w) == 1000
    with sf.SoundFile(str(tmp_path/"long.wav")) as sound:
        got = windows.read_samples(sound, 1000, 3000, "long.wav")
        assert got.dtype == np.float32 and got.shape == (2000,) and np.allclose(got, x[1000:3000].mean(1))
    (tmp_path/"cut.wav").write_bytes((tmp_path/"long.wav").read_bytes()[:-4000])   # the header says more
    with sf.SoundFile(str(tmp_path/"cut.wav")) as sound, pytest.raises(audio.AudioDecodeError) as e:
        windows.read_samples(sound, 3000, 4200, "cut.wav")
    assert str(e.value) == f"cut.wav: ends at 3.7 s, before the {sound.frames / rate:.1f} s its header states"
    nan = x.copy()
    nan[1500] = np.nan
    sf.write(tmp_path/"nan.wav", nan, rate, subtype="FLOAT")
    with sf.SoundFile(str(tmp_path/"nan.wav")) as sound, pytest.raises(audio.AudioDecodeError) as e:
        windows.read_samples(sound, 1000, 2000, "nan.wav")
    assert str(e.value) == "nan.wav: NaN or infinite samples after 1.0 s"
    sf.write(tmp_path/"quiet.wav", np.full(2000, 1e-5, np.float32), rate, subtype="FLOAT")
    with pytest.raises(audio.AudioDecodeError, match=f"^{tmp_path/'quiet.wav'}: the audio is silent"):
        windows.file_windows(tmp_path/"quiet.wav", rate, 1.0)


def test_records_and_timelines_have_exactly_their_fields(tmp_path):
    class Fixed:
        classes, sample_rate, clip_seconds = ["a", "b", "c", "d"], 1000, 1.0
        def file_probs(self, path):
            if "bad" in str(path): raise ValueError("no")
            return np.array([[0.1, 0.6, 0.2, 0.1], [0.5, 0.3, 0.1, 0.1]]), [0.0, 0.12345]
    for name in ("x.wav", "bad.wav"): (tmp_path/name).write_bytes(b"x")
    plain = windows.classify_files(Fixed(), [tmp_path/"x.wav", tmp_path/"bad.wav"])
    assert plain[0] == {"file": str(tmp_path/"x.wav"), "error": None, "answer": "b", "predictions": [
        {"class": "b", "probability": 0.45}, {"class": "a", "probability": 0.3}, {"class": "c", "probability": 0.15}]}
    assert plain[1] == {"file": str(tmp_path/"bad.wav"), "predictions": [],
                        "error": f"{tmp_path/'bad.wav'}: cannot be classified (ValueError: no)"}
    full = windows.classify_files(Fixed(), [tmp_path/"x.wav"], top_k=1, per_window=True, with_probs=True)[0]
    assert full["windows"] == [
        {"start_seconds": 0.0, "predictions": [{"class": "b", "probability": 0.6}], "answer": "b"},
        {"start_seconds": 0.123, "predictions": [{"class": "a", "probability": 0.5}], "answer": "a"}]
    Fixed.rejection = dict(score="max_probability", threshold=0.55)       # the model's "none of these" rule
    declined = windows.classify_files(Fixed(), [tmp_path/"x.wav"], top_k=1, per_window=True)[0]
    assert [declined["answer"], *(w["answer"] for w in declined["windows"])] == ["unknown", "b", "unknown"]
    assert full["start_seconds"] == [0.0, 0.12345] and np.asarray(full["probabilities"]).shape == (2, 4)
    tl = windows.timeline(np.array([[0.9, 0.1], [0.2, 0.8]]), [0.0, 2.0], ["a", "b"], 4.0, 6.25)
    assert tl["windows"] == [dict(start=0.0, end=3.0, answer="a", probabilities={"a": 0.9, "b": 0.1}),
                             dict(start=3.0, end=6.25, answer="b", probabilities={"a": 0.2, "b": 0.8})]


def test_timeline_segments_follow_the_rule():
    spans = windows.window_spans([0.0, 2.0, 4.0, 6.0], 4.0, 9.0)
    assert spans.tolist() == [[0.0, 3.0], [3.0, 5.0], [5.0, 7.0], [7.0, 9.0]]     # each window's share of time
    assert windows.window_spans([0.0], 4.0, 2.5).tolist() == [[0.0, 2.5]]
    probs = np.array([[0.9, 0.1], [0.7, 0.3], [0.45, 0.55], [0.2, 0.8]])
    segs = windows.segments(probs, spans, ["a", "b"], dict(threshold=0.5, hysteresis=0.1))
    # a: above 0.5 twice, held by 0.45 (within the hysteresis) to 7 s; b: from 0.55 on
    assert [(s["class"], s["start"], s["end"], s["mean_probability"]) for s in segs] == \
        [("a", 0.0, 7.0, round((0.9 + 0.7 + 0.45) / 3, 4)), ("b", 5.0, 9.0, round((0.55 + 0.8) / 2, 4))]
    assert windows.segments(probs, spans, ["a", "b"], dict(threshold=0.5, hysteresis=0.0))[0]["end"] == 5.0
    assert windows.segments(probs, spans, ["a", "b"], dict(min_seconds=4.5)) == \
        [s for s in segs if s["end"] - s["start"] >= 4.5]
    held = windows.segments(np.array([[0.6], [0.45], [0.3], [0.6]]), windows.window_spans([0, 1, 2, 3], 1, 4), ["a"],
                            dict(threshold=0.5, hysteresis=0.1))
    assert [(s["start"], s["end"]) for s in held] == [(0.0, 2.0), (3.0, 4.0)]   # 0.45 holds it, 0.3 ends it
    merged = windows.segments(np.array([[0.6], [0.45], [0.3], [0.6]]), windows.window_spans([0, 1, 2, 3], 1, 4), ["a"],
                              dict(threshold=0.5, hysteresis=0.1, min_gap=1.5))
    assert [(s["start"], s["end"]) for s in merged] == [(0.0, 4.0)]            # a gap of 1 s under min_gap: one
    tl = windows.timeline(probs, [0.0, 2.0, 4.0, 6.0], ["a", "b"], 4.0, 9.0)
    assert tl["seconds"] == 9.0 and len(tl["windows"]) == 4 and tl["rule"] == windows.TIMELINE_RULE
    assert tl["windows"][1]["probabilities"] == {"a": 0.7, "b": 0.3} and tl["segments"] == segs
