"""Figures of recorded traces and of research timestamps files (matplotlib, no pyplot)."""
