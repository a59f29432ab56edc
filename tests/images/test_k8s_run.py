"""The Job `bakery k8s job` renders, its containers run as a kubelet would: buildah, the real IR image."""

import pytest
from helpers import validate_k8s as validate

from bakery.scale import k8s

# -- the auto Job's containers, run as a kubelet would (buildah, the real IR image) -------------

@pytest.mark.slow
def test_auto_job_containers_run_as_rendered(images, engine, registry, tmp_path):
    """No cluster here: run the rendered init container, then the app container, from the real IR
    image with buildah, with the emptyDir as a host directory at the rendered mount paths."""
    import subprocess

    ir = images.ir("pi")
    (job,) = validate(k8s.render_job(f"{registry}/pi:1.0", args=["1000000"]))
    spec = job["spec"]["template"]["spec"]
    (init,), (app,) = spec["initContainers"], spec["containers"]
    empty_dir = tmp_path / "emptydir"
    empty_dir.mkdir()

    def run(container, argv):
        subprocess.run(["buildah", "pull", "-q", "--tls-verify=false", container["image"]], check=True,
                       capture_output=True)
        ctr = subprocess.run(["buildah", "from", "--pull-never", container["image"]], check=True,
                             capture_output=True, text=True).stdout.strip()
        try:
            vols = []
            for m in container["volumeMounts"]:
                vols += ["-v", f"{empty_dir}:{m['mountPath']}" + (":ro" if m.get("readOnly") else "")]
            cp = subprocess.run(["buildah", "run", "--isolation=chroot", *vols, ctr, "--", *argv],
                                capture_output=True, text=True, timeout=300)
            assert cp.returncode == 0, cp.stdout + cp.stderr
            return cp.stdout + cp.stderr
        finally:
            subprocess.run(["buildah", "rm", ctr], capture_output=True)

    log = run(init, init["command"])
    assert "wrote pi" in log and (empty_dir / "pi").exists()
    # The app container has no command: the image's own entrypoint, which is where a node tag has it.
    entry = engine.inspect(app["image"])["OCIv1"]["config"]["Entrypoint"]
    assert "command" not in app and entry == ["/usr/local/bin/pi"]
    out = run(app, [*entry, *app["args"]])
    assert "check: ok" in out, out
    assert ir.ref.startswith(f"{registry}/pi:1.0@")
