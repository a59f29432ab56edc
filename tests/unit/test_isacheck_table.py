"""The ISA check's table (bakery.bake.isacheck): instructions as llvm-objdump 16 prints them, the
features they need by archspec's names, and how a reference path is judged. No toolchain."""

from __future__ import annotations

import archspec.cpu
import pytest

from bakery.bake import isacheck as isa


def _have(name: str) -> frozenset[str]:
    return isa.archspec_features(name)  # what target_features() has without asking clang


def _first(line: str, target: str, family: str = "x86_64") -> str | None:
    rule = isa.missing(line, _have(target), family)
    return " or ".join(rule.needs) if rule else None


# (a line of `llvm-objdump -d --no-show-raw-insn`, what x86_64_v2 lacks for it first, x86_64_v3)
LINES = [
    ("   1f6c0:      \txorl\t%ebp, %ebp", None, None),
    ("   1f6d4:      \tleaq\t0xca9e5(%rip), %rdi     # 0xea0c0 <main>", None, None),
    ("      16:      \trep\t\tmovsb\t(%rsi), %es:(%rdi)", None, None),
    ("      80:      \tpextrb\t$0x1, %xmm0, %eax", None, None),                     # SSE4.1: in v2
    ("      80:      \tcrc32q\t%rax, %rbx", None, None),
    ("      80:      \tpopcntq\t%rax, %rbx", None, None),
    ("      80:      \tandnps\t%xmm0, %xmm1", None, None),                         # SSE, not BMI1
    ("      80:      \ttzcntl\t%edi, %eax", None, None),                           # never sure: rep bsf
    ("      80:      \txgetbv", None, None),                                       # behind a CPU check
    ("      80:      \tvaddps\t%xmm1, %xmm2, %xmm0", "avx", None),
    ("      80:      \tvmovdqu\t%ymm0, (%rdi)", "avx", None),
    ("      80:      \tvzeroupper", "avx", None),
    ("      80:      \tvpermilps\t$0x1, %ymm0, %ymm1", "avx", None),
    ("      80:      \tvbroadcastss\t(%rax), %ymm1", "avx", None),
    ("      80:      \tvpaddd\t%ymm1, %ymm2, %ymm0", "avx2", None),
    ("      80:      \tvextracti128\t$0x1, %ymm0, %xmm1", "avx2", None),
    ("      80:      \tvbroadcastss\t%xmm0, %ymm1", "avx2", None),
    ("      80:      \tvpbroadcastd\t%xmm0, %xmm1", "avx2", None),
    ("      80:      \tvfmadd231ps\t%ymm1, %ymm2, %ymm3", "fma", None),
    ("      80:      \tvcvtph2ps\t%xmm0, %ymm1", "f16c", None),
    ("   9dd00:      \tshlxq\t%r15, %rbp, %rbp", "bmi2", None),
    ("      80:      \tandnq\t%rax, %rbx, %rcx", "bmi1", None),
    ("      80:      \tlzcntl\t%edi, %eax", "abm", None),
    ("      80:      \tmovbel\t(%rdi), %eax", "movbe", None),
    ("      80:      \tadcxq\t%rax, %rbx", "adx", "adx"),
    ("      80:      \taesenc\t%xmm1, %xmm0", "aes", "aes"),
    ("      80:      \tpclmulqdq\t$0x11, %xmm1, %xmm2", "pclmulqdq", "pclmulqdq"),
    ("      80:      \tsha256rnds2\t%xmm0, %xmm1, %xmm2", "sha_ni", "sha_ni"),
    ("      80:      \tvaddps\t%zmm1, %zmm2, %zmm0", "avx512f", "avx512f"),
    ("      80:      \tvpaddd\t%ymm17, %ymm1, %ymm0", "avx512f", "avx512f"),
    ("      80:      \tvpaddd\t%ymm2, %ymm1, %ymm0 {%k1} {z}", "avx512f", "avx512f"),
    ("      80:      \tvaddps\t(%rax){1to16}, %zmm1, %zmm0", "avx512f", "avx512f"),
    ("      80:      \tkmovw\t%k1, %eax", "avx512f", "avx512f"),
    ("      80:      \tvpternlogd\t$0x96, %xmm2, %xmm1, %xmm0", "avx512f", "avx512f"),
    ("      80:      \tvpdpbusd\t%zmm2, %zmm1, %zmm0", "avx512_vnni", "avx512_vnni"),
    ("      80:      \t{vex}\tvpdpbusd\t%ymm2, %ymm1, %ymm0", "avx_vnni", "avx_vnni"),
    ("      80:      \tvpdpbusd\t%ymm2, %ymm1, %ymm0", "avx512_vnni or avx_vnni", "avx512_vnni or avx_vnni"),
    ("      80:      \tvpopcntq\t%zmm1, %zmm0", "avx512_vpopcntdq", "avx512_vpopcntdq"),
    ("      80:      \tvdpbf16ps\t%zmm1, %zmm2, %zmm0", "avx512_bf16", "avx512_bf16"),
    ("      80:      \tvaddph\t%zmm1, %zmm2, %zmm0", "avx512_fp16", "avx512_fp16"),
    ("      80:      \tvpclmulqdq\t$0x0, %ymm1, %ymm2, %ymm3", "vpclmulqdq", "vpclmulqdq"),
    ("      30:      \ttileloadd\t(%rsi,%rdx), %tmm0", None, None),                # AMX: asked of the OS first
]


@pytest.mark.parametrize(("line", "v2", "v3"), LINES, ids=[l.split("\t", 2)[1] + "-" + str(i) for i, (l, _, _)
                                                             in enumerate(LINES)])
