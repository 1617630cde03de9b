"""clipita.progress: a bar on a terminal, one line per stage elsewhere, and no weight-loading bar."""

import io

from transformers.utils import logging as hf_logging

from clipita.progress import StageLines, on_terminal, progress_bar, quiet_loading


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_file_gets_a_line_when_a_stage_starts_and_one_when_it_ends():
    out = io.StringIO()
    assert not on_terminal(out)
    with progress_bar(total=3, desc="encoding", unit="product", file=out) as bar:
        assert isinstance(bar, StageLines)
        bar.update(2)
        bar.update(1)
        bar.set_postfix(loss="0.5")
    lines = out.getvalue().splitlines()
    assert lines[0] == "encoding: started (3 product)"
    assert lines[1].startswith("encoding: done, 3 product in ") and lines[1].endswith(" s, loss=0.5")
    assert len(lines) == 2 and "\r" not in out.getvalue()


def test_iterating_counts_and_a_disabled_stage_writes_nothing():
    out = io.StringIO()
    assert list(progress_bar(range(4), desc="ranking", file=out)) == [0, 1, 2, 3]
    assert out.getvalue().splitlines()[-1].startswith("ranking: done, 4 it in ")
    quiet = io.StringIO()
    assert list(progress_bar(range(4), desc="ranking", file=quiet, disable=True)) == [0, 1, 2, 3]
    assert quiet.getvalue() == ""


def test_a_terminal_gets_a_tqdm_bar():
    out = Terminal()
    bar = progress_bar(total=2, desc="training", file=out)
    assert not isinstance(bar, StageLines)
    bar.update(2)
    bar.close()
    assert "training" in out.getvalue() and "\r" in out.getvalue()


def test_quiet_loading_turns_transformers_bars_off_and_back_on():
    hf_logging.enable_progress_bar()
    with quiet_loading():
        assert not hf_logging.is_progress_bar_enabled()
    assert hf_logging.is_progress_bar_enabled()
