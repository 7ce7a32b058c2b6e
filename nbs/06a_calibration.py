# %%
#| default_exp calibration

# %% [markdown]
# # Calibration and "none of these": a temperature and a threshold, both chosen on validation
#
# > Probabilities that mean what they say, measured by expected calibration error, and a rule that declines to answer.

# %% [markdown]
# A classifier's "0.9 dog_bark" should be right nine times in ten. Networks trained with cross-entropy, and averages of
# them, are not calibrated that way by construction, so the served model gets a **temperature** `T`: its
# probabilities become `softmax(log p / T)`, fitted by the negative log-likelihood of the validation rotations (never
# the test fold), as Guo et al. (2017) do. `T` leaves every clip's top class as it was: accuracy cannot move, only
# confidence. It is measured by the **expected calibration error** (ECE): the mean gap between confidence and
# accuracy over 15 equal bins of confidence, weighted by their clips, with scikit-learn's `calibration_curve` for the
# curve.
#
# Most sounds in a street recording are none of the ten classes, so the served model may also **decline**: under a
# threshold on a confidence score it answers `unknown` (`answer`, below). The threshold is chosen on the validation
# rotations, to answer a stated share of in-class clips; which score is used is chosen on part of a set of sounds
# that are none of the ten, and the rest of that set only reports.

# %%
#| export
from __future__ import annotations

import numpy as np

# %%
import matplotlib.pyplot as plt
from fastcore.test import test_eq, test_close, test_fail
from scipy.special import log_softmax

# %% [markdown]
# ## The scores, and the answer
#
# Serving imports this part (the torch-free ONNX path too), so it needs NumPy alone; what fits and measures below
# imports SciPy and scikit-learn where it runs. A score is high where the model is sure: the top probability, or the
# negative entropy of the ten. A rule is a score and a threshold; under it, the answer is `unknown`.

# %%
#| export
UNKNOWN = "unknown"     # the answer under the threshold: none of the classes
REJECTION_SCORES = ("max_probability", "neg_entropy")

def confidence(proba, score: str = REJECTION_SCORES[0]) -> np.ndarray:
    "Each row's confidence [n] by `score`: its top probability, or its negative entropy (nats)."
    p = np.atleast_2d(np.asarray(proba, dtype=np.float64))
    if score == "max_probability": return p.max(1)
    if score == "neg_entropy": return (p * np.log(np.clip(p, 1e-12, 1.0))).sum(1)
    raise ValueError(f"unknown rejection score {score!r}; choose from {list(REJECTION_SCORES)}")

def check_rejection(rule, where: str = "rejection rule") -> dict | None:
    "A rejection rule ({'score', 'threshold'}) checked, as untrusted metadata is; None stays None (always answer)."
    if rule is None: return None
    if not isinstance(rule, dict) or rule.get("score") not in REJECTION_SCORES:
        raise ValueError(f"{where}: expected {{'score': one of {list(REJECTION_SCORES)}, 'threshold': a number}}, "
                         f"got {rule!r}")
    threshold = rule.get("threshold")
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not np.isfinite(threshold):
        raise ValueError(f"{where}: threshold must be a finite number, got {threshold!r}")
    return dict(score=rule["score"], threshold=float(threshold))

def check_calibration(value, where: str = "calibration") -> dict:
    "A checkpoint's calibration ({'temperature', 'rejection'}) checked; None (an older checkpoint): T = 1, no rule."
    if value is None: return dict(temperature=1.0, rejection=None)
    t = value.get("temperature") if isinstance(value, dict) else None
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0 < t < float("inf"):
        raise ValueError(f"{where}: temperature must be a positive number, got {t!r}")
    return dict(temperature=float(t), rejection=check_rejection(value.get("rejection"), f"{where}: rejection"))

def answer(proba, classes, rule: dict | None) -> str:
    "One clip's answer from its probabilities [classes]: the top class, or `UNKNOWN` under the rule's threshold."
    top = classes[int(np.argmax(proba))]
    return top if rule is None or confidence(proba, rule["score"])[0] >= rule["threshold"] else UNKNOWN

# %%
test_eq(confidence([[0.7, 0.2, 0.1]]), [0.7])
test_close(confidence([[0.5, 0.5]], "neg_entropy"), [-np.log(2)])
test_eq([answer(p, ["a", "b"], dict(score="max_probability", threshold=0.6)) for p in ([0.7, 0.3], [0.55, 0.45])],
        ["a", UNKNOWN])
