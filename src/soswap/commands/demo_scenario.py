"""The ``soswap demo`` scenario: replace libgateway.so while a.out runs, the naive ways and soswap's.

Every step runs real programs: the C compiler, the demo's own a.out, ``cp``, and the soswap CLI itself
(``python -m soswap ...`` in a child process, exactly as a user would type it). Each step records an outcome in
a :class:`Step`; ``soswap demo --json`` prints them.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

from soswap.errors import SoswapError

GATEWAY_V1 = r"""/* libgateway v1: the version running in production */
/* v1 is a bigger build than v2 (think: more code, a self-test table): its code ends 64 KiB further in */
__asm__(".text\n.p2align 12\ngateway_selftest_table:\n.skip 65536, 0x90\n");
int Test_OpenGateway(const char *name) { return name && name[0] ? 1 : 0; }
int gateway_version(void) { return 1; }
"""

GATEWAY_V2 = r"""/* libgateway v2: same ABI (Test_OpenGateway kept), a new function, another code layout */
int Test_OpenGateway(const char *name) { return name && name[0] ? 1 : 0; }
int Test_CloseGateway(void) { return 0; }
int gateway_version(void) { return 2; }
"""

GATEWAY_BAD = r"""/* libgateway "bad v2": Test_OpenGateway was dropped */
int Test_CloseGateway(void) { return 0; }
int gateway_version(void) { return 2; }
"""

AOUT = r"""/* a.out: opens the gateway, then calls into the library in a loop and prints the version it sees */
#include <stdio.h>
#include <unistd.h>
int Test_OpenGateway(const char *name);
int gateway_version(void);
int main(void) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (!Test_OpenGateway("demo")) return 3;
    int last = -1;
    for (;;) {
        int v = gateway_version();
        if (v != last) { printf("gateway version %d\n", v); last = v; }
        usleep(1000);
    }
}
"""


class Step(dict):  # type: ignore[type-arg]
    """One step's outcome: ``step``, ``ok`` and whatever the step observed (JSON-ready)."""


class DemoError(SoswapError):
    """The demo could not run (no C compiler, a build failure)."""


def find_compiler() -> Optional[str]:
    """The C compiler: $CC, else cc, else gcc."""
    for name in (os.environ.get("CC"), "cc", "gcc"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


#: Seconds a compilation of the demo's tiny sources may take before the demo gives up (never a hang).
COMPILE_TIMEOUT = 300


def compiler_failure(cc: str, r: subprocess.CompletedProcess) -> str:
    """Why the compiler ``cc`` failed: the last line it wrote on standard error (or output), else its exit
    status or the signal that killed it (``CC=/bin/false`` prints nothing)."""
    for text in (r.stderr, r.stdout):
        lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
        if lines:
            return lines[-1]
    if r.returncode < 0:
        try:
            name = signal.Signals(-r.returncode).name
        except ValueError:
            name = f"signal {-r.returncode}"
        return f"{cc} was killed by {name} and printed nothing"
    return f"{cc} exited with status {r.returncode} and printed nothing"


#: What terminate_as_interrupt turns into KeyboardInterrupt (and Ctrl-C).
_HELD = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}


