"""Text written through the atomic write path: complete, UTF-8, and no temp file left beside it."""

from ptqbench.fileio import write_text_atomic


def test_text_replaces_the_file_whole_and_leaves_no_temp(tmp_path):
    dest = tmp_path / "tables" / "bench.md"
    write_text_atomic(dest, "old table\n")
    write_text_atomic(dest, "| model | s |\n| déjà | 1.5 |\n")
    assert dest.read_text(encoding="utf-8") == "| model | s |\n| déjà | 1.5 |\n"
    assert [p.name for p in dest.parent.iterdir()] == ["bench.md"]
