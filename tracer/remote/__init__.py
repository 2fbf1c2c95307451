"""Tracing through a stream: `tracer agent` next to the operator, a receiver where the user is."""
