"""Reading, summarising and explaining recorded traces (`tracer report`)."""
