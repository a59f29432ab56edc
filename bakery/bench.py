"""Benchmark: does a bake beat, or at least match, building from source?

One run measures build time (from source vs bake), run time of four binaries
(from-source generic, from-source -march=T, baked x86_64, baked T), and checks
the generated code: the kernel baked for an AVX target must use ymm/zmm
registers and the generic bake must not.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import subprocess
import tempfile
import time
from pathlib import Path

from bakery import bake as bakemod
from bakery import capture as capturemod
from bakery import plan as planmod
from bakery import proc
from bakery import target as targetmod
from bakery.errors import BakeryError

log = logging.getLogger(__name__)


def _time_command(bindir: Path, argv: list[str], repeat: int, stdin: str | Path | None = None,
                  cwd: Path | None = None) -> tuple[float, str]:
    """The best of ``repeat`` runs, and the output of the last. ``stdin``: text, or a file (an
    input of bench.inputs) given as it is; ``cwd``: where the inputs are."""
    exe = bindir / argv[0]
    env = proc.env_with({"LD_LIBRARY_PATH": str(bindir)})
    times, out = [], ""
    for _ in range(repeat):
        t0 = time.perf_counter()
        cp = _run([str(exe), *argv[1:]], stdin, env=env, cwd=cwd)
        times.append(time.perf_counter() - t0)
        if cp.returncode:
            raise BakeryError(f"benchmark command failed in {bindir}: {' '.join(argv)}",
                              cp.stderr[-500:].decode(errors="replace"))
        out = cp.stdout.decode(errors="replace")
    return min(times), out


def _run(argv: list[str], stdin: str | Path | None, **kw) -> subprocess.CompletedProcess:
    """``argv`` with ``stdin`` (text, or a file given as it is), its output captured as bytes."""
    if isinstance(stdin, Path):
        with open(stdin, "rb") as f:
            return subprocess.run(argv, stdin=f, capture_output=True, **kw)
    return subprocess.run(argv, input=(stdin or "").encode(), capture_output=True, **kw)


def make_inputs(bench, recipe_dir: Path, folder: Path) -> None:
    """bench.inputs: each command's standard output, in ``folder``, run in the recipe's folder."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, argv in bench.inputs:
        log.info(f"bench: making input {name}: {' '.join(argv)}")
        tmp = folder / f".{name}.tmp"
        with open(tmp, "wb") as f:
            try:
                cp = subprocess.run(list(argv), cwd=recipe_dir, stdout=f, stderr=subprocess.PIPE)
            except FileNotFoundError:
                raise BakeryError(f"bench.inputs {name}: {argv[0]} not found") from None
        if cp.returncode:
            raise BakeryError(f"bench.inputs {name}: {' '.join(argv)} exited {cp.returncode}",
                              cp.stderr[-500:].decode(errors="replace") or None)
        os.replace(tmp, folder / name)


def _stdin(folder: Path, text: str | None, file: str | None) -> str | Path | None:
    return folder / file if file else text


def vector_registers(binary: Path, symbol: str | None) -> dict[str, int]:
    argv = [proc.which("objdump"), "-d", "--no-show-raw-insn", str(binary)]
    if symbol:
        argv.insert(2, f"--disassemble={symbol}")
    text = proc.run(argv).stdout
    if symbol and f"<{symbol}>:" not in text:
        raise BakeryError(f"bench symbol {symbol!r} is not defined in {binary}",
                          f"give its mangled name as `nm {binary}` prints it (nm -C shows the demangled one)")
    return {reg: len(re.findall(rf"%{reg}\d+", text)) for reg in ("xmm", "ymm", "zmm")}


def _train(bundle: Path, plan, toolchain, target, work: Path, bench, jobs: int, inputs: Path):
    """``bakery profile`` on the bundle: an instrumented bake for ``target``, the recipe's
    bench.train run on it, the raw profiles merged next to the bundle. Returns the Profile."""
    from bakery.bake import profile as profilemod

    gen = work / "instrumented"
    bakemod.bake(bundle, plan, toolchain, target, gen, jobs=jobs, profile=profilemod.Profile("generate"),
                 isa_check=False)
    raw = work / "raw-profiles"
    raw.mkdir(exist_ok=True)
    stdin = _stdin(inputs, bench.train_stdin, bench.train_stdin_file)
    cp = _run([str(gen / bench.train[0]), *bench.train[1:]], stdin, cwd=inputs,
              env=proc.env_with({"LLVM_PROFILE_FILE": str(raw / "%p.profraw"), "LD_LIBRARY_PATH": str(gen)}))
    if cp.returncode:
        raise BakeryError(f"the training run exited {cp.returncode}: {' '.join(bench.train)}",
                          cp.stderr[-500:].decode(errors="replace"))
    raws = sorted(raw.glob("*.profraw"))
    if not raws:
        raise BakeryError(f"the training run wrote no profile: {' '.join(bench.train)}")
    profilemod.save(bundle, toolchain, raws, list(bench.train), replace=True)
    found = profilemod.find(bundle)
    assert found is not None
    return found


