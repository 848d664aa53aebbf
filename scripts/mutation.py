"""Mutation testing of the modules that decide who gets in, how much and what it cost.

`make mutation` (or `MODULES=routes,contract make mutation`) runs Cosmic Ray over the
modules listed in tests/mutation_targets.toml. Cosmic Ray writes each mutant into the
module's file on disk, so everything runs in a copy of the tree, `.mutation/tree`:
the working tree is never touched. Each mutant runs only its module's test files,
with `-x`, and the tests start their real gateway, simulator and redis-server
processes from the copy. The per-module table and every survivor's diff are written
to `.mutation/report.md`; docs/mutation.md explains how to read them.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import shlex
import shutil
import sqlite3
import subprocess
import sys
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from cosmic_ray.work_db import WorkDB, use_db  # type: ignore[import-untyped]
from cosmic_ray.work_item import TestOutcome, WorkerOutcome, WorkResult  # type: ignore[import-untyped]

ROOT = Path(__file__).resolve().parent.parent
TARGETS = ROOT / "tests" / "mutation_targets.toml"
OUT = ROOT / ".mutation"
TREE = OUT / "tree"
BIN = Path(sys.executable).parent
GIT = shutil.which("git") or "/usr/bin/git"
# One test may not hang a mutant's run for long: pytest-timeout fails it (and its
# fixtures stop their processes) well before Cosmic Ray's own timeout would kill pytest.
TEST_TIMEOUT_S = 60
TIMEOUT_MARK = "Failed: Timeout"


@dataclass
class Target:
    path: str
    tests: list[str]
    timeout: float
    functions: list[str] = field(default_factory=list)

    @property
    def slug(self) -> str:
        return self.path.removeprefix("gateway/").removesuffix(".py").replace("/", "-")


@dataclass
class Tally:
    mutants: int = 0
    killed: int = 0
    survived: int = 0
    timeout: int = 0
    errors: int = 0
    survivors: list[str] = field(default_factory=list)

    @property
    def score(self) -> float:
        judged = self.killed + self.survived + self.timeout
        return 100.0 * (self.killed + self.timeout) / judged if judged else 0.0


def load_targets(selection: list[str]) -> list[Target]:
    doc = tomllib.loads(TARGETS.read_text())
    targets = [
        Target(path, spec["tests"], float(spec.get("timeout", 180)), spec.get("functions", []))
        for path, spec in doc["modules"].items()
    ]
    if not selection:
        return targets
    chosen = [t for t in targets if any(_names(t.path, name) for name in selection)]
    unknown = [n for n in selection if not any(_names(t.path, n) for t in targets)]
    if unknown:
        sys.exit(f"unknown module(s) {unknown}: see {TARGETS.relative_to(ROOT)}")
    return chosen


def _names(path: str, name: str) -> bool:
    """`routes`, `proxy/routes`, `gateway/proxy/routes.py` all name the same module."""
    name = name.strip().removesuffix(".py")
    return path.removesuffix(".py") == name or path.removesuffix(".py").endswith("/" + name)


def copy_tree() -> None:
    """The tracked and untracked (not ignored) files of the working tree, copied afresh."""
    listed = subprocess.run(
        [GIT, "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        check=True,
        capture_output=True,
    ).stdout.split(b"\0")
    shutil.rmtree(TREE, ignore_errors=True)
    for raw in filter(None, listed):
        source = ROOT / os.fsdecode(raw)
        if source.is_file():
            dest = TREE / os.fsdecode(raw)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest)


def write_config(target: Target) -> Path:
    pytest = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider"]
    pytest += [f"--timeout={TEST_TIMEOUT_S}", *target.tests]
    config = OUT / f"{target.slug}.toml"
    config.write_text(
        "[cosmic-ray]\n"
        f'module-path = "{target.path}"\n'
        f"timeout = {target.timeout}\n"
        "excluded-modules = []\n"
        # Run without a shell; on a timeout Cosmic Ray kills the whole process group,
        # the gateways and simulators the tests started included.
        f"test-command = {_toml_str(shlex.join(pytest))}\n"
        "\n[cosmic-ray.distributor]\n"
        'name = "local"\n'
    )
    return config


def _toml_str(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def function_lines(source: str, names: list[str]) -> set[int]:
    """The line numbers of the named functions (`f` or `Class.method`)."""
    lines: set[int] = set()
    found: set[str] = set()
    tree = ast.parse(source)
    for node in tree.body:
        members = node.body if isinstance(node, ast.ClassDef) else [node]
        prefix = f"{node.name}." if isinstance(node, ast.ClassDef) else ""
        for member in members:
            funcs = (ast.FunctionDef, ast.AsyncFunctionDef)
            if isinstance(member, funcs) and prefix + member.name in names:
                end = member.end_lineno or member.lineno
                lines.update(range(member.lineno, end + 1))
                found.add(prefix + member.name)
    if missing := set(names) - found:
        sys.exit(f"functions not found: {sorted(missing)}")
    return lines


def annotation_spans(source: str) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """Where the annotations are: under `from __future__ import annotations` they are
    never evaluated, so a mutant inside one (`str | None` -> `str * None`) is equivalent."""
    spans = []
    for node in ast.walk(ast.parse(source)):
        notes: list[ast.expr | None] = []
        if isinstance(node, ast.arg):
            notes.append(node.annotation)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            notes.append(node.returns)
        elif isinstance(node, ast.AnnAssign):
            notes.append(node.annotation)
        for note in filter(None, notes):
            end = (note.end_lineno or note.lineno, note.end_col_offset or note.col_offset)
            spans.append(((note.lineno, note.col_offset), end))
    return spans


def skip_unjudged(session: Path, target: Target) -> None:
    """Mark as skipped the mutants in annotations and, when the target names functions,
    those outside them. Safe to repeat: a resumed session gets the same marks."""
    source = (TREE / target.path).read_text()
    lines = function_lines(source, target.functions) if target.functions else None
    spans = annotation_spans(source)
    outside = WorkResult(worker_outcome=WorkerOutcome.SKIPPED, output="outside the functions")
    noted = WorkResult(worker_outcome=WorkerOutcome.SKIPPED, output="in an annotation")
    with use_db(str(session), WorkDB.Mode.open) as db:
        for item in db.work_items:
            starts = [tuple(m.start_pos) for m in item.mutations]
            if lines is not None and not any(row in lines for row, _ in starts):
                db.set_result(item.job_id, outside)
            elif all(any(a <= start < b for a, b in spans) for start in starts):
                db.set_result(item.job_id, noted)


def forget_survivors(session: Path) -> None:
    """Make the survivors pending again, to test them against sharper tests."""
    with sqlite3.connect(session) as db:
        db.execute("DELETE FROM work_results WHERE test_outcome = 'SURVIVED'")


def run(target: Target, resume: bool) -> None:
    config = write_config(target)
    session = OUT / f"{target.slug}.sqlite"
    env = {**os.environ, "PYTHONPATH": str(TREE)}

    def cosmic(*args: str) -> None:
        subprocess.run([str(BIN / "cosmic-ray"), *args], cwd=TREE, env=env, check=True)

    if not (resume and session.exists()):
        session.unlink(missing_ok=True)
        cosmic("init", str(config), str(session))
        baseline(cosmic, config)
    skip_unjudged(session, target)
    cosmic("exec", str(config), str(session))


def baseline(cosmic: Callable[..., None], config: Path) -> None:
    """The unmutated tests must pass, or every mutant would look killed."""
    session = OUT / "baseline.sqlite"
    session.unlink(missing_ok=True)
    cosmic("baseline", "--session-file", str(session), str(config))
    with use_db(str(session), WorkDB.Mode.open) as db:
        outcomes = [result for _, result in db.completed_work_items]
    if [r.test_outcome for r in outcomes] != [TestOutcome.SURVIVED]:
        output = outcomes[0].output if outcomes else "no result"
        sys.exit(f"the tests fail without any mutant: fix them first\n{output}")


def tally(session: Path) -> Tally:
    result = Tally()
    with use_db(str(session), WorkDB.Mode.open) as db:
        for item, outcome in db.completed_work_items:
            if outcome.worker_outcome == WorkerOutcome.SKIPPED:
                continue
            result.mutants += 1
            text = outcome.output or ""
            normal = outcome.worker_outcome == WorkerOutcome.NORMAL
            if not normal or outcome.test_outcome == TestOutcome.INCOMPETENT:
                result.errors += 1
            elif outcome.test_outcome == TestOutcome.SURVIVED:
                result.survived += 1
                spec = item.mutations[0]
                where = f"line {spec.start_pos[0]} {spec.operator_name} #{spec.occurrence}"
                result.survivors.append(f"{where}\n{outcome.diff or ''}")
            elif text == "timeout" or TIMEOUT_MARK in text:
                result.timeout += 1
            else:
                result.killed += 1
    return result


def commit() -> str:
    """HEAD, with a `+` when gateway/ or tests/ differ from it (the copy was taken as is)."""
    git = [GIT, "-C", str(ROOT)]
    head = subprocess.run(
        [*git, "rev-parse", "--short", "HEAD"], check=True, capture_output=True, text=True
    )
    dirty = subprocess.run(
        [*git, "status", "--porcelain", "--", "gateway", "tests"],
        check=True,
        capture_output=True,
        text=True,
    )
    return head.stdout.strip() + ("+" if dirty.stdout.strip() else "")


def report(targets: list[Target]) -> str:
    """The table for every module with a session in .mutation/, this run's or an earlier one's."""
    rows = ["| module | mutants | killed | survived | timeout | errors | score | date | commit |"]
    rows.append("|---|---|---|---|---|---|---|---|---|")
    survivors = []
    for target in targets:
        session, stamp = OUT / f"{target.slug}.sqlite", OUT / f"{target.slug}.json"
        if not (session.exists() and stamp.exists()):
            continue
        t, when = tally(session), json.loads(stamp.read_text())
        rows.append(
            f"| `{target.path}` | {t.mutants} | {t.killed} | {t.survived} | {t.timeout} "
            f"| {t.errors} | {t.score:.0f} % | {when['date']} | {when['commit']} |"
        )
        if t.survivors:
            diffs = "\n\n".join(t.survivors)
            survivors.append(f"## Survivors of {target.path}\n\n```diff\n{diffs}\n```")
    return "\n\n".join(["\n".join(rows), *survivors]) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modules", default="", help="comma-separated: routes,keys/format,...")
    parser.add_argument("--resume", action="store_true", help="finish the last sessions")
    parser.add_argument(
        "--survivors", action="store_true", help="run the last sessions' survivors again"
    )
    args = parser.parse_args()
    targets = load_targets([m for m in args.modules.split(",") if m.strip()])
    OUT.mkdir(exist_ok=True)
    # Always afresh, even to resume: an interrupted run leaves its last mutant in the copy.
    copy_tree()
    stamp = {"date": datetime.now(UTC).date().isoformat(), "commit": commit()}
    for target in targets:
        print(f"== {target.path}: {', '.join(target.tests)}", flush=True)
        if args.survivors:
            forget_survivors(OUT / f"{target.slug}.sqlite")
        run(target, args.resume or args.survivors)
        (OUT / f"{target.slug}.json").write_text(json.dumps(stamp))
        (OUT / "report.md").write_text(report(load_targets([])))
    print(report(load_targets([])))


if __name__ == "__main__":
    main()