test_eq(answer([0.55, 0.45], ["a", "b"], None), "a")
test_fail(lambda: check_rejection(dict(score="energy", threshold=0.5)), contains="neg_entropy")
test_eq(check_calibration(None), dict(temperature=1.0, rejection=None))
test_fail(lambda: check_calibration(dict(temperature=-1.0), "x.pt"), contains="x.pt: temperature")
test_fail(lambda: check_rejection(dict(score="neg_entropy", threshold=float("nan"))), contains="finite")

# %% [markdown]
# ## A temperature
#
# Probabilities in, probabilities out: the same transformation serves every family, whatever its network returns
# (logits, or the log of an ensemble's averaged probabilities), because `softmax(log p / T)` equals
# `softmax(z / T)` for `p = softmax(z)`.

# %%
#| export
CALIBRATION_BINS = 15            # equal-width confidence bins of the expected calibration error
TEMPERATURES = (0.05, 20.0)      # the range a fitted temperature is searched in

def calibrated(proba, temperature: float) -> np.ndarray:
    "Probabilities [n, classes] sharpened (T < 1) or softened (T > 1) by a temperature: softmax(log p / T)."
    z = np.log(np.clip(np.asarray(proba, dtype=np.float64), 1e-12, 1.0)) / float(temperature)
    z -= z.max(1, keepdims=True)
    return np.exp(z) / np.exp(z).sum(1, keepdims=True)

def fit_temperature(proba, labels) -> float:
    "The temperature that minimises the negative log-likelihood of `labels` under `calibrated(proba, T)`."
    proba, labels = np.asarray(proba, dtype=np.float64), np.asarray(labels)
    if len(proba) != len(labels) or not len(labels):
        raise ValueError(f"fit_temperature: {len(proba)} rows of probabilities against {len(labels)} labels")
    from scipy.optimize import minimize_scalar
    from scipy.special import log_softmax
    logp = np.log(np.clip(proba, 1e-12, 1.0))
    nll = lambda log_t: -log_softmax(logp / np.exp(log_t), axis=1)[np.arange(len(labels)), labels].mean()
    found = minimize_scalar(nll, bounds=np.log(TEMPERATURES), method="bounded", options=dict(xatol=1e-4))
    return float(np.exp(found.x))

# %%
_rng = np.random.default_rng(0)
_labels = _rng.integers(0, 4, 2000)
_logits = np.eye(4)[_labels] * 2.0 + _rng.normal(size=(2000, 4))     # the true class shifted by 2, unit noise:
_over = np.exp(log_softmax(_logits * 6, axis=1))      # softmax(2 z) is the true posterior, so this is 3x too sure
test_close(fit_temperature(_over, _labels), 3.0, eps=0.3)              # the temperature undoes it
test_eq(calibrated(_over, 2.5).argmax(1), _over.argmax(1))             # and never changes a top class
test_close(calibrated(_over, 1.0), _over, eps=1e-9)
test_fail(lambda: fit_temperature(_over, _labels[:5]), contains="2000 rows")

# %% [markdown]
# ## Expected calibration error, and the reliability curve

# %%
#| export
def calibration_error(proba, labels, n_bins: int = CALIBRATION_BINS) -> dict:
    "ECE of the top class's probability, with the reliability curve (confidence, accuracy, clips per bin)."
    from sklearn.calibration import calibration_curve
    proba, labels = np.asarray(proba), np.asarray(labels)
    top, correct = proba.max(1), (proba.argmax(1) == labels).astype(int)
    accuracy, mean_confidence = calibration_curve(correct, top, n_bins=n_bins, strategy="uniform")
    # calibration_curve drops empty bins; its bins are np.linspace(0, 1, n_bins + 1), searched on the inner edges
    counts = np.bincount(np.searchsorted(np.linspace(0, 1, n_bins + 1)[1:-1], top), minlength=n_bins)
    counts = counts[counts > 0]
    return dict(ece=float(np.sum(counts * np.abs(accuracy - mean_confidence)) / len(top)),
                accuracy=accuracy.tolist(), confidence=mean_confidence.tolist(), clips=counts.tolist(),
                mean_confidence=float(top.mean()), top1_accuracy=float(correct.mean()))

# %%
_before, _after = calibration_error(_over, _labels), calibration_error(calibrated(_over, 3.0), _labels)
assert _after["ece"] < 0.03 < 0.1 < _before["ece"], (_before["ece"], _after["ece"])
test_eq(sum(_before["clips"]), 2000)
_sure = np.tile([0.9, 0.1], (10, 1))                   # always 0.9, right 9 times in 10: calibrated
test_close(calibration_error(_sure, [0] * 9 + [1])["ece"], 0.0, eps=1e-9)
test_close(calibration_error(_sure, [0] * 5 + [1] * 5)["ece"], 0.4, eps=1e-9)
print(f"three times too sure: ECE {_before['ece']:.3f}; at its fitted temperature: {_after['ece']:.3f}")

