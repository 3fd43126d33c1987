"""A bubblewrap sandbox per graded kernel (Linux; ``apt-get install bubblewrap``).

Each kernel gets its own PID, mount, IPC, UTS, user and network namespaces (no network at all:
the grader talks to it over Unix sockets in a folder of their own). It sees, read-only, the
system's ``/usr`` and libraries, a few files of ``/etc``, the Python environment, a copy of
``course_utils`` that holds no solutions and the converted offline model; it writes only to a
private ``/submission`` and ``/tmp`` (size-limited tmpfs) and to its own probe file. Nothing of the
checkout, the instructor's home, the grader's files or other submissions is in it. Limits (rlimits,
set before the kernel starts, so the kernel cannot raise them): address space, processes, CPU
seconds, file size, open files. When the kernel ends, the namespace ends, and every process the
submission started with it.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

INSIDE_SITE = "/opt/course/site"
INSIDE_CACHE = "/opt/course/cache"
INSIDE_HUB = "/opt/course/hf-hub"
WORK = "/submission"  # a path no host folder bound into the sandbox can lie under
ETC = ("ld.so.cache", "ld.so.conf", "ld.so.conf.d", "nsswitch.conf", "passwd", "group", "hosts",
       "localtime", "ssl", "ca-certificates", "alternatives", "fonts", "mime.types", "os-release")
SYSTEM = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
INSTALL = ("install bubblewrap 0.6 or newer (Debian/Ubuntu: sudo apt-get install bubblewrap; Fedora: "
           "sudo dnf install bubblewrap), or grade in the container described in the README "
           "(docker run --network none ...), or pass --no-sandbox to grade without these protections")
PROTECTIONS = (
    "the kernel can read the solutions and the instructor's files (the answer key, SSH keys, tokens)",
    "the kernel has the network",
    "a kernel can see, kill or alter the grader, other kernels and their files",
    "processes a submission starts can outlive its run",
    "no limits on memory, processes, CPU time, file size or disk",
)
# The kernel's launcher inside: the limits, then the kernel. JPY_PARENT_PID names the worker's PID
# outside, which ipykernel would take for a parent that has gone (its parent inside is PID 1).
_LAUNCH = ("import os,resource,sys\nos.environ.pop('JPY_PARENT_PID',None)\n"
           "for k,v in {limits!r}: resource.setrlimit(getattr(resource,k),(v,v))\n"
           "os.execvp(sys.argv[1],sys.argv[1:])")


@dataclass
class Limits:
    memory_mb: int = 12288  # address space of the kernel (torch reserves much more than it uses)
    procs: int = 256
    cpu_s: int = 3600
    file_mb: int = 4096
    disk_mb: int = 4096  # each of /submission and /tmp

    def rlimits(self) -> list[tuple[str, int]]:
        return [("RLIMIT_AS", self.memory_mb * 2**20), ("RLIMIT_NPROC", self.procs),
                ("RLIMIT_CPU", self.cpu_s), ("RLIMIT_FSIZE", self.file_mb * 2**20),
                ("RLIMIT_NOFILE", 4096), ("RLIMIT_CORE", 0)]


def bwrap() -> str | None:
    return shutil.which("bwrap")


def missing() -> str | None:
    """None when a sandbox can be made here; else what is missing and what to do."""
    if not sys.platform.startswith("linux"):
        return f"bubblewrap needs Linux (this is {sys.platform}): {INSTALL}"
    exe = bwrap()
    if exe is None:
        return f"bubblewrap (bwrap) is not installed: {INSTALL}"
    try:
        helptext = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=30).stdout
        trial = subprocess.run([exe, "--unshare-all", "--die-with-parent", *_system_binds(), "--proc", "/proc",
                                "--dev", "/dev", "--", "true"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as err:
        return f"bubblewrap does not run ({err}): {INSTALL}"
    if "--size" not in helptext:
        return f"this bubblewrap is too old (no --size for a disk limit): {INSTALL}"
    if trial.returncode != 0:
        return (f"bubblewrap cannot create namespaces here ({trial.stderr.strip()[:200]}); unprivileged user "
                f"namespaces may be switched off (sysctl kernel.unprivileged_userns_clone=1): {INSTALL}")
    return None


def _system_binds() -> list[str]:
    args = []
    for path in SYSTEM:
        if os.path.islink(path):
            args += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            args += ["--ro-bind", path, path]
    return args


def stage(folder: Path) -> Path:
    """Copy ``course_utils`` (code and data, no caches) into ``folder/site``, once per grading run."""
    package = Path(__file__).resolve().parents[1]
    site = Path(folder) / "site"
    shutil.copytree(package, site / package.name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for path in [site, *site.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return site


def _hub_cache() -> str | None:
    hub = os.environ.get("HF_HUB_CACHE") or str(Path(os.environ.get("HF_HOME") or Path.home() / ".cache"
                                                      / "huggingface") / "hub")
    return hub if os.path.isdir(hub) else None


@dataclass
class Sandbox:
    """One kernel's sandbox: ``conn`` and ``probe`` are the only host folders it may write to."""

    site: str  # the staged course_utils copy
    cache: str | None  # the converted offline model's folder (COURSE_CACHE), read-only
    conn: str
    probe: str
    limits: Limits

    @classmethod
    def from_dict(cls, data: dict) -> "Sandbox":
        return cls(**{**data, "limits": Limits(**data["limits"])})

    def to_dict(self) -> dict:
        return asdict(self)

    def env(self, env: dict) -> dict:
        """The kernel's environment inside: paths as the sandbox sees them."""
        env = dict(env)
        env.update(PYTHONPATH=INSIDE_SITE, HOME="/tmp/home", PWD=WORK, MPLCONFIGDIR="/tmp/matplotlib",
                   HF_HOME="/tmp/huggingface", XDG_CACHE_HOME="/tmp/cache", COURSE_OUTPUTS=f"{WORK}/outputs",
                   IPYTHONDIR="/tmp/home/.ipython")
        if self.cache:
            env["COURSE_CACHE"] = INSIDE_CACHE
        if _hub_cache():
            env["HF_HUB_CACHE"] = INSIDE_HUB
        else:
            env.pop("HF_HUB_CACHE", None)
        return env

    def command(self, cmd: list[str]) -> list[str]:
        size = str(self.limits.disk_mb * 2**20)
        args = [bwrap() or "bwrap", "--unshare-all", "--die-with-parent", "--cap-drop", "ALL",
                *_system_binds()]
        for name in ETC:
            args += ["--ro-bind-try", f"/etc/{name}", f"/etc/{name}"]
        args += ["--ro-bind-try", "/sys/devices/system/cpu", "/sys/devices/system/cpu",
                 "--proc", "/proc", "--dev", "/dev",
                 "--size", size, "--tmpfs", "/tmp", "--size", size, "--tmpfs", WORK,
                 "--size", size, "--tmpfs", "/dev/shm", "--dir", "/tmp/home"]
        python = Path(sys.executable)
        roots = {sys.prefix, sys.base_prefix, str(python.resolve().parent.parent)}
        for root in sorted(r for r in roots if not r.startswith(SYSTEM)):
            args += ["--ro-bind", root, root]
        args += ["--ro-bind", self.site, INSIDE_SITE]
        if self.cache:
            args += ["--ro-bind", self.cache, INSIDE_CACHE]
        if _hub_cache():
            args += ["--ro-bind", _hub_cache(), INSIDE_HUB]
        args += ["--bind", self.conn, self.conn, "--bind", self.probe, self.probe, "--chdir", WORK]
        launch = _LAUNCH.format(limits=self.limits.rlimits())
        return [*args, "--", cmd[0], "-S", "-c", launch, *cmd]

    def kernel_manager(self):
        """A jupyter_client AsyncKernelManager (what nbclient drives) whose kernel starts inside this sandbox, over IPC sockets."""
        from jupyter_client.manager import AsyncKernelManager

        sandbox = self

        class SandboxedKernelManager(AsyncKernelManager):
            def format_kernel_cmd(self, extra_arguments=None):
                return sandbox.command(super().format_kernel_cmd(extra_arguments))

        km = SandboxedKernelManager(kernel_name="python3", transport="ipc", ip=f"{self.conn}/kernel",
                                    connection_file=f"{self.conn}/kernel.json")
        # a SIGINT to the kernel's process group would reach bwrap too, which dies of it (and the
        # sandbox with it): interrupt with a message on the control channel instead
        km.kernel_spec.interrupt_mode = "message"
        return km