def run(recipe, toolchain, target_name: str, *, repeat: int | None = None, jobs: int = 0, workdir: Path | None = None,
        profile: bool = False) -> dict:
    """``profile``: also a profile-guided bake for the target, trained on the recipe's bench.train."""
    if recipe.bench is None and not recipe.test:
        raise BakeryError(f"{recipe.path.name} has neither bench: nor test:", "add bench: {command: [...]}")
    if profile and (recipe.bench is None or not recipe.bench.train):
        raise BakeryError(f"bench --profile: {recipe.path.name} has no bench.train",
                          "add bench: {train: {command: [...]}}, a run on other inputs than the benchmark's")
    command = recipe.bench.command if recipe.bench else recipe.test
    repeat = repeat or (recipe.bench.repeat if recipe.bench else 3)
    symbol = recipe.bench.symbol if recipe.bench else None
    compare = re.compile(recipe.bench.compare) if recipe.bench and recipe.bench.compare else None
    target = targetmod.resolve(target_name, compiler_version=toolchain.version, family=toolchain.family)
    generic = targetmod.resolve(toolchain.family, compiler_version=toolchain.version, family=toolchain.family)
    work = Path(workdir or tempfile.mkdtemp(prefix="bakery-bench-"))
    inputs = work / "inputs"
    if recipe.bench is not None:
        make_inputs(recipe.bench, recipe.dir, inputs)
    else:
        inputs.mkdir(parents=True, exist_ok=True)

    log.info(f"bench: from-source build, generic, the build's own flags ({recipe.name})")
    src_generic = capturemod.from_source(recipe, toolchain, work / "source-generic", jobs=jobs)
    log.info(f"bench:   built in {src_generic['seconds']:.1f}s")
    log.info(f"bench: from-source build, {' '.join(target.flags)}")
    src_target = capturemod.from_source(recipe, toolchain, work / f"source-{target.name}",
                                        flags=list(target.flags), jobs=jobs)
    log.info(f"bench:   built in {src_target['seconds']:.1f}s")
    log.info("bench: capture")
    t0 = time.monotonic()
    bundle = work / "bundle"
    capturemod.capture(recipe, bundle, toolchain, jobs=jobs)
    capture_s = time.monotonic() - t0
    plan = planmod.load(bundle)
    bakes = {}
    for t, label in ((generic, "baked-generic"), (target, f"baked-{target.name}")):
        log.info(f"bench: bake for {t.name}")
        res = bakemod.bake(bundle, plan, toolchain, t, work / label, jobs=jobs)
        bakes[label] = res
    binaries = {
        "from source, generic (the build's own flags)": (Path(src_generic["outdir"]), src_generic["seconds"]),
        f"from source, {' '.join(target.flags)}": (Path(src_target["outdir"]), src_target["seconds"]),
        f"baked for {generic.name}": (work / "baked-generic", bakes["baked-generic"].seconds),
        f"baked for {target.name}": (work / f"baked-{target.name}", bakes[f"baked-{target.name}"].seconds),
    }
    pgo = None
    if profile:
        log.info(f"bench: training run for the profile: {' '.join(recipe.bench.train)}")
        prof = _train(bundle, plan, toolchain, target, work, recipe.bench, jobs, inputs)
        log.info(f"bench: bake for {target.name} with the profile")
        pgo = bakemod.bake(bundle, plan, toolchain, target, work / f"baked-{target.name}-pgo", jobs=jobs, profile=prof)
        binaries[f"baked for {target.name}, profile-guided"] = (work / f"baked-{target.name}-pgo", pgo.seconds)
    rows, outputs = [], set()
    for label, (bindir, build_s) in binaries.items():
        log.info(f"bench: running {' '.join(command)} x{repeat}: {label}")
        stdin = _stdin(inputs, recipe.bench.stdin, recipe.bench.stdin_file) if recipe.bench else None
        best, out = _time_command(bindir, command, repeat, stdin, cwd=inputs)
        if compare:
            out = "\n".join(line for line in out.splitlines() if compare.search(line))
        outputs.add(hashlib.sha256(out.encode()).hexdigest())  # an output may be large: its digest
        rows.append({"binary": label, "build_s": round(build_s, 2), "run_s": round(best, 4),
                     "registers": vector_registers(bindir / command[0], symbol)})
    base = rows[0]["run_s"]
    for r in rows:
        r["speedup_vs_generic_source"] = round(base / r["run_s"], 2) if r["run_s"] else None
    baked_t, source_t = rows[3], rows[1]
    result = {
        "recipe": recipe.name, "target": target.to_json(), "command": command, "repeat": repeat, "symbol": symbol,
        "capture_s": round(capture_s, 2),
        "bake_vs_build": round(bakes[f"baked-{target.name}"].seconds / src_target["seconds"], 3),
        "baked_vs_source_runtime": round(baked_t["run_s"] / source_t["run_s"], 3),
        "outputs_agree": len(outputs) == 1,
        "bake_timings": timings.to_json() if (timings := bakes[f"baked-{target.name}"].timings) else None,
        "rows": rows,
        "checks": {
            _width_check(target.name, symbol, source_t): _widths(baked_t) == _widths(source_t),
            f"baked {generic.name} uses no ymm/zmm": not _widths(rows[2]),
        },
        "workdir": str(work),
    }
    if pgo is not None:
        result["profile"] = {
            "train": recipe.bench.train, "bake_s": round(pgo.seconds, 2),
            "bake_without_s": round(bakes[f"baked-{target.name}"].seconds, 2),
            "functions_without_profile": (pgo.profile or {}).get("functions_without_profile"),
            "vs_best_source_runtime": round(rows[4]["run_s"] / min(rows[0]["run_s"], rows[1]["run_s"]), 3),
        }
    return result


