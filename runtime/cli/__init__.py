"""The executable's command line, terminal chat, --info and progress bars."""
