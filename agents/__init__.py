"""Faust agents: the thin shell that moves events in and actions out."""
