"""The bake plan: assembled at capture (assemble), refused or accepted at bake (trust), read as
types once accepted (model: what load() and parse() return)."""

from __future__ import annotations

from bakery.plan.assembly import (  # noqa: F401
    assemble,
    merge_split_options,
    read_events,
    save,
    soname_of,
)
from bakery.plan.model import (  # noqa: F401
    SCHEMA_VERSION,
    App,
    Archive,
    BundleFile,
    Decision,
    Dropped,
    FileRef,
    Flag,
    Link,
    LinkItem,
    LinkRef,
    Member,
    Module,
    ModuleRef,
    ObjectFile,
    ObjectRef,
    Plan,
    Preserve,
    RecipeInfo,
    Toolchain,
    Variant,
)
from bakery.plan.trust import (  # noqa: F401
    FILE_OPTIONS,
    MAX_DEPTH,
    MAX_PLAN_BYTES,
    SYSTEM_LIB_DIRS,
    compile_flag_problem,
    file_tokens,
    link_flag_problem,
    load,
    parse,
    read_verified,
    safe_name,
    system_dir,
    system_input,
    validate,
    verify_file,
    verify_linker_file,
)
