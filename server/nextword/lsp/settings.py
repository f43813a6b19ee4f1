"""Server settings: command-line defaults, then `initializationOptions`, then the client's
`workspace/configuration` section "nextword". Unknown keys are ignored and invalid values keep the
previous value with a warning, so one typo in a settings file never stops suggestions."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

# Prose languages, by VS Code language id and by Neovim/Helix filetype where they differ.
DEFAULT_LANGUAGES = ("markdown", "plaintext", "text", "restructuredtext", "rst", "latex", "tex",
                     "git-commit", "gitcommit", "org", "asciidoc", "mail")
MAX_SUGGESTIONS = 10


@dataclass(frozen=True)
class Settings:
    model_path: str | None = None  # None: $NEXTWORD_MODEL or the built default model
    adapter_path: str | None = None  # a LoRA adapter (`nextword finetune --adapter-only`) merged in at load
    device: str = "auto"
    dtype: str | None = None  # None: the fastest exact-enough dtype for the device
    max_suggestions: int = 3
    languages: tuple[str, ...] = DEFAULT_LANGUAGES  # "*" means every language
    max_context_tokens: int = 1024
    max_sessions: int = 8  # documents whose KV cache stays warm (least recently used are dropped)
    inline: bool = True
    cache_model: str = "document"  # whose words the cache model counts: off, document or workspace

    def model_key(self) -> tuple:
        """What the loaded model depends on; a change means loading again."""
        return self.model_path, self.adapter_path, self.device, self.dtype

    def wants(self, language_id: str) -> bool:
        return "*" in self.languages or language_id in self.languages

    def updated(self, raw: Any) -> tuple[Settings, list[str]]:
        """These settings with the client's camelCase values applied; also the problems found."""
        if raw is None:
            return self, []
        if not isinstance(raw, dict):
            return self, [f"settings must be an object, got {type(raw).__name__}"]
        changes: dict[str, Any] = {}
        problems = []
        for key, value in raw.items():
            field = _FIELDS.get(key)
            if field is None:
                continue
            try:
                changes[field] = _PARSERS[field](value)
            except (TypeError, ValueError) as e:
                problems.append(f"nextword.{key}: {e}; keeping {getattr(self, field)!r}")
        return dataclasses.replace(self, **changes), problems


def _optional_str(value: Any) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {value!r}")
    return value


def _choice(*allowed: str):
    def parse(value: Any) -> str:
        if value not in allowed:
            raise ValueError(f"expected one of {', '.join(allowed)}, got {value!r}")
        return value
    return parse


def _int_in(low: int, high: int):
    def parse(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ValueError(f"expected a whole number from {low} to {high}, got {value!r}")
        return value
    return parse


def _languages(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise TypeError(f"expected a list of language ids, got {value!r}")
    return tuple(value)


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"expected true or false, got {value!r}")
    return value


_FIELDS = {"modelPath": "model_path", "adapterPath": "adapter_path",
           "device": "device", "dtype": "dtype", "maxSuggestions": "max_suggestions",
           "languages": "languages", "maxContextTokens": "max_context_tokens", "maxSessions": "max_sessions",
           "inline": "inline", "cacheModel": "cache_model"}
_PARSERS = {
    "model_path": _optional_str,
    "adapter_path": _optional_str,
    "device": _choice("auto", "cpu", "cuda"),
    "dtype": lambda v: None if v in (None, "", "auto") else _choice("float32", "bfloat16", "float16", "int8")(v),
    "max_suggestions": _int_in(1, MAX_SUGGESTIONS),
    "languages": _languages,
    "max_context_tokens": _int_in(64, 8192),
    "max_sessions": _int_in(1, 64),
    "inline": _bool,
    "cache_model": _choice("off", "document", "workspace"),
}
