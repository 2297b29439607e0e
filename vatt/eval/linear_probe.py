"""Classifiers on frozen features: the official probe, a true linear probe, and split averaging.

Protocol (spec §8, `evaluators.linear_classifier`): features are the backbone's `features_pooled`;
training uses one window per clip ([N, D]); test predictions are the mean *softmax* over the test
windows ([N, W, D], W = 4 officially); the score is top-1 averaged over the official splits
(UCF101 / HMDB51: 3 splits, ESC-50: 5 folds).

Two classifiers:
- `"official"`: the official Keras head, ported to torch — Dense(128, no activation, glorot_normal)
  → Dropout(0.9) → Dense(C, glorot_normal, L2 0.1) → softmax, Adam lr 5e-4, batch 64, 1000 epochs,
  seed 1. It has a hidden layer, but no non-linearity, so it is still a linear map of the features.
- `"logistic"`: multinomial logistic regression on standardised features (scikit-learn), the usual
  meaning of "linear probe" elsewhere, as a cross-check that does not depend on the official
  head's heavy regularisation or on its training schedule.
"""
from __future__ import annotations

import csv
import math
import os
import time
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from scipy.special import softmax
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from torch import nn

from vatt.configs import input_spec
from vatt.data.classification import ClassificationDataset, LabeledItem
from vatt.data.sampling import collate
from vatt.data.manifest import PATH_COLUMNS
from vatt.eval.metrics import to_numpy, topk_accuracy
from vatt.inference import forward_views, modality_outputs, model_device
from vatt.precision import autocast_dtype

CLASSIFIERS = ("official", "logistic")


@dataclass(frozen=True)
class OfficialProbeConfig:
    """Hyper-parameters of the official probe (`evaluators.linear_classifier`)."""

    hidden_size: int = 128
    dropout_rate: float = 0.9  # the fraction of hidden units *dropped* during training
    l2: float = 0.1  # Keras L2 on the last kernel: l2 * sum(w ** 2), added to the mean cross-entropy
    learning_rate: float = 5e-4
    batch_size: int | None = 64  # None: full batch (one step per epoch)
    epochs: int = 1000
    seed: int = 1
    adam_eps: float = 1e-7  # Keras' default epsilon, not torch's 1e-8


@dataclass(frozen=True)
class LogisticProbeConfig:
    """Multinomial logistic regression on standardised features.

    `C` is the inverse L2 strength. None (default) picks it from `C_grid` by top-1 on a stratified
    held-out `holdout_fraction` of the training set, then refits on the whole training set with it;
    the test set is never used to choose it.
    """

    C: float | None = None
    C_grid: tuple[float, ...] = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0)
    holdout_fraction: float = 0.2
    max_iter: int = 1000
    seed: int = 1


def _labels(labels, n: int) -> np.ndarray:
    labels = to_numpy(labels).astype(np.int64).reshape(-1)  # accepts [N] or the official [N, 1]
    if labels.shape[0] != n:
        raise ValueError(f"{labels.shape[0]} labels for {n} feature rows")
    if labels.size and labels.min() < 0:
        raise ValueError("labels must be non-negative class indices")
    return labels


def _train_rows(features, labels):
    """Training features [N, D], or [N, W, D] with every window a training sample of its clip's label."""
    x = to_numpy(features, dtype=np.float32)
    y = _labels(labels, x.shape[0])
    if x.ndim == 3:
        y = np.repeat(y, x.shape[1])
        x = x.reshape(-1, x.shape[-1])
    if x.ndim != 2:
        raise ValueError(f"training features must be [N, D] or [N, W, D], got shape {x.shape}")
    return x, y


