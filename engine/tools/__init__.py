"""The tools cuda-convnet's users relied on, each behind a `python -m engine` verb:
check_grads (`--check-grads`), show (`shownet.py`: filters, cost curves, predictions),
draw (the net's graph), features (`--write-features`) and import_torch (PyTorch weights).

Nothing here is imported by `import engine`: each verb imports its module when it runs.
"""
