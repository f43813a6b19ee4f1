"""Why this word: the next words with their probabilities, and where the model looked.

    >>> e = explain(predictor, "The capital of France is ")
    >>> e.suggestions[0], e.attended[:2]
    (Suggestion(word='Paris', ...), [AttendedWord(word='France', ...), AttendedWord(word='is', ...)])

The attention shown is that of the last context token, whose output predicts the first token of
the next word (`probe_attention`), read from the session's warm cache for the cost of one decode
token. By default it is averaged over all heads of the last quarter of the layers: tried on a
few sentences, these name the words a reader would point to ("France" for "Paris", "violin" for
"guitar"), while the mean over all layers is dominated by the query token's neighbours and "the".
Token attention is summed into words (" Par" + "is" -> "Paris").
"""

from __future__ import annotations

import codecs
import math
from bisect import bisect_right
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from torch import Tensor

from nextword.predict.predictor import Predictor, Suggestion
from nextword.predict.text import WORD_RE

LAST_LAYERS_SHARE = 4  # by default, average the last 1/4 of the layers (8 of SmolLM2's 30)
HEATMAP_TOKENS = 64  # the heatmap shows the context's last tokens only, so labels stay readable


@dataclass(frozen=True)
class AttendedWord:
    word: str
    start: int  # character offset in `ContextAttention.text`
    weight: float  # its share of the attention on the context (document-start token left out)


@dataclass(frozen=True)
class ContextAttention:
    """The attention of one prediction over its context window."""
    text: str  # the context window the model saw (before the partial word and the spaces before it)
    tokens: list[str]  # the window's tokens as text
    spans: list[tuple[int, int]]  # each token's characters in `text`
    weights: Tensor  # [layers, heads, tokens] fp32, as the model computed them, less the document-start token

    @property
    def n_layers(self) -> int:
        return self.weights.shape[0]

    @property
    def n_heads(self) -> int:
        return self.weights.shape[1]

    def layer_rows(self, layers: list[int] | None = None, head: int | None = None) -> tuple[list[int], Tensor]:
        """(the layers, [layers, tokens]): each layer's attention for `head` (None: the mean over
        heads), as shares of the attention on the context. Layers are 0-based; negative ones
        count from the end; None means the last quarter."""
        layers = check_layers(layers, self.n_layers)
        check_head(head, self.n_heads)
        rows = self.weights[layers]
        rows = rows.mean(1) if head is None else rows[:, head]
        # Shares of what is left: the document-start token is not in `weights` (see `context_attention`).
        return layers, rows / rows.sum(-1, keepdim=True).clamp_min(1e-12)

    def attended_words(self, k: int = 5, layers: list[int] | None = None,
                       head: int | None = None) -> list[AttendedWord]:
        """The k context words that got the largest share of attention, best first. A word's share
        is the sum over its tokens; punctuation and spaces are not words and are left out."""
        _, rows = self.layer_rows(layers, head)
        matches = list(WORD_RE.finditer(self.text))
        ends = [m.end() for m in matches]
        weights = [0.0] * len(matches)
        for share, (start, end) in zip(rows.mean(0).tolist(), self.spans):
            i = bisect_right(ends, start)  # the first word that ends after the token starts
            while i < len(matches) and matches[i].start() < end:  # ... and every word it overlaps
                weights[i] += share
                i += 1
        words = [AttendedWord(m.group(), m.start(), w) for m, w in zip(matches, weights)]
        return sorted(words, key=lambda w: -w.weight)[:k]


@dataclass(frozen=True)
class Explanation:
    suggestions: list[Suggestion]
    attention: ContextAttention
    layers: list[int]
    head: int | None  # None: the mean over heads
    attended: list[AttendedWord]


def check_layers(layers: list[int] | None, n_layers: int) -> list[int]:
    """The chosen layers as sorted 0-based indexes (None: the last quarter). Raises ValueError
    for layers the model does not have."""
    if layers is None:
        return list(range(n_layers - math.ceil(n_layers / LAST_LAYERS_SHARE), n_layers))
    if not layers:
        raise ValueError("no layers chosen")
    for layer in layers:
        if not -n_layers <= layer < n_layers:
            raise ValueError(f"layer {layer} is out of range: the model has {n_layers} layers "
                             f"(0-{n_layers - 1}, or -{n_layers} to -1 from the end)")
    return sorted({layer % n_layers for layer in layers})


