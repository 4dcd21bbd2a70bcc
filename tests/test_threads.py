"""The console command fits torch's CPU threads to the cores other work leaves free."""
import os

import pytest

from editspec.model import threads


@pytest.mark.parametrize("cores, load, expected", [(2, 0.0, None), (2, 0.4, None), (2, 1.0, "1"), (2, 2.7, "1"),
                                                   (8, 3.2, "5")])
def test_busy_cores_lower_the_thread_count(monkeypatch, capsys, cores, load, expected):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cores)))
    monkeypatch.setattr(threads, "busy_cores", lambda cores: load)
    environ = {}
    set_to = threads.fit_threads_to_machine(environ)
    assert environ.get("OMP_NUM_THREADS") == expected
    assert set_to == (int(expected) if expected else None)
    # Said once on stderr when lowered, with the way to choose; nothing on a quiet machine.
    assert ("OMP_NUM_THREADS" in capsys.readouterr().err) == (expected is not None)


def test_busy_cores_reads_the_machine_s_cpu_use_while_the_command_waits(monkeypatch):
    samples = iter([(1000, 600), (1020, 610)])  # 20 jiffies passed on 2 cores, 10 of them idle
    monkeypatch.setattr(threads, "_cpu_times", lambda: next(samples))
    assert threads.busy_cores(2, window=0) == pytest.approx(1.0)
    monkeypatch.undo()
    assert 0 <= threads.busy_cores(2, window=0.05) <= 2  # the real /proc/stat


def test_a_thread_count_the_user_set_is_kept(monkeypatch):
    monkeypatch.setattr(threads, "busy_cores", lambda cores: 9.0)
    environ = {"OMP_NUM_THREADS": "2"}
    assert threads.fit_threads_to_machine(environ) is None and environ == {"OMP_NUM_THREADS": "2"}


@pytest.mark.parametrize("argv, fits", [(["editspec", "compile", "a.edit"], True), (["editspec", "verify"], True),
                                        (["editspec", "check", "a.edit"], False), (["editspec", "fmt", "--check", "."], False)])
def test_the_console_command_fits_threads_before_it_runs_torch(monkeypatch, argv, fits):
    import editspec.cli as cli

    calls = []
    monkeypatch.setattr(threads, "fit_threads_to_machine", lambda: calls.append("fit"))
    monkeypatch.setattr(cli, "main", lambda: calls.append("main"))
    monkeypatch.setattr("sys.argv", argv)
    cli.run()
    assert calls == (["fit", "main"] if fits else ["main"])
