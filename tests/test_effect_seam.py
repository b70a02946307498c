"""Every write, rename or removal of a file in ``ota_daemon/`` goes through the side-effect seam.

The seam (:mod:`ota_daemon.effects`) can cut power before and after each effect only if the
effect passes through it. This test scans the daemon's source (AST) for the calls that change
files — ``os.replace``/``rename``/``unlink``/``remove``/``ftruncate``, ``Path.write_text``/
``write_bytes``/``unlink``/``rename``/``replace``, ``shutil.rmtree``/``copy*``/``move``,
``tempfile.mkdtemp``/``mkstemp``, ``open`` for writing, ``os.open`` with a writing flag, and the
atomic-write helper ``state.atomic_write`` — and fails on each one that is not lexically inside
``with effect("<name>")`` (``effects.effect`` or ``faults.effect``), unless its function is a
helper every use of which is so (:func:`unsealed_sites`), or is in :data:`ALLOWED` with the
reason. Directory creation (``mkdir``) is not an effect a cut can tear: it is idempotent and
every writer redoes it. Subprocesses are not scanned (the installer calls are marked by the
engine's ``InstallerSeam``).

On the code before the seam covered them this flagged 31 call sites: the downloader's partial
file, checkpoints, rename and discards, ``elapsed.json``, ``hub-config.json``, the static hub's
ETag cache, the Nexigon hub's device id and details cache, SWUpdate's booted-slot pin, the TUF
metadata's leftovers, the rollback floor and versions seen, ``guard.json``, the sweep of
temporary files and the rename of an unreadable journal aside.

So a new file operation outside the seam fails here; it is fixed by wrapping it (and adding the
effect to ``effects.EFFECTS``, which ``tests/test_cut_points.py`` then makes a scenario reach).
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field
from pathlib import Path

import ota_daemon

ROOT = Path(ota_daemon.__file__).parent

#: modules that are not the device's daemon (tools run at build or publish time, the test
#: doubles, the simulator's world, the fault mechanism itself): not scanned
NOT_THE_DAEMON: dict[str, str] = {
    "repo.py": "`ota-daemon repo`: the publisher's tool on the build host",
    "signing/publish.py": "`ota-daemon sign`: the publisher's TUF repository on the build host",
    "signing/keys.py": "`ota-daemon sign keys`: key generation on the build host",
    "signing/cli.py": "the signing tools' command line (a scratch directory for `verify`)",
    "testing.py": "test fixtures",
    "demo.py": "`ota-daemon demo`: a throwaway directory",
    "faults.py": "the power-cut mechanism's own armed-points file",
    "devsim": "the device simulator's world and models (the device's side, not the daemon's)",
}

#: (module, function) pairs whose file operations are inside an effect by construction
ALLOWED: dict[tuple[str, str], str] = {
    ("state.py", "atomic_write"): "the low-level helper: every call of it is checked here",
    ("state.py", "Journal._write"): "journal writes reach before:/after:journal:<...> through faults.reach (state sits below effects)",
    ("state.py", "StateLock.acquire"): "the lock file's note of its holder: flock dies with the process, the note is only read for a message",
    ("state.py", "StateLock.release"): "the lock file's note of its holder, emptied",
    ("cli.py", "_sim"): "`ota-daemon sim make-image`: a tool writing the file it was asked for",
    ("cli.py", "main"): "/dev/null opened for writing after a broken pipe",
    ("inhibit.py", "run_inhibit_parsed"): "`ota-daemon inhibit`: the application's process and its lease (a dead holder's lease is ignored)",
    ("inhibit.py", "remove_stale"): "not called by the daemon: an optional cleanup of dead processes' leases",
    ("installers/simulated.py", "SimulatedDevice.create"): "`ota-daemon sim create`: a new simulated device",
    ("installers/simulated.py", "SimulatedDevice.write"): (
        "the simulated bootloader's state; in the daemon only from SimulatedInstaller's protocol "
        "calls (inside installer.*) and the guard's reboot_system (inside guard.reboot)"
    ),
    ("installers/simulated.py", "SimulatedDevice.boot"): (
        "the simulated bootloader at power-on (the device's side); in the daemon only from "
        "SimulatedInstaller.reboot (inside installer.reboot) and the guard's reboot_system (inside guard.reboot)"
    ),
    # the Installer protocol's calls with an effect: the engine calls them only through its
    # InstallerSeam (engine/seam.py), inside installer.install|reboot|commit|mark_bad
    ("installers/simulated.py", "SimulatedInstaller.install"): "inside installer.install",
    ("installers/simulated.py", "SimulatedInstaller.reboot"): "inside installer.reboot",
    ("installers/simulated.py", "SimulatedInstaller.commit"): "inside installer.commit",
    ("installers/simulated.py", "SimulatedInstaller.mark_bad"): "inside installer.mark_bad",
    ("installers/swupdate/installer.py", "SwupdateInstaller.install"): "inside installer.install: swupdate's scratch directory",
    ("guard.py", "reboot_system"): "the guard's Env.reboot: called inside guard.reboot",
}

_WRITE_FLAGS = {"O_WRONLY", "O_RDWR", "O_CREAT", "O_TRUNC", "O_APPEND", "O_EXCL", "_OPEN_APPEND"}
_OS_CALLS = {"replace", "rename", "renames", "remove", "unlink", "rmdir", "removedirs", "truncate", "ftruncate", "link", "symlink"}
_SHUTIL_CALLS = {"rmtree", "move", "copy", "copy2", "copyfile", "copytree"}
_TEMPFILE_CALLS = {"mkstemp", "mkdtemp", "TemporaryDirectory", "NamedTemporaryFile", "TemporaryFile", "SpooledTemporaryFile"}
_PATH_METHODS = {"write_text", "write_bytes", "unlink", "rename", "rmdir", "touch"}
_HELPERS = {"atomic_write"}


def _dotted(node: ast.expr) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return "?"


def _names(node: ast.AST) -> set[str]:
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name)} | {n.attr for n in ast.walk(node) if isinstance(n, ast.Attribute)}


def changes_files(call: ast.Call) -> str | None:
    """What the call does to a file, or None when it changes none."""
    func = call.func
    name = _dotted(func)
    if isinstance(func, ast.Name):
        if func.id in _HELPERS:
            return func.id
        if func.id == "open":
            mode = call.args[1] if len(call.args) > 1 else next((k.value for k in call.keywords if k.arg == "mode"), None)
            if isinstance(mode, ast.Constant) and isinstance(mode.value, str) and set(mode.value) & set("wax+"):
                return f"open(..., {mode.value!r})"
            return None
        return None
    if not isinstance(func, ast.Attribute):
        return None
    head, attr = _dotted(func.value), func.attr
    if head == "os" and attr in _OS_CALLS:
        return name
    if head == "os" and attr == "open":
        flags = call.args[1] if len(call.args) > 1 else None
        return name if flags is not None and _names(flags) & _WRITE_FLAGS else None
    if head == "shutil" and attr in _SHUTIL_CALLS:
        return name
    if head == "tempfile" and attr in _TEMPFILE_CALLS:
        return name
    if attr in _HELPERS:
        return name
    if head in ("os", "shutil", "tempfile", "json", "re", "dataclasses"):
        return None
    if attr in _PATH_METHODS:
        return f"<path>.{attr}"
    # Path.replace(target): one positional argument (str.replace takes two, the datetime and
    # dataclass ones take keywords)
    if attr == "replace" and len(call.args) == 1 and not call.keywords and not isinstance(func.value, ast.Constant):
        return "<path>.replace"
    return None


def _is_effect(item: ast.withitem) -> bool:
    expr = item.context_expr
    return isinstance(expr, ast.Call) and _dotted(expr.func) in ("effect", "effects.effect", "faults.effect")


@dataclass(frozen=True)
class Site:
    module: str
    function: str
    line: int
    what: str

    def __str__(self) -> str:
        return f"ota_daemon/{self.module}:{self.line} in {self.function}: {self.what}"


@dataclass
class _Function:
    module: str
    qualname: str
    #: file changes in it outside an effect
    sites: list[Site] = field(default_factory=list)


@dataclass(frozen=True)
class _Reference:
    """A use of a function's name (a call, or the function handed to a thread or executor)."""

    name: str
    module: str
    caller: str | None  # qualname of the enclosing function, None at module level
    in_effect: bool


