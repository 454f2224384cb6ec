"""keyguard."""
