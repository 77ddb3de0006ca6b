"""Mutation testing of the security- and safety-critical modules: do their tests catch small realistic bugs?

    nice -n 10 .venv/bin/python benchmarks/mutation_bench.py                  # every module, 15 mutants each
    nice -n 10 .venv/bin/python benchmarks/mutation_bench.py --modules bundle/_archive.py --per-module 0

A benchmark, not a CI gate. The committed tree (``git archive HEAD``) is copied to a temporary folder and
every mutant is applied there, one at a time, to a copy of its module; the real working tree is never
touched. Each mutant runs only the test files that cover its module (``pytest -x`` with a timeout, the
copy's ``src`` first on ``PYTHONPATH``):

1. the *baseline* test files (the ones that existed before issue 18): a failure means "killed before";
2. if they all pass, the *boundary* test files added by issue 18: a failure means "killed after".

So one pass gives the score before and after the new tests, on the same seeded sample of mutants.
``--rescore`` then runs only the recorded survivors against a later revision's tests (tests written to
kill them), with the module's text as it was sampled, and updates the JSON.

Mutation operators (AST level, inside function bodies only): comparison flips (``<``/``<=``, ``>``/``>=``,
``==``/``!=``, ``in``/``not in``, ``is``/``is not``), off-by-one on integer constants (``n`` -> ``n + 1``),
boolean negation (``if c`` / ``while c`` / ``assert``-free conditions -> ``not c``), ``and``/``or`` swaps,
``True``/``False`` swaps, ``+``/``-`` swaps, ``x += y`` -> ``x = y`` (an accumulator that forgets), and
removed statements (a ``raise``, call, assignment, ``continue``/``break`` replaced by ``pass``). Left out
as noise: logging calls, docstrings, messages (strings) and ``pydantic.Field(...)`` declarations.

A mutant is *killed* when the tests fail, *timeout* when they run past the limit (also a catch: the
mutant made something hang), *survived* when they pass. Score = (killed + timeout) / mutants.
Writes benchmarks/results/mutation.json.
"""

from __future__ import annotations

import argparse
import ast
import copy
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# module (under src/edgefleet) -> (baseline tests, tests added by issue 18); files or pytest node ids.
# The agent's own suites take minutes, so the TUF and journal baselines are the tests that exercise them.
MODULES: dict[str, tuple[list[str], list[str]]] = {
    "bundle/_archive.py": (["tests/bundle/test_archive.py"], ["tests/bundle/test_archive_limits.py"]),
    "bundle/_delta.py": (["tests/bundle/test_delta.py"], ["tests/bundle/test_archive_limits.py"]),
    "agent/_tuf.py": (
        [
            f"tests/agent/test_agent_faults.py::{t}"
            for t in (
                "test_bit_flip_in_transit_is_detected_and_redownloaded",
                "test_wrong_signature_on_metadata_is_refused",
                "test_target_not_in_signed_metadata_is_refused",
                "test_assignment_hashes_differing_from_signed_target_are_refused",
            )
        ],
        ["tests/agent/test_tuf_assignment.py"],
    ),
    "agent/_journal.py": (
        [
            "tests/agent/test_agent_units.py::test_journal_survives_and_rejects_garbage",
            "tests/agent/test_agent_faults.py::test_unreadable_journal_is_rebuilt_from_the_store",
        ],
        ["tests/agent/test_journal_limits.py"],
    ),
    "runtime/_validation.py": (
        ["tests/runtime/test_validation_cache.py"],
        ["tests/runtime/test_validation_limits.py"],
    ),
    "runtime/_batcher.py": (["tests/runtime/test_batcher.py"], ["tests/runtime/test_batcher_limits.py"]),
    "server/_auth.py": (["tests/server/test_auth.py"], ["tests/server/test_auth_limits.py"]),
    "server/_gates.py": (
        [
            "tests/server/test_rollouts.py::test_gates_judge_plain_figures_without_a_database",
            "tests/server/test_rollouts.py::test_error_rate_a_little_over_the_limit_waits_for_evidence_instead_of_failing",
            "tests/server/test_rollouts.py::test_bad_release_fails_the_first_wave_and_is_rolled_back",
        ],
        ["tests/server/test_gates_limits.py"],
    ),
    "telemetry/_outbox.py": (
        ["tests/telemetry/test_telemetry_outbox.py"],
        ["tests/telemetry/test_outbox_limits.py"],
    ),
    "telemetry/_drift.py": (
        ["tests/telemetry/test_telemetry_drift.py"],
        ["tests/telemetry/test_drift_limits.py"],
    ),
}

