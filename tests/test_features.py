"""The feature cache: computed once, keyed by parameters and content, resumable; the batch path."""
import os
import time

import numpy as np
import pytest
import torch
from conftest import write_official_layout

from urbansound_nb.batches import LogMelSet, batch_frames
from urbansound_nb.cache import FeatureCache, cache_logmels
from urbansound_nb.data import load_urbansound
from urbansound_nb.features import DB_FLOOR, FeatureParams, LogMel, load_waveform

FP = FeatureParams(sample_rate=16000, n_mels=32, n_fft=512, hop_length=256)


@pytest.fixture(scope="module")
def synth(): return load_urbansound("synthetic", max_items=60)


def test_cache_is_computed_once_and_reused(synth, tmp_path):
    c1, k1, s1 = cache_logmels(synth, FP, tmp_path, workers=2, progress=False)
    assert s1["computed"] == len(synth) and len(c1) == len(set(k1))
    c2, k2, s2 = cache_logmels(synth, FP, tmp_path, workers=2, progress=False)
    assert k2 == k1 and s2["computed"] == 0 and s2["reused"] == len(synth)
    for k in k1[:5]: np.testing.assert_array_equal(c1.get(k), c2.get(k))


def test_a_new_parameter_makes_a_new_cache(synth, tmp_path):
    cache_logmels(synth, FP, tmp_path, progress=False)
    other = FeatureParams(sample_rate=16000, n_mels=40, n_fft=512, hop_length=256)
    c, _, s = cache_logmels(synth, other, tmp_path, progress=False)
    assert s["computed"] == len(synth) and c.get(next(iter(c.index))).shape[1] == 40
    assert len(list(tmp_path.iterdir())) == 2


def test_interrupted_extraction_resumes(synth, tmp_path, monkeypatch):
    import urbansound_nb.cache as F
    calls, real = {"n": 0}, F._clip_logmel
    def flaky(*a, **k):
        calls["n"] += 1
        if calls["n"] > 40: raise KeyboardInterrupt("simulated interruption")
        return real(*a, **k)
    monkeypatch.setattr(F, "_clip_logmel", flaky)
    with pytest.raises(KeyboardInterrupt):
        F.cache_logmels(synth, FP, tmp_path, workers=1, shard_size=16, progress=False)
    monkeypatch.setattr(F, "_clip_logmel", real)
    done = len(FeatureCache(tmp_path, FP))
    assert 0 < done < len(synth)  # complete shards survived, nothing half-written is visible
    _, _, s = F.cache_logmels(synth, FP, tmp_path, workers=1, shard_size=16, progress=False)
    assert s["computed"] == len(synth) - done


def test_unchanged_files_are_not_read_again(tmp_path, monkeypatch):
    "The official layout's clips are files: their keys are remembered; a changed file is hashed and computed afresh."
    import urbansound_nb.cache as F
    monkeypatch.setattr(F.FileKeys, "fresh_seconds", 0)  # the files were written a moment ago
    root = tmp_path/"US8K"
    rows = write_official_layout(root, 4)
    ds = load_urbansound(str(root))
    _, keys, s1 = cache_logmels(ds, FP, tmp_path/"cache", progress=False)
    _, keys2, s2 = cache_logmels(ds, FP, tmp_path/"cache", progress=False)
    assert (s1["hashed"], s1["computed"], s2["hashed"], s2["computed"], keys2) == (4, 4, 0, 0, keys)
    time.sleep(0.05)  # past the clock tick of file times
    (root/"audio"/"fold1"/rows[1]["slice_file_name"]).write_bytes(rows[0]["audio"]["bytes"])  # now a copy of clip 0
    _, keys3, s3 = cache_logmels(ds, FP, tmp_path/"cache", progress=False)
    # read again, and found in the cache under clip 0's content
    assert (s3["hashed"], s3["computed"], keys3[1]) == (1, 0, keys[0])
    os.remove(root/"audio"/"fold1"/rows[3]["slice_file_name"])     # gone after loading: skipped and named
    cache, keys4, s4 = cache_logmels(ds, FP, tmp_path/"cache", progress=False)
    assert s4["skipped"] == 1 and rows[3]["slice_file_name"] in cache.skip_reason(keys4[3])


