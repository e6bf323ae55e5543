"""Pure business logic: state transitions, scoring, RFM, rule evaluation. No Faust, no I/O."""

# Before any module of the core is imported: which form of its hot modules runs.
from churnguard.core import native as native
