"""Data: RadioMapSeer layout, procedural cities and the condition encoding."""
