"""bakery profile BUNDLE -- COMMAND...: a profile for profile-guided bakes."""

import argparse
import json
from pathlib import Path

from bakery.cli import common

DESCRIPTION = """\
Bake BUNDLE instrumented (IR-level -fprofile-generate, on the IR every target starts from), run
COMMAND with the instrumented programs first on PATH, and merge what they wrote with
llvm-profdata into BUNDLE.profile/ (profile.profdata and profile.json: the IR's digest, each
run's command and the digests of the files it names, the toolchain). A second run merges into
the same profile: train on several inputs, or on several nodes and copy the folder.

Every later `bakery bake BUNDLE` uses the profile (--profile none: not) for any target of the
ISA: it was taken on target-independent IR. A profile made for another IR (the app was captured
again) is not used, with a note; one whose bytes do not match its record is refused. Train on
inputs like the real ones, but not on the benchmark you judge it by.

  bakery profile /tmp/yaml.bundle -- example-reformatter < train.yaml > /dev/null
  bakery bake /tmp/yaml.bundle --target native -o /tmp/yaml.bin       # profile-guided"""


def setup_parser(sub, parent):
    p = sub.add_parser("profile", parents=[parent], help="train a profile for profile-guided bakes",
                       description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bundle", metavar="BUNDLE|IMAGE",
                   help="a bundle (the profile goes beside it) or an IR image (attached to it as a referrer)")
    p.add_argument("command", nargs="*", metavar="COMMAND",
                   help="what to run, after '--'; its stdin, stdout and stderr are this command's")
    p.add_argument("-t", "--target", default="native",
                   help="the CPU to run the instrumented build on (default: native); the profile serves every target")
    p.add_argument("-j", "--jobs", type=int, default=0, help="parallel compile jobs (default: all cores)")
    p.add_argument("--replace", action="store_true", help="start a new profile instead of merging into the one there")
    p.add_argument("--json", action="store_true", help="print the profile's record as JSON, one line, at the end of stdout")
    common.registry_options(p)
    return p


def run(args) -> int:
    from bakery.errors import BakeryError

    command = [*args.command, *args.trailing]
    if not command:
        raise BakeryError("no command to train with", "bakery profile BUNDLE -- COMMAND ARGS...")
    source = Path(args.bundle)
    if source.is_dir():
        return _train(args, source.resolve(), command)
    return _train_image(args, command)


def _train_image(args, command: list[str]) -> int:
    """The IR image's bundle read from its layers as data, trained here, the profile attached."""
    import tempfile

    from bakery import oci
    from bakery.images import direct, profiles
    from bakery.images import node as nodemod

    registry = common.registry_for(args, args.bundle)
    ref = oci.Ref.parse(args.bundle, default_registry=registry)
    reg = oci.Registry(ref.registry, tls_verify=oci.tls_default(ref.registry, args.tls_verify))
    digest, _plan, plan_bytes = nodemod.resolve_ir(reg, ref)
    with tempfile.TemporaryDirectory(prefix="bakery-profile-image-") as tmp:
        bundle = Path(tmp) / "bundle"
        direct.export_bundle(reg, ref.repository, digest, nodemod.BUNDLE_DIR, bundle)
        nodemod.check_bundle(bundle, plan_bytes)
        rc = _train(args, bundle, command, quiet_json=True)
        artifact = profiles.push(reg, ref.repository, digest, bundle.with_name(bundle.name + ".profile"))
    print(f"{ref.registry}/{ref.repository}@{artifact}")
    return rc


def _train(args, bundle: Path, command: list[str], quiet_json: bool = False) -> int:
    import logging
    import tempfile

    from bakery import bake as bakemod
    from bakery import plan as planmod
    from bakery import target as targetmod
    from bakery import toolchain as toolchainmod
    from bakery.bake import profile as profilemod
    from bakery.errors import BakeryError

    plan = planmod.load(bundle)
    tc = toolchainmod.find()
    target = targetmod.resolve(args.target, compiler_version=tc.version, family=plan.toolchain.family)
    with tempfile.TemporaryDirectory(prefix="bakery-profile-") as tmp:
        work = Path(tmp)
        bakemod.bake(bundle, plan, tc, target, work / "bin", jobs=args.jobs, profile=profilemod.Profile("generate"),
                     isa_check=False)
        (work / "raw").mkdir()
        logging.getLogger(__name__).info(f"profile: running {' '.join(command)}")
        rc = profilemod.run(command, work / "bin", work / "raw")
        if rc != 0:
            raise BakeryError(f"{command[0]} exited {rc}: no profile kept", "the training run must succeed")
        folder = profilemod.save(bundle, tc, sorted((work / "raw").glob("*.profraw")), command, replace=args.replace)
    record = json.loads((folder / profilemod.RECORD).read_text())
    if quiet_json:
        return 0
    if args.json:
        print(json.dumps(record))  # one line: the last of stdout, after what the command printed
    else:
        print(f"{folder / profilemod.PROFDATA} ({len(record['runs'])} run{'s' if len(record['runs']) > 1 else ''})")
    return 0