_CMP_FLIP = {
    ast.Lt: ast.LtE,
    ast.LtE: ast.Lt,
    ast.Gt: ast.GtE,
    ast.GtE: ast.Gt,
    ast.Eq: ast.NotEq,
    ast.NotEq: ast.Eq,
    ast.In: ast.NotIn,
    ast.NotIn: ast.In,
    ast.Is: ast.IsNot,
    ast.IsNot: ast.Is,
}
_LOG_NAMES = {"log", "logger", "logging", "warnings"}


@dataclass
class Mutant:
    index: int  # position of the node in ast.walk order
    op: str
    line: int
    description: str
    outcome: str = ""  # killed_before | killed_after | timeout_before | timeout_after | survived
    seconds: float = 0.0


@dataclass
class ModuleResult:
    module: str
    candidates: int
    mutants: list[Mutant] = field(default_factory=list)
    seconds: float = 0.0

    def count(self, *outcomes: str) -> int:
        return sum(m.outcome in outcomes for m in self.mutants)

    @property
    def score_before(self) -> float:
        return self.count("killed_before", "timeout_before") / max(1, len(self.mutants))

    @property
    def score_after(self) -> float:
        return self.count("killed_before", "timeout_before", "killed_after", "timeout_after") / max(
            1, len(self.mutants)
        )


# --- finding mutation sites -----------------------------------------------------------------------------


def _parents(tree: ast.AST) -> dict[int, ast.AST]:
    return {id(child): node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}


def _noise(node: ast.AST, parents: dict[int, ast.AST]) -> bool:
    """Inside a logging call, a Field(...) declaration, a docstring or an f-string: not worth mutating."""
    n: ast.AST | None = node
    while n is not None:
        if isinstance(n, ast.JoinedStr):
            return True
        if isinstance(n, ast.Call):
            f = n.func
            if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) and f.value.id in _LOG_NAMES:
                return True
            if isinstance(f, ast.Name) and f.id == "Field":
                return True
        if isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant) and isinstance(n.value.value, str):
            return True
        n = parents.get(id(n))
    return False


def _in_function(node: ast.AST, parents: dict[int, ast.AST]) -> bool:
    n = parents.get(id(node))
    while n is not None:
        if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef):
            return True
        n = parents.get(id(n))
    return False


def candidates(source: str) -> list[Mutant]:
    tree = ast.parse(source)
    parents = _parents(tree)
    out: list[Mutant] = []
    for i, node in enumerate(ast.walk(tree)):
        if not _in_function(node, parents) or _noise(node, parents):
            continue
        line = getattr(node, "lineno", 0)
        if isinstance(node, ast.Compare):
            for k, op in enumerate(node.ops):
                if type(op) in _CMP_FLIP:
                    new = _CMP_FLIP[type(op)].__name__
                    out.append(Mutant(i, f"cmp:{k}", line, f"{type(op).__name__} -> {new}"))
        elif isinstance(node, ast.Constant) and type(node.value) is int:
            out.append(Mutant(i, "const+1", line, f"{node.value} -> {node.value + 1}"))
        elif isinstance(node, ast.Constant) and type(node.value) is bool:
            out.append(Mutant(i, "bool", line, f"{node.value} -> {not node.value}"))
        elif isinstance(node, ast.BoolOp):
            out.append(Mutant(i, "andor", line, f"{type(node.op).__name__} -> swapped"))
        elif isinstance(node, ast.If | ast.While | ast.IfExp):
            out.append(Mutant(i, "negate", line, "condition negated"))
        elif isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add | ast.Sub):
            out.append(Mutant(i, "addsub", line, f"{type(node.op).__name__} -> swapped"))
        elif isinstance(node, ast.AugAssign):
            out.append(Mutant(i, "aug", line, "x op= y -> x = y"))
        removable = isinstance(node, ast.Raise | ast.Assign | ast.AugAssign | ast.Continue | ast.Break) or (
            isinstance(node, ast.Expr) and isinstance(node.value, ast.Call)
        )
        if removable:
            out.append(Mutant(i, "remove", line, f"{type(node).__name__} statement removed"))
    return out


