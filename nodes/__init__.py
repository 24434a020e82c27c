"""ComfyUI adapters over engines/: one module per capability, thin V3-schema nodes.

Kept import-free: headless.py must be importable before ComfyUI boots.
"""
