"""The public contract: input events, actions, score records and dead letters (docs/contract.md)."""