def _probe_loss_and_grads(params, x, y, mask, l2: float):
    """Loss and gradients of the official head on one batch, written out by hand.

    The head is two affine maps with a dropout mask between them, so the backward pass is four matrix
    products; doing it by hand avoids autograd's per-op overhead, which dominates at batch 64 (about 5x
    faster on CPU). `tests/test_linear_probe.py` checks it against autograd.

    Args:
        params: (w1 [D, H], b1 [H], w2 [H, C], b2 [C]).
        x: [B, D] features; y: [B] int labels; mask: [B, H] dropout mask already scaled by 1 / keep.
        l2: Keras L2 factor of the last kernel (loss += l2 * sum(w2 ** 2)).
    Returns:
        (loss, (g_w1, g_b1, g_w2, g_b2)); the loss is mean cross-entropy + L2, as Keras minimises it.
    """
    w1, b1, w2, b2 = params
    batch = x.shape[0]
    hidden = torch.addmm(b1, x, w1).mul_(mask)  # [B, H]
    logits = torch.addmm(b2, hidden, w2)  # [B, C]
    log_p = torch.log_softmax(logits, dim=1)
    rows = torch.arange(batch, device=x.device)
    loss = -log_p[rows, y].mean() + l2 * (w2 * w2).sum()
    d_logits = log_p.exp_()  # softmax - one_hot, over the batch mean
    d_logits[rows, y] -= 1.0
    d_logits.div_(batch)
    g_w2 = torch.addmm(w2, hidden.T, d_logits, beta=2.0 * l2)  # hidden^T d_logits + 2 l2 w2
    g_b2 = d_logits.sum(0)
    d_hidden = (d_logits @ w2.T).mul_(mask)
    g_w1 = x.T @ d_hidden
    g_b1 = d_hidden.sum(0)
    return loss, (g_w1, g_b1, g_w2, g_b2)


