"""``bakery serve``: an OCI distribution front that bakes missing node tags once (proxy, http11,
lazy, policy, metrics)."""
