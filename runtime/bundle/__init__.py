"""The bundle file: its payload format, where the model's bytes are, and their integrity."""
