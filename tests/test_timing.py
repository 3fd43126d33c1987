"""The notebook timer (course_utils.timing): a fresh kernel per notebook, the row it records,
a failing notebook's row, and bad paths."""
import csv

import nbformat

from course_utils import timing


def _notebook(path, *sources):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(s) for s in sources]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)
    return path


def _rows(out):
    with open(out / "timings.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def test_times_notebooks_in_order_each_in_its_own_kernel(tmp_path, monkeypatch):
    monkeypatch.setenv("COURSE_SMOKE", "1")  # full mode unless --reduced: the kernel must not see it
    first = _notebook(tmp_path / "a.ipynb",
                      "import os, time\ntime.sleep(1.0)\nblob = b'x' * (300 * 2**20)  # 300 MiB written, so resident",
                      "import pathlib\npathlib.Path(os.environ['COURSE_OUTPUTS'], 'from_a').write_text(str(os.getpid()))\n"
                      "print('mode', os.environ.get('COURSE_SMOKE'), os.environ.get('TQDM_DISABLE'))")
    second = _notebook(tmp_path / "b.ipynb",
                       "import os, pathlib\nprev = pathlib.Path(os.environ['COURSE_OUTPUTS'], 'from_a').read_text()\n"
                       "assert prev != str(os.getpid()), 'a fresh kernel per notebook'")
    out = tmp_path / "runs"
    assert timing.main([str(first), str(second), "--out", str(out)]) == 0
    a, b = _rows(out)
    assert (a["notebook"], b["notebook"]) == ("a.ipynb", "b.ipynb")
    assert a["status"] == b["status"] == "ok" and a["mode"] == "full"
    assert float(a["seconds"]) >= 1.0
    # each row's peak is its own kernel's: a held 300 MiB, b did not
    assert float(a["kernel_peak_rss_mib"]) >= 300 > float(b["kernel_peak_rss_mib"])
    assert a["slowest_cells"].startswith("[0]") and "torch=" in a["versions"] and a["cpu_count"]
    executed = nbformat.read(out / "a.ipynb", as_version=4)
    assert executed.cells[1].outputs[0]["text"].strip() == "mode None 1"


def test_a_failing_notebook_gets_its_row_and_its_executed_copy(tmp_path, capsys):
    bad = _notebook(tmp_path / "bad.ipynb", "x = 1", "raise ValueError('student bug')", "never = True")
    out = tmp_path / "runs"
    assert timing.main([str(bad), "--out", str(out), "--reduced"]) == 1
    (row,) = _rows(out)
    assert row["status"] == "error in cell 1" and row["error"] == "ValueError: student bug"
    assert row["mode"] == "reduced"
    executed = nbformat.read(out / "bad.ipynb", as_version=4)
    assert executed.cells[0].execution_count == 1 and not executed.cells[2].get("outputs")
    assert "bad.ipynb: error in cell 1" in capsys.readouterr().out


def test_a_missing_notebook_is_named_and_nothing_runs(tmp_path, capsys):
    assert timing.main([str(tmp_path / "nope.ipynb"), "--out", str(tmp_path / "runs")]) == 2
    assert "No such notebook" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_slowest_cells_reads_nbclient_timing():
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("fast()"), nbformat.v4.new_markdown_cell("text"),
                nbformat.v4.new_code_cell("\nslow()")]
    for cell, end in ((nb.cells[0], "00:00:01.5"), (nb.cells[2], "00:01:00")):
        cell.metadata["execution"] = {"iopub.execute_input": "2026-11-23T00:00:00Z",
                                      "shell.execute_reply": f"2026-11-23T{end}Z"}
    assert timing.slowest_cells(nb) == [(2, 60.0, "slow()"), (0, 1.5, "fast()")]
    assert timing.slowest_cells(nb, n=1) == [(2, 60.0, "slow()")]


def test_machine_never_opens_cuda_in_the_timer():
    """The timer's own process must not hold a CUDA context (GPU memory) while notebooks run."""
    import subprocess
    import sys

    code = ("import sys; from course_utils import timing; info = timing.machine(); "
            "assert info['cpu_count'] >= 1 and isinstance(info['gpu'], str); "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_readme_cpu_column_is_the_shipped_timing_runs(root):
    """The README's full-mode CPU column quotes each notebook's latest run in
    course_utils/data/notebook_timings_cpu.csv (timing's own output): whole-notebook time and the
    kernel's peak RAM. A new run that is shipped without updating the README fails here."""
    import re

    with open(root / "course_utils" / "data" / "notebook_timings_cpu.csv", newline="") as fh:
        runs = list(csv.DictReader(fh))
    assert runs and set(timing.COLUMNS) <= set(runs[0])
    latest = {}
    for r in sorted(runs, key=lambda r: r["measured_at"]):
        assert r["mode"] == "full" and r["status"] == "ok" and not r["gpu"], r["notebook"]
        latest[r["notebook"]] = r
    table = [line.split(" | ") for line in (root / "README.md").read_text().splitlines()
             if re.match(r"\| 0\d \| \[", line)]
    assert len(table) == len(sorted(root.glob("solutions/0*.ipynb")))
    for cells in table:
        link = re.search(r"notebooks/(0\d_\w+\.ipynb)", cells[1]).group(1)
        cpu = cells[-1]
        if link not in latest:
            assert "not measured" in cpu, link
            continue
        r = latest[link]
        seconds, gib = float(r["seconds"]), float(r["kernel_peak_rss_mib"]) / 1024
        whole = f"{seconds:.0f} s" if seconds < 60 else f"{seconds / 60:.1f} min"
        assert cpu.startswith(whole) and f"{gib:.1f} GiB" in cpu, (link, cpu, whole, f"{gib:.1f} GiB")
