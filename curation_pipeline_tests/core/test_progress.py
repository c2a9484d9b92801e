import io

from curation_pipeline.core import progress


def test_terminal_bar_on_a_pipe_prints_every_tenth_and_the_end():
    out = io.StringIO()
    bar = progress.TerminalBar(stream=out, width=10)
    unsubscribe = progress.subscribe(bar)
    try:
        for done in range(0, 101, 5):
            progress.report("embed d1", done, 100)
    finally:
        unsubscribe()
    lines = out.getvalue().splitlines()
    assert len(lines) == 11 and lines[-1].startswith("[##########] 100%  embed d1  100/100")
    assert lines[5].startswith("[#####-----]  50%")
    progress.report("embed d1", 1, 1)  # after unsubscribing nothing more is written
    assert len(out.getvalue().splitlines()) == 11


def test_a_broken_listener_never_breaks_the_work():
    def broken(*_):
        raise RuntimeError("display gone")

    unsubscribe = progress.subscribe(broken)
    try:
        progress.report("x", 1, 2)
    finally:
        unsubscribe()
