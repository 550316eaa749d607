"""Windows runtime stubs built on a Linux host.

A Windows stub needs three things no Linux wheel has: a Windows CPython (to run
PyInstaller and to be frozen into the stub), Windows wheels of the runtime's
pure-Python and C-extension dependencies, and llama.cpp's DLLs. Here they come
from Debian's Wine and mingw-w64: ``python.py`` unpacks and checks an embeddable
CPython, ``llama.py`` cross-compiles llama.cpp, ``stub.py`` puts them together
under Wine. ``toolchain.py`` holds what they share (tools, caches, running Wine).
Each piece is cached on what it is made from, so a rebuild reuses all the others.
"""
