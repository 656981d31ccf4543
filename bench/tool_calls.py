"""Tool-call success of EditMemChatModel on the embedded model: 20 fixed tool-use prompts over 6 tools.

Each prompt names the tool and the arguments a correct call has. A reply is scored on three nested counts:

* **called**: the reply is a tool call at all (under ``auto`` the router may answer in text instead);
* **well-formed**: exactly one tool call that parsed (name of a bound tool, JSON object arguments);
* **right tool**: that call names the expected tool;
* **right arguments**: and its arguments equal the expected ones (strings compared case- and space-insensitively,
  numbers as numbers; no missing or extra keys).

Two modes: ``required`` (``tool_choice="any"``: the model must call one of the 6 tools; measures tool choice and
argument extraction) and ``auto`` (the default router decides call-or-text, then the model fills the call).
Writes ``bench/results/tool_calls-<mode>.json`` and ``.md``. A 135M model misses some: the misses are listed.

    python bench/tool_calls.py [--mode required|auto|both] [--max-tokens 64]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import machine_info, write_results  # noqa: E402
from langchain_core.tools import tool  # noqa: E402


@tool
def get_weather(location: str) -> str:
    """Get the current weather at a location (a city name)."""
    return "sunny"


@tool
def add_numbers(a: int, b: int) -> int:
    """Add two integers a and b."""
    return a + b


@tool
def convert_currency(amount: float, from_currency: str, to_currency: str) -> float:
    """Convert an amount of money from one currency to another (ISO codes such as USD, EUR)."""
    return amount


@tool
def set_timer(minutes: int) -> str:
    """Set a countdown timer for a number of minutes."""
    return "ok"


@tool
def send_email(to: str, subject: str) -> str:
    """Send an email to an address with a subject line."""
    return "sent"


@tool
def translate(text: str, language: str) -> str:
    """Translate a text into a target language (an English language name such as French)."""
    return text


TOOLS = [get_weather, add_numbers, convert_currency, set_timer, send_email, translate]

#: (prompt, expected tool, expected arguments)
CASES: list[tuple[str, str, dict[str, Any]]] = [
    ("What is the weather in Paris?", "get_weather", {"location": "Paris"}),
    ("Is it raining in London right now?", "get_weather", {"location": "London"}),
    ("Tell me the weather for Tokyo.", "get_weather", {"location": "Tokyo"}),
    ("How warm is it in Madrid today?", "get_weather", {"location": "Madrid"}),
    ("What is 12 plus 30?", "add_numbers", {"a": 12, "b": 30}),
    ("Add 7 and 5.", "add_numbers", {"a": 7, "b": 5}),
    ("Compute the sum of 100 and 250.", "add_numbers", {"a": 100, "b": 250}),
    ("Convert 50 USD to EUR.", "convert_currency", {"amount": 50, "from_currency": "USD", "to_currency": "EUR"}),
    ("How much is 20 EUR in GBP?", "convert_currency", {"amount": 20, "from_currency": "EUR", "to_currency": "GBP"}),
    ("Change 1000 JPY into USD.", "convert_currency", {"amount": 1000, "from_currency": "JPY", "to_currency": "USD"}),
    ("Set a timer for 10 minutes.", "set_timer", {"minutes": 10}),
    ("Start a 25 minute timer.", "set_timer", {"minutes": 25}),
    ("Remind me in 5 minutes with a timer.", "set_timer", {"minutes": 5}),
    ("Send an email to bob@example.com with the subject Lunch.", "send_email",
     {"to": "bob@example.com", "subject": "Lunch"}),
    ("Email alice@example.org, subject: Report.", "send_email", {"to": "alice@example.org", "subject": "Report"}),
    ("Write to team@example.com with the subject Meeting moved.", "send_email",
     {"to": "team@example.com", "subject": "Meeting moved"}),
    ("Translate 'good morning' into French.", "translate", {"text": "good morning", "language": "French"}),
    ("How do you say 'thank you' in Spanish?", "translate", {"text": "thank you", "language": "Spanish"}),
    ("Translate the word 'cat' to German.", "translate", {"text": "cat", "language": "German"}),
    ("Please translate 'where is the station' into Italian.", "translate",
     {"text": "where is the station", "language": "Italian"}),
]


def _same(got: Any, want: Any) -> bool:
    if isinstance(want, bool) or isinstance(got, bool):
        return got == want
    if isinstance(want, (int, float)) and isinstance(got, (int, float)):
        return float(got) == float(want)
    if isinstance(want, str) and isinstance(got, str):
        return " ".join(got.casefold().split()) == " ".join(want.casefold().split())
    return got == want


def score(message: Any, tool_name: str, args: dict[str, Any]) -> dict[str, Any]:
    """The three nested outcomes of one reply."""
    calls = message.tool_calls
    well_formed = len(calls) == 1 and not message.invalid_tool_calls
    right_tool = well_formed and calls[0]["name"] == tool_name
    got = calls[0]["args"] if well_formed else None
    right_args = right_tool and set(got) == set(args) and all(_same(got[k], v) for k, v in args.items())
    called = bool(calls or message.invalid_tool_calls)
    return {"called": called, "well_formed": well_formed, "right_tool": right_tool, "right_args": right_args,
            "calls": [{"name": c["name"], "args": c["args"]} for c in calls],
            "invalid": [{"args": c["args"], "error": c["error"]} for c in message.invalid_tool_calls],
            "content": message.content}


def run_mode(chat: Any, mode: str) -> dict[str, Any]:
    bound = chat.bind_tools(TOOLS, tool_choice="any" if mode == "required" else None)
    rows = []
    for prompt, name, args in CASES:
        start = time.perf_counter()
        message = bound.invoke(prompt)
        rows.append({"prompt": prompt, "expected": {"name": name, "args": args}, **score(message, name, args),
                     "seconds": round(time.perf_counter() - start, 2)})
    totals = {k: sum(r[k] for r in rows) for k in ("called", "well_formed", "right_tool", "right_args")}
    return {"mode": mode, "n": len(rows), **totals, "rows": rows}


def markdown(result: dict[str, Any], max_tokens: int) -> str:
    n = result["n"]
    lines = [f"# Tool calls: {n} prompts, 6 tools, mode `{result['mode']}` (embedded SmolLM2-135M-Instruct, "
             f"max_tokens={max_tokens})", "",
             "| called | well-formed | right tool | right arguments |", "| ---: | ---: | ---: | ---: |",
             f"| {result['called']}/{n} | {result['well_formed']}/{n} | {result['right_tool']}/{n} | "
             f"{result['right_args']}/{n} |", "",
             "## Misses", "", "| prompt | expected | got |", "| --- | --- | --- |"]
    for row in result["rows"]:
        if not row["right_args"]:
            got = row["calls"] or row["invalid"] or repr(row["content"][:60])
            lines.append(f"| {row['prompt']} | `{row['expected']['name']}({row['expected']['args']})` | `{got}` |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=["required", "auto", "both"], default="both")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--out", type=Path, default=None, help="results folder (default bench/results)")
    args = parser.parse_args(argv)
    from editmem import EditableLLM
    from editmem.integrations.langchain import EditMemChatModel

    machine = machine_info()
    with EditableLLM.open(tempfile.mkdtemp(prefix="editmem-toolbench-"), strategy="context") as llm:
        chat = EditMemChatModel(llm=llm, max_tokens=args.max_tokens, max_string_length=60)
        for mode in (["required", "auto"] if args.mode == "both" else [args.mode]):
            result = run_mode(chat, mode)
            json_path, md_path = write_results(f"tool_calls-{mode}", {**result, "machine": machine},
                                               markdown(result, args.max_tokens), args.out)
            print(f"{mode}: called {result['called']}/{result['n']}, well-formed {result['well_formed']}/{result['n']}, right tool {result['right_tool']}/"
                  f"{result['n']}, right args {result['right_args']}/{result['n']} -> {md_path}")


if __name__ == "__main__":
    main()
