"""The ``##deepexec-progress N`` stdout convention."""

from __future__ import annotations

from deepexec_server.jobs import ProgressLineFilter, strip_progress_lines


def feed_all(chunks: list[str]) -> tuple[list[str], list[int]]:
    line_filter = ProgressLineFilter()
    emitted: list[str] = []
    values: list[int] = []
    for chunk in chunks:
        text, found = line_filter.feed(chunk)
        emitted.append(text)
        values.extend(found)
    text, found = line_filter.flush()
    emitted.append(text)
    values.extend(found)
    return emitted, values


def test_whole_progress_lines_are_removed_and_reported() -> None:
    emitted, values = feed_all(["a\n##deepexec-progress 25\nb\n##deepexec-progress 100\n"])
    assert "".join(emitted) == "a\nb\n"
    assert values == [25, 100]


def test_marker_split_across_chunks_is_recognised() -> None:
    emitted, values = feed_all(["x\n##deep", "exec-progr", "ess 4", "2", "\r\n", "y\n"])
    assert "".join(emitted) == "x\ny\n"
    assert values == [42]


def test_ordinary_output_is_not_held_back() -> None:
    line_filter = ProgressLineFilter()
    # A partial line that cannot become a marker is emitted at once, without a newline.
    assert line_filter.feed("loading") == ("loading", [])
    assert line_filter.feed("...") == ("...", [])
    # A partial line that might be a marker is held only until it cannot be one.
    assert line_filter.feed("\n##deepexec-") == ("\n", [])
    assert line_filter.feed("progresz 1\n") == ("##deepexec-progresz 1\n", [])


def test_lines_that_only_contain_the_marker_are_output() -> None:
    text = " ##deepexec-progress 5\n##deepexec-progress 5 done\n##deepexec-progress 1234\n"
    emitted, values = feed_all([text])
    assert "".join(emitted) == text
    assert values == []


def test_values_clamp_and_final_marker_without_newline_counts() -> None:
    emitted, values = feed_all(["out\n##deepexec-progress 150\nend\n##deepexec-progress 7"])
    assert "".join(emitted) == "out\nend\n"
    assert values == [100, 7]


def test_strip_progress_lines_cleans_a_captured_output() -> None:
    assert strip_progress_lines("out\n##deepexec-progress 50\nend\n##deepexec-progress 7") == (
        "out\nend\n"
    )
    assert strip_progress_lines("plain") == "plain"
    assert strip_progress_lines("##deepexec-prog") == "##deepexec-prog"
