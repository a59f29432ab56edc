"""Images: the IR image and its plan artifact (build), node tags (node, direct), the registry
client (oci), base images (base) and the embedded registry (registry)."""

from __future__ import annotations

from bakery.images.ir import (  # noqa: F401
    ANN,
    ARCH_OF_PLATFORM,
    BIN_DIR,
    BUNDLE_DIR,
    FAMILY_OF_ARCH,
    BuildResult,
    build,
    host_platform,
    render_containerfile,
)
from bakery.images.node import (  # noqa: F401
    DEFAULT_BAKE_TIMEOUT,
    BakeImageResult,
    allowed_llvm_majors,
    bake,
    bake_timeout,
    export_bundle,
    node_tag,
    resolve_ir,
    slim_missing_libraries,
    toolchain_major,
    trusted_toolchain,
)
