"""Images: the IR image and its plan artifact (build), node tags (node, direct), the registry
client (oci), base images (base) and the embedded registry (registry)."""

from __future__ import annotations

from bakery.images.ir import (  # noqa: F401
    BUNDLE_DIR,
    BIN_DIR,
    ANN,
    render_containerfile,
    host_platform,
    ARCH_OF_PLATFORM,
    FAMILY_OF_ARCH,
    BuildResult,
    build,
)
from bakery.images.node import (  # noqa: F401
    BakeImageResult,
    resolve_ir,
    node_tag,
    DEFAULT_BAKE_TIMEOUT,
    allowed_llvm_majors,
    toolchain_major,
    bake_timeout,
    trusted_toolchain,
    export_bundle,
    bake,
    slim_missing_libraries,
)
