"""Checks for exported PEFT adapters: ``check_adapter`` (``keyguard check-adapter``)."""

from keyguard.adapter_checks._check import adapter_folder, check_adapter
from keyguard.adapter_checks._checks import checked_kinds

__all__ = ["adapter_folder", "check_adapter", "checked_kinds"]
