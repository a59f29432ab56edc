"""bakery k8s job|serve|target|selector: Kubernetes manifests and NFD labels -> archspec targets."""

import argparse
import json
import shlex
import sys

DESCRIPTION = """\
Render Kubernetes manifests (YAML on stdout, from the templates in bakery/data/k8s/) and map
node-feature-discovery (NFD) CPU labels to archspec targets. No cluster is contacted.

  bakery k8s job REG/pi:1.0                  # the IR image finishes itself on the node (launcher)
  bakery k8s job REG/pi:1.0 --serve http://bakery:5001 --cache-host-path /var/cache/bakery
  bakery k8s job REG/pi:1.0 --target zen3    # pulls REG/pi:1.0-zen3, pinned to zen3-capable nodes
  bakery k8s serve --image REG/bakery:0.1    # registry + `bakery serve` (bakes node tags on first pull)
  bakery k8s target --labels node.json       # kubectl get node NAME -o json > node.json
  bakery k8s selector icelake                # nodeAffinity fragment for a target
  bakery check REG/pi:1.0-zen3 --node-labels node.json   # can these nodes run that node tag?

The mapping (bakery/k8s.py): the cpu-cpuid.* flags become archspec features (NFD's
names translated to the Linux names archspec uses), cpu-model.vendor_id the vendor;
archspec's compatibility check and its host() ordering pick the most specific target.
Flags NFD hides by default (SSE4.2, POPCNT, BMI2, F16C, ...) or never reports (CLWB,
PKU, ...) come with the target that introduced them in archspec's lineage, and a target
is chosen only when the labels tell it apart from its ancestors: an Ivy Bridge (adds
only the hidden F16C and RDRAND) maps to sandybridge, never the other way round."""


