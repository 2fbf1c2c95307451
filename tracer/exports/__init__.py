"""Trace files turned into other tools' formats: Chrome/Perfetto, CSV, OTLP."""
