"""The editmem CLI: feed import with bad lines, dry runs, listing, exit codes."""

import json

import pytest
from click.testing import CliRunner

from editmem.cli import main

GOOD = [
    {"subject": "Intel", "prompt": "Who is the CEO of Intel?", "target": "Lip-Bu Tan", "source": "press", "author": "ops"},
    {"subject": "Nike", "prompt": "Who is the CEO of Nike?", "target": "Elliott Hill"},
]


def write_feed(path, lines):
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture()
def cli(tmp_path, tiny_checkpoint):
    runner = CliRunner()
    base = ["--store", str(tmp_path / "store"), "--model", str(tiny_checkpoint), "--strategy", "context"]

    def run(*args):
        return runner.invoke(main, [*base, *args], catch_exceptions=False)

    return run


def test_import_reports_bad_line_keeps_good_ones_and_exits_1(tmp_path, cli):
    feed = write_feed(tmp_path / "feed.jsonl", [
        json.dumps(GOOD[0]),
        json.dumps({"subject": "Boeing", "prompt": "Who is the CEO of Boeing?"}),  # line 2: no target
        "{not json",                                                                 # line 3
        json.dumps(GOOD[1]),
    ])
    result = cli("import", str(feed))
    assert result.exit_code == 1, result.output
    assert "line 2: field 'target'" in result.output and "line 3" in result.output
    assert "added 2, duplicate 0, superseded 0, rejected 2" in result.output
    listed = [json.loads(line) for line in cli("list", "--json").output.splitlines()]
    assert sorted(r["fact"]["subject"] for r in listed) == ["Intel", "Nike"]
    intel = next(r for r in listed if r["fact"]["subject"] == "Intel")
    assert intel["fact"]["provenance"]["feed"] == "feed.jsonl" and intel["fact"]["provenance"]["author"] == "ops"
    # importing again is a no-op
    again = cli("import", str(write_feed(tmp_path / "feed2.jsonl", [json.dumps(g) for g in GOOD])))
    assert again.exit_code == 0 and "added 0, duplicate 2" in again.output


def test_csv_feed_and_dry_run(tmp_path, cli):
    feed = tmp_path / "feed.csv"
    feed.write_text("subject,prompt,target,rephrases,tags\nIntel,Who is the CEO of Intel?,Lip-Bu Tan,Who runs Intel?|Intel's boss?,\"ceo,tech\"\n")
    dry = cli("import", "--dry-run", str(feed))
    assert dry.exit_code == 0 and "would add 1" in dry.output
    assert "0 fact(s)" in cli("list").output
    assert cli("import", str(feed)).exit_code == 0
    record = json.loads(cli("list", "--json").output)
    assert record["fact"]["rephrases"] == ["Who runs Intel?", "Intel's boss?"] and record["fact"]["tags"] == ["ceo", "tech"]


def test_forget_history_show_and_unknown_id(tmp_path, cli):
    feed = write_feed(tmp_path / "f.jsonl", [json.dumps(GOOD[0])])
    cli("import", str(feed))
    fact_id = json.loads(cli("list", "--json").output)["id"]
    assert "Lip-Bu Tan" in cli("show", fact_id[:8]).output
    assert cli("forget", fact_id[:8], "--reason", "test").exit_code == 0
    assert "0 fact(s)" in cli("list").output
    history = cli("history", "Intel").output
    assert "add" in history and "retract" in history
    missing = cli("show", "ffffffff")
    assert missing.exit_code == 2 and "no fact id" in missing.output


def test_bad_config_override_is_a_usage_error(tmp_path, cli):
    result = CliRunner().invoke(
        main, ["--store", str(tmp_path / "s"), "--config", "nonsense=1", "ask", "hi"])
    assert result.exit_code == 2 and "nonsense" in result.output


def test_strategies_lists_the_registry_and_marks_the_default():
    result = CliRunner().invoke(main, ["strategies"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    rows = {line.split()[1] if line.startswith("*") else line.split()[0]: line for line in result.output.splitlines()}
    assert {"context", "llp", "lyaplock", "memit", "memit_seq", "alphaedit"} <= set(rows)
    assert [name for name, line in rows.items() if line.startswith("*")] == ["llp"]
