"""Grammar-constrained decoding with llguidance: the model can only emit tokens that keep its output valid.

A :class:`GrammarLogitsProcessor` holds one ``llguidance.LLMatcher`` per generation; before each step it asks the
matcher which tokens are allowed and masks the rest to ``-inf``, then feeds the sampled token back. Grammars come
from :func:`tool_call_grammar` (a ``<tool_call>{json}</tool_call>`` reply, or free text when the choice is ``auto``)
and :func:`json_grammar` (one JSON value matching a schema, for structured output).

Why llguidance: it installs from PyPI as a self-contained wheel (no torch pin of its own), builds a token-level
parser from a Hugging Face fast tokenizer in well under a second, and computes a mask in about a millisecond.
Its ``llguidance.torch`` helpers are not used (they ``torch.compile`` a kernel); the mask is applied here.
"""

from __future__ import annotations

import json
import threading
from typing import Any

import numpy as np
import torch
from transformers import LogitsProcessor

_TOKENIZERS: dict[int, tuple[Any, Any]] = {}
_LOCK = threading.Lock()
#: llguidance JSON options: compact separators and no free whitespace, so a call costs as few tokens as possible
JSON_OPTIONS = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}

CALL_OPEN = "<tool_call>"
CALL_CLOSE = "</tool_call>"


class ConstrainedDecodingError(RuntimeError):
    """The grammar could not be built or the matcher failed (names the llguidance error)."""


def ll_tokenizer(tokenizer: Any) -> Any:
    """The llguidance tokenizer for a Hugging Face fast tokenizer, built once per tokenizer object (~0.5 s)."""
    import llguidance.hf

    with _LOCK:
        hit = _TOKENIZERS.get(id(tokenizer))
        if hit is None or hit[0] is not tokenizer:
            hit = (tokenizer, llguidance.hf.from_tokenizer(tokenizer))
            _TOKENIZERS[id(tokenizer)] = hit
        return hit[1]


def _closed(schema: dict[str, Any]) -> dict[str, Any]:
    """An object schema with ``additionalProperties: false`` unless it says otherwise (no invented arguments)."""
    out = dict(schema)
    if out.get("type", "object") == "object":
        out.setdefault("type", "object")
        out.setdefault("properties", {})
        out.setdefault("additionalProperties", False)
    return out


def cap_strings(schema: Any, limit: int | None) -> Any:
    """``schema`` with ``maxLength: limit`` on every free string (no maxLength, enum, const, pattern or format).

    A small model in greedy decoding can repeat itself inside a JSON string until ``max_tokens`` runs out and the
    call is lost; a cap (``EditMemChatModel.max_string_length``) closes the string instead.
    """
    if limit is None:
        return schema
    if isinstance(schema, list):
        return [cap_strings(s, limit) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {}
    for key, value in schema.items():
        if key in ("properties", "$defs", "definitions", "patternProperties") and isinstance(value, dict):
            out[key] = {name: cap_strings(sub, limit) for name, sub in value.items()}
        elif key in ("enum", "const", "default", "examples", "required"):
            out[key] = value
        else:
            out[key] = cap_strings(value, limit)
    types = out.get("type")
    if (types == "string" or isinstance(types, list) and "string" in types) and not (
            {"maxLength", "enum", "const", "pattern", "format"} & out.keys()):
        out["maxLength"] = limit
    return out


def call_schema(tools: list[dict[str, Any]]) -> dict[str, Any]:
    """JSON schema of one call ``{"name": ..., "arguments": {...}}`` to any of ``tools`` (OpenAI function dicts)."""
    options = [
        {
            "type": "object",
            "properties": {"name": {"const": t["name"]}, "arguments": _closed(t.get("parameters") or {})},
            "required": ["name", "arguments"],
            "additionalProperties": False,
        }
        for t in tools
    ]
    return options[0] if len(options) == 1 else {"anyOf": options}


def tool_call_grammar(tools: list[dict[str, Any]], *, required: bool, max_string_length: int | None = None) -> str:
    """A Lark grammar for one reply: a single tool call, or (``required=False``) plain text not starting with ``<``."""
    import llguidance

    schema = cap_strings(call_schema(tools), max_string_length)
    call = f'call: "{CALL_OPEN}" args "{CALL_CLOSE}"\nargs: %json {json.dumps({**schema, "x-guidance": JSON_OPTIONS})}\n'
    if required:
        lark = "start: call\n" + call
    else:
        lark = "start: call | TEXT\n" + call + "TEXT: /[^<][\\s\\S]*/\n"
    return llguidance.LLMatcher.grammar_from_lark(lark)


def json_grammar(schema: dict[str, Any] | None, max_string_length: int | None = None) -> str:
    """A grammar for one JSON value matching ``schema`` (None: any JSON object, i.e. JSON mode).

    ``max_string_length`` caps the schema's free strings; JSON mode has no schema and its strings are not capped.
    Measured on the embedded model: with every string value capped at 40 characters, a cut-off first string made it
    close the object right after it (``{"setup": "The cat was trying to make a cat-themed "}``), where under a schema
    the grammar forces the remaining required keys. Uncapped, a reply cut off by ``max_tokens`` fails to parse.
    """
    import llguidance

    capped = cap_strings(schema, max_string_length) if schema else {"type": "object"}
    return llguidance.LLMatcher.grammar_from_json_schema(capped, overrides=JSON_OPTIONS)


class GrammarLogitsProcessor(LogitsProcessor):
    """Masks every token the grammar does not allow at this step (one sequence per generation, batch size 1).

    The first call sees the prompt; later calls first feed the token sampled at the previous step to the matcher.
    Once the grammar is complete only end-of-sequence is allowed, so generation stops there.
    """

    def __init__(self, tokenizer: Any, grammar: str):
        import llguidance

        lltok = ll_tokenizer(tokenizer)
        self.matcher = llguidance.LLMatcher(lltok, grammar, log_level=0)
        if self.matcher.is_error():
            raise ConstrainedDecodingError(f"invalid grammar: {self.matcher.get_error()}")
        self._prompt_len: int | None = None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if input_ids.shape[0] != 1:
            raise ConstrainedDecodingError("constrained decoding runs one sequence at a time")
        if self._prompt_len is None:
            self._prompt_len = int(input_ids.shape[1])
        else:
            token = int(input_ids[0, -1])
            if not self.matcher.consume_token(token):
                raise ConstrainedDecodingError(f"token {token} rejected: {self.matcher.get_error()}")
        bits = np.unpackbits(np.frombuffer(self.matcher.compute_bitmask(), dtype=np.uint8), bitorder="little")
        vocab = scores.shape[-1]
        allowed = np.zeros(vocab, dtype=bool)
        n = min(vocab, bits.shape[0])
        allowed[:n] = bits[:n].astype(bool)
        if not allowed.any():
            raise ConstrainedDecodingError(f"no token allowed: {self.matcher.get_error() or 'grammar exhausted'}")
        mask = torch.from_numpy(~allowed).to(scores.device)
        return scores.masked_fill(mask.unsqueeze(0), float("-inf"))
