"""bench/common.py: the result every benchmark prints and writes."""
import json

import pytest

from bench import common


def test_emit_prints_the_json_and_replaces_an_earlier_result_whole(tmp_path, capsys):
    out = tmp_path / "result.json"
    out.write_text("an earlier result, longer than the new one " * 100)
    common.emit({"images_per_s": 1.5}, str(out))
    assert json.loads(capsys.readouterr().out) == {"images_per_s": 1.5}
    assert json.loads(out.read_text()) == {"images_per_s": 1.5}
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"]  # no temporary left behind


def test_emit_to_a_path_that_cannot_be_written_ends_with_an_error_line_after_the_json(tmp_path, capsys):
    notes = tmp_path / "notes.txt"  # a file where the result's folder would be
    notes.write_text("keep me")
    with pytest.raises(SystemExit, match=r"^error: cannot write .*notes\.txt.*printed above"):
        common.emit({"images_per_s": 1.5}, str(notes / "result.json"))
    assert json.loads(capsys.readouterr().out) == {"images_per_s": 1.5}
    assert notes.read_text() == "keep me"
