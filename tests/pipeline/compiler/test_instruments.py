"""The console during a build: a heartbeat fills every silence longer than its period, progress lines carry the
elapsed time, deployc's own INFO records (a factory that trains) reach the console, and --quiet prints nothing.
Time is a fake clock: no sleeps."""

from __future__ import annotations

import io
import logging

from deployc.compiler.instruments import Heartbeat, Instruments


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _instruments(quiet: bool = False, every: float = 10.0) -> tuple[Instruments, io.StringIO, FakeClock]:
    stream, clock = io.StringIO(), FakeClock()
    inst = Instruments(quiet=quiet, stream=stream, heartbeat=every)
    inst.heartbeat = Heartbeat(every, clock)
    return inst, stream, clock


class _Timed(io.StringIO):
    """A console that stamps each line with the fake clock's time."""

    def __init__(self, clock: FakeClock):
        super().__init__()
        self.clock, self.stamps = clock, []

    def write(self, text: str) -> int:
        self.stamps += [self.clock()] * text.count("\n")
        return super().write(text)


def test_no_silence_longer_than_the_heartbeat_during_a_long_pass():
    clock = FakeClock()
    stream = _Timed(clock)
    inst = Instruments(stream=stream)
    inst.heartbeat = Heartbeat(10.0, clock)
    inst.log("pipeline: finetune | onnx")
    inst.before_pass("finetune")
    with inst.progress("finetune", 3) as advance:
        for epoch_seconds in (47.0, 3.0, 31.0):  # a slow epoch, a fast one, a slow one; the poll runs every second
            for _ in range(int(epoch_seconds)):
                clock.now += 1.0
                inst._beat()
            advance(1, loss=0.5)
    for _ in range(25):  # a silent conversion after the pass
        clock.now += 1.0
        inst._beat()
    gaps = [b - a for a, b in zip(stream.stamps, stream.stamps[1:])]
    assert stream.stamps[-1] - stream.stamps[0] >= 100
    assert max(gaps) <= 10.0  # every silence ended at the heartbeat's period
    text = stream.getvalue()
    assert "… finetune (0/3 done): still running (10 s)" in text  # says what runs, and for how long
    assert "  finetune 1/3 loss=0.5 (47 s)" in text  # progress lines carry the elapsed time
    assert "still working (10 s since the last line)" in text  # after the pass: nothing named, still a line


def test_a_line_ending_in_an_ellipsis_names_the_work_until_the_next_line():
    inst, stream, clock = _instruments()
    inst.log("tflite: converting with litert-torch …")
    for _ in range(21):
        clock.now += 1.0
        inst._beat()
    assert stream.getvalue().splitlines()[1:] == [
        "  … tflite: converting with litert-torch: still running (10 s)",
        "  … tflite: converting with litert-torch: still running (20 s)",
    ]


def test_quiet_prints_nothing_not_even_a_heartbeat():
    inst, stream, clock = _instruments(quiet=True)
    with inst.beating():
        inst.log("pipeline: onnx")
        inst.before_pass("export.onnx")
        with inst.progress("finetune", 2) as advance:
            clock.now += 60
            inst._beat()
            advance(2)
    assert stream.getvalue() == ""


def test_deployc_info_records_reach_the_console_and_others_do_not():
    inst, stream, _ = _instruments()
    with inst.third_party_quiet(enabled=False):
        logging.getLogger("deployc.examples.digits_cnn").info("training digits_resnet on digits …")
        logging.getLogger("some.library").info("chatter")
    assert stream.getvalue() == "training digits_resnet on digits …\n"
    assert logging.getLogger("deployc").handlers == []  # the bridge is removed after the build


def test_indented_lines_are_details_of_the_named_work():
    inst, stream, clock = _instruments()
    inst.log("training digits_resnet on digits once (25 epochs; cached in /tmp/x) …")
    clock.now += 7
    inst.log("  training epoch 1/25 loss=1.2 (7 s)")  # a detail: the work goes on
    clock.now += 10
    inst._beat()
    inst.log("reference top1 = 0.99 on 450 samples")  # a new top-level line: that work is over
    clock.now += 10
    inst._beat()
    assert stream.getvalue().splitlines()[2:] == [
        "  … training digits_resnet on digits once: still running (17 s)",
        "reference top1 = 0.99 on 450 samples",
        "  … still working (10 s since the last line)",
    ]
