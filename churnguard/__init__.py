"""churnguard: real-time customer retention. `churnguard.core` is the pure business logic."""

__version__ = "0.1.0"
