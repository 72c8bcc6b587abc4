"""The `xai` engine (Grok Imagine through `xai-sdk`): `engine`, `mapping`, `errors`.

Importing this package imports nothing of the SDK; `engine` does, so the
optional `xai` extra is only needed when the engine is used.
"""