class _Scan(ast.NodeVisitor):
    def __init__(self, module: str) -> None:
        self.module = module
        self.scope: list[str] = []
        self.functions: list[str] = []  # enclosing function qualnames
        self.in_effect = 0
        self.defined: dict[str, _Function] = {}
        self.references: list[_Reference] = []
        self.sites: list[Site] = []

    def _function(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        self.scope.append(node.name)
        qualname = ".".join(self.scope)
        self.defined[qualname] = _Function(self.module, qualname)
        self.functions.append(qualname)
        outer, self.in_effect = self.in_effect, 0  # a function body runs where it is called
        self.generic_visit(node)
        self.in_effect = outer
        self.functions.pop()
        self.scope.pop()

    visit_FunctionDef = _function
    visit_AsyncFunctionDef = _function

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        self.scope.append(node.name)
        self.generic_visit(node)
        self.scope.pop()

    def _with(self, node: ast.With | ast.AsyncWith) -> None:
        marked = any(_is_effect(item) for item in node.items)
        for item in node.items:
            self.visit(item)
        self.in_effect += marked
        for stmt in node.body:
            self.visit(stmt)
        self.in_effect -= marked

    visit_With = _with
    visit_AsyncWith = _with

    def _site(self, node: ast.AST, what: str) -> None:
        if self.in_effect:
            return
        caller = self.functions[-1] if self.functions else None
        site = Site(self.module, caller or "<module>", getattr(node, "lineno", 0), what)
        self.sites.append(site)
        if caller is not None:
            self.defined[caller].sites.append(site)

    def _reference(self, name: str) -> None:
        self.references.append(_Reference(name, self.module, self.functions[-1] if self.functions else None, bool(self.in_effect)))

    def visit_Call(self, node: ast.Call) -> None:
        what = changes_files(node)
        if what is not None:
            self._site(node, what)
        self.generic_visit(node)

    def visit_Name(self, node: ast.Name) -> None:
        if isinstance(node.ctx, ast.Load):
            self._reference(node.id)

    def visit_Attribute(self, node: ast.Attribute) -> None:
        if isinstance(node.ctx, ast.Load):
            self._reference(node.attr)
            # os.ftruncate handed to an executor, not called here
            head = _dotted(node.value)
            writer = (head == "os" and node.attr in _OS_CALLS) or (head == "shutil" and node.attr in _SHUTIL_CALLS)
            if writer and not getattr(node, "_called", False):
                self._site(node, f"{head}.{node.attr} (handed on)")
        self.generic_visit(node)


def _mark_called(tree: ast.AST) -> None:
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            node.func._called = True  # type: ignore[attr-defined]


def _skipped(module: str) -> bool:
    return any(module == m or module.startswith(m + "/") for m in NOT_THE_DAEMON)


def _scan_all() -> list[_Scan]:
    scans = []
    for path in sorted(ROOT.rglob("*.py")):
        module = path.relative_to(ROOT).as_posix()
        scan = _Scan(module)
        tree = ast.parse(path.read_text(), str(path))
        _mark_called(tree)
        scan.visit(tree)
        scans.append(scan)
    return scans


def unsealed_sites() -> list[Site]:
    """Every file-changing call in the daemon that can run outside ``with effect(...)``.

    A call is sealed when it is lexically inside ``with effect(...)``, or when it is in a
    function every use of whose name in the daemon's modules (a call, or the function handed
    on) is itself sealed — so a helper may do the syscalls as long as each
    caller marks the effect. Names are matched bare (``write`` matches every ``.write``): a
    clash can only add uses that must be sealed, never hide one."""
    scans = _scan_all()
    functions = {(s.module, q): f for s in scans for q, f in s.defined.items()}
    by_name: dict[str, list[_Reference]] = {}
    for scan in scans:
        for ref in scan.references:
            by_name.setdefault(ref.name, []).append(ref)
    sealed: set[tuple[str, str]] = set(ALLOWED)
    changed = True
    while changed:
        changed = False
        for key in functions:
            if key in sealed:
                continue
            refs = by_name.get(key[1].rsplit(".", 1)[-1], [])
            # what the tools (not the daemon) do with a helper is their own business
            daemon_refs = [r for r in refs if not _skipped(r.module)]
            if refs and all(r.in_effect or (r.caller is not None and (r.module, r.caller) in sealed) for r in daemon_refs):
                sealed.add(key)
                changed = True
    return [
        site
        for scan in scans
        if not _skipped(scan.module)
        for site in scan.sites
        if (site.module, site.function) not in sealed
    ]


def test_every_file_change_in_the_daemon_is_inside_an_effect() -> None:
    sites = unsealed_sites()
    assert not sites, "file changes outside the side-effect seam (wrap each in `with effect(...)`):\n" + "\n".join(map(str, sites))


def test_every_effect_named_in_the_code_is_registered() -> None:
    """``effect("<name>")`` with a name ``effects.EFFECTS`` lacks: its points would be reached
    but never enumerated (``faults.effect``, which the guard uses, does not check at run time)."""
    from ota_daemon.effects import EFFECTS

    named: dict[str, str] = {}
    for path in sorted(ROOT.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and _dotted(node.func) in ("effect", "effects.effect", "faults.effect") and node.args:
                arg = node.args[0]
                if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                    named[arg.value] = f"{path.relative_to(ROOT)}:{node.lineno}"
    assert len(named) >= 20, named  # the scan sees the seam's uses
    unknown = {name: where for name, where in named.items() if name not in EFFECTS}
    assert not unknown, f"effects not in effects.EFFECTS: {unknown}"


def test_the_allow_lists_name_what_exists() -> None:
    """A stale entry would silently allow a future function of the same name."""
    for module in NOT_THE_DAEMON:
        assert (ROOT / module).exists(), module
    for module, function in ALLOWED:
        tree = ast.parse((ROOT / module).read_text())
        defined = {
            f"{c.name}.{f.name}" if c is not None else f.name
            for c, f in [(None, n) for n in tree.body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)]
            + [(c, n) for c in tree.body if isinstance(c, ast.ClassDef) for n in c.body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)]
        }
        assert function in defined, (module, function)


def test_the_scan_sees_each_kind_of_file_change() -> None:
    """The scanner itself: each form is found outside an effect and passes inside one."""
    source = '''
def f(p, q, fd):
    os.replace(p, q); p.unlink(); p.write_text("x"); p.replace(q); shutil.rmtree(p)
    open(p, "wb"); os.open(p, os.O_WRONLY | os.O_CREAT); atomic_write(p, b""); os.ftruncate(fd, 0)
    "a".replace("a", "b"); open(p, "rb"); os.open(p, os.O_RDONLY); x.replace(year=1)
    run(os.ftruncate, fd, 0)
    with effect("x"):
        p.unlink()
'''
    scan = _Scan("t.py")
    tree = ast.parse(source)
    _mark_called(tree)
    scan.visit(tree)
    assert [s.what for s in scan.sites] == [
        "os.replace", "<path>.unlink", "<path>.write_text", "<path>.replace", "shutil.rmtree",
        "open(..., 'wb')", "os.open", "atomic_write", "os.ftruncate", "os.ftruncate (handed on)",
    ]