def test_what_an_instruction_needs_beyond_the_target(line, v2, v3):
    assert _first(line, "x86_64_v2") == v2
    assert _first(line, "x86_64_v3") == v3
    assert _first(line, "sapphirerapids") is None or "avx512_vp2intersect" in line


def test_a_v4_cpu_has_all_of_avx512f_but_not_its_extensions():
    assert _first("vaddps %zmm1, %zmm2, %zmm0", "x86_64_v4") is None
    assert _first("vpdpbusd %zmm2, %zmm1, %zmm0", "x86_64_v4") == "avx512_vnni"
    assert _first("vpdpbusd %zmm2, %zmm1, %zmm0", "zen4") is None


def test_parse_keeps_prefixes_and_drops_the_disassemblers_annotations():
    insn = isa.parse("       0:      \t{vex}\tvpdpbusd\t%ymm2, %ymm1, %ymm0")
    assert insn == isa.Insn(("{vex}",), "vpdpbusd", "%ymm2, %ymm1, %ymm0")
    assert isa.parse("  971de:      \tleaq\t0x6adb(%rip), %rax      # 0x9dcc0 <f_zmm1>").operands == "0x6adb(%rip), %rax"
    assert isa.parse("      11:      \tlock") is None
    assert isa.parse("0000000000001140 <main>:") is None


@pytest.mark.parametrize(("line", "needs"), [
    ("       0:      \tfadd\tz0.s, p0/m, z0.s, z1.s", "sve"),
    ("      44:      \tld1w\t{ z0.s }, p0/z, [x0, x10, lsl #2]", "sve"),
    ("      40:      \tptrue\tp0.s", "sve"),
    ("      10:      \tcnth\tx8", "sve"),
    ("      24:      \trdvl\tx9, #0x1", "sve"),
    ("      1c:      \tmov\tx9, xzr", None),
    ("       8:      \tcmp\tx1, #0x1", None),
    ("      74:      \tldr\ts0, [x9]", None),
    ("      80:      \tprfm\tpldl1keep, [x0]", None),
    ("      84:      \tfadd\tv0.4s, v1.4s, v2.4s", None),
    ("      88:      \tbl\t0x10 <use_z1_p2>", None),
])
def test_sve_on_aarch64(line, needs):
    assert _first(line, "neoverse_n1", "aarch64") == needs
    assert _first(line, "neoverse_v1", "aarch64") is None


def test_the_table_speaks_archspecs_feature_names():
    for family, rules in isa.RULES.items():
        known = {f for t in archspec.cpu.TARGETS.values() if t.family.name == family for f in isa.archspec_features(t.name)}
        for rule in rules:
            assert set(rule.needs) <= known, (family, rule)


def test_the_screen_finds_every_line_the_table_flags():
    chunk = "".join(line + "\n" for line, _, _ in LINES)
    for target in ("x86_64", "x86_64_v2", "x86_64_v3", "x86_64_v4"):
        have = _have(target)
        found = set(isa._Screen("x86_64", have, False).lines(chunk))
        flagged = {line for line, _, _ in LINES if isa.missing(line, have)}
        assert flagged <= found, (target, flagged - found)


def test_own_target_features_from_ir():
    ir = ('define internal fastcc i64 @HUF_fast(ptr noundef %0) unnamed_addr #12 {\n'
          'define dso_local i64 @plain(ptr %0) local_unnamed_addr #0 {\n'
          'define void @"quoted.name"() #3 personality ptr @__gxx_personality_v0 {\n'
          'attributes #0 = { nounwind uwtable "min-legal-vector-width"="0" }\n'
          'attributes #3 = { "target-features"="+avx,+avx2,+sse4.2" }\n'
          'attributes #12 = { nounwind "target-features"="+bmi,+bmi2,+lzcnt" }\n')
    assert isa.own_features(ir) == {"HUF_fast": {"bmi1", "bmi2", "abm"},
                                    "quoted.name": {"avx", "avx2", "sse4_2"}}


def _graph(names: list[str], edges: list[tuple[str, str, bool]], checks: tuple[str, ...] = ()):
    sc = isa.Scan(starts=[0x1000 * (i + 1) for i in range(len(names))], names=names)
    g = isa.Graph()
    idx = {n: i for i, n in enumerate(names)}
    for src, dst, direct in edges:
        g.incoming.setdefault(idx[dst], []).append((idx[src], direct))
    g.checks_cpu = {idx[c] for c in checks}
    return sc, g, idx


RULE = isa.Rule(("avx2",), None)


@pytest.mark.parametrize(("edges", "checks", "covered", "expect"), [
    ([("main", "asm", True)], (), (), False),                                     # a direct call from main
    ([("main", "helper", True), ("helper", "asm", True)], (), (), False),         # ... through a helper
    ([("main", "helper", True), ("helper", "asm", False)], (), (), True),         # its address is taken
    ([("main", "helper", True), ("helper", "asm", True)], ("helper",), (), True),  # after a CPU check
    ([("main", "helper", True), ("helper", "asm", True)], (), ("helper",), True),  # from a target("avx2") function
    ([("main", "helper", True)], (), (), None),                                   # no reference from code
    ([("main", "helper", False), ("helper", "asm", True), ("main", "asm", True)], (), (), False),
])
def test_a_path_into_the_code_is_guarded_or_not(edges, checks, covered, expect):
    sc, g, idx = _graph(["main", "helper", "asm"], edges, checks)
    status, why = isa._reach(idx["asm"], RULE, sc, g, {idx["main"]},
                             lambda f, rule: "own" if sc.names[f] in covered else None, lambda f: ["plan"])
    assert status is expect, why