class Running:
    """a.out started by the demo; always stopped by PID."""

    def __init__(self, argv: Sequence[str], log: Path, mask: Optional[set] = None) -> None:
        """``mask``: the signal mask the program starts with (the caller's, when it holds signals here)."""
        self.log = log
        self._out = open(log, "wb")  # noqa: SIM115 - closed in stop()
        unmask = None if mask is None else (lambda: signal.pthread_sigmask(signal.SIG_SETMASK, mask))
        self.proc = subprocess.Popen(list(argv), stdout=self._out, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, preexec_fn=unmask)
        self.pid = self.proc.pid

    def wait_for(self, text: str, timeout: float = 5.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.output():
                return True
            if self.proc.poll() is not None:
                return text in self.output()
            time.sleep(0.01)
        return False

    def output(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> Optional[int]:
        if self.proc.poll() is None:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            rc = self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:  # pragma: no cover
            rc = None
        self._out.close()
        return rc


class Scenario:
    """Build the fixtures, run every step, clean up."""

    def __init__(self, workdir: Path, narrate: Callable[[str], None], cc: str) -> None:
        self.dir = workdir
        self.say = narrate
        self.cc = cc
        self.steps: List[Step] = []
        self.running: List[Running] = []
        self.prod: Running
        self.state = workdir / "state"
        self.env = dict(os.environ)
        src_root = str(Path(__file__).resolve().parents[2])
        self.env["PYTHONPATH"] = src_root + (os.pathsep + self.env["PYTHONPATH"] if self.env.get("PYTHONPATH")
                                             else "")
        self.env["SOSWAP_STATE_DIR"] = str(self.state)
        # the preflight's reverse-dependency index too: the demo leaves nothing behind (the index is built
        # once, by the first check, and reused by the installs)
        self.env["SOSWAP_CACHE_DIR"] = str(workdir / "cache")
        self.env.pop("LD_LIBRARY_PATH", None)
        self.env.pop("LD_PRELOAD", None)

    # -- helpers ----------------------------------------------------------------------------------------

    def rel(self, p: Path) -> str:
        return os.path.relpath(p, self.dir)

    def compile(self, out: Path, source: str, *args: str) -> None:
        src = self.dir / "src" / (out.name + ".c")
        src.parent.mkdir(parents=True, exist_ok=True)
        src.write_text(source)
        out.parent.mkdir(parents=True, exist_ok=True)
        argv = [self.cc, "-O1", "-o", str(out), str(src), *args]
        try:
            r = subprocess.run(argv, capture_output=True, text=True, errors="replace", stdin=subprocess.DEVNULL,
                               timeout=COMPILE_TIMEOUT)
        except OSError as exc:
            raise DemoError(f"building {out.name} failed: cannot run {self.cc}: {exc.strerror or exc}") from None
        except subprocess.TimeoutExpired:
            raise DemoError(f"building {out.name} failed: {self.cc} did not finish within {COMPILE_TIMEOUT} s") \
                from None
        if r.returncode != 0:
            raise DemoError(f"building {out.name} failed: {compiler_failure(self.cc, r)}")

    def soswap(self, *args: str, show: bool = True) -> subprocess.CompletedProcess:
        """Run ``soswap ARGS`` as a user would, in the work directory; echo it and its output."""
        argv = [sys.executable, "-m", "soswap", *args]
        if show:
            self.say(f"  $ soswap {' '.join(args)}")
        r = subprocess.run(argv, capture_output=True, text=True, cwd=self.dir, env=self.env, timeout=60)
        if show:
            for line in (r.stdout + r.stderr).rstrip().splitlines():
                self.say(f"    {line}")
            self.say(f"    (exit status {r.returncode})")
        return r

    def soswap_json(self, *args: str) -> Any:
        r = self.soswap(*args, "--json", show=False)
        try:
            return r.returncode, json.loads(r.stdout) if r.stdout.strip() else None
        except ValueError:
            return r.returncode, None

    def start_aout(self, binary: Path, tag: str) -> Running:
        # A Ctrl-C or SIGTERM (raised here as KeyboardInterrupt) between the fork and the append would leave
        # the program running, unknown to cleanup(): both happen with those signals held, and the program
        # gets the demo's own mask back before it executes.
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, _HELD)
        try:
            run = Running([str(binary)], self.dir / f"{tag}.log", mask)
            self.running.append(run)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        return run

    def record(self, step: Step) -> Step:
        self.steps.append(step)
        return step

    # -- the steps --------------------------------------------------------------------------------------

    def build(self) -> None:
        self.say("== Building libgateway.so v1, v2 (same ABI), a bad v2 (no Test_OpenGateway) and a.out")
        lib, bin_ = self.dir / "lib", self.dir / "bin"
        soname = "-Wl,-soname,libgateway.so"
        self.compile(lib / "libgateway.so", GATEWAY_V1, "-shared", "-fPIC", soname)
        self.compile(self.dir / "new" / "libgateway.so", GATEWAY_V2, "-shared", "-fPIC", soname)
        self.compile(self.dir / "bad" / "libgateway.so", GATEWAY_BAD, "-shared", "-fPIC", soname)
        self.compile(bin_ / "a.out", AOUT, f"-L{lib}", "-lgateway", "-Wl,-rpath,$ORIGIN/../lib")
        self.say(f"  {self.dir}/")
        for p in ("lib/libgateway.so", "new/libgateway.so", "bad/libgateway.so", "bin/a.out"):
            self.say(f"    {p}")
        self.say("  a.out finds lib/libgateway.so through its RUNPATH $ORIGIN/../lib")
        self.record(Step(step="build", ok=True, workdir=str(self.dir), compiler=self.cc))

    def naive(self) -> None:
        self.say("")
        self.say("== 1. The naive ways, on a disposable copy (naive/)")
        naive = self.dir / "naive"
        shutil.copytree(self.dir / "bin", naive / "bin")
        shutil.copytree(self.dir / "lib", naive / "lib")
        run = self.start_aout(naive / "bin" / "a.out", "naive")
        run.wait_for("gateway version 1")
        self.say(f"  naive/bin/a.out runs (pid {run.pid}) and prints: gateway version 1")
        # (a) cp onto the running executable
        self.say("  $ cp bin/a.out naive/bin/a.out          # overwrite the running executable")
        r = subprocess.run(["cp", str(self.dir / "bin" / "a.out"), str(naive / "bin" / "a.out")],
                           capture_output=True, text=True)
        message = r.stderr.strip()
        self.say(f"    {message or '(no error)'}")
        busy = r.returncode != 0 and "Text file busy" in message
        self.record(Step(step="naive-cp-executable", ok=busy, exit=r.returncode, message=message))
        # (b) overwrite the mapped library in place
        self.say("  $ cp new/libgateway.so naive/lib/libgateway.so   # overwrite the mapped library in place")
        subprocess.run(["cp", str(self.dir / "new" / "libgateway.so"), str(naive / "lib" / "libgateway.so")],
                       capture_output=True)
        deadline = time.monotonic() + 2.0
        while run.alive() and time.monotonic() < deadline:
            time.sleep(0.02)
        alive = run.alive()
        rc = run.stop()
        sig = None
        if not alive and rc is not None and rc < 0:
            sig = signal.Signals(-rc).name
            self.say(f"    naive/bin/a.out was killed by {sig}: the pages it was running were rewritten under it")
        elif alive:
            self.say(f"    naive/bin/a.out survived but now prints: {run.output().splitlines()[-1:]}")
        self.record(Step(step="naive-overwrite-library", ok=sig is not None, crashed=sig is not None, signal=sig,
                         output=run.output().splitlines()[-3:]))

    def tree(self) -> None:
        self.say("")
        self.say("== 2. Where does a.out find libgateway.so, and why?")
        r = self.soswap("tree", "bin/a.out")
        _rc, obj = self.soswap_json("tree", "bin/a.out")
        found = _find_in_tree(obj, "libgateway.so")
        self.record(Step(step="tree", ok=r.returncode == 0 and found is not None, exit=r.returncode,
                         library=found))

    def check_bad(self) -> None:
        self.say("")
        self.say("== 3. Would the bad v2 break a.out? Ask before touching anything")
        self.prod = self.start_aout(self.dir / "bin" / "a.out", "prod")
        self.prod.wait_for("gateway version 1")
        self.say(f"  bin/a.out runs (pid {self.prod.pid}) and prints: gateway version 1")
        before = _digest(self.dir / "lib" / "libgateway.so")
        r = self.soswap("check", "bad/libgateway.so", "lib/libgateway.so", "--consumer", "bin/a.out")
        _rc, obj = self.soswap_json("check", "bad/libgateway.so", "lib/libgateway.so", "--consumer", "bin/a.out")
        problems = [p for c in (obj or {}).get("consumers", []) for p in c.get("problems", [])]
        hit = next((p for p in problems if p.get("symbol") == "Test_OpenGateway"), None)
        self.say("  install runs the same check first, against every program that uses the file (here the")
        self.say(f"  running a.out, pid {self.prod.pid}):")
        r2 = self.soswap("install", "bad/libgateway.so", "lib/libgateway.so")
        rc2 = r2.returncode
        unchanged = _digest(self.dir / "lib" / "libgateway.so") == before
        refused = rc2 == 1
        self.say(f"  lib/libgateway.so unchanged: {unchanged}; a.out (pid {self.prod.pid}) still running: "
                 f"{self.prod.alive()}")
        self.record(Step(step="check-bad", ok=r.returncode == 1 and hit is not None, exit=r.returncode,
                         verdict=(obj or {}).get("verdict"), message=(hit or {}).get("message"),
                         when=(hit or {}).get("when")))
        self.record(Step(step="install-bad-refused", ok=refused and unchanged, exit=rc2, unchanged=unchanged))

    def install(self) -> None:
        self.say("")
        self.say("== 4. Replace it properly while a.out runs")
        run = self.prod
        r = self.soswap("install", "new/libgateway.so", "lib/libgateway.so")
        time.sleep(0.2)
        still_v1 = run.alive() and "gateway version 2" not in run.output()
        self.say(f"  bin/a.out (pid {run.pid}) is {'still running on v1' if still_v1 else 'NOT on v1 any more'}")
        self.record(Step(step="install", ok=r.returncode == 0 and still_v1, exit=r.returncode,
                         running_pid=run.pid, running_still_v1=still_v1))
        # stale / users
        self.say("")
        self.say("  Who still runs the old library?")
        rs = self.soswap("stale", "--pid", str(run.pid))
        _rc, stale = self.soswap_json("stale", "--pid", str(run.pid))
        files = [f for p in (stale or {}).get("processes", []) if p.get("pid") == run.pid for f in p.get("files", [])]
        gw = next((f for f in files if f.get("path", "").endswith("libgateway.so")), None)
        self.record(Step(step="stale", ok=rs.returncode == 1 and gw is not None, exit=rs.returncode,
                         kind=(gw or {}).get("kind"), path=(gw or {}).get("path")))
        self.soswap("users", "lib/libgateway.so")
        _rc, users = self.soswap_json("users", "lib/libgateway.so")
        mine = next((p for p in (users or {}).get("processes", []) if p.get("pid") == run.pid), None)
        self.record(Step(step="users", ok=mine is not None and mine.get("version") == "old",
                         version=(mine or {}).get("version"), how=(mine or {}).get("how")))
        # a new process
        fresh = self.start_aout(self.dir / "bin" / "a.out", "fresh")
        saw_v2 = fresh.wait_for("gateway version 2")
        fresh.stop()
        self.say(f"  a newly started bin/a.out prints: gateway version {2 if saw_v2 else '?'}")
        self.record(Step(step="new-process-runs-v2", ok=saw_v2))
        # rollback
        self.say("")
        self.say("  Changed your mind? Roll the transaction back:")
        rr = self.soswap("rollback")
        again = self.start_aout(self.dir / "bin" / "a.out", "after-rollback")
        saw_v1 = again.wait_for("gateway version 1")
        again.stop()
        self.say(f"  a newly started bin/a.out prints: gateway version {1 if saw_v1 else '?'}")
        self.record(Step(step="rollback", ok=rr.returncode == 0 and saw_v1, exit=rr.returncode,
                         new_process_version=1 if saw_v1 else None))
        self.record(Step(step="old-process-survived", ok=run.alive(), pid=run.pid))

    def summary(self) -> None:
        self.say("")
        self.say("== Summary")
        lines = {
            "naive-cp-executable": "cp over a running executable: refused by the kernel (Text file busy)",
            "naive-overwrite-library": "cp over a mapped library: the program using it crashed",
            "tree": "soswap tree: showed where ld.so finds libgateway.so and why",
            "check-bad": "soswap check: predicted the ld.so error of the bad v2 before anything changed",
            "install-bad-refused": "soswap install: refused the bad v2 (nothing changed)",
            "install": "soswap install: replaced the library atomically; the running a.out kept v1",
            "stale": "soswap stale: found the process still running the old library",
            "users": "soswap users: listed who maps the file, and which version",
            "new-process-runs-v2": "a new a.out ran v2",
            "rollback": "soswap rollback: brought v1 back",
            "old-process-survived": "the original a.out ran through all of it",
        }
        for s in self.steps:
            if s["step"] in lines:
                self.say(f"  [{'ok' if s['ok'] else 'UNEXPECTED'}] {lines[s['step']]}")

    def cleanup(self) -> None:
        for run in self.running:
            run.stop()


def _digest(path: Path) -> Optional[str]:
    import hashlib

    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def _find_in_tree(obj: Any, name: str) -> Optional[Dict[str, Any]]:
    """The first object in a ``soswap tree --json`` document that names ``name`` (schema-tolerant search)."""
    stack = [obj]
    while stack:
        cur = stack.pop()
        if isinstance(cur, dict):
            if name in (cur.get("name"), os.path.basename(str(cur.get("path") or ""))):
                return {k: v for k, v in cur.items() if not isinstance(v, (list, dict))}
            stack.extend(reversed(list(cur.values())))
        elif isinstance(cur, list):
            stack.extend(reversed(cur))
    return None


def run_demo(keep: Optional[str], narrate: Callable[[str], None]) -> Dict[str, Any]:
    """Run the whole scenario; returns the JSON summary. Raises DemoError when it cannot run at all."""
    cc = find_compiler()
    if cc is None:
        raise DemoError("no C compiler found (install gcc, or set CC)")
    if keep:
        workdir = Path(keep).resolve()
        if workdir.exists() and any(workdir.iterdir()):
            raise DemoError(f"{workdir}: --keep needs an empty or new directory")
        workdir.mkdir(parents=True, exist_ok=True)
    else:
        workdir = Path(tempfile.mkdtemp(prefix="soswap-demo-"))
    started = time.monotonic()
    scenario = Scenario(workdir, narrate, cc)
    try:
        scenario.build()
        scenario.naive()
        scenario.tree()
        scenario.check_bad()
        scenario.install()
        scenario.summary()
    finally:
        scenario.cleanup()
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            narrate(f"\nfiles kept in {workdir}")
    return {
        "schema": "soswap.demo/1",
        "ok": all(s["ok"] for s in scenario.steps),
        "seconds": round(time.monotonic() - started, 2),
        "workdir": str(workdir),
        "kept": bool(keep),
        "steps": scenario.steps,
    }