# %%
#| export
def plot_reliability(curves: dict, title: str):
    "Accuracy against confidence for each of `curves` ({label: `calibration_error`'s dict}), the diagonal dashed."
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(5.5, 5), constrained_layout=True)
    ax.plot([0, 1], [0, 1], ls="--", color="gray", lw=1, label="calibrated")
    for label, c in curves.items():
        ax.plot(c["confidence"], c["accuracy"], marker="o", label=f"{label}: ECE {c['ece']:.3f}")
    ax.set(title=title, xlabel="confidence: top-class probability (mean per bin)", ylabel="accuracy in the bin",
           xlim=(0, 1), ylim=(0, 1))
    ax.legend(loc="upper left", fontsize=8)
    return fig

# %%
plot_reliability({"too sure": _before, "fitted temperature": _after}, "A made-up model, three times too sure")
plt.show()

# %% [markdown]
# ## Declining to answer
#
# The threshold is the score's quantile that keeps `answer_share` of
# the validation clips answered; among the scores, the one that answers fewest of the sounds set aside for choosing
# wins (ties: the first). The risk-coverage curve shows every threshold at once: the accuracy of the clips answered
# against the share answered.

# %%
#| export
ANSWER_SHARE = 0.9      # the share of in-class validation clips the threshold keeps answered

def threshold_for(scores, answer_share: float = ANSWER_SHARE) -> float:
    "The highest threshold under which at most `1 - answer_share` of `scores` fall (they are then `unknown`)."
    if not 0 < answer_share <= 1: raise ValueError(f"answer_share must be in (0, 1], got {answer_share}")
    return float(np.quantile(np.asarray(scores, dtype=np.float64), 1 - answer_share, method="lower"))

def answered_share(proba, rule: dict) -> float:
    "The share of clips a rejection `rule` ({'score', 'threshold'}) answers."
    return float(np.mean(confidence(proba, rule["score"]) >= rule["threshold"])) if len(proba) else float("nan")

def choose_rejection(val_proba, others_proba=None, answer_share: float = ANSWER_SHARE) -> dict:
    "The rejection rule: each score's threshold on validation, the score that answers fewest of `others_proba`."
    trials = {}
    for score in REJECTION_SCORES:
        rule = dict(score=score, threshold=threshold_for(confidence(val_proba, score), answer_share))
        trials[score] = dict(rule, val_answered=answered_share(val_proba, rule),
                             others_answered=None if others_proba is None else answered_share(others_proba, rule))
    best = min(trials, key=lambda s: trials[s]["others_answered"] if others_proba is not None else 0)
    return dict(score=best, threshold=trials[best]["threshold"], answer_share=answer_share, trials=trials,
                chosen_on="validation rotations" + (" and the sounds set aside for choosing" * (others_proba
                                                                                                 is not None)))

# %%
_val = calibrated(_over, 3.0)
_others = np.exp(log_softmax(_rng.normal(size=(500, 4)), axis=1))     # sounds of no class: flat-ish probabilities
_rule = choose_rejection(_val, _others)
test_close(answered_share(_val, _rule), 0.9, eps=0.002)
assert answered_share(_others, _rule) < 0.5, _rule
test_eq(choose_rejection(_val)["score"], REJECTION_SCORES[0])       # no other sounds: the first score
test_fail(lambda: threshold_for([0.5], 0), contains="answer_share")
{s: (round(t["threshold"], 3), round(t["others_answered"], 3)) for s, t in _rule["trials"].items()}

# %%
#| export
def risk_coverage(proba, labels, score: str = REJECTION_SCORES[0]) -> dict:
    "Accuracy of the answered clips against the share answered, every clip's score taken as the threshold in turn."
    proba, labels = np.asarray(proba), np.asarray(labels)
    order = np.argsort(-confidence(proba, score), kind="stable")
    correct = (proba.argmax(1) == labels)[order]
    answered = np.arange(1, len(order) + 1)
    return dict(coverage=(answered / len(order)).tolist(), accuracy=(np.cumsum(correct) / answered).tolist())

# %%
_rc = risk_coverage(_val, _labels)
test_close(_rc["accuracy"][-1], (_val.argmax(1) == _labels).mean())   # everything answered: plain accuracy
assert _rc["accuracy"][len(_labels) // 2] > _rc["accuracy"][-1]      # the surest half is more often right
