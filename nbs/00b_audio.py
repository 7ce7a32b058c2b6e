# %%
#| default_exp audio

# %% [markdown]
# # Audio: decoding, encoding and a synthetic stand-in
#
# > Every format UrbanSound8K mixes, decoded to float32 mono; test clips in any format; a synthetic stand-in.

# %% [markdown]
# The real dataset mixes 8-bit to 32-bit float WAV, 8 to 96 kHz, mono and stereo, clips from milliseconds to 4 s.
# `soundfile` reads all of them (and OGG and FLAC); every clip becomes float32 mono at its own rate, and bytes that
# cannot be decoded raise an error naming the clip.

# %%
#| export
from __future__ import annotations

import io
from pathlib import Path
from typing import Sequence

import numpy as np
import soundfile as sf

COLUMNS = ("audio", "slice_file_name", "fsID", "start", "end", "salience", "fold", "classID", "class")
URBANSOUND_CLASSES = ("air_conditioner", "car_horn", "children_playing", "dog_bark", "drilling",
                      "engine_idling", "gun_shot", "jackhammer", "siren", "street_music")
ALL_FOLDS = tuple(range(1, 11))

class AudioDecodeError(ValueError):
    "Audio bytes that soundfile cannot turn into usable samples."

MIN_SECONDS = 0.02  # shorter audio is refused: UrbanSound8K's shortest clip lasts 0.054 s

def check_length(n_samples: int, rate: int, name: str = "clip"):
    "An `AudioDecodeError` for a clip of no samples or shorter than `MIN_SECONDS` (a header tells it without decoding)."
    if n_samples == 0: raise AudioDecodeError(f"{name}: the file holds no samples")
    if n_samples < MIN_SECONDS * rate:
        raise AudioDecodeError(f"{name}: too short to classify ({n_samples} samples, {n_samples / rate:.4f} s; "
                               f"at least {MIN_SECONDS} s)")

def decode_audio(data: bytes, name: str = "clip") -> tuple[np.ndarray, int]:
    "Decode audio bytes of any format soundfile reads to (float32 mono samples, sample rate), or say what is wrong."
    if data is None or len(data) == 0: raise AudioDecodeError(f"{name}: the audio is empty (0 bytes)")
    try: samples, rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except Exception as e:
        raise AudioDecodeError(f"{name}: soundfile cannot decode these {len(data)} bytes ({e}); "
                               "the file is corrupt or in a format libsndfile does not read") from None
    check_length(samples.shape[0], rate, name)
    if not np.isfinite(samples).all():
        raise AudioDecodeError(f"{name}: {int((~np.isfinite(samples)).sum())} samples are NaN or infinite")
    return samples.mean(axis=1, dtype=np.float32), int(rate)

# %% [markdown]
# A dataset row holds its clip as `{bytes, path}`: the hub layout carries the bytes, the official layout only the path
# of a file that is read when the clip is needed.

# %%
#| export
def audio_file(audio: dict | None) -> str | None:
    "The path of a clip held as a file (a path and no bytes, as the official layout gives), else None."
    return audio["path"] if audio and audio.get("bytes") is None and audio.get("path") else None

def audio_bytes(audio: dict, name: str = "clip") -> bytes:
    "The encoded bytes of an `audio` cell ({bytes, path}), read from `path` when `bytes` is absent."
    if audio is None: raise AudioDecodeError(f"{name}: no audio")
    path, data = audio_file(audio), audio.get("bytes")
    if path and Path(path).is_file(): data = Path(path).read_bytes()
    if data is None: raise AudioDecodeError(f"{name}: neither bytes nor a readable path ({audio.get('path')!r})")
    return data

def decode_row(row: dict) -> tuple[np.ndarray, int]:
    "Decode the audio of one dataset row, naming the clip in any error."
    name = row.get("slice_file_name", "clip")
    return decode_audio(audio_bytes(row["audio"], name), name)

def first_decodable(rows) -> tuple[dict, np.ndarray, int]:
    "The first row whose audio decodes, with its samples and rate: a clip that does not is passed over, as everywhere."
    for row in rows:
        try: return (row, *decode_row(row))
        except AudioDecodeError: continue
    raise AudioDecodeError("none of these clips decodes")

# %%
from fastcore.test import test_eq, test_fail
test_eq(audio_file(dict(bytes=None, path="/data/a.wav")), "/data/a.wav")
test_fail(lambda: audio_bytes(dict(bytes=None, path="/nowhere/a.wav"), "a.wav"),
          contains="a.wav: neither bytes nor a readable path")

