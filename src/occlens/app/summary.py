"""What a run found: :func:`summarize_run` of its records (counts, accuracy, the most confident mistakes, per-class
or per-label counts) and :func:`summary_text`, the summary as the command prints it."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from ..core.records import ClassCount, LabelCount, Record, Summary


def summarize_run(records: Sequence[Record], mistakes: int = 10, names: Sequence[str] | None = None) -> Summary:
    """The summary of ``records`` (one per image of the dataset); ``names``: the model's class names, for
    the per-label counts of a multi-label run."""
    ok = [r for r in records if r.ok]
    labelled = [r for r in ok if r.labelled]
    wrong = sorted((r for r in labelled if not r.correct), key=lambda r: (-(r.confidence or 0.0), r.key))
    several = [r for r in labelled if r.true_labels is not None]
    single = [r for r in labelled if r.true_labels is None]
    known: dict[int, str] = {}
    for r in ok:
        if r.predicted is not None:  # None: a model without class scores (its predicted_name says what was explained)
            known[r.predicted] = r.predicted_name or str(r.predicted)
        if r.label is not None:
            known[r.label] = r.label_name or str(r.label)
    # one pass each (not one per class: 50,000 images of 1,000 classes)
    images, correct = Counter(r.label for r in single), Counter(r.label for r in single if r.correct)
    predicted = Counter(r.predicted for r in ok if r.predicted is not None)
    classes = tuple(ClassCount(c, known[c], images[c], correct[c], predicted[c]) for c in sorted(known))
    per_label = ()
    if several:
        true = Counter(c for r in several for c in r.true_labels)
        hits = Counter(c for r in several for c in set(r.true_labels) & set(r.predicted_labels or ()))
        alarms = Counter(c for r in several for c in set(r.predicted_labels or ()) - set(r.true_labels))

        def name(c: int) -> str:
            return names[c] if names is not None and 0 <= c < len(names) else known.get(c, str(c))

        per_label = tuple(
            LabelCount(c, name(c), true[c], hits[c], true[c] - hits[c], alarms[c])
            for c in sorted(set(true) | set(alarms))
        )
    return Summary(
        images=len(records),
        explained=len(ok),
        labelled=len(labelled),
        correct=sum(bool(r.correct) for r in labelled),
        mistakes=tuple(wrong[:mistakes]),
        classes=classes if not several else tuple(c for c in classes if c.images or c.predicted),
        failed=tuple(r for r in records if not r.ok),
        labels=per_label,
    )


def summary_text(summary: Summary, done_now: int, seconds: float, rows: int = 30) -> str:
    """The summary as the command prints it."""
    lines: list[str] = []
    rate = f", {done_now / seconds:.2f} images/s" if done_now and seconds > 0 else ""
    lines.append(
        f"explained {summary.explained} of {summary.images} images ({done_now} this run in {duration(seconds)}{rate}); "
        f"{len(summary.failed)} failed"
    )
    if summary.accuracy is None and not summary.classes and summary.explained:
        lines.append(f"{summary.explained} images explained (no classes: no accuracy)")  # a segmenter, a detector...
    elif summary.accuracy is None:
        lines.append("accuracy: - (no labels)")
    elif summary.multi_label:
        lines.append(
            f"exact-match accuracy: {summary.correct}/{summary.labelled} = {100 * summary.accuracy:.1f}% "
            f"(every true label predicted, and no other)"
        )
    else:
        lines.append(f"accuracy: {summary.correct}/{summary.labelled} = {100 * summary.accuracy:.1f}%")
    if summary.mistakes and summary.multi_label:
        names = {c.cls: c.name for c in summary.labels}  # every true or predicted label of the run has a row
        lines.append("most confident mistakes:")
        lines.append(f"  {'P(Q)':>6}  {'image':<32} {'predicted labels':<24} true labels")
        for r in summary.mistakes:
            said = ";".join(names.get(c, str(c)) for c in r.predicted_labels or ()) or "-"
            truth = ";".join(names.get(c, str(c)) for c in r.true_labels or (() if r.label is None else (r.label,)))
            lines.append(f"  {r.confidence:>6.3f}  {r.key[:32]:<32} {said[:24]:<24} {truth}")
    elif summary.mistakes:
        lines.append("most confident mistakes:")
        lines.append(f"  {'P(Q)':>6}  {'image':<32} {'predicted Q':<24} true K")
        for r in summary.mistakes:
            lines.append(f"  {r.confidence:>6.3f}  {r.key[:32]:<32} {r.predicted_name[:24]:<24} {r.label_name}")
    if summary.multi_label:
        lines.append(f"per label:\n  {'label':<28} {'images':>6} {'predicted':>9} {'missed':>6} {'false alarms':>12}")
        for c in summary.labels[:rows]:
            lines.append(f"  {f'{c.cls} {c.name}'[:28]:<28} {c.images:>6} {c.predicted:>9} {c.missed:>6} "
                         f"{c.false_alarms:>12}")  # fmt: skip
        if len(summary.labels) > rows:
            lines.append(f"  ... {len(summary.labels) - rows} more labels")
    elif summary.classes:
        lines.append(f"per class:\n  {'class':<28} {'images':>6} {'correct':>7} {'accuracy':>8} {'predicted':>9}")
        for c in summary.classes[:rows]:
            acc = f"{100 * c.correct / c.images:.1f}%" if c.images else "-"
            lines.append(f"  {f'{c.cls} {c.name}'[:28]:<28} {c.images:>6} {c.correct:>7} {acc:>8} {c.predicted:>9}")
        if len(summary.classes) > rows:
            lines.append(f"  ... {len(summary.classes) - rows} more classes in the report")
    if summary.failed:
        lines.append("failed:")
        for r in summary.failed:
            lines.append(f"  {r.key}: {r.error}")
    return "\n".join(lines)


def duration(seconds: float) -> str:
    """``42s``, ``3m05s`` or ``2h07m``."""
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds // 60 % 60:02d}m"


DEFAULT_WORDS = {  # what a model's default target (no target given) explains, by the kind it turns out to be
    "segment": "each predicted segment (its mean log P over its pixels)",
    "box": "each detected box (its IoU · score)",
    "regression": "the model's output 0",
}


def explained_words(target, names: Sequence[str] | None, kind: str | None = None) -> str:
    """What a map speaks of, in words, for the line that says which sign means what: "the prediction" (no
    target, a classifier), "each predicted segment ..." (no target, ``kind`` the results' ``target_kind``: a
    segmenter's, a detector's, a declared regression's), "the explained class 281 tabby" (a class, as
    :func:`occlens.core.targets.resolve_target` gives it), or "the explained target SPEC" (another kind)."""
    if target is None:
        return DEFAULT_WORDS.get(kind or "class", "the prediction")
    if isinstance(target, int):
        name = names[target] if names is not None and 0 <= target < len(names) else None
        return f"the explained class {target}" + (f" {name}" if name else "")
    spec = target.spec() if callable(getattr(target, "spec", None)) else target
    return f"the explained target {spec}"


def sign_note(explained: str) -> str:
    """The words under a table of maps: which sign of δL means what."""
    return f"(δL < 0: the window supported {explained})"
