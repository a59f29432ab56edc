"""The bake plan: assembled at capture (assemble), refused or accepted at bake (trust)."""

from __future__ import annotations

from bakery.plan.assembly import (  # noqa: F401
    SCHEMA_VERSION,
    read_events,
    soname_of,
    assemble,
    merge_split_options,
    save,
)
from bakery.plan.trust import (  # noqa: F401
    MAX_PLAN_BYTES,
    MAX_DEPTH,
    safe_name,
    compile_flag_problem,
    FILE_OPTIONS,
    SYSTEM_LIB_DIRS,
    system_dir,
    link_flag_problem,
    system_input,
    verify_linker_file,
    file_tokens,
    validate,
    parse,
    load,
    verify_file,
)
