"""Sources of keys: every input keyguard reads resolves to one immutable ``KeySet``."""
