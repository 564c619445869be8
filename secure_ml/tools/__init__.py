"""Lightning-free helpers for the commands that must start fast: argument parsing, public digits, the extraction client.

Nothing here imports Lightning, torchmetrics or torchvision (``tests/test_serving_startup.py`` checks it).
"""
