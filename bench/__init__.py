"""Sprint's bench wing: ComfyUI as a library (host), random-weight models (synthetic), meters,
and one module per command of `python <Sprint> <command>` (cli). ComfyUI never loads it as a
node module; importing this package itself imports nothing."""
