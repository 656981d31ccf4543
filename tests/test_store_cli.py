"""The CLI against awkward stores and inputs: exit codes 0-4, read-only stores, foreign folders, damaged files,
strategy mismatches, control characters, old feeds and future-dated retractions."""

from __future__ import annotations

import json
import os

import pytest
from click.testing import CliRunner

from editmem.cli import EXIT_INTERNAL, EXIT_OK, EXIT_REJECTED, EXIT_STORE, EXIT_USAGE, main
from editmem.memory import EditMemory

INTEL_OLD = {"subject": "Intel", "prompt": "Who is the CEO of Intel?", "target": "Pat Gelsinger"}
INTEL_NEW = {"subject": "Intel", "prompt": "Who is the CEO of Intel?", "target": "Lip-Bu Tan"}
NIKE = {"subject": "Nike", "prompt": "Who is the CEO of Nike?", "target": "Elliott Hill"}


def feed(path, *records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


@pytest.fixture()
def store(tmp_path):
    return tmp_path / "store"


@pytest.fixture()
def cli(store, tiny_checkpoint):
    runner = CliRunner()

    def run(*args, env=None, strategy="context"):
        base = ["--store", str(store), "--model", str(tiny_checkpoint)] + (["--strategy", strategy] if strategy else [])
        return runner.invoke(main, [*base, *args], catch_exceptions=False, env=env)

    return run


def snapshot(folder):
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*") if p.is_file()}


def test_usage_error_exits_2_and_internal_error_exits_4(tmp_path, cli, monkeypatch):
    assert cli("list", "--status", "nonsense").exit_code == EXIT_USAGE
    assert cli("ask", "hi", "--as-of", "next tuesday").exit_code == EXIT_USAGE

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr("editmem.feeds.parse_feed", broken)
    result = cli("import", feed(tmp_path / "f.jsonl", NIKE))
    assert result.exit_code == EXIT_INTERNAL and "internal error" in result.output and "boom" in result.output


def test_locked_store_exits_3_naming_the_pid(tmp_path, store, cli):
    assert cli("import", feed(tmp_path / "a.jsonl", NIKE)).exit_code == EXIT_OK
    holder = EditMemory(store)
    with holder.lock.hold():
        result = cli("import", feed(tmp_path / "b.jsonl", INTEL_NEW), env={"EDITMEM_LOCK_TIMEOUT": "0.2"})
        listed = cli("list")  # readers need no lock
    assert result.exit_code == EXIT_STORE and f"locked by pid {os.getpid()}" in result.output
    assert listed.exit_code == EXIT_OK and "1 fact(s)" in listed.output


def test_read_only_store_serves_reads_and_refuses_writes_without_writing(tmp_path, store, cli):
    assert cli("import", feed(tmp_path / "a.jsonl", INTEL_OLD, NIKE)).exit_code == EXIT_OK
    fact_id = json.loads(cli("list", "--json", "--subject", "Nike").output)["id"]
    before = snapshot(store)
    ro = {"EDITMEM_READONLY": "1"}
    assert "2 fact(s)" in cli("list", env=ro).output
    assert cli("show", fact_id[:8], env=ro).exit_code == EXIT_OK
    assert "add" in cli("history", "Intel", env=ro).output
    dry = cli("import", "--dry-run", feed(tmp_path / "b.jsonl", INTEL_NEW), env=ro)
    assert dry.exit_code == EXIT_OK and "would add 1, duplicate 0, superseded 1" in dry.output
    assert cli("verify", env=ro).exit_code == EXIT_OK
    assert cli("ask", "Who is the CEO of Nike?", "--max-new-tokens", "2", env=ro).exit_code == EXIT_OK
    write = cli("import", str(tmp_path / "b.jsonl"), env=ro)
    assert write.exit_code == EXIT_STORE and "read-only" in write.output
    assert cli("forget", fact_id[:8], env=ro).exit_code == EXIT_STORE
    assert snapshot(store) == before


def test_foreign_folders_and_damaged_files_exit_3_with_the_file_named(tmp_path, store, cli):
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "cat.jpg").write_bytes(b"\xff\xd8")
    result = CliRunner().invoke(main, ["--store", str(photos), "list"], catch_exceptions=False)
    assert result.exit_code == EXIT_STORE and "not an editmem store" in result.output
    assert [p.name for p in photos.iterdir()] == ["cat.jpg"]

    assert cli("import", feed(tmp_path / "a.jsonl", NIKE)).exit_code == EXIT_OK
    (store / "store.json").write_text("{oops")
    asked = cli("ask", "Who is the CEO of Nike?")
    assert asked.exit_code == EXIT_STORE and "store.json is damaged" in asked.output

    other = tmp_path / "other"
    other.mkdir()
    (other / "ledger.jsonl").write_text("hello world\n")
    history = CliRunner().invoke(main, ["--store", str(other), "history", "x"], catch_exceptions=False)
    assert history.exit_code == EXIT_STORE and "line 1 is not an editmem ledger entry" in history.output