def apply(source: str, m: Mutant) -> str:
    tree = ast.parse(source)
    nodes = list(ast.walk(tree))
    node = nodes[m.index]
    parents = _parents(tree)
    if m.op.startswith("cmp:"):
        k = int(m.op.split(":")[1])
        node.ops[k] = _CMP_FLIP[type(node.ops[k])]()
    elif m.op == "const+1":
        node.value = node.value + 1
    elif m.op == "bool":
        node.value = not node.value
    elif m.op == "andor":
        node.op = ast.Or() if isinstance(node.op, ast.And) else ast.And()
    elif m.op == "negate":
        node.test = ast.UnaryOp(op=ast.Not(), operand=node.test)
    elif m.op == "addsub":
        node.op = ast.Sub() if isinstance(node.op, ast.Add) else ast.Add()
    elif m.op == "aug":
        parent = parents[id(node)]
        for _field, value in ast.iter_fields(parent):
            if isinstance(value, list) and node in value:
                value[value.index(node)] = ast.Assign(targets=[copy.deepcopy(node.target)], value=node.value)
    elif m.op == "remove":
        parent = parents[id(node)]
        for _field, value in ast.iter_fields(parent):
            if isinstance(value, list) and node in value:
                value[value.index(node)] = ast.Pass()
    else:  # pragma: no cover
        raise ValueError(m.op)
    return ast.unparse(ast.fix_missing_locations(tree))


# --- running --------------------------------------------------------------------------------------------


# Loaded into every mutant's pytest run: the digits data set and the MLPs trained on it (10 s of every run
# on this machine) come from a cache after the first run. edgefleet.examples is never mutated.
_CACHE_PLUGIN = """
import hashlib, os, pickle
from pathlib import Path
import edgefleet.examples as ex

CACHE = Path(os.environ["EDGEFLEET_MUTATION_CACHE"])
_digits, _train = ex.digits, ex.train_digits_mlp


def _store(path, data):
    tmp = path.with_name(f"{path.name}.{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def digits(*args, **kwargs):
    p = CACHE / ("digits-" + hashlib.sha256(repr((args, sorted(kwargs.items()))).encode()).hexdigest()[:16])
    if p.exists():
        return pickle.loads(p.read_bytes())
    d = _digits(*args, **kwargs)
    _store(p, pickle.dumps(d))
    return d


def train_digits_mlp(path, **kwargs):
    data = kwargs.get("data")
    key = repr(sorted((k, v) for k, v in kwargs.items() if k != "data"))
    key += "" if data is None else hashlib.sha256(pickle.dumps(data)).hexdigest()
    p = CACHE / ("mlp-" + hashlib.sha256(key.encode()).hexdigest()[:16])
    if not p.exists():
        acc = _train(path, **kwargs)
        _store(p, pickle.dumps((acc, Path(path).read_bytes())))
    acc, model = pickle.loads(p.read_bytes())
    Path(path).write_bytes(model)
    return acc


ex.digits, ex.train_digits_mlp = digits, train_digits_mlp
"""


def _pytest(work: Path, files: list[str], timeout: float) -> tuple[str, float]:
    plugins = work.parent / "plugins"
    if not plugins.exists():
        plugins.mkdir()
        (plugins / "_mutation_cache.py").write_text(_CACHE_PLUGIN)
        (work.parent / "cache").mkdir()
    env = os.environ | {
        "PYTHONPATH": f"{work / 'src'}{os.pathsep}{plugins}",
        "PYTHONDONTWRITEBYTECODE": "1",
        "EDGEFLEET_MUTATION_CACHE": str(work.parent / "cache"),
    }
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "-p", "_mutation_cache"]
    cmd.append(f"--timeout={int(timeout)}")
    t0 = time.monotonic()
    try:
        r = subprocess.run(
            [*cmd, *files], cwd=work, env=env, capture_output=True, timeout=timeout + 30, check=False
        )
    except subprocess.TimeoutExpired:
        return "timeout", time.monotonic() - t0
    out = r.stdout.decode(errors="replace")
    if r.returncode == 0:
        return "passed", time.monotonic() - t0
    if "Timeout" in out and "+++++++" in out:  # pytest-timeout's banner
        return "timeout", time.monotonic() - t0
    return "failed", time.monotonic() - t0


def _clean_run(work: Path, files: list[str]) -> tuple[str, float]:
    """The unmutated tests, once more if they fail (a shared, loaded machine makes timing tests flaky)."""
    status, seconds = _pytest(work, files, 120)
    if status != "passed":
        print(f"  unmutated tests {status} ({' '.join(files)}); trying once more", flush=True)
        status, seconds = _pytest(work, files, 120)
    return status, seconds


def export_tree(rev: str, into: Path) -> Path:
    """The committed tree at ``rev`` (never the shared working tree, where others have edits in progress)."""
    work = into / "tree"
    work.mkdir()
    archive = subprocess.run(["git", "archive", rev], cwd=ROOT, capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(work)], input=archive, check=True)
    return work