def test_corrupt_clip_is_skipped_counted_and_named(tmp_path):
    ds = load_urbansound("synthetic", max_items=12)
    rows = ds.to_list()
    rows[3]["audio"] = {"bytes": b"not audio at all" * 4, "path": "x.wav"}
    from urbansound_nb.audio import dataset_from_rows as _dataset_from_rows
    bad = _dataset_from_rows(rows)
    cache, keys, s1 = cache_logmels(bad, FP, tmp_path, progress=False)
    assert (s1["skipped"], s1["computed"]) == (1, 11) and rows[3]["slice_file_name"] in cache.skip_reason(keys[3])
    _, _, s2 = cache_logmels(bad, FP, tmp_path, progress=False)   # remembered: not decoded again
    assert (s2["skipped"], s2["computed"], s2["reused"]) == (1, 0, 11)


def test_study_data_leaves_out_undecodable_clips(tmp_path, capsys):
    from urbansound_nb.audio import AudioDecodeError
    from urbansound_nb.batches import study_data
    from urbansound_nb.params import StudyParams
    root = tmp_path/"US8K"
    rows = write_official_layout(root, None, folds=(1, 2, 3))
    bad = rows[12]
    (root/"audio"/f"fold{bad['fold']}"/bad["slice_file_name"]).write_bytes(b"RIFF" + bytes(40))
    params = StudyParams(dataset=str(root), cache_dir=tmp_path/"cache", run_dir=tmp_path/"run")
    data = study_data(params, FP, progress=False)
    assert len(data.meta) == len(rows) - 1 and bad["slice_file_name"] not in set(data.meta["slice_file_name"])
    counts = data.clip_counts()
    assert counts["clips_used"] == 29
    assert [s["slice_file_name"] for s in counts["clips_skipped"]] == [bad["slice_file_name"]]
    assert "left out 1 of 30 clips" in capsys.readouterr().out
    assert len(data.logmels) == 29 and len(data.train) + len(data.val) + len(data.test) == 29
    params.strict_audio = True
    with pytest.raises(AudioDecodeError, match=bad["slice_file_name"]): study_data(params, FP, progress=False)


def test_logmel_front_end_of_silence():
    lm = LogMel(FP)(torch.zeros(2, 16000))
    assert lm.shape == (2, 32, FP.frames(1.0)) and float(lm.max()) == DB_FLOOR


def test_batches_crop_and_pad():
    ls = LogMelSet([np.full((n, 4), n, np.float16) for n in (3, 20)], labels=[0, 1])
    b = batch_frames(ls, [0, 1], 8)
    assert b.shape == (2, 4, 8) and b[0].eq(3).all() and b[1].eq(20).all()   # the short clip repeated, no floor
    assert batch_frames(ls, [1], 8, "random").shape == (1, 4, 8)
    with pytest.raises(ValueError, match="mode must be"): batch_frames(ls, [0], 8, "middle")


def test_resampling_keeps_the_tone():
    "44.1 kHz to 16 kHz: the length follows the rate, and a 440 Hz tone's energy stays at 440 Hz."
    from urbansound_nb.audio import encode_audio
    tone = (0.3 * np.sin(2 * np.pi * 440 * np.arange(44100) / 44100)).astype(np.float32)
    w = load_waveform(encode_audio(tone, 44100), 16000).numpy()
    assert abs(len(w) - 16000) <= 1
    assert abs(np.abs(np.fft.rfft(w)).argmax() * 16000 / len(w) - 440) < 2


def test_feature_parameters_are_validated():
    with pytest.raises(ValueError, match="'hop_length'"): FeatureParams(n_fft=256, hop_length=512)
    with pytest.raises(ValueError, match="'n_mels'"): FeatureParams(n_mels=0)