def _widths(row: dict) -> set[str]:
    return {reg for reg in ("ymm", "zmm") if row["registers"][reg]}


def _width_check(target: str, symbol: str | None, source_row: dict) -> str:
    """The compiler decides whether a loop is worth wide vectors (LAMMPS's pair loops, with their
    neighbour-list gathers, stay scalar even from source): the bake must make the choice a
    from-source build for the target makes, and the check's name says which one that is."""
    where = f" in {symbol}" if symbol else ""
    widths = _widths(source_row)
    if widths:
        return f"baked {target} uses {'/'.join(sorted(widths))}{where}, as the from-source build does"
    return f"baked {target} uses no ymm/zmm{where}, as the from-source build (the compiler kept it 128-bit or scalar)"


def render(result: dict) -> str:
    t = result["target"]
    lines = [
        f"bakery bench: {result['recipe']} for {t['name']} ({' '.join(t['flags'])}), "
        f"`{' '.join(result['command'])}` best of {result['repeat']}",
        "",
        f"{'binary':<58} {'build/bake s':>12} {'run s':>9} {'speedup':>8}  {'xmm/ymm/zmm' + (' in ' + result['symbol'] if result['symbol'] else '')}",
    ]
    for r in result["rows"]:
        regs = r["registers"]
        lines.append(f"{r['binary']:<58} {r['build_s']:>12.2f} {r['run_s']:>9.4f} {r['speedup_vs_generic_source']:>7.2f}x"
                     f"  {regs['xmm']}/{regs['ymm']}/{regs['zmm']}")
    lines += [
        "",
        f"bake time / from-source build time ({t['name']}): {result['bake_vs_build']:.2f}x"
        f"   (capture took {result['capture_s']:.1f}s, once per image)",
        f"baked / from-source run time ({t['name']}): {result['baked_vs_source_runtime']:.3f}"
        "   (<= 1.00 means the bake is at least as fast)",
        f"all binaries print the same output: {'yes' if result['outputs_agree'] else 'NO'}",
    ]
    if result.get("bake_timings"):
        bt = result["bake_timings"]
        lines.append(f"where the {t['name']} bake's time went: modules {bt['wall']['modules']:.2f} s wall "
                     f"({', '.join(f'{k} {v:.2f}' for k, v in bt['phases'].items() if v)} CPU-s), "
                     f"links {bt['wall']['links']:.2f} s")
    if result.get("profile"):
        pr = result["profile"]
        lines.append(f"profile-guided / best from-source run time: {pr['vs_best_source_runtime']:.3f}"
                     f"   (trained on `{' '.join(pr['train'])}`; bake {pr['bake_s']:.2f} s with the profile, "
                     f"{pr['bake_without_s']:.2f} s without; {pr['functions_without_profile']} functions it has no "
                     "record of)")
    for name, ok in result["checks"].items():
        lines.append(f"check: {name}: {'ok' if ok else 'FAILED'}")
    return "\n".join(lines)
