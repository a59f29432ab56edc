"""``bakery serve``: an OCI distribution front that bakes missing node tags once (proxy, lazy)."""