# %% [markdown]
# A recording longer than a clip is classified in half-overlapping windows of one clip, the last ending with the
# recording: the same arithmetic for frames (notebook 04c) and samples (`predict`, notebook 06b).

# %%
#| export
def window_starts(total: int, length: int) -> list[int]:
    "Starts of half-overlapping windows of `length` over `total` samples (or frames); the last ends where they end."
    starts = list(range(0, max(total - length, 0) + 1, max(length // 2, 1)))
    if total > length and starts[-1] + length < total: starts.append(total - length)
    return starts

# %%
test_eq(window_starts(11, 4), [0, 2, 4, 6, 7])

# %% [markdown]
# `pink_noise` makes a background of no class (chapters 06 and 10 put it where nothing is to be heard):

# %%
#| export
def pink_noise(n: int, rng) -> np.ndarray:
    "Pink (1/f power) noise of `n` samples from the generator `rng`, peak 1."
    x = np.fft.irfft(np.fft.rfft(rng.standard_normal(n)) / np.sqrt(np.arange(n // 2 + 1) + 1.0), n)
    return x / max(np.abs(x).max(), 1e-12)

# %%
_power = np.abs(np.fft.rfft(pink_noise(1 << 14, np.random.default_rng(0)))) ** 2
assert _power[100:200].mean() > 5 * _power[1000:2000].mean()       # 1/f: ten times the frequency, a tenth the power
test_eq(np.abs(pink_noise(100, np.random.default_rng(0))).max(), 1.0)

# %% [markdown]
# The reverse, `encode_audio`, makes test clips in any format soundfile writes:

# %%
#| export
def encode_audio(samples: np.ndarray, rate: int, fmt: str = "WAV", subtype: str = "PCM_16") -> bytes:
    "Encode samples ([n] or [n, channels]) as audio-file bytes; the same samples always give the same bytes."
    buf = io.BytesIO()
    sf.write(buf, samples, rate, format=fmt, subtype=subtype)
    data = bytearray(buf.getvalue())
    # libsndfile stamps the PEAK chunk of float WAV/AIFF files with the current time; zero the stamp so that
    # identical audio hashes identically (the feature cache is keyed by content). The chunk sits in the header,
    # before the samples: search only there, so that sample bytes that happen to spell PEAK are never touched.
    peak = data.find(b"PEAK", 0, 512) if subtype in ("FLOAT", "DOUBLE") else -1
    if peak >= 0: data[peak + 12:peak + 16] = bytes(4)
    return bytes(data)

# %%
tone = np.sin(2*np.pi*440*np.arange(8000)/8000).astype(np.float32)*0.5
x, r = decode_audio(encode_audio(np.stack([tone, tone], 1), 8000, subtype="PCM_U8"), "u8-stereo.wav")
test_eq((x.shape, x.dtype, r), ((8000,), np.float32, 8000))
test_fail(lambda: decode_audio(b"", "empty.wav"), contains="empty.wav: the audio is empty")

# %% [markdown]
# ## A synthetic stand-in
#
# `synthetic_urbansound` generates ten classes of **synthetic** sounds named as UrbanSound8K's (a hum, a two-tone
# horn, a swept siren, impulses, ...) with its columns and folds and random durations, rates and formats, for tests
# and offline demos. It is no substitute for the data: its file names start with `synthetic-` and every chapter says
# so.

# %%
#| export
def _synthetic_sound(cls: int, n: int, rate: int, rng: np.random.Generator) -> np.ndarray:
    "One clip of synthetic class `cls`: distinguishable by spectrum and rhythm, varied by `rng`."
    t = np.arange(n) / rate
    f = rng.uniform(0.85, 1.15)  # pitch jitter
    noise = rng.standard_normal(n)
    if cls == 0: x = np.convolve(noise, np.ones(40)/40, "same")*3 + 0.3*np.sin(2*np.pi*120*f*t)           # hum
    elif cls == 1: x = np.sin(2*np.pi*420*f*t) + np.sin(2*np.pi*520*f*t) + 0.3*np.sin(2*np.pi*1040*f*t)    # horn
    elif cls == 2: x = np.sin(2*np.pi*(1500*f + 700*np.sin(2*np.pi*3*t))*t)                                # chirps
    elif cls == 3: x = np.sin(2*np.pi*600*f*t) * (np.sin(2*np.pi*2*t) > 0.6) * np.exp(-((t*2) % 1)*4)       # barks
    elif cls == 4: x = np.sin(2*np.pi*2400*f*t) * (0.6 + 0.4*np.sin(2*np.pi*35*t))                         # drill
    elif cls == 5: x = np.sign(np.sin(2*np.pi*45*f*t)) * 0.5 + 0.1*noise                                     # engine
    elif cls == 6: x = noise * np.exp(-t*12)                                                                  # shot
    elif cls == 7: x = noise * (np.sin(2*np.pi*11*f*t) > 0.3)                                                 # hammer
    elif cls == 8: x = np.sin(2*np.pi*np.cumsum(900*f + 300*np.sin(2*np.pi*0.5*t))/rate)                   # siren
    else: x = sum(np.sin(2*np.pi*h*f*t) for h in (262, 330, 392)) * (1 + np.sin(2*np.pi*1.5*t))/2           # music
    x = x / (np.abs(x).max() + 1e-9) * rng.uniform(0.2, 0.9)
    return (x + 0.01*rng.standard_normal(n)).astype(np.float32)

# %% [markdown]
# `datasets` 5 needs torchcodec to decode audio, so tables are built from dicts of `{bytes, path}` with
# `Audio(decode=False)` (`from_dict` with explicit features; `from_pandas` cannot cast pandas 3 strings), and
# `decode_audio` decodes.

# %%
#| export
def _features(audio=None):
    from datasets import Audio, Features, Value
    audio = audio or Audio(decode=False)
    return Features(dict(audio=audio, slice_file_name=Value("string"), fsID=Value("int64"),
                         start=Value("float64"), end=Value("float64"), salience=Value("int64"),
                         fold=Value("int64"), classID=Value("int64"), **{"class": Value("string")}))

def dataset_from_rows(rows: list[dict], description: str = ""):
    "A `datasets.Dataset` with UrbanSound8K's columns from a list of row dicts."
    from datasets import Audio, Dataset, Value
    cols = {c: [r[c] for r in rows] for c in COLUMNS}
    # a plain {bytes, path} struct first: giving `Audio` to from_dict would encode, which needs torchcodec
    ds = Dataset.from_dict(cols, features=_features({"bytes": Value("binary"), "path": Value("string")}))
    ds = ds.cast_column("audio", Audio(decode=False))
    ds.info.description = description
    return ds

def is_synthetic(ds) -> bool: return "SYNTHETIC" in (ds.info.description or "")

_SYNTH_FORMATS = (("WAV", "PCM_16"), ("WAV", "FLOAT"), ("WAV", "PCM_24"), ("FLAC", "PCM_16"), ("WAV", "PCM_U8"))

def _synthetic_row(fold: int, cls: int, k: int, rng: np.random.Generator) -> dict:
    "Clip `k` of class `cls` in `fold`: a random rate, length and format; every fourth clip in stereo."
    rate, secs = int(rng.choice([8000, 16000, 22050])), float(rng.choice([0.5, 1.5, 2.5, 4.0]))
    x = _synthetic_sound(cls, int(rate*secs), rate, rng)
    if k % 4 == 3: x = np.stack([x, x*0.8], 1)
    fmt, sub = _SYNTH_FORMATS[(fold + cls + k) % len(_SYNTH_FORMATS)]
    fs_id = 900000 + fold*1000 + cls*10 + k
    return dict(audio=dict(bytes=encode_audio(x, rate, fmt, sub), path=f"synthetic-{fs_id}-{cls}-0-0.{fmt.lower()}"),
                slice_file_name=f"synthetic-{fs_id}-{cls}-0-0.wav", fsID=fs_id, start=0.0, end=secs,
                salience=1 + (k % 2), fold=fold, classID=cls, **{"class": URBANSOUND_CLASSES[cls]})

def synthetic_urbansound(clips_per_class_fold: int = 3, folds: Sequence[int] = ALL_FOLDS, seed: int = 0):
    "A small dataset of ten synthetic sound classes with UrbanSound8K's columns and folds."
    rng = np.random.default_rng(seed)
    rows = [_synthetic_row(fold, cls, k, rng) for fold in folds for cls in range(len(URBANSOUND_CLASSES))
            for k in range(clips_per_class_fold)]
    return dataset_from_rows(rows, description="SYNTHETIC stand-in for UrbanSound8K (generated, not real audio)")

# %%
synth = synthetic_urbansound(clips_per_class_fold=1, folds=[1, 2])
test_eq(synth.column_names, list(COLUMNS))
test_eq(len(synth), 20)
assert is_synthetic(synth)
x, r = decode_row(synth[0])
print(synth[0]["slice_file_name"], x.shape, r)
