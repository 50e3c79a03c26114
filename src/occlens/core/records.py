"""What a dataset run records and finds, as plain data: one :class:`Record` per image (a row of the run's
manifest, :mod:`occlens.app.manifest`) and the :class:`Summary` of them (:func:`occlens.app.summary.summarize_run`).
The run writes them and the report (:mod:`occlens.present.report`) reads them; nothing here computes.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Record:
    """One image's entry: ``status`` is ``"ok"`` (outputs at ``DIR/images/STEM.*``) or ``"failed"`` (``error``)."""

    key: str
    path: str
    stem: str
    status: str
    label: int | None = None
    label_name: str | None = None
    predicted: int | None = None
    predicted_name: str | None = None
    confidence: float | None = None  # P(y = Q | x), the predicted class's probability
    label_probability: float | None = None  # P(y = K | x)
    loss: float | None = None  # L = -log P(y = target | x)
    error: str | None = None
    seconds: float = 0.0
    finished: str = ""
    # a multi-label truth (a CSV label such as 3;7): every true label, and the labels the model predicts
    # (probability above the threshold); label is then None
    true_labels: tuple[int, ...] | None = None
    predicted_labels: tuple[int, ...] | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def labelled(self) -> bool:
        return self.label is not None or self.true_labels is not None

    @property
    def correct(self) -> bool | None:
        """K == Q (a multi-label truth: the predicted labels are exactly the true ones), or None when the
        label is unknown or the image failed."""
        if self.predicted is None:
            return None
        if self.true_labels is not None:
            return set(self.predicted_labels or ()) == set(self.true_labels)
        return None if self.label is None else self.label == self.predicted


@dataclass(frozen=True)
class ClassCount:
    """One class: images truly of it, how many of those were right, how many images were predicted as it."""

    cls: int
    name: str
    images: int
    correct: int
    predicted: int


@dataclass(frozen=True)
class LabelCount:
    """One class of a multi-label run: images truly having it, how many of those the model predicts it for,
    how many it misses, and its false alarms (predicted on images that do not have it)."""

    cls: int
    name: str
    images: int
    predicted: int
    missed: int
    false_alarms: int


@dataclass(frozen=True)
class Summary:
    """What a run found: counts, accuracy over labelled images, the most confident mistakes, per-class counts
    (a multi-label run: accuracy is exact-match, every true label predicted and no other, and ``labels``
    holds the per-label counts)."""

    images: int
    explained: int
    labelled: int
    correct: int
    mistakes: tuple[Record, ...]  # most confident first
    classes: tuple[ClassCount, ...]  # by class index
    failed: tuple[Record, ...]
    labels: tuple[LabelCount, ...] = ()  # multi-label runs, by class index

    @property
    def accuracy(self) -> float | None:
        return self.correct / self.labelled if self.labelled else None

    @property
    def multi_label(self) -> bool:
        return bool(self.labels)
