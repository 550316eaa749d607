"""llamabundle's runtime: what runs inside a built executable.

Standard library and llama.cpp only. Never imports the bundler or click.
"""

__version__ = "0.1.0"
