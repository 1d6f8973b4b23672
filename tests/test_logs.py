"""A run's log survives being cut off mid-write, and a stop signal is recorded rather than obeyed."""

import json
import logging
import os
import signal

import pytest

from diffjax.training import logs, preemption


def test_rows_round_trip_and_upto_drops_the_later_ones(tmp_path):
    path = str(tmp_path / "log.jsonl")
    assert logs.read_log(path) == []
    for step in (10, 20, 30):
        logs.append_log(path, {"step": step, "loss": 1.0 / step})
    assert logs.read_log(path) == [{"step": s, "loss": 1.0 / s} for s in (10, 20, 30)]
    assert [r["step"] for r in logs.read_log(path, upto=20)] == [10, 20]
    logs.rewrite_log(path, logs.read_log(path, upto=10))
    assert open(path).read() == json.dumps({"step": 10, "loss": 0.1}) + "\n"
    assert os.listdir(tmp_path) == ["log.jsonl"]  # the temporary file was renamed over it


@pytest.mark.parametrize("tail", ['{"step": 30, "lo', '{"step": 30, "loss": 0.5}'])
def test_a_torn_last_line_is_dropped_with_a_warning_or_kept_if_whole(tmp_path, caplog, tail):
    """A run killed inside its last write leaves a line without its newline: cut short, it is dropped;
    complete JSON (only the newline missing), it is kept."""
    path = tmp_path / "log.jsonl"
    path.write_text('{"step": 10, "loss": 1.0}\n{"step": 20, "loss": 0.7}\n' + tail)
    with caplog.at_level(logging.WARNING):
        steps = [r["step"] for r in logs.read_log(str(path))]
    whole = tail.endswith("}")
    assert steps == ([10, 20, 30] if whole else [10, 20])
    assert ("its last line was cut short" in caplog.text) != whole


@pytest.mark.parametrize(
    "line,message",
    [('{"step": 20, "lo', "line 2, is not JSON"), ("[1, 2]", "line 2, must be a JSON object with a 'step'")],
)
def test_a_damaged_line_before_the_last_names_the_file_and_line(tmp_path, line, message):
    path = tmp_path / "log.jsonl"
    path.write_text(f'{{"step": 10}}\n{line}\n{{"step": 30}}\n')
    with pytest.raises(ValueError, match=rf"{path}, {message}"):
        logs.read_log(str(path))


def test_the_first_stop_signal_is_recorded_and_the_second_acts_as_before():
    before = signal.getsignal(signal.SIGTERM)
    with preemption.StopSignals() as stop:
        assert stop.received is None
        os.kill(os.getpid(), signal.SIGTERM)  # delivered to the handler before os.kill returns
        assert stop.received == "SIGTERM"
        assert signal.getsignal(signal.SIGTERM) is before  # restored at once: a second one acts as usual
    assert signal.getsignal(signal.SIGTERM) is before and signal.getsignal(signal.SIGINT) is signal.default_int_handler