def test_a_store_keeps_its_strategy_unless_switched(tmp_path, store, cli):
    assert cli("import", feed(tmp_path / "a.jsonl", NIKE)).exit_code == EXIT_OK
    mismatch = cli("ask", "Who is the CEO of Nike?", strategy="llp")
    assert mismatch.exit_code == EXIT_USAGE and "keeps its strategy" in mismatch.output
    assert json.loads((store / "store.json").read_text())["strategy"] == "context"


def test_forget_twice_writes_nothing_the_second_time(tmp_path, store, cli):
    cli("import", feed(tmp_path / "a.jsonl", NIKE))
    fact_id = json.loads(cli("list", "--json").output)["id"]
    assert "retracted" in cli("forget", fact_id[:8]).output
    ledger = (store / "ledger.jsonl").read_bytes()
    again = cli("forget", fact_id[:8])
    assert again.exit_code == EXIT_OK and "already retracted" in again.output
    assert (store / "ledger.jsonl").read_bytes() == ledger


def test_control_characters_are_escaped_on_output(tmp_path, cli):
    evil = {"subject": "Acme", "prompt": "Who runs Acme?", "target": "\x1b[2J\x1b[31mEve[/red]\u202e"}
    cli("import", feed(tmp_path / "a.jsonl", evil))
    out = cli("list").output
    assert "\x1b" not in out and "\u202e" not in out and "\\x1b[" in out
    assert "\x1b" not in cli("history", "Acme").output
    fact_id = json.loads(cli("list", "--json").output)["id"]
    forgot = cli("forget", fact_id[:8]).output  # one plain line: nothing cut by a table's width
    assert "\\x1b[2J\\x1b[31mEve[/red]\\u202e" in forgot and "\x1b" not in forgot


def test_reimporting_an_old_feed_does_not_roll_back(tmp_path, cli):
    old = feed(tmp_path / "old.jsonl", INTEL_OLD)
    cli("import", old)
    cli("import", feed(tmp_path / "new.jsonl", INTEL_NEW))
    again = cli("import", old)
    assert again.exit_code == EXIT_OK and "stale 1" in again.output
    assert [json.loads(line)["fact"]["target"] for line in cli("list", "--json").output.splitlines()] == ["Lip-Bu Tan"]


def test_retracting_a_future_dated_fact_keeps_every_command_working(tmp_path, cli):
    future = {**NIKE, "valid_from": "2099-01-01"}
    cli("import", feed(tmp_path / "a.jsonl", future))
    fact_id = json.loads(cli("list", "--json").output)["id"]
    assert cli("forget", fact_id[:8]).exit_code == EXIT_OK
    for args in (("list", "--status", "all"), ("history", "Nike"), ("show", fact_id[:8]), ("forget", fact_id[:8]), ("verify",)):
        result = cli(*args)
        assert result.exit_code == EXIT_OK, (args, result.output)
    record = json.loads(cli("list", "--json", "--status", "all").output)
    assert record["status"] == "retracted" and record["fact"]["valid_from"].startswith("2099-01-01")


def test_mixed_time_zones_and_a_bad_line_keep_the_good_lines(tmp_path, cli):
    path = tmp_path / "mixed.jsonl"
    lines = [
        json.dumps({**NIKE, "valid_from": "2025-01-01", "valid_to": "2030-01-01T00:00:00+02:00"}).encode(),
        b'{"subject": "Intel", "prompt": "Who is the CEO of Intel?", "target": "Lip-Bu \xff Tan"}',
        json.dumps({**INTEL_OLD, "subject": "Intel", "valid_from": "2021-02-15T00:00:00-05:00", "valid_to": "2024-12-01"}).encode(),
    ]
    path.write_bytes(b"\n".join(lines) + b"\n")
    result = cli("import", str(path))
    assert result.exit_code == EXIT_REJECTED and "line 2" in result.output and "UTF-8" in result.output
    stored = [json.loads(line)["fact"] for line in cli("list", "--json").output.splitlines()]
    assert sorted(f["subject"] for f in stored) == ["Intel", "Nike"]
    nike = next(f for f in stored if f["subject"] == "Nike")
    assert nike["valid_to"].startswith("2029-12-31T22:00:00") and nike["valid_to"].endswith(("Z", "+00:00"))


def test_verify_and_repair_commands(tmp_path, store, cli):
    cli("import", feed(tmp_path / "a.jsonl", INTEL_OLD, NIKE))
    assert cli("verify").exit_code == EXIT_OK
    memory = EditMemory(store)
    victim = memory.list()[0].id
    memory.collection().delete(ids=[victim])
    report = cli("verify", "--json")
    assert report.exit_code == EXIT_REJECTED and json.loads(report.output)["missing"] == [victim]
    assert cli("repair").exit_code == EXIT_OK
    assert cli("verify").exit_code == EXIT_OK
