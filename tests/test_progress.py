"""Progress output: tqdm bars on a terminal, plain log lines (no control codes) when stderr is a file or pipe."""
import io
import logging
import re

from app.progress import LogProgress, is_terminal, progress_bar
from conftest import make_cli_env

CONTROL = re.compile(r"\r|\x1b\[")


class FakeTTY(io.StringIO):
    def isatty(self):
        return True


def test_terminal_gets_a_bar_and_a_file_gets_log_lines():
    assert is_terminal(FakeTTY()) and not is_terminal(io.StringIO())
    from tqdm import tqdm

    bar = progress_bar(10, "frames", "frame", stream=FakeTTY())
    assert isinstance(bar, tqdm)
    bar.close()
    assert isinstance(progress_bar(10, "frames", "frame", stream=io.StringIO()), LogProgress)


def test_log_progress_lines_every_few_updates(caplog):
    with caplog.at_level(logging.INFO, logger="app.progress"):
        with LogProgress(81, "frames", "frame", every=3, rate_unit="fps") as bar:
            for n in [9] + [12] * 6:  # 7 chunks: 9 frames, then 12 each
                bar.update(n)
    lines = [r.getMessage() for r in caplog.records]
    assert [ln.split(" (")[0] for ln in lines] == ["frames 33/81", "frames 69/81", "frames 81/81"]  # 3, 6, end
    assert re.fullmatch(r"frames 33/81 \(40%\) \S+ (fps|s/frame), \d+ s left", lines[0]), lines[0]
    assert lines[2].startswith("frames 81/81 (100%)") and "left" not in lines[2]


def test_log_progress_endless_and_early_stop(caplog):
    with caplog.at_level(logging.INFO, logger="app.progress"):
        with LogProgress(None, "frames", "frame", every=2) as bar:
            for _ in range(3):
                bar.update(4)
        with LogProgress(100, "frames", "frame", every=5) as stopped:
            stopped.update(10)
        with LogProgress(5, "prompts", "prompt", enabled=False) as off:
            off.update(5)
    lines = [r.getMessage().split(" ")[:2] for r in caplog.records]
    assert lines == [["frames", "8"], ["frames", "12"], ["frames", "10/100"]]


def test_cli_progress_is_plain_log_lines_when_piped(run_cli, tiny_model_files, tmp_path):
    model_dir, checkpoint = tiny_model_files
    prompts = tmp_path / "one.txt"
    prompts.write_text("a kite over a beach\n", encoding="utf-8")
    env = make_cli_env()
    env.pop("TQDM_DISABLE")
    r = run_cli("--wan_model_dir", model_dir, "--checkpoint_path", checkpoint, "--device", "cpu", "--data_path",
                prompts, "--output_folder", "out", "--num_output_frames", 6, "height=32", "width=32", env=env)
    assert r.returncode == 0, r.stderr
    assert not CONTROL.search(r.stderr), repr(r.stderr[-2000:])
    assert re.search(r"app\.progress: frames 21/21 \(100%\)", r.stderr), r.stderr
    assert re.search(r"app\.progress: prompts 1/1 \(100%\)", r.stderr), r.stderr
