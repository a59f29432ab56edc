"""bakery: capture a build as pre-optimization LLVM bitcode once, bake it natively for each CPU."""

__version__ = "0.1.0"

PLAN_MEDIA_TYPE = "application/vnd.bakery.plan.v1+json"