def check_head(head: int | None, n_heads: int) -> None:
    if head is not None and not 0 <= head < n_heads:
        raise ValueError(f"head {head} is out of range: the model has {n_heads} heads (0-{n_heads - 1})")


def context_attention(predictor: Predictor, text_before_cursor: str, session: str = "default",
                      cancelled: Callable[[], bool] | None = None) -> ContextAttention:
    """The attention of the prediction at the end of `text_before_cursor` over its context. Reuses
    the session's cache (what `predict` left there), so a warm session costs one decode token.
    Raises ValueError when there is no text before the cursor, Cancelled as `Predictor.prefill`."""
    ids, attention = predictor.attention(text_before_cursor, session, cancelled)
    weights = attention.weights
    if len(ids) < 2:
        raise ValueError("nothing to explain: there is no text before the cursor")
    # The first id is the document-start token that `Predictor` puts before every context. Like
    # BOS in most models it soaks up a large, meaningless share of attention (an "attention
    # sink": heads with nothing to look at park their weight there), so it is left out.
    token_bytes = [predictor.tokenizer.token_bytes[i] for i in ids[1:]]
    text, spans = _decode_with_spans(token_bytes)
    return ContextAttention(text, [text[a:b] for a, b in spans], spans, weights[:, :, 1:])


def explain(predictor: Predictor, text_before_cursor: str, n: int = 5, layers: list[int] | None = None,
            head: int | None = None, top_words: int = 5, session: str = "default") -> Explanation:
    """The n likeliest next words (as `Predictor.predict` gives them) and the `top_words` context
    words the model attended to most for that prediction. Raises ValueError for empty text or
    layers/head out of range."""
    if not text_before_cursor.strip():
        raise ValueError("nothing to explain: the text is empty")
    config = predictor.loaded.config
    layers = check_layers(layers, config.n_layers)
    check_head(head, config.n_heads)
    suggestions = predictor.predict(text_before_cursor, n, session=session)
    attention = context_attention(predictor, text_before_cursor, session)
    return Explanation(suggestions, attention, layers, head, attention.attended_words(top_words, layers, head))


def save_heatmap(explanation: Explanation, path: str | Path) -> Path:
    """Write a PNG: one row per chosen layer (and their mean) over the context's last tokens."""
    try:
        from matplotlib.figure import Figure  # lazily: plotting is an optional extra
    except ImportError as e:
        raise ImportError("the heatmap needs matplotlib: pip install 'nextword[plot]'") from e
    attention = explanation.attention
    layers, rows = attention.layer_rows(explanation.layers, explanation.head)
    rows = rows[:, -HEATMAP_TOKENS:]
    grid = rows.new_zeros(len(layers) + 1, rows.shape[1])
    grid[:-1], grid[-1] = rows, rows.mean(0)
    labels = [t.replace("\n", "\\n") for t in attention.tokens[-HEATMAP_TOKENS:]]
    fig = Figure(figsize=(max(4.5, 2.5 + 0.28 * len(labels)), 2.2 + 0.3 * len(grid)), layout="constrained")
    ax = fig.add_subplot()
    image = ax.imshow(grid.numpy(), aspect="auto", cmap="viridis", interpolation="nearest")
    ax.set_xticks(range(len(labels)), labels, rotation=90, fontsize=8)
    ax.set_yticks(range(len(grid)), [f"layer {layer}" for layer in layers] + ["mean"], fontsize=8)
    heads = "mean of all heads" if explanation.head is None else f"head {explanation.head}"
    best = explanation.suggestions[0] if explanation.suggestions else None
    predicted = f"next word: {best.word} ({best.probability:.0%})\n" if best else ""
    ax.set_title(f"{predicted}attention per layer, {heads}\n(document-start token left out)", fontsize=9)
    fig.colorbar(image, ax=ax, label="share of attention", shrink=0.8)
    path = Path(path)
    fig.savefig(path, format="png", dpi=120)
    return path


def _decode_with_spans(token_bytes: list[bytes]) -> tuple[str, list[tuple[int, int]]]:
    """The text of the tokens and each token's character span in it. A character split across
    tokens belongs to the token that completes it."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    parts, spans, end = [], [], 0
    for piece in token_bytes:
        part = decoder.decode(piece)
        parts.append(part)
        spans.append((end, end + len(part)))
        end += len(part)
    return "".join(parts), spans
