"""Pure business logic: state transitions, scoring, RFM, rule evaluation. No Faust, no I/O."""