def setup_parser(sub, parent):
    p = sub.add_parser("k8s", parents=[parent], help="Kubernetes manifests; NFD node labels -> archspec target",
                       description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    ks = p.add_subparsers(dest="k8s_command", metavar="SUBCOMMAND")

    j = ks.add_parser("job", parents=[parent], help="a Job that runs an app from its IR image",
                      description="A Job for the IR image REF. --target auto (default): the pod runs the IR "
                                  "image, whose launcher finishes the app for the node's CPU once per CPU type: "
                                  "from the cache volume at /var/cache/bakery (--cache-host-path: one per node, "
                                  "shared by its pods), else the node tag REF-<target> (from --serve, which bakes "
                                  "a missing one once for all nodes), else a bake in the container "
                                  "(docs/launcher.md). --target T: the pod pulls the node tag REF-T and is pinned "
                                  "by node affinity to nodes whose NFD labels have T's features.")
    j.add_argument("ref", metavar="REF", help="IR image, REGISTRY/REPO:TAG (a registry the nodes can pull from)")
    j.add_argument("-t", "--target", default="auto", help="'auto' (the image's launcher, default) or an archspec name")
    j.add_argument("--name", help="Job name (default: <app>-<tag>-<target>)")
    j.add_argument("-n", "--namespace")
    j.add_argument("--image-pull-policy", default="IfNotPresent", choices=["Always", "IfNotPresent", "Never"])
    j.add_argument("--command", help="app container command, a shell-quoted string (default: the image's entrypoint)")
    j.add_argument("--args", help="app container arguments, a shell-quoted string")
    j.add_argument("--slim", action="store_true", help="--target T: pull REF-T-slim (runtime base + binaries)")
    j.add_argument("--cpu", help="CPU request and limit of the app container, e.g. 2 (a bake uses as many)")
    j.add_argument("--memory", help="memory request and limit of the app container, e.g. 2Gi")
    j.add_argument("--cache-host-path", metavar="PATH",
                   help="auto: the node's folder PATH as the launcher's cache (hostPath), so a node's later "
                        "pods start with no fetch and no bake (default: an emptyDir per pod)")
    j.add_argument("--serve", metavar="URL", help="auto: BAKERY_REGISTRY for the launcher, e.g. "
                                                  "http://bakery.NS.svc:5001 (`bakery k8s serve`)")
    j.add_argument("--push", action="store_true", help="auto: push a bake made in the pod as the node tag "
                                                       "(BAKERY_PUSH=1; the pod needs registry credentials)")
    j.add_argument("--backoff-limit", type=int, default=0)
    j.add_argument("--registry", help="registry for a REF that names none (default: $BAKERY_REGISTRY)")

    s = ks.add_parser("serve", parents=[parent], help="the registry + `bakery serve` as a Deployment and Service",
                      description="A Deployment with the CNCF distribution registry (on the pod's loopback, "
                                  "htpasswd auth) and `bakery serve --upstream http://127.0.0.1:PORT --engine none` "
                                  "as a sidecar, unprivileged (non-root, no capabilities, read-only root), and a "
                                  "Service for serve's port only. With --upstream URL (a registry elsewhere) only "
                                  "`bakery serve` is deployed. Without --policy, bakery/data/registry/lazy-policy.yaml is "
                                  "shipped: edit it to your repositories and targets. See docs/security.md.")
    s.add_argument("--image", required=True, help="an image with bakery and its LLVM, for `bakery serve`")
    s.add_argument("--upstream", metavar="URL", help="registry behind serve (default: the registry in the pod)")
    s.add_argument("--registry-image", default="registry:2", help="CNCF distribution image (default registry:2)")
    s.add_argument("--name", default="bakery")
    s.add_argument("-n", "--namespace")
    s.add_argument("--port", type=int, default=5001, help="serve's port (default 5001)")
    s.add_argument("--registry-port", type=int, default=5000)
    s.add_argument("--service-type", default="ClusterIP", choices=["ClusterIP", "NodePort", "LoadBalancer"])
    s.add_argument("--workers", type=int, default=1, help="bakes at once in serve (default 1)")
    s.add_argument("--policy", metavar="FILE", help="serve's policy YAML, shipped in a ConfigMap")
    s.add_argument("--storage-claim", metavar="PVC", help="registry storage: this PersistentVolumeClaim "
                                                          "(default: an emptyDir, lost with the pod)")
    s.add_argument("--image-pull-policy", default="IfNotPresent", choices=["Always", "IfNotPresent", "Never"])

    t = ks.add_parser("target", parents=[parent], help="the archspec target of a node, from its NFD labels",
                      description="Read NFD labels (a YAML/JSON label map, a Node, or `kubectl get node -o json` "
                                  "of one or many nodes) and print the archspec target of each node.")
    t.add_argument("--labels", required=True, metavar="FILE", help="labels file, or - for stdin")
    t.add_argument("--json", action="store_true", help="the reported, inferred and unknown features too")

    a = ks.add_parser("selector", parents=[parent], help="nodeAffinity that pins a pod to a target's nodes")
    a.add_argument("target", metavar="TARGET", help="archspec name")
    return p


def run(args) -> int:
    from bakery.errors import BakeryError
    from bakery.scale import k8s

    cmd = getattr(args, "k8s_command", None)
    if cmd == "job":
        ref = args.ref
        from bakery import oci
        from bakery.config import Settings

        if not oci.names_registry(ref):
            registry = args.registry or Settings.from_env().registry
            if not registry:
                raise BakeryError(f"{ref!r} names no registry", "write REF as REGISTRY/REPO:TAG, a registry the "
                                                                 "cluster's nodes can pull from")
            ref = f"{registry}/{ref}"
        if args.target != "auto":
            from bakery import target as targetmod

            targetmod.lookup(args.target)
        sys.stdout.write(k8s.render_job(
            ref, target=args.target, name=args.name, namespace=args.namespace, pull_policy=args.image_pull_policy,
            command=shlex.split(args.command) if args.command else None,
            args=shlex.split(args.args) if args.args else None, slim=args.slim, cpu=args.cpu, memory=args.memory,
            cache_host_path=args.cache_host_path, serve=args.serve, push=args.push, backoff_limit=args.backoff_limit))
        return 0
    if cmd == "serve":
        policy = None
        if args.policy:
            import yaml

            with open(args.policy) as f:
                policy = f.read()
            yaml.safe_load(policy)
        sys.stdout.write(k8s.render_serve(
            args.image, upstream=args.upstream, registry_image=args.registry_image, name=args.name,
            namespace=args.namespace, port=args.port, registry_port=args.registry_port,
            service_type=args.service_type, workers=args.workers, policy=policy, storage_claim=args.storage_claim,
            pull_policy=args.image_pull_policy))
        return 0
    if cmd == "target":
        nodes = k8s.load_labels(args.labels)
        results = [(name, k8s.match(labels)) for name, labels in nodes]
        if args.json:
            out = [{"node": name, **m.to_json()} for name, m in results]
            print(json.dumps(out[0] if len(out) == 1 else out, indent=1))
        elif len(results) == 1:
            print(results[0][1].target)
        else:
            for name, m in results:
                print(f"{name}\t{m.target}")
        return 0
    if cmd == "selector":
        sys.stdout.write(k8s.render_affinity(args.target))
        return 0
    print("bakery k8s: a subcommand is needed: job, serve, target or selector (bakery k8s --help)", file=sys.stderr)
    return 2
