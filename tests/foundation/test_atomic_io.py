"""The one atomic writer: eval files get the umask's mode, swapped arguments are refused, folders are created."""

from __future__ import annotations

import os
import stat

import numpy as np
import pytest
from ignite.engine import Engine

from common.data.atomic_io import atomic_path, write_json_atomic, write_text_atomic
from common.methods.cleft.writers import plot_confusion_matrix
from common.methods.report_gen.generation import ReportGenerationWriter


@pytest.fixture
def umask_022():
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_report_gen_eval_files_have_the_umask_mode(tmp_path, umask_022):
    """Generated reports and their metrics are readable by the group and others, as ``open(path, "w")`` would be."""
    writer = ReportGenerationWriter(tmp_path / "eval", prefix="test_generated")
    engine = Engine(lambda e, b: {"id": ["a", "b"], "generated": ["no effusion", "clear"], "reference": ["", ""]})
    writer.attach(engine)
    engine.run([0], max_epochs=1)
    files = sorted((tmp_path / "eval").iterdir())
    assert [f.name for f in files] == ["test_generated.jsonl", "test_generated_metrics.json"]
    assert {f.name: _mode(f) for f in files} == {f.name: 0o644 for f in files}


def test_cleft_confusion_matrix_png_has_the_umask_mode(tmp_path, umask_022):
    path = plot_confusion_matrix(np.array([[2, 1], [0, 3]]), ["normal", "abnormal"], tmp_path / "cm.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert _mode(path) == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["cm.png"]  # no temporary file left


def test_other_umask_is_respected(tmp_path):
    previous = os.umask(0o077)
    try:
        path = write_json_atomic({"a": np.float32(0.5)}, tmp_path / "m.json")
    finally:
        os.umask(previous)
    assert _mode(path) == 0o600
    assert path.read_text() == '{\n  "a": 0.5\n}'


def test_writers_create_folders_and_keep_text_exact(tmp_path):
    path = write_text_atomic("a,b\r\n1,2\r\n", tmp_path / "a" / "b.csv")
    assert path.read_bytes() == b"a,b\r\n1,2\r\n"


def test_swapped_text_arguments_are_refused(tmp_path):
    with pytest.raises(TypeError, match=r"text first and the path second"):
        write_text_atomic(tmp_path / "x.json", "{}")
    assert not list(tmp_path.iterdir())


def test_failed_write_keeps_the_old_file(tmp_path):
    path = write_text_atomic("old", tmp_path / "f.txt")
    with pytest.raises(RuntimeError), atomic_path(path) as tmp:
        tmp.write_text("half")
        raise RuntimeError("interrupted")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.txt"]