def run_module(work: Path, module: str, per_module: int, seed: int, timeout: float) -> ModuleResult:
    baseline, added = MODULES[module]
    baseline = [f for f in baseline if (work / f.split("::")[0]).exists()]
    added = [f for f in added if (work / f.split("::")[0]).exists()]
    path = work / "src" / "edgefleet" / module
    original = path.read_text()
    cands = candidates(original)
    rng = random.Random(f"{seed}:{module}")
    chosen = sorted(
        rng.sample(cands, per_module) if 0 < per_module < len(cands) else cands, key=lambda m: m.index
    )
    res = ModuleResult(module, len(cands))
    t_module = time.monotonic()
    status, t_clean = _clean_run(work, baseline + added)
    if status != "passed":
        raise SystemExit(f"{module}: the unmutated tests do not pass ({status}); fix them first")
    limit = max(60.0, 5 * t_clean)
    try:
        for m in chosen:
            path.write_text(apply(original, m))
            t0 = time.monotonic()
            status, _ = _pytest(work, baseline, limit)
            if status == "passed" and added:
                status2, _ = _pytest(work, added, limit)
                m.outcome = {"passed": "survived", "failed": "killed_after", "timeout": "timeout_after"}[
                    status2
                ]
            else:
                m.outcome = {"passed": "survived", "failed": "killed_before", "timeout": "timeout_before"}[
                    status
                ]
            m.seconds = round(time.monotonic() - t0, 2)
            res.mutants.append(m)
            print(f"  {module}:{m.line} {m.op} {m.description}: {m.outcome} ({m.seconds:.1f} s)", flush=True)
    finally:
        path.write_text(original)
    res.seconds = round(time.monotonic() - t_module, 1)
    return res


def _git_show(rev: str, path: str) -> str | None:
    r = subprocess.run(
        ["git", "show", f"{rev}:{path}"], cwd=ROOT, capture_output=True, text=True, check=False
    )
    return r.stdout if r.returncode == 0 else None


def rescore(out: Path, rev: str, only: set[str]) -> None:
    """Run the survivors recorded in ``out`` again against the tests at ``rev`` (after new tests were written).

    The mutants are addressed by their position in the module's syntax tree, so the module's text as it
    was sampled is put into the newer tree (its unmutated tests must pass there first); the JSON records
    which survivors the newer tests kill.
    """
    doc = json.loads(out.read_text())
    for entry in doc["modules"]:
        module, survivors = entry["module"], entry["survivors"]
        if not survivors or module not in only:
            continue
        src = f"src/edgefleet/{module}"
        sampled = _git_show(entry["rev"], src)  # the mutants address this text
        if sampled is None:
            continue
        baseline, added = MODULES[module]
        with tempfile.TemporaryDirectory(prefix="edgefleet-mutation-") as tmp:
            work = export_tree(rev, Path(tmp))
            files = [f for f in baseline + added if (work / f.split("::")[0]).exists()]
            path = work / src
            if path.read_text() != sampled:  # changed since: the sampled module, with today's tests
                print(f"{module}: changed since {entry['rev'][:10]}; its sampled text is tested", flush=True)
                entry["module_text_rev"] = entry["rev"]
            path.write_text(sampled)
            original = sampled
            status, t_clean = _clean_run(work, files)
            if status != "passed":
                print(f"{module}: the unmutated tests do not pass at {rev[:10]} ({status}); not rescored")
                continue
            still = []
            try:
                for s in survivors:
                    m = Mutant(**s)
                    path.write_text(apply(original, m))
                    status, _ = _pytest(work, files, max(60.0, 5 * t_clean))
                    print(f"  {module}:{m.line} {m.op} {m.description}: {status} at {rev[:10]}", flush=True)
                    if status == "passed":
                        still.append(s)
                    else:
                        entry["outcomes"]["survived"] -= 1
                        key = "killed_after" if status == "failed" else "timeout_after"
                        entry["outcomes"][key] += 1
                        entry.setdefault("killed_by_later_tests", []).append(s | {"outcome": key})
            finally:
                path.write_text(original)
        entry["survivors"] = still
        entry["score_after"] = round(1 - len(still) / entry["mutants"], 3)
        entry["rescored_at_rev"] = rev
        entry["added_tests"] = added
    # another run may have rewritten other modules meanwhile: replace only the entries rescored here
    rescored = {e["module"]: e for e in doc["modules"] if e.get("rescored_at_rev") == rev}
    doc = json.loads(out.read_text())
    doc["modules"] = [rescored.get(e["module"], e) for e in doc["modules"]]
    out.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"{'module':<24} {'mutants':>7} {'before':>7} {'after':>7} {'survived':>8}")
    for e in doc["modules"]:
        print(
            f"{e['module']:<24} {e['mutants']:>7} {e['score_before']:>7.0%} {e['score_after']:>7.0%} "
            f"{len(e['survivors']):>8}"
        )
    print(f"wrote {out}")


