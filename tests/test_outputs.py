"""Fault injection for ditq's output rule (``ditq.artifacts.outputs``): nothing lost, nothing half-done.

Each test names the promise of README "What ditq guarantees" it keeps. The CLI cases run ``main`` in-process;
the signal cases run a child process and kill it while its staging directory exists.
"""

from __future__ import annotations

import os
import shutil
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from ditq.artifacts import MANIFEST, manifest_kind, outputs, write_manifest
from ditq.artifacts.outputs import output_file, staging_dir, sweep_stale
from ditq.cli.main import main
from ditq.errors import CheckFailed, DitqError

KIND = "ditq.test"


def _artifact(root: Path, kind: str = KIND, payload: str = "old") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "data.txt").write_text(payload)
    write_manifest(root, kind, {})
    return root


def _debris(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


def _one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Traceback" not in err, err
    return err


# -- only its own ------------------------------------------------------------------------------------------------

def test_force_refuses_the_current_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    monkeypatch.chdir(tmp_path)
    for out in (".", str(tmp_path), ".."):
        with pytest.raises(DitqError, match="current directory"):
            with staging_dir(Path(out), kind=KIND, force=True):
                pass
    assert (tmp_path / "notes.txt").read_text() == "mine"
    assert _debris(tmp_path) == []


def test_cli_export_to_dot_force_keeps_the_folder(tiny_recipe_dir: Path, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    monkeypatch.chdir(tmp_path)
    assert main(["export", str(tiny_recipe_dir), "-o", ".", "--force"]) == 1
    assert "current directory" in _one_line_error(capsys)
    assert sorted(os.listdir(tmp_path)) == ["notes.txt"]


def test_cli_export_onto_its_input_recipe(tiny_recipe_dir: Path, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    recipe = tmp_path / "recipe"
    shutil.copytree(tiny_recipe_dir, recipe)
    before = {p.name: p.read_bytes() for p in recipe.iterdir()}
    assert main(["export", str(recipe), "-o", str(recipe), "--force"]) == 1
    assert "input" in _one_line_error(capsys)
    assert {p.name: p.read_bytes() for p in recipe.iterdir()} == before
    # a directory that holds the input is refused too
    assert main(["export", str(recipe), "-o", str(tmp_path), "--force"]) == 1
    assert recipe.is_dir()


def test_force_refuses_foreign_and_other_kind_directories(tmp_path: Path) -> None:
    user = tmp_path / "photos"
    user.mkdir()
    (user / "cat.jpg").write_text("meow")
    with pytest.raises(DitqError, match="not a ditq output"):
        with staging_dir(user, kind=KIND, force=True):
            pass
    other = _artifact(tmp_path / "recipe", kind="ditq.recipe")
    with pytest.raises(DitqError, match="'ditq.recipe' artifact"):
        with staging_dir(other, kind="ditq.onnx", force=True):
            pass
    assert (user / "cat.jpg").read_text() == "meow" and (other / "data.txt").read_text() == "old"
    assert _debris(tmp_path) == []


def test_force_replaces_own_kind_and_empty_dirs(tmp_path: Path) -> None:
    own = _artifact(tmp_path / "out")
    with staging_dir(own, kind=KIND, force=True) as tmp:
        (tmp / "data.txt").write_text("new")
    assert (own / "data.txt").read_text() == "new" and manifest_kind(own) == KIND
    empty = tmp_path / "empty"
    empty.mkdir()
    with staging_dir(empty, kind=KIND) as tmp:  # an empty directory needs no --force
        (tmp / "x").write_text("x")
    assert (empty / "x").is_file() and (empty / MANIFEST).is_file()
    with pytest.raises(DitqError, match="--force"):
        with staging_dir(own, kind=KIND):
            pass
    assert _debris(tmp_path) == []


def test_symlink_output_is_refused_without_debris(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                  tiny_recipe_dir: Path) -> None:
    target = _artifact(tmp_path / "real", kind="ditq.onnx")
    link = tmp_path / "link"
    link.symlink_to(target)
    assert main(["export", str(tiny_recipe_dir), "-o", str(link), "--force"]) == 1
    assert "symbolic link" in _one_line_error(capsys)
    assert link.is_symlink() and (target / "data.txt").read_text() == "old"
    assert _debris(tmp_path) == []


def test_unwritable_parents_fail_first_in_one_line(tmp_path: Path) -> None:
    afile = tmp_path / "afile"
    afile.write_text("x")
    ran = []
    for out in (afile / "sub", Path("/proc/ditq-test-out")):
        with pytest.raises(DitqError) as err:
            with staging_dir(out, kind=KIND):
                ran.append(out)  # the work must not start
        assert "\n" not in str(err.value)
    assert ran == []
    with pytest.raises(DitqError, match="not a directory"):
        with staging_dir(afile, kind=KIND, force=True):
            pass
    assert afile.read_text() == "x"


# -- whole or not at all ---------------------------------------------------------------------------------------------

def test_failure_inside_keeps_the_old_output(tmp_path: Path) -> None:
    own = _artifact(tmp_path / "out")
    with pytest.raises(RuntimeError):
        with staging_dir(own, kind=KIND, force=True) as tmp:
            (tmp / "data.txt").write_text("half")
            raise RuntimeError("boom")
    assert (own / "data.txt").read_text() == "old"
    assert _debris(tmp_path) == []


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2", "fallback"])
def test_replacement_is_one_swap_and_old_goes_after(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    exchange: bool) -> None:
    if not exchange:
        monkeypatch.setattr(outputs, "_exchange", lambda a, b: False)
    own = _artifact(tmp_path / "out")
    seen: list[str] = []
    real_remove = outputs._remove

    def remove(path: Path) -> None:  # the old output is deleted only once the new one is in place
        seen.append((own / "data.txt").read_text())
        real_remove(path)

    monkeypatch.setattr(outputs, "_remove", remove)
    with staging_dir(own, kind=KIND, force=True) as tmp:
        (tmp / "data.txt").write_text("new")
    assert seen == ["new"] and (own / "data.txt").read_text() == "new"
    assert _debris(tmp_path) == []


def test_fallback_crash_between_renames_is_restored(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The non-atomic fallback: a crash after the old output was moved aside leaves it whole, and the next run
    puts it back."""
    own = _artifact(tmp_path / "out")
    aside = tmp_path / ".out.999999-1.abcd.old"  # as a dead process would have left it
    os.rename(own, aside)
    assert not own.exists()
    restored = sweep_stale(tmp_path)
    assert restored == [aside] and (own / "data.txt").read_text() == "old"


def test_export_lint_failure_keeps_the_previous_set(tiny_model, tiny_recipe, tiny_recipe_dir: Path, tiny_onnx,
                                                    tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ditq.artifacts import lint
    from ditq.export import onnx_export

    out = tmp_path / "onnx"
    shutil.copytree(tiny_onnx.root, out)
    before = (out / MANIFEST).read_bytes()
    real = lint.lint_dir

    def failing(root: Path, target: str = lint.NEWEST_TENSORRT):
        results = real(root, target)
        results[next(iter(results))] = [lint.Violation("fake-rule", "node", "injected")]
        return results

    monkeypatch.setattr(lint, "lint_dir", failing)
    with pytest.raises(CheckFailed, match="left as it was"):
        onnx_export.export_onnx(tiny_model, tiny_recipe, out, recipe_dir=tiny_recipe_dir, force=True,
                                progress=False)
    assert (out / MANIFEST).read_bytes() == before
    assert _debris(tmp_path) == []


# -- one writer ----------------------------------------------------------------------------------------------------

def test_second_writer_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with staging_dir(out, kind=KIND) as tmp:
        (tmp / "a").write_text("first")
        with pytest.raises(DitqError, match="another ditq process is writing"):
            with staging_dir(out, kind=KIND, force=True):
                pass
    assert (out / "a").read_text() == "first"
    assert _debris(tmp_path) == []  # the lock file goes with the writer


_HOLDER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from ditq.artifacts.outputs import staging_dir
    with staging_dir(Path(sys.argv[1]), kind="ditq.onnx") as tmp:
        print("holding", flush=True)
        time.sleep(float(sys.argv[2]))
""")


def test_concurrent_cli_writer_is_refused(tiny_recipe_dir: Path, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "onnx"
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(out), "600"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "holding"
        assert main(["export", str(tiny_recipe_dir), "-o", str(out)]) == 1
        assert "another ditq process is writing" in _one_line_error(capsys)
    finally:
        holder.kill()
        holder.wait()


# -- no debris -----------------------------------------------------------------------------------------------------

_CHILD = textwrap.dedent("""
    import sys
    from ditq.cli.main import main
    sys.exit(main(["-q", "calibrate", sys.argv[1], "-o", sys.argv[2], "--method", "minmax",
                   "--steps", "1000", "--samples", "2"]))
""")


def _start_and_wait_for_staging(model_dir: Path, out: Path) -> subprocess.Popen:
    child = subprocess.Popen([sys.executable, "-c", _CHILD, str(model_dir), str(out)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not any(p.name.endswith(".partial") for p in out.parent.iterdir()):
        assert child.poll() is None, child.communicate()
        assert time.monotonic() < deadline, "no staging directory appeared"
        time.sleep(0.05)
    time.sleep(1.0)  # into the calibration loop
    return child


def test_sigterm_cleans_up_like_ctrl_c(tiny_model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "recipe"
    child = _start_and_wait_for_staging(tiny_model_dir, out)
    child.send_signal(signal.SIGTERM)
    _, err = child.communicate(timeout=60)
    assert child.returncode == 128 + signal.SIGTERM, err
    assert "terminated" in err and "Traceback" not in err
    assert not out.exists() and _debris(tmp_path) == []


def test_kill_9_debris_is_swept_by_the_next_run(tiny_model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "recipe"
    child = _start_and_wait_for_staging(tiny_model_dir, out)
    child.kill()
    child.communicate(timeout=60)
    left = _debris(tmp_path)
    assert any(name.endswith(".partial") for name in left), left  # what kill -9 leaves
    with staging_dir(tmp_path / "other", kind=KIND) as tmp:  # any later run in the same parent
        (tmp / "x").write_text("x")
    assert _debris(tmp_path) == []
    assert not out.exists()


def test_sweep_leaves_live_processes_and_other_files_alone(tmp_path: Path) -> None:
    theirs = [tmp_path / ".app.lock", tmp_path / ".notes.partial", tmp_path / ".x.12-34.partial.png"]
    for path in theirs:
        path.write_text("theirs")
    with staging_dir(tmp_path / "out", kind=KIND) as tmp:
        assert sweep_stale(tmp_path) == [] and tmp.is_dir()
    assert all(path.read_text() == "theirs" for path in theirs)


# -- ordinary permissions ------------------------------------------------------------------------------------------

def test_outputs_follow_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        with staging_dir(tmp_path / "out", kind=KIND) as tmp:
            (tmp / "f").write_text("x")
        with output_file(tmp_path / "grid.png", kind="PNG grid") as tmp_file:
            tmp_file.write_bytes(b"png")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "out").stat().st_mode) == 0o755
    assert stat.S_IMODE((tmp_path / "out" / "f").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "grid.png").stat().st_mode) == 0o644


# -- files -------------------------------------------------------------------------------------------------------

def test_output_file_rules(tmp_path: Path) -> None:
    out = tmp_path / "grid.png"
    with output_file(out, kind="PNG grid") as tmp:
        tmp.write_bytes(b"one")
    with pytest.raises(DitqError, match="--force"):
        with output_file(out, kind="PNG grid"):
            pass
    with pytest.raises(RuntimeError):
        with output_file(out, kind="PNG grid", force=True) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("boom")
    assert out.read_bytes() == b"one"
    with output_file(out, kind="PNG grid", force=True) as tmp:
        tmp.write_bytes(b"two")
    assert out.read_bytes() == b"two" and _debris(tmp_path) == []
    (tmp_path / "adir").mkdir()
    with pytest.raises(DitqError, match="not a regular file"):
        with output_file(tmp_path / "adir", kind="PNG grid", force=True):
            pass


# -- every command: sample and validate ----------------------------------------------------------------------------

def test_sample_png_follows_the_rule(tiny_onnx, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "g.png"
    out.write_bytes(b"user's picture")
    args = ["-q", "sample", str(tiny_onnx.root), "--steps", "2", "--classes", "1", "-o", str(out)]
    assert main(args) == 1 and "--force" in _one_line_error(capsys)
    assert out.read_bytes() == b"user's picture"
    assert main([*args, "--force"]) == 0 and out.read_bytes().startswith(b"\x89PNG")
    afile = tmp_path / "afile"
    afile.write_text("x")
    started = time.perf_counter()
    assert main(["sample", str(tiny_onnx.root), "--steps", "50", "-o", str(afile / "g.png")]) == 1
    assert "cannot create" in _one_line_error(capsys) and time.perf_counter() - started < 5  # before the work
    assert _debris(tmp_path) == []


def test_validate_report_is_whole_or_old(tiny_onnx, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    from ditq.validation import run as validate_run

    out = tmp_path / "report"
    assert main(["-q", "validate", str(tiny_onnx.root), "--steps", "10", "-o", str(out)]) == 0
    before = (out / "validation.json").read_bytes()
    assert ".partial" not in before.decode()  # no staging paths leak into the report
    assert main(["-q", "validate", str(tiny_onnx.root), "--steps", "10", "-o", str(out)]) == 1  # exists: --force
    assert "--force" in _one_line_error(capsys)
    real_compare = validate_run.compare_group
    calls = []

    def failing(*args, **kwargs):  # the third group's comparison crashes
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("crash in group 2")
        return real_compare(*args, **kwargs)

    monkeypatch.setattr(validate_run, "compare_group", failing)
    with pytest.raises(RuntimeError):
        main(["-q", "validate", str(tiny_onnx.root), "--steps", "10", "-o", str(out), "--force"])
    assert (out / "validation.json").read_bytes() == before  # the old report, whole
    assert sorted(p.name for p in out.iterdir()) == sorted(["group_0", "group_1", "group_2", "validation.json",
                                                             MANIFEST])
    assert _debris(tmp_path) == []
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert main(["-q", "validate", str(tiny_onnx.root), "-o", str(afile)]) == 1
    assert "not a directory" in _one_line_error(capsys)


@pytest.mark.parametrize("argv0, want", [
    ("/venv/bin/ditq", "ditq calibrate demo -o 'my recipe'"),
    ("/site-packages/ditq/__main__.py", "ditq calibrate demo -o 'my recipe'"),  # python -m ditq
    ("/site-packages/ditq/cli/main.py", "ditq calibrate demo -o 'my recipe'"),  # python -m ditq.cli.main
    ("bench_script.py", None),  # ditq used from Python: no command to record
    ("-c", None),
])
def test_manifest_records_the_command_line_however_the_cli_was_started(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, argv0: str, want: str | None) -> None:
    import json

    monkeypatch.setattr(sys, "argv", [argv0, "calibrate", "demo", "-o", "my recipe"])
    write_manifest(tmp_path, "ditq.recipe", {})
    assert json.loads((tmp_path / MANIFEST).read_text())["command"] == want


def test_python_dash_m_ditq_runs_the_cli() -> None:
    run = subprocess.run([sys.executable, "-m", "ditq", "--version"], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and run.stdout.startswith("ditq "), run
