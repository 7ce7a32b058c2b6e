"""Two toy models registered by a plugin alone (`$URBANSOUND_MODELS` names this file): a CNN of a shape the study
does not have, and k nearest neighbours on the MFCC statistics. The reduced study runs with them (conftest.py)."""
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from torch import nn

from urbansound_nb.models import Standardize, register_network
from urbansound_nb.registry import MFCCModel, NetworkModel, register_model


class WideShallowCNN(nn.Module):
    "A CNN of a shape the study does not have: one wide convolution over all bands, then time pooling."
    def __init__(self, n_classes=10, n_mels=64, width=24, mean=None, std=None):
        super().__init__()
        self.norm = Standardize(n_mels, mean, std)
        self.conv = nn.Conv1d(n_mels, width, 5, padding=2)
        self.head = nn.Linear(width, n_classes)
    def forward(self, x): return self.head(self.conv(self.norm(x)).relu().amax(-1))


register_network("wide_shallow", WideShallowCNN)


@register_model
class WideShallow(NetworkModel):
    name, family, network, recipe, description = "wide_shallow", "from scratch", "wide_shallow", "small_cnn", \
        "a toy CNN"


@register_model
class KNN(MFCCModel):
    name, family, description = "knn", "engineered features", "MFCC statistics + k nearest neighbours"
    def estimator(self, n_neighbors=5): return make_pipeline(StandardScaler(), KNeighborsClassifier(n_neighbors))
    def grid(self, n_features): return [dict(n_neighbors=k) for k in (1, 5)]