def markdown(out: Path) -> str:
    """The table of docs/benchmarks.md, from the JSON."""
    doc = json.loads(out.read_text())
    rows = [
        "| module | sites | sampled | killed before (baseline tests) | killed after (issue 18 tests) "
        "| survivors left | rev |",
        "| --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for e in doc["modules"]:
        rev = e.get("rescored_at_rev") or e["rev"]
        rows.append(
            f"| `{e['module']}` | {e['candidates']} | {e['mutants']} | {e['score_before']:.0%} "
            f"| **{e['score_after']:.0%}** | {len(e['survivors'])} | {e['rev'][:7]}"
            + (f" (survivors rerun at {rev[:7]})" if rev != e["rev"] else "")
            + " |"
        )
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--modules", nargs="*", default=list(MODULES), help="modules under src/edgefleet")
    ap.add_argument("--per-module", type=int, default=15, help="seeded sample size per module (0: all)")
    ap.add_argument("--seed", type=int, default=18)
    ap.add_argument("--jobs", type=int, default=1, help="modules mutated in parallel (each in its own copy)")
    ap.add_argument("--rev", default="HEAD", help="committed revision to mutate (default HEAD)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "mutation.json")
    ap.add_argument(
        "--rescore",
        action="store_true",
        help="run only the survivors recorded in --out again, against the tests at --rev",
    )
    ap.add_argument("--markdown", action="store_true", help="print the table of --out as markdown and stop")
    args = ap.parse_args()
    if args.markdown:
        print(markdown(args.out))
        return

    t0 = time.monotonic()
    rev = subprocess.run(
        ["git", "rev-parse", args.rev], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.strip()
    if args.rescore:
        rescore(args.out, rev, set(args.modules))
        print(f"rescored in {(time.monotonic() - t0) / 60:.1f} min")
        return

    def one(module: str) -> ModuleResult | None:
        with tempfile.TemporaryDirectory(prefix="edgefleet-mutation-") as tmp:
            work = export_tree(rev, Path(tmp))  # one copy per module: jobs never share a mutated file
            if not (work / "src" / "edgefleet" / module).exists():
                print(f"{module}: not in {args.rev}, skipped", flush=True)
                return None
            print(f"{module}: mutating", flush=True)
            return run_module(work, module, args.per_module, args.seed, timeout=120)

    with ThreadPoolExecutor(max(1, args.jobs)) as pool:
        results = [r for r in pool.map(one, args.modules) if r is not None]
    total = time.monotonic() - t0

    print()
    print(
        f"{'module':<24} {'sites':>5} {'mutants':>7} {'before':>7} {'after':>7} {'survived':>8} {'time s':>7}"
    )
    for r in results:
        print(
            f"{r.module:<24} {r.candidates:>5} {len(r.mutants):>7} {r.score_before:>7.0%} {r.score_after:>7.0%} "
            f"{r.count('survived'):>8} {r.seconds:>7.0f}"
        )
    print(f"total {total / 60:.1f} min")
    doc = {
        "benchmark": "mutation",
        "command": "nice -n 10 .venv/bin/python benchmarks/mutation_bench.py " + " ".join(sys.argv[1:]),
        "rev": rev,
        "machine": {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
        },
        "per_module": args.per_module,
        "seed": args.seed,
        "seconds": round(total, 1),
        "modules": [
            {
                "module": r.module,
                "rev": rev,
                "candidates": r.candidates,
                "mutants": len(r.mutants),
                "score_before": round(r.score_before, 3),
                "score_after": round(r.score_after, 3),
                "seconds": r.seconds,
                "baseline_tests": MODULES[r.module][0],
                "added_tests": MODULES[r.module][1],
                "survivors": [asdict(m) for m in r.mutants if m.outcome == "survived"],
                "outcomes": {
                    o: r.count(o)
                    for o in ("killed_before", "timeout_before", "killed_after", "timeout_after", "survived")
                },
            }
            for r in results
        ],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if args.out.exists() and set(args.modules) != set(MODULES):  # a partial run updates its modules only
        old = json.loads(args.out.read_text())
        keep = [m for m in old.get("modules", []) if m["module"] not in set(args.modules)]
        doc["modules"] = sorted(keep + doc["modules"], key=lambda m: list(MODULES).index(m["module"]))
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
