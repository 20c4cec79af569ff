"""``twinloop correct`` and ``twinloop corrections`` as a user runs them (real processes), and
``twinloop eval --edits`` on the tiny model."""

from __future__ import annotations

import json

from test_cli import run_cli

from twinloop.showcase.experiments.edits import EditsConfig, contains, interval, load_edits, run


def test_correct_list_remove(tmp_path):
    env = {"TWINLOOP_DATA_DIR": str(tmp_path / "d")}
    res = run_cli("correct", "--domain", "general", "--question", "Who founded Port Dresny?", "--answer",
                  "Ada Quellin", "--json", env=env)
    assert res.returncode == 0, res.stderr
    made = json.loads(res.stdout)
    assert made["state"] == "active" and made["provenance"]["accepted_by"].startswith("cli:")
    res = run_cli("correct", "-d", "law", "-q", "How long is the Veltrane notice period?", "-a", "21 days", env=env)
    assert res.returncode == 0 and "pending" in res.stdout
    res = run_cli("corrections", "--json", env=env)
    assert [c["state"] for c in json.loads(res.stdout)["corrections"]] == ["pending", "active"]
    res = run_cli("corrections", "--remove", str(made["id"]), "--reason", "test", "--json", env=env)
    assert json.loads(res.stdout)["state"] == "removed"


def test_bad_input_is_a_one_line_error(tmp_path):
    env = {"TWINLOOP_DATA_DIR": str(tmp_path / "d")}
    for args, says in [
        (("correct", "-d", "astrology", "-q", "q?", "-a", "a"), "astrology"),
        (("correct", "-d", "general", "-q", " ", "-a", "a"), "question"),
        (("corrections", "--approve", "42"), "no correction with id 42"),
        (("corrections", "--state", "gone"), "state"),
        (("eval", "--edits", "0"), "--edits 0"),
        (("eval", "--edits", "3", "--seeds", "a,b"), "--seeds"),
        (("eval", "--edits", "3", "--modes", "dreams"), "modes"),
        (("eval", "--edits", "3", "--concurrency", "0"), "concurrency"),
    ]:
        res = run_cli(*args, env=env)
        assert res.returncode != 0 and says in res.stderr, (args, res.stderr)
        assert "Traceback" not in res.stderr


def test_the_edits_file_and_its_splits():
    test, cal = load_edits("test"), load_edits("calibration")
    assert len(test) >= 300 and len(cal) >= 300 and not {r["id"] for r in test} & {r["id"] for r in cal}
    row = {"answer": "21 days", "answer_aliases": ["twenty-one days"]}
    assert contains("They have Twenty-one days.", row) and not contains("21 hours", row)
    assert interval([1.0])["ci95"] is None and abs(interval([0.5, 1.0, 0.75])["mean"] - 0.75) < 1e-9


def test_edits_evaluation_runs_end_to_end_on_the_tiny_model(tiny_settings, tmp_path):
    doc = run(tiny_settings, EditsConfig(n=3, seeds=(0,), max_tokens=4, checkpoints=(1,)), tmp_path / "out",
              log=lambda _line: None)
    assert [p["T"] for p in doc["summary"]] == [1, 3]
    # Served from memory: the corrected question always; the unrelated one untouched.
    assert doc["summary"][-1]["reliability"]["mean"] == 1.0 and doc["summary"][-1]["locality"]["mean"] == 1.0
    assert (tmp_path / "out" / "edits.md").read_text().startswith("# Sequential corrections")
    assert not tiny_settings.data_dir.exists()  # it ran on a scratch copy: the user's directory is never written


def test_the_adapters_track_consolidates_at_each_checkpoint_on_the_tiny_model(tiny_settings, tmp_path):
    doc = run(tiny_settings, EditsConfig(n=2, seeds=(0,), max_tokens=4, checkpoints=(1,), modes=("adapters",)),
              tmp_path / "out", log=lambda _line: None)
    assert doc["summary"] == [] and [p["T"] for p in doc["adapters"]] == [1, 2]
    trained = doc["per_seed"][0]["training"]
    # Each checkpoint trains only the facts since the last one, with their paraphrases.
    assert [t["round"] for t in trained] == [1, 2] and all(t["examples"] > t["corrections"] for t in trained)
    for point in doc["adapters"]:
        assert 0.0 <= point["locality"]["mean"] <= 1.0 and 0.0 <= point["retention"]["mean"] <= 1.0
    assert "Adapters alone" in (tmp_path / "out" / "edits.md").read_text()


def test_both_tracks_together_take_memory_first_on_the_tiny_model(tiny_settings, tmp_path):
    doc = run(tiny_settings, EditsConfig(n=2, seeds=(0,), max_tokens=4, checkpoints=(1,),
                                         modes=("memory", "adapters")), tmp_path / "out", log=lambda _line: None)
    assert [p["T"] for p in doc["both"]] == [1, 2]
    # The corrected question is served from memory, so together they are as reliable as memory.
    assert doc["both"][-1]["reliability"]["mean"] == doc["summary"][-1]["reliability"]["mean"] == 1.0
    assert "## Both" in (tmp_path / "out" / "edits.md").read_text()
