"""`nextword eval`: nextword and its peers type the same texts under the same keystroke rule
(eval/ksr.py), and the results go side by side: JSON, a markdown table, a bar chart."""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from nextword.eval.baselines import (PRESAGE_CONFIG, PRESAGE_ENGLISH_DB, FrequencyPredictor, PresageNotInstalled,
                                     PresagePredictor, WordBasedPredictor, presage_missing)
from nextword.eval.ksr import PredictFn, simulate

if TYPE_CHECKING:
    from nextword.predict.predictor import Predictor

PREDICTORS = ("nextword", "presage", "word-based", "frequency")
NEEDS_PRESAGE = ("presage", "frequency")  # the frequency baseline counts come from Presage's database
# (summary key, column title); "{n}" is the number of suggestions shown
METRICS = (("ksr", "KSR@{n}"), ("word_start_top1", "top-1"), ("word_start_topn", "top-{n}"),
           ("hit_after_1", "hit@1"), ("hit_after_2", "hit@2"))


@dataclass
class Typist:
    """What types one text: suggestions per keystroke, and what to do in the pause after it."""
    predict: PredictFn
    idle: Callable[[str], None] | None = None


@dataclass
class Contender:
    name: str
    # a fresh typist for each text (its own session or learnt state), cleaned up after the text
    typist: Callable[[str], AbstractContextManager[Typist]]
    about: dict = field(default_factory=dict)  # how it was set up, for the report


def parse_predictors(value: str | None) -> list[str]:
    """The --predictors list ("nextword,presage"): known names, in the given order. None means all
    of them that can run here; the ones skipped, and why, are reported on stderr."""
    if value is None:
        missing = presage_missing()
        if missing:
            print(f"note: skipping {' and '.join(NEEDS_PRESAGE)}: {missing}", file=sys.stderr)
        return [name for name in PREDICTORS if not (missing and name in NEEDS_PRESAGE)]
    names = [name.strip() for name in value.split(",") if name.strip()]
    unknown = [name for name in names if name not in PREDICTORS]
    if unknown or not names:
        raise ValueError(f"unknown predictor(s) {', '.join(unknown) or value!r}; choose from {', '.join(PREDICTORS)}")
    return list(dict.fromkeys(names))


def make_contenders(names: list[str], n: int, load_nextword: Callable[[], Predictor],
                    speculate: bool = True) -> list[Contender]:
    """The named contenders; nextword's model is loaded only when it is one of them. Presage being
    missing raises PresageNotInstalled with how to install it."""
    if any(name in NEEDS_PRESAGE for name in names) and (missing := presage_missing()):
        raise PresageNotInstalled(missing)
    made = []
    for name in names:
        if name == "nextword":
            made.append(_nextword(load_nextword(), n, speculate))
        elif name == "presage":
            made.append(Contender(name, _presage_typist(n), {
                "config": str(PRESAGE_CONFIG), "suggestions": n, "user_model": "fresh per text, learns online"}))
        elif name == "word-based":
            made.append(Contender(name, _fresh(WordBasedPredictor),
                                  {"words": "in the text before the cursor, nearest first"}))
        else:
            frequency = FrequencyPredictor()
            made.append(Contender(name, _fresh(lambda: frequency), {
                "counts": f"Presage's English unigram table ({PRESAGE_ENGLISH_DB})", "words": len(frequency.words)}))
    return made


def _nextword(predictor: Predictor, n: int, speculate: bool) -> Contender:
    @contextmanager
    def typist(session: str) -> Iterator[Typist]:
        def predict(before: str, count: int) -> list[str]:
            return [s.word for s in predictor.predict(before, count, session=session)]

        def idle(before: str) -> None:  # the pause before the next key, as the server uses it
            predictor.speculate(before, n, session=session)

        try:
            yield Typist(predict, idle if speculate else None)
        finally:
            predictor.close_session(session)

    loaded = predictor.loaded
    return Contender("nextword", typist, {"model": str(loaded.path), "device": str(loaded.device),
                                          "dtype": str(loaded.dtype).removeprefix("torch."), "speculate": speculate})