class OfficialProbe:
    """The official linear-classification head, trained in torch on CPU (or any device).

    Matches the Keras computation: glorot_normal (truncated) kernels and zero biases, inverted dropout,
    mean softmax cross-entropy plus 0.1 * sum(w2 ** 2), Keras' Adam update
    (var -= lr * sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + eps), eps = 1e-7), a fresh shuffle every
    epoch with a partial last batch. Remaining differences: cross-entropy is computed from the logits
    (recent Keras does the same for a softmax Dense layer; older versions clip probabilities to
    [1e-7, 1 - 1e-7], which only matters for p < 1e-7), and the random streams differ, so a seed
    reproduces runs of this port, not of TF.
    """

    def __init__(self, config: OfficialProbeConfig = OfficialProbeConfig(), device: str = "cpu",
                 num_threads: int | None = 1):
        """`num_threads`: torch CPU threads while fitting (restored afterwards). One is the default
        because batch-64 products are too small to pay for thread synchronisation: at UCF101 size
        (9.5k x 1024, 101 classes) one thread took 0.18 s/epoch, two took 1.0 s/epoch on 2 shared
        cores. None keeps torch's setting."""
        self.config = config
        self.device = device
        self.num_threads = num_threads
        self.params: dict | None = None
        self.num_classes: int | None = None
        self.final_loss: float | None = None  # mean training loss of the last epoch

    @staticmethod
    def _glorot_normal(fan_in: int, fan_out: int, generator):
        # Keras glorot_normal: a normal truncated at 2 std, scaled so that the *truncated* std is
        # sqrt(2 / (fan_in + fan_out)); 0.8796... is the std of a unit normal truncated at ±2.
        std = math.sqrt(2.0 / (fan_in + fan_out)) / 0.87962566103423978
        # trunc_normal_ takes no generator; rejection-sample from the seeded generator instead.
        draws, need = [], fan_in * fan_out
        while need > 0:
            d = torch.randn(need + need // 10 + 16, generator=generator)
            d = d[d.abs() <= 2.0][:need]
            draws.append(d)
            need -= d.numel()
        return torch.cat(draws).reshape(fan_in, fan_out) * std

    def fit(self, features, labels, num_classes: int | None = None) -> "OfficialProbe":
        """Train from scratch on features [N, D] (or [N, W, D], windows as samples) and int labels [N]."""
        cfg = self.config
        x_np, y_np = _train_rows(features, labels)
        num_classes = int(num_classes if num_classes is not None else y_np.max() + 1)
        if y_np.max() >= num_classes:
            raise ValueError(f"label {y_np.max()} >= num_classes {num_classes}")
        self.num_classes = num_classes
        n, dim = x_np.shape
        threads = torch.get_num_threads()
        if self.num_threads is not None:
            torch.set_num_threads(self.num_threads)
        try:
            gen = torch.Generator().manual_seed(cfg.seed)  # init, shuffling and dropout: one seeded stream
            params = [self._glorot_normal(dim, cfg.hidden_size, gen), torch.zeros(cfg.hidden_size),
                      self._glorot_normal(cfg.hidden_size, num_classes, gen), torch.zeros(num_classes)]
            params = [p.to(self.device) for p in params]
            moments = [torch.zeros_like(p) for p in params]
            second_moments = [torch.zeros_like(p) for p in params]
            x = torch.from_numpy(x_np).to(self.device)
            y = torch.from_numpy(y_np).to(self.device)
            batch = n if cfg.batch_size is None else min(cfg.batch_size, n)
            keep = 1.0 - cfg.dropout_rate
            beta1, beta2 = 0.9, 0.999  # Keras defaults, as in the official code
            step = 0
            for _ in range(cfg.epochs):
                # Keras fit(shuffle=True): a fresh permutation every epoch, the last batch may be partial.
                # Gathering and drawing the dropout masks once per epoch keeps per-step work small.
                order = torch.randperm(n, generator=gen).to(self.device)
                x_epoch, y_epoch = x[order], y[order]
                masks = (torch.rand(n, cfg.hidden_size, generator=gen) < keep).float().div_(keep).to(self.device)
                epoch_loss = torch.zeros((), device=self.device)
                for start in range(0, n, batch):
                    stop = start + batch
                    loss, grads = _probe_loss_and_grads(params, x_epoch[start:stop], y_epoch[start:stop],
                                                        masks[start:stop], cfg.l2)
                    epoch_loss += loss * (min(stop, n) - start)  # a tensor: no device sync per step
                    step += 1
                    lr_t = cfg.learning_rate * math.sqrt(1.0 - beta2 ** step) / (1.0 - beta1 ** step)
                    for p, g, m, v in zip(params, grads, moments, second_moments):
                        m.mul_(beta1).add_(g, alpha=1.0 - beta1)
                        v.mul_(beta2).addcmul_(g, g, value=1.0 - beta2)
                        p.addcdiv_(m, v.sqrt().add_(cfg.adam_eps), value=-lr_t)
                self.final_loss = float(epoch_loss) / n
        finally:
            torch.set_num_threads(threads)
        self.params = dict(zip(("w1", "b1", "w2", "b2"), params))
        return self

    def predict_logits(self, features) -> np.ndarray:
        """Logits [..., C] for features [..., D] (no dropout at test time)."""
        if self.params is None:
            raise RuntimeError("fit() first")
        p = self.params
        x = torch.as_tensor(to_numpy(features, dtype=np.float32), device=self.device)
        with torch.no_grad():
            return ((x @ p["w1"] + p["b1"]) @ p["w2"] + p["b2"]).cpu().numpy().astype(np.float64)

    def predict_proba(self, features) -> np.ndarray:
        return softmax(self.predict_logits(features), axis=-1)


class LogisticProbe:
    """Multinomial logistic regression (lbfgs) on standardised features, see `LogisticProbeConfig`."""

    def __init__(self, config: LogisticProbeConfig = LogisticProbeConfig()):
        self.config = config
        self.model = None
        self.C: float | None = None
        self.holdout_top1: dict[float, float] = {}  # C -> held-out top-1, when C was selected
        self.num_classes: int | None = None

    def _make(self, C: float):
        # lbfgs fits the multinomial (softmax) model for more than two classes.
        return make_pipeline(StandardScaler(),
                             LogisticRegression(C=C, max_iter=self.config.max_iter, random_state=self.config.seed))

    def fit(self, features, labels, num_classes: int | None = None) -> "LogisticProbe":
        cfg = self.config
        x, y = _train_rows(features, labels)
        self.num_classes = int(num_classes if num_classes is not None else y.max() + 1)
        if cfg.C is not None:
            self.C = float(cfg.C)
        else:
            counts = np.bincount(y)
            # Stratify when every present class can give one sample to each side.
            stratify = y if counts[counts > 0].min() >= 2 else None
            x_fit, x_val, y_fit, y_val = train_test_split(
                x, y, test_size=cfg.holdout_fraction, random_state=cfg.seed, stratify=stratify)
            for C in cfg.C_grid:
                model = self._make(C).fit(x_fit, y_fit)
                self.holdout_top1[C] = float(np.mean(model.predict(x_val) == y_val))
            # Ties go to the smallest C (strongest regularisation), the grid being sorted ascending.
            self.C = max(sorted(cfg.C_grid), key=lambda c: self.holdout_top1[c])
        self.model = self._make(self.C).fit(x, y)
        return self

    def predict_proba(self, features) -> np.ndarray:
        """Class probabilities [..., num_classes] (classes absent from training get probability 0)."""
        if self.model is None:
            raise RuntimeError("fit() first")
        x = to_numpy(features, dtype=np.float32)
        lead = x.shape[:-1]
        proba = self.model.predict_proba(x.reshape(-1, x.shape[-1]))
        full = np.zeros((proba.shape[0], self.num_classes))
        full[:, self.model.classes_] = proba
        return full.reshape(*lead, self.num_classes)


def predict_windows(probe, features, num_windows: int | None = None) -> np.ndarray:
    """Official test-time averaging: mean softmax over the windows of each clip.

    `features` is [N, W, D], or [N * W, D] with `num_windows=W` (windows of a clip consecutive, the
    official layout), or [N, D] (one window). Returns [N, C].
    """
    x = to_numpy(features, dtype=np.float32)
    if x.ndim == 2 and num_windows not in (None, 1):
        if x.shape[0] % num_windows:
            raise ValueError(f"{x.shape[0]} rows are not a multiple of num_windows={num_windows}")
        x = x.reshape(-1, num_windows, x.shape[-1])
    if x.ndim == 2:
        x = x[:, None, :]
    if x.ndim != 3:
        raise ValueError(f"test features must be [N, D], [N*W, D] or [N, W, D], got shape {x.shape}")
    if num_windows is not None and x.shape[1] != num_windows:
        raise ValueError(f"num_windows={num_windows} but features have {x.shape[1]} windows")
    return probe.predict_proba(x).mean(axis=1)


def make_probe(classifier: str = "official", config=None, device: str = "cpu"):
    """An unfitted probe: "official" (OfficialProbe) or "logistic" (LogisticProbe)."""
    if classifier == "official":
        return OfficialProbe(config or OfficialProbeConfig(), device=device)
    if classifier == "logistic":
        return LogisticProbe(config or LogisticProbeConfig())
    raise ValueError(f"classifier must be one of {CLASSIFIERS}, got {classifier!r}")


@dataclass(frozen=True)
class ProbeProtocol:
    """What a probe accuracy means: classifier, its hyper-parameters, windows and data sizes."""

    dataset: str
    classifier: str
    config: dict
    num_windows_test: int
    num_splits: int
    num_classes: int
    feature_dim: int
    num_train: tuple[int, ...]  # per split, clips
    num_test: tuple[int, ...]

    def describe(self) -> str:
        cfg = ", ".join(f"{k}={v}" for k, v in self.config.items())
        return (f"{self.dataset}: {self.classifier} probe ({cfg}) on {self.feature_dim}-d frozen features, "
                f"{self.num_classes} classes, test = mean softmax over {self.num_windows_test} windows, "
                f"top-1 averaged over {self.num_splits} split(s); train/test clips per split "
                f"{list(zip(self.num_train, self.num_test))}")


@dataclass(frozen=True)
class ProbeResult:
    """Accuracies (fractions) over the splits, with the protocol.

    `mean` has "top1" and "top5" averaged over splits; `per_split` one dict per split with
    "top1", "top5", "train_top1" (and "C", the regularisation used, for the logistic probe);
    `split_names` names them.
    """

    mean: dict[str, float]
    per_split: list[dict[str, float]]
    split_names: list[str]
    protocol: ProbeProtocol
    probes: list = field(default_factory=list, repr=False, compare=False)  # the fitted classifiers

    def as_dict(self) -> dict:
        return {"mean": dict(self.mean), "per_split": [dict(s) for s in self.per_split],
                "split_names": list(self.split_names), "protocol": asdict(self.protocol)}


def evaluate_splits(splits: Sequence, *, classifier: str = "official", config=None, num_classes: int | None = None,
                    split_names: Sequence[str] | None = None, dataset: str = "features", device: str = "cpu",
                    keep_probes: bool = False) -> ProbeResult:
    """Train and test one probe per split and average the accuracies over splits.

    Args:
        splits: a list of ((train_features, train_labels), (test_features, test_labels)). Train
            features [N, D]; test features [M, W, D] (windows averaged) or [M, D]; labels int [N].
        classifier: "official" or "logistic"; `config` is its OfficialProbeConfig / LogisticProbeConfig.
        num_classes: default 1 + the largest label seen in any split.
        dataset: name recorded in the protocol, e.g. "ucf101".
    """
    if not splits:
        raise ValueError("no splits given")
    probe_config = make_probe(classifier, config).config
    if num_classes is None:
        num_classes = 1 + max(int(to_numpy(lab).max()) for (_, y_tr), (_, y_te) in splits for lab in (y_tr, y_te))
    names = list(split_names) if split_names is not None else [f"split{i + 1}" for i in range(len(splits))]
    if len(names) != len(splits):
        raise ValueError(f"{len(names)} split names for {len(splits)} splits")

    per_split, probes, windows, dims, n_train, n_test = [], [], set(), set(), [], []
    for (x_train, y_train), (x_test, y_test) in splits:
        x_test = to_numpy(x_test, dtype=np.float32)
        y_test = _labels(y_test, x_test.shape[0])
        probe = make_probe(classifier, probe_config, device).fit(x_train, y_train, num_classes)
        test_proba = predict_windows(probe, x_test)
        x_tr, y_tr = _train_rows(x_train, y_train)
        scores = topk_accuracy(test_proba, y_test, ks=(1, 5))
        scores["train_top1"] = topk_accuracy(probe.predict_proba(x_tr), y_tr, ks=(1,))["top1"]
        if isinstance(probe, LogisticProbe):
            scores["C"] = probe.C  # chosen per split on held-out training data when config.C is None
        per_split.append(scores)
        if keep_probes:
            probes.append(probe)
        windows.add(x_test.shape[1] if x_test.ndim == 3 else 1)
        dims.add(x_tr.shape[-1])
        n_train.append(int(to_numpy(x_train).shape[0]))
        n_test.append(int(x_test.shape[0]))
    if len(windows) != 1 or len(dims) != 1:
        raise ValueError(f"splits disagree on test windows {sorted(windows)} or feature size {sorted(dims)}")

    protocol = ProbeProtocol(dataset=dataset, classifier=classifier, config=asdict(probe_config),
                             num_windows_test=windows.pop(), num_splits=len(splits), num_classes=num_classes,
                             feature_dim=dims.pop(), num_train=tuple(n_train), num_test=tuple(n_test))
    mean = {k: float(np.mean([s[k] for s in per_split])) for k in ("top1", "top5")}
    return ProbeResult(mean=mean, per_split=per_split, split_names=names, protocol=protocol, probes=probes)


# --------------------------------------------------------------------------------------------------
# Features of labelled files, and the splits they are probed on
# --------------------------------------------------------------------------------------------------

Split = tuple[str, list, list]  # (name, training items, test items)


def _read_column(csv_path: str | os.PathLike, column: str) -> list[str]:
    with open(csv_path, encoding="utf-8-sig", newline="") as f:
        reader = csv.DictReader(f)
        if column not in (reader.fieldnames or []):
            raise ValueError(f"{csv_path}: no column {column!r}; columns are {reader.fieldnames}")
        return [(r[column] or "").strip() for r in reader]


def probe_splits(data: str | os.PathLike, *, split_column: str | None = None, fold_column: str | None = None,
                 ucf101: str | os.PathLike | None = None, hmdb51: str | os.PathLike | None = None,
                 splits: Sequence[str] | None = None, where: Mapping[str, Any] | None = None,
                 path_column: str | None = None, label_column: str = "label", root: str | os.PathLike | None = None,
                 train_value: str = "train", test_value: str = "test") -> tuple[list[Split], list[str]]:
    """[(split name, train items, test items)] and the class names, for one of the split conventions:

    - `ucf101` / `hmdb51`: the official split files (their folder), `data` the folder of the videos;
      splits "1", "2", "3" by default;
    - `split_column`: one split of a CSV, rows whose column is `train_value` / `test_value`;
    - `fold_column`: each fold of a CSV is the test set once, the other folds train (ESC-50: 5 folds).
    `splits` keeps a subset (split numbers or fold values); `where` keeps CSV rows (column -> values).
    """
    wanted = list(splits) if splits else None
    where = dict(where or {})
    if ucf101 or hmdb51:
        out, classes = [], None
        for k in wanted or ["1", "2", "3"]:
            if ucf101:
                tr = ClassificationDataset.from_ucf101(data, Path(ucf101) / f"trainlist0{k}.txt")
                te = ClassificationDataset.from_ucf101(data, Path(ucf101) / f"testlist0{k}.txt")
            else:
                tr = ClassificationDataset.from_hmdb51(data, hmdb51, split=int(k), subset="train")
                te = ClassificationDataset.from_hmdb51(data, hmdb51, split=int(k), subset="test")
            if tr.classes != te.classes or (classes is not None and tr.classes != classes):
                raise ValueError(f"split {k}: the class lists of the split files disagree")
            classes = tr.classes
            out.append((f"split{k}", tr.items, te.items))
        return out, classes

    if path_column is None:  # detected as in the other commands
        with open(data, encoding="utf-8-sig", newline="") as f:
            header = next(csv.reader(f), [])
        path_column = next((c for c in PATH_COLUMNS if c in header), None)
        if path_column is None:
            raise ValueError(f"{data}: no file path column (looked for {', '.join(PATH_COLUMNS)}; name it with "
                             f"--path-column); columns are {header}")
    common = dict(path_column=path_column, label_column=label_column, root=root)
    classes = ClassificationDataset.from_csv(data, where=where or None, **common).classes

    def subset(extra: dict, extra_not: dict | None = None):
        return ClassificationDataset.from_csv(data, where={**where, **extra}, where_not=extra_not,
                                              classes=classes, **common).items

    if split_column:
        return [(f"{split_column}={test_value}", subset({split_column: train_value}),
                 subset({split_column: test_value}))], classes
    if not fold_column:
        raise ValueError("name the splits: split_column, fold_column, ucf101 or hmdb51")
    values = _read_column(data, fold_column)
    folds = sorted(set(values) - {""}, key=lambda v: (0, int(v)) if v.lstrip("-").isdigit() else (1, v))
    folds = [f for f in folds if wanted is None or f in wanted]
    if len(folds) < (1 if wanted else 2):
        raise ValueError(f"--fold-column {fold_column}: need at least two folds, found {folds}")
    return [(f"{fold_column}={f}", subset({}, {fold_column: f}), subset({fold_column: f})) for f in folds], classes


def extract_features(model: nn.Module, items: Sequence[LabeledItem], classes: Sequence[str], modality: str,
                     num_windows: int, fps: float | None, *, batch_size: int, workers: int, precision: str,
                     progress: Callable[[int, int], None] | None = None) -> np.ndarray:
    """Backbone pooled features `[N, W, D]` (float32 numpy) of labelled items: the middle window
    (num_windows=1) or W linearly spaced windows, with the official evaluation transforms."""
    spec = input_spec(model, fps)
    if modality == "video":
        sizes = dict(num_frames=spec.num_frames, fps=spec.fps, size=spec.size)
    else:
        sizes = dict(audio_samples=spec.audio_samples, sample_rate=spec.sample_rate)
    data = ClassificationDataset(items, classes, modality=modality, train=False, num_windows=num_windows,
                                 multi_crop=False, strict=True, **sizes)
    loader = torch.utils.data.DataLoader(data, batch_size=max(1, batch_size // num_windows), collate_fn=collate,
                                         num_workers=workers)
    features, _ = forward_views(model, loader, modality, lambda x: modality_outputs(model, modality, x)["features"],
                                dtype=autocast_dtype(precision, model_device(model)),
                                progress=(lambda done: progress(done, len(items))) if progress else None)
    return features.astype(np.float32)


ProgressBars = Callable[[str, int], AbstractContextManager]  # (description, total) -> a `(done, total)` callable


def probe_features(model: nn.Module, splits: Sequence[Split], classes: Sequence[str], modality: str, *,
                   num_windows: int = 4, fps: float | None = None, batch_size: int = 8, workers: int = 0,
                   precision: str = "fp32", progress: ProgressBars | None = None) -> list:
    """The feature splits `evaluate_splits` takes, `[((train x [n, D], y), (test x [m, W, D], y)), ...]`:
    each clip is embedded once per role, its middle window when it trains, W windows when it tests.
    `progress(description, total)` makes the progress callback of each pass (a context manager)."""
    def unique(items):
        return list({(it.path, it.label): it for it in items}.values())

    def features(items, windows, what):
        kw = dict(batch_size=batch_size, workers=workers, precision=precision)
        if progress is None:
            return extract_features(model, items, classes, modality, windows, fps, **kw)
        with progress(what, len(items)) as bar:
            return extract_features(model, items, classes, modality, windows, fps, progress=bar, **kw)

    train_items = unique(it for _, tr, _ in splits for it in tr)
    test_items = unique(it for _, _, te in splits for it in te)
    train_x = features(train_items, 1, "features: training clips (middle window)")
    test_x = features(test_items, num_windows, f"features: test clips ({num_windows} windows)")
    train_row = {(it.path, it.label): i for i, it in enumerate(train_items)}
    test_row = {(it.path, it.label): i for i, it in enumerate(test_items)}
    feature_splits = []
    for _, tr, te in splits:
        tr_idx = [train_row[(it.path, it.label)] for it in tr]
        te_idx = [test_row[(it.path, it.label)] for it in te]
        feature_splits.append(((train_x[tr_idx, 0], np.array([it.label for it in tr])),
                               (test_x[te_idx], np.array([it.label for it in te]))))
    return feature_splits


def evaluate_classifiers(feature_splits: Sequence, classifiers: Sequence[str], *, epochs: int | None = None,
                         **kwargs: Any) -> dict[str, tuple[ProbeResult, float]]:
    """`evaluate_splits` with each classifier; classifier -> (result, seconds). `epochs` sets the official
    probe's (default: its config's, 1000)."""
    results = {}
    for c in classifiers:
        config = replace(OfficialProbeConfig(), epochs=epochs) if c == "official" and epochs else None
        t0 = time.perf_counter()
        results[c] = (evaluate_splits(feature_splits, classifier=c, config=config, **kwargs), time.perf_counter() - t0)
    return results
