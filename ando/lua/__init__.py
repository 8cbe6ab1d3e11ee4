"""Lua plugins on LuaJIT 2.1: the runtime and sandbox (runtime.py), the plugin loader and
adapter (plugin.py) and the Python side of the PDK (pdk.py). See docs/lua-pdk.md."""