def _presage_typist(n: int) -> Callable[[str], AbstractContextManager[Typist]]:
    @contextmanager
    def typist(_: str) -> Iterator[Typist]:
        with PresagePredictor(n) as presage:
            yield Typist(presage.predict)
    return typist


def _fresh(make: Callable[[], object]) -> Callable[[str], AbstractContextManager[Typist]]:
    @contextmanager
    def typist(_: str) -> Iterator[Typist]:
        yield Typist(make().predict)
    return typist


def read_texts(paths: list[Path], start: int = 0, chars: int | None = None) -> dict[str, str]:
    """Each file's text by its path: from character `start`, `chars` characters when given."""
    if start < 0 or (chars is not None and chars < 1):
        raise ValueError(f"--start must be at least 0 and --chars at least 1 (got {start} and {chars})")
    texts = {}
    for path in paths:
        text = path.read_text(encoding="utf-8")[start:]
        texts[str(path)] = text[:chars] if chars is not None else text
    return texts


def compare(contenders: list[Contender], texts: dict[str, str], n: int = 3, progress: bool = True) -> dict:
    """Every contender types every text; per text the simulator's summary, and the mean over texts
    of each accuracy metric (each text weighs the same)."""
    report: dict = {"n": n, "texts": {label: {"characters": len(text)} for label, text in texts.items()},
                    "predictors": {}}
    for contender in contenders:
        per_text = {}
        for label, text in texts.items():
            if progress:
                print(f"{contender.name} on {label}: {len(text)} characters", file=sys.stderr)
            started = time.perf_counter()
            with contender.typist(label) as typist:
                result = simulate(typist.predict, text, n, progress=progress, idle=typist.idle)
            per_text[label] = {**result.summary(), "seconds": time.perf_counter() - started}
        mean = {key: statistics.fmean(r[key] for r in per_text.values()) for key, _ in METRICS}
        report["predictors"][contender.name] = {"about": contender.about, "texts": per_text, "mean": mean}
    return report


def markdown_table(report: dict) -> str:
    """Per text, then the mean: one row per predictor, the accuracy metrics as columns."""
    n = report["n"]
    titles = [title.format(n=n) for _, title in METRICS]
    lines = ["| text | predictor | " + " | ".join(titles) + " |",
             "|---|---|" + "---:|" * len(titles)]

    def row(text: str, name: str, values: dict) -> str:
        return f"| {text} | {name} | " + " | ".join(f"{values[key]:.3f}" for key, _ in METRICS) + " |"

    for label in report["texts"]:
        for name, results in report["predictors"].items():
            lines.append(row(Path(label).name, name, results["texts"][label]))
    if len(report["texts"]) > 1:
        for name, results in report["predictors"].items():
            lines.append(row("**mean**", name, results["mean"]))
    return "\n".join(lines)


def write_plot(report: dict, path: Path) -> None:
    """Grouped bars: one panel per text and one for the mean, a bar per predictor and metric."""
    try:
        import matplotlib
    except ImportError as e:
        raise OSError("the plot needs matplotlib: pip install -e '.[plot]'") from e
    matplotlib.use("Agg")  # files only; no display needed
    import matplotlib.pyplot as plt

    n = report["n"]
    titles = [title.format(n=n) for _, title in METRICS]
    panels = [(Path(label).name, {name: r["texts"][label] for name, r in report["predictors"].items()})
              for label in report["texts"]]
    if len(panels) > 1:
        panels.append(("mean", {name: r["mean"] for name, r in report["predictors"].items()}))
    names = list(report["predictors"])
    width = 0.8 / len(names)
    figure, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4), sharey=True, squeeze=False)
    for ax, (title, values) in zip(axes[0], panels):
        for i, name in enumerate(names):
            xs = [m + (i - (len(names) - 1) / 2) * width for m in range(len(METRICS))]
            ax.bar(xs, [values[name][key] for key, _ in METRICS], width, label=name, color=f"C{i}")
        ax.set_title(title)
        ax.set_xticks(range(len(METRICS)), titles)
        ax.set_ylim(0, 1)
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].set_ylabel("rate")
    axes[0][-1].legend(loc="upper right", fontsize="small")
    figure.suptitle(f"Next-word prediction, top {n} suggestions shown")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)
