"""The `diffusers` engine: open-weights video models on the operator's own GPU.

A local diffusers model directory (a `save_pretrained` layout with
`model_index.json`) is inspected at start-up without loading weights
(`check`), recognised by a family adapter (`families`, `wan`), mapped onto the
contract's ratios, resolutions and durations (`mapping`), and run one
generation at a time (`engine`). Nothing here downloads anything.

Importing this package does not import torch: API-only processes read the
model directory's JSON files to know what to accept, and only processes that
run workers load weights (`DiffusersEngine.prepare`).
"""
